"""ONNX Runtime contrib ops (domain ``com.microsoft``) that its transformer optimizer writes.

``Gelu`` / ``BiasGelu`` (erf GELU, BiasGelu of ``x + bias``), ``FastGelu`` (tanh approximation,
optional bias), ``SkipLayerNormalization`` (LayerNorm over the last axis of
``input + skip (+ bias)``) and ``FusedConv`` (Conv, optional ``Z`` added, then an activation).
All are version 1 of the domain.
"""

from __future__ import annotations

from modelport.to_torch.codegen import Node, lit
from modelport.to_torch.ops.conv import conv_1
from modelport.to_torch.registry import register

MS = "com.microsoft"


def _biased(n: Node) -> str:
    """Input 0 plus the optional bias input 1."""
    x = n.x(0)
    return f"{x} + {n.x(1)}" if n.has(1) else x


@register("Gelu", since=1, domain=MS)
def gelu_ms_1(n: Node) -> None:
    n.assign(f"F.gelu({n.x(0)})")


@register("BiasGelu", since=1, domain=MS)
def biasgelu_ms_1(n: Node) -> None:
    if not n.has(1):
        raise n.fail("BiasGelu without its bias input")
    n.assign(f"F.gelu({_biased(n)})")


@register("FastGelu", since=1, domain=MS)
def fastgelu_ms_1(n: Node) -> None:
    n.assign(f'F.gelu({_biased(n)}, approximate="tanh")')


@register("SkipLayerNormalization", since=1, domain=MS)
def skiplayernormalization_ms_1(n: Node) -> None:
    # Outputs 1 and 2 (mean, inv_std_var) are training-time statistics whose shapes ONNX Runtime
    # does not pin down in its schema; only the result and the input+skip+bias sum are converted.
    for j, what in ((1, "mean"), (2, "inv_std_var")):
        if n.has_out(j):
            raise n.fail(f"SkipLayerNormalization output {j} ({what}) is not supported; "
                         "only output 0 and input_skip_bias_sum (output 3) are")
    if n.n_out > 4:
        raise n.fail(f"SkipLayerNormalization with {n.n_out} outputs (at most 4)")
    eps = n.attr("epsilon", 1e-12)
    gshape = n.shape(2)
    if gshape is not None and len(gshape) != 1:
        raise n.fail(f"SkipLayerNormalization gamma of rank {len(gshape)} (1 expected)")
    x, skip = n.x(0), n.x(1)
    summed = f"{x} + {skip}" + (f" + {n.x(4)}" if n.has(4) else "")
    if n.has_out(3):
        s = n.assign(summed, 3)
    else:
        s = n.tmp("skip_sum")
        n.emit(f"{s} = {summed}")
    gamma, beta = n.x(2), n.x(3) if n.has(3) else None
    width = f"{gamma}.shape[-1:]"
    n.assign(f"F.layer_norm({s}, {width}, {gamma}, {beta or 'None'}, eps={lit(eps)})")


def _activation(n: Node, y: str) -> str:
    act = n.attr("activation", "")
    params = list(n.attr("activation_params") or [])
    if act in ("", "Identity"):
        return y
    if act == "Relu":
        return f"F.relu({y})"
    if act == "Tanh":
        return f"torch.tanh({y})"
    if act == "Sigmoid":
        return f"torch.sigmoid({y})"
    if act == "LeakyRelu":
        return f"F.leaky_relu({y}, {lit(params[0] if params else 0.01)})"
    if act == "Clip":
        if len(params) != 2:
            raise n.fail("FusedConv Clip needs activation_params [min, max]")
        return f"torch.clamp({y}, {lit(params[0])}, {lit(params[1])})"
    if act == "HardSigmoid":
        a, b = (params + [0.2, 0.5][len(params):])[:2]
        return f"torch.clamp({lit(a)} * ({y}) + {lit(b)}, 0, 1)"
    raise n.fail(f"FusedConv activation {act!r} is not supported "
                 "(Relu, Tanh, Sigmoid, LeakyRelu, Clip, HardSigmoid are)")


@register("FusedConv", since=1, domain=MS)
def fusedconv_ms_1(n: Node) -> None:
    _activation(n, "y")  # refuse an unknown activation before any code is emitted
    conv_1(n)
    y = n.out(0)
    if n.has(3):
        y = f"{y} + {n.x(3)}"
    expr = _activation(n, y)
    if expr != n.out(0):
        n.assign(expr)
