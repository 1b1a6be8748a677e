"""Named approximations: a different, cheaper or more portable function; adapt measures and reports the error.

    Gelu=tanh-approx:    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))   (max abs err ~ 5e-4 vs the erf form)
    Gelu=sigmoid-approx: x * sigmoid(1.702 * x)                                    (max abs err ~ 2e-2)
"""

from __future__ import annotations

import onnx_ir as ir

from modelport.passes.adapt.rules import Emitter, Verdict, register
from modelport.passes.adapt.rules.decompositions import _attr, gelu_tanh_form


def _erf_gelu(node: ir.Node, opset: int) -> Verdict:
    if _attr(node, "approximate", "none") == "tanh":
        return Verdict(False, "already the tanh form (use Gelu=decompose)")
    return Verdict(True)


@register("Gelu", "tanh-approx", exact=False, emits=("Mul", "Add", "Tanh"), check=_erf_gelu)
def gelu_tanh(e: Emitter, node: ir.Node) -> list[ir.Value]:
    """Gelu (erf) -> its tanh approximation, in primitive ops."""
    return [gelu_tanh_form(e, node.inputs[0])]


@register("Gelu", "sigmoid-approx", exact=False, emits=("Mul", "Sigmoid"))
def gelu_sigmoid(e: Emitter, node: ir.Node) -> list[ir.Value]:
    """Gelu -> x * sigmoid(1.702 x)."""
    x = node.inputs[0]
    return [e.op("Mul", x, e.op("Sigmoid", e.op("Mul", x, e.const(1.702, e.dtype_of(x)))))]
