"""Exact decompositions into primitive ops (same function, rounding aside).

    LayerNormalization(x, s, b; axis, eps) = (x - mean) / sqrt(var + eps) * s + b,
        mean and var over axes [axis, rank), var = mean((x - mean)^2); in float32 when stash_type=1
    Gelu(x)            = 0.5 * x * (1 + erf(x / sqrt(2)))
    Gelu(x; tanh)      = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    HardSigmoid(x)     = max(0, min(1, alpha * x + beta))
    HardSwish(x)       = x * max(0, min(1, x / 6 + 1/2))
    Softplus(x)        = max(x, 0) + log(1 + exp(-|x|))       (the overflow-free form of log(1 + exp(x)))
    Mish(x)            = x * tanh(softplus(x))
    Softsign(x)        = x / (1 + |x|)
"""

from __future__ import annotations

import math

import onnx_ir as ir

from modelport.adapt.rules import OK, Emitter, Verdict, register


def _attr(node: ir.Node, name: str, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _layernorm_check(node: ir.Node, opset: int) -> Verdict:
    x = node.inputs[0]
    axis = _attr(node, "axis", -1)
    if axis >= 0 and (x.shape is None):
        return Verdict(False, f"axis {axis} >= 0 needs the input's rank, which is unknown")
    return OK


@register("LayerNormalization", "decompose", exact=True, emits=("ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Div"),
          check=_layernorm_check)
def layer_normalization(e: Emitter, node: ir.Node) -> list[ir.Value | None]:
    """LayerNormalization -> ReduceMean, Sub, Mul, Add, Sqrt, Div."""
    x, scale = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    axis, eps = _attr(node, "axis", -1), _attr(node, "epsilon", 1e-5)
    stash = _attr(node, "stash_type", 1)
    axes = list(range(axis, 0)) if axis < 0 else list(range(axis, len(x.shape)))
    dtype = e.dtype_of(x)
    wide = ir.DataType.FLOAT if stash == 1 and dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16) else dtype
    xw = x if wide == dtype else e.op("Cast", x, to=wide)
    mean = e.reduce_mean(xw, axes)
    d = e.op("Sub", xw, mean)
    var = e.reduce_mean(e.op("Mul", d, d), axes)
    std = e.op("Sqrt", e.op("Add", var, e.const(eps, wide)))
    y = e.op("Div", d, std)
    if wide != dtype:
        y = e.op("Cast", y, to=dtype)
    y = e.op("Mul", y, scale)
    if bias is not None:
        y = e.op("Add", y, bias)
    outs: list[ir.Value | None] = [y]
    if len(node.outputs) > 1:
        outs.append(mean)
    if len(node.outputs) > 2:
        outs.append(e.op("Reciprocal", std))
    return outs


@register("Gelu", "decompose", exact=True, emits=("Mul", "Erf", "Add"))
def gelu(e: Emitter, node: ir.Node) -> list[ir.Value]:
    """Gelu -> Mul, Erf, Add (tanh form: Mul, Tanh, Add when approximate='tanh')."""
    x = node.inputs[0]
    if _attr(node, "approximate", "none") == "tanh":
        return [gelu_tanh_form(e, x)]
    dt = e.dtype_of(x)
    inner = e.op("Erf", e.op("Mul", x, e.const(1 / math.sqrt(2), dt)))
    return [e.op("Mul", e.op("Mul", x, e.const(0.5, dt)), e.op("Add", inner, e.const(1.0, dt)))]


def gelu_tanh_form(e: Emitter, x: ir.Value) -> ir.Value:
    dt = e.dtype_of(x)
    cube = e.op("Mul", e.op("Mul", x, x), x)
    inner = e.op("Mul", e.op("Add", x, e.op("Mul", cube, e.const(0.044715, dt))), e.const(math.sqrt(2 / math.pi), dt))
    return e.op("Mul", e.op("Mul", x, e.const(0.5, dt)), e.op("Add", e.op("Tanh", inner), e.const(1.0, dt)))


@register("HardSigmoid", "decompose", exact=True, emits=("Mul", "Add", "Min", "Max"))
def hard_sigmoid(e: Emitter, node: ir.Node) -> list[ir.Value]:
    """HardSigmoid -> Mul, Add, Min, Max."""
    x = node.inputs[0]
    dt = e.dtype_of(x)
    lin = e.op("Add", e.op("Mul", x, e.const(_attr(node, "alpha", 0.2), dt)), e.const(_attr(node, "beta", 0.5), dt))
    return [e.clip01(lin, dt)]


@register("HardSwish", "decompose", exact=True, emits=("Mul", "Add", "Min", "Max"))
def hard_swish(e: Emitter, node: ir.Node) -> list[ir.Value]:
    """HardSwish -> Mul, Add, Min, Max."""
    x = node.inputs[0]
    dt = e.dtype_of(x)
    lin = e.op("Add", e.op("Mul", x, e.const(1 / 6, dt)), e.const(0.5, dt))
    return [e.op("Mul", x, e.clip01(lin, dt))]


def softplus_form(e: Emitter, x: ir.Value) -> ir.Value:
    dt = e.dtype_of(x)
    tail = e.op("Log", e.op("Add", e.op("Exp", e.op("Neg", e.op("Abs", x))), e.const(1.0, dt)))
    return e.op("Add", e.op("Max", x, e.const(0.0, dt)), tail)


@register("Softplus", "decompose", exact=True, emits=("Max", "Add", "Log", "Exp", "Neg", "Abs"))
def softplus(e: Emitter, node: ir.Node) -> list[ir.Value]:
    """Softplus -> Max, Add, Log, Exp, Neg, Abs (overflow-free)."""
    return [softplus_form(e, node.inputs[0])]


@register("Mish", "decompose", exact=True, emits=("Mul", "Tanh", "Max", "Add", "Log", "Exp", "Neg", "Abs"))
def mish(e: Emitter, node: ir.Node) -> list[ir.Value]:
    """Mish -> x * tanh(softplus(x)) in primitive ops."""
    x = node.inputs[0]
    return [e.op("Mul", x, e.op("Tanh", softplus_form(e, x)))]


@register("Softsign", "decompose", exact=True, emits=("Div", "Add", "Abs"))
def softsign(e: Emitter, node: ir.Node) -> list[ir.Value]:
    """Softsign -> Div, Add, Abs."""
    x = node.inputs[0]
    return [e.op("Div", x, e.op("Add", e.op("Abs", x), e.const(1.0, e.dtype_of(x))))]
