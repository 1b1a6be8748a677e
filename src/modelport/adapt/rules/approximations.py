"""Named approximations: a different, cheaper or more portable function; adapt measures and reports the error.

    Gelu=tanh-approx:    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))   (max abs err ~ 5e-4 vs the erf form)
    Gelu=sigmoid-approx: x * sigmoid(1.702 * x)                                    (max abs err ~ 2e-2)

Both also match Gelu written out as its erf formula, ``0.5 * x * (1 + erf(x / sqrt(2)))``, as
exporters write it below opset 20 (onnxscript pattern rules, the forms torch.onnx emits).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from modelport.adapt.rules import Emitter, Verdict, register
from modelport.adapt.rules.decompositions import _attr, gelu_tanh_form


def _erf_gelu(node: ir.Node, opset: int) -> Verdict:
    if _attr(node, "approximate", "none") == "tanh":
        return Verdict(False, "already the tanh form (use Gelu=decompose)")
    return Verdict(True)


def _erf_gelu_patterns():
    return (
        lambda op, x: 0.5 * (x * (op.Erf(x / math.sqrt(2)) + 1.0)),
        lambda op, x: x * (0.5 * (op.Erf(x / math.sqrt(2)) + 1.0)),
        lambda op, x: (x * 0.5) * (op.Erf(x / math.sqrt(2)) + 1.0),
        lambda op, x: (x * 0.5) * (op.Erf(x * (1 / math.sqrt(2))) + 1.0),
        lambda op, x: x * (0.5 * (op.Erf(x * (1 / math.sqrt(2))) + 1.0)),
    )


def _const(op, x, value: float):
    dtype = x.dtype.numpy() if x.dtype is not None else np.float32
    return op.Constant(value=ir.tensor(np.array(value, dtype=dtype)))


def _tanh_replacement(op, x):
    cube = op.Mul(op.Mul(x, x), x)
    inner = op.Mul(op.Add(x, op.Mul(cube, _const(op, x, 0.044715))), _const(op, x, math.sqrt(2 / math.pi)))
    return op.Mul(op.Mul(x, _const(op, x, 0.5)), op.Add(op.Tanh(inner), _const(op, x, 1.0)))


def _sigmoid_replacement(op, x):
    return op.Mul(x, op.Sigmoid(op.Mul(x, _const(op, x, 1.702))))


def _erf_subgraph(replacement):
    def apply(model: ir.Model) -> int:
        from onnxscript.rewriter import pattern

        rules = pattern.RewriteRuleSet([pattern.RewriteRule(p, replacement) for p in _erf_gelu_patterns()])
        return rules.apply_to_model(model)

    return apply


@register("Gelu", "tanh-approx", exact=False, emits=("Mul", "Add", "Tanh"), check=_erf_gelu, subgraph=_erf_subgraph(_tanh_replacement))
def gelu_tanh(e: Emitter, node: ir.Node) -> list[ir.Value]:
    """Gelu (erf) -> its tanh approximation, in primitive ops."""
    return [gelu_tanh_form(e, node.inputs[0])]


@register("Gelu", "sigmoid-approx", exact=False, emits=("Mul", "Sigmoid"), subgraph=_erf_subgraph(_sigmoid_replacement))
def gelu_sigmoid(e: Emitter, node: ir.Node) -> list[ir.Value]:
    """Gelu -> x * sigmoid(1.702 x)."""
    x = node.inputs[0]
    return [e.op("Mul", x, e.op("Sigmoid", e.op("Mul", x, e.const(1.702, e.dtype_of(x)))))]
