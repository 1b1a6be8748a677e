"""The adapt changes as onnx_ir passes, composed with ``onnx_ir.passes.Sequential``.

    >>> import onnx_ir as ir
    >>> from modelport.adapt.passes import LayoutPass, NormalizePass, RewriteRulePass
    >>> ir.passes.Sequential(RewriteRulePass("Gelu=decompose"), NormalizePass([0.5] * 3, [0.2] * 3), LayoutPass("nhwc"))(model)

``modelport.adapt.adapt`` composes them in this order: rewrite rules, opset conversion, then
the boundary passes (normalize, layout, io dtype, batch, dynamic batch, rename).

Each pass reports honestly whether it changed the model (``PassResult.modified``, also kept
as ``pass_.modified``), and keeps what it did for the caller to verify or report:
``application`` (a rule's matched nodes), ``result`` (the opset conversion), ``boundary`` (a
boundary change, which verification inverts); ``kind``, ``exact`` and ``detail()`` describe
the change in adapt's report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx_ir as ir

from modelport.errors import BadInputError
from modelport.adapt import io

if TYPE_CHECKING:
    from modelport.adapt.opset import OpsetResult
    from modelport.adapt.rules import Rule, RuleApplication

__all__ = ["RewriteRulePass", "OpsetPass", "LayoutPass", "NormalizePass", "IoDtypePass", "BatchPass", "DynamicBatchPass",
           "RenamePass", "BoundaryPass", "run_passes"]


def run_passes(passes: ir.passes.PassBase, model: ir.Model) -> ir.passes.PassResult:
    """Run ``passes`` (e.g. a ``Sequential``); an error inside a pass is raised as itself, not as onnx_ir's PassError."""
    try:
        return passes(model)
    except ir.passes.PassError as exc:
        cause: BaseException | None = exc
        while isinstance(cause, ir.passes.PassError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is exc or isinstance(cause, ir.passes.PassError):
            raise
        raise cause from None


class RewriteRulePass(ir.passes.InPlacePass):
    """Apply one rewrite rule, a ``Rule`` or ``"Op=name"`` (``modified`` is False when it matched nothing).

    ``on_unmatched(application)``, when given, is called when the rule rewrote nothing (to raise, say).
    """

    kind = "replace"

    def __init__(self, rule: Rule | str, *, on_unmatched: Callable[[RuleApplication], None] | None = None) -> None:
        if isinstance(rule, str):
            from modelport.adapt.rules import find_rule

            op, _, name = rule.partition("=")
            found = find_rule(op, name)
            if found is None:
                raise BadInputError(f"no such rewrite rule {rule!r}")
            rule = found
        self.rule = rule
        self.exact = rule.exact
        self.on_unmatched = on_unmatched
        self.application: RuleApplication | None = None
        self.modified = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from modelport.adapt.rules import apply_rule

        self.application = apply_rule(model, self.rule)
        self.modified = bool(self.application.nodes)
        if not self.modified and self.on_unmatched is not None:
            self.on_unmatched(self.application)
        return ir.passes.PassResult(model, self.modified)

    def detail(self) -> str:
        nodes = self.application.nodes if self.application else ()
        return f"{self.rule.key} on {len(nodes)} node(s): {', '.join(nodes[:6])}"


class OpsetPass(ir.passes.FunctionalPass):
    """Convert the default-domain opset (onnx's version converter plus modelport's adapters)."""

    kind = "opset"
    exact = True

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.result: OpsetResult | None = None
        self.modified = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from modelport.adapt.opset import convert_opset

        self.result = convert_opset(ir.serde.serialize_model(model), self.opset)
        self.modified = self.result.src != self.result.dst
        return ir.passes.PassResult(ir.serde.deserialize_model(self.result.model), self.modified)

    def detail(self) -> str:
        res = self.result
        if res is None:
            return f"to {self.opset}"
        return (f"{res.src} -> {res.dst}" + (f"; decomposed {', '.join(res.rewrites)}" if res.rewrites else "")
                + (f"; {'; '.join(res.notes)}" if res.notes else ""))


def _dims(value: ir.Value) -> tuple | None:
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else ("symbolic", getattr(d, "value", str(d))) for d in value.shape.dims)


def _boundary_state(model: ir.Model) -> tuple:
    """What a boundary pass can change: the graph's inputs, outputs, nodes, their wiring, names, types and shapes.

    The objects themselves (compared by identity) are kept in the state, so none is freed and its id reused.
    """
    graph = model.graph

    def value(v: ir.Value | None) -> tuple | None:
        return None if v is None else (v, v.name, v.dtype, _dims(v))

    nodes = tuple((node, tuple(value(i) for i in node.inputs), tuple(value(o) for o in node.outputs))
                  for node in ir.traversal.RecursiveGraphIterator(graph))
    return tuple(value(v) for v in graph.inputs), tuple(value(v) for v in graph.outputs), nodes


class BoundaryPass(ir.passes.InPlacePass):
    """A boundary change; ``modified`` is whether the graph's boundary, nodes or shapes differ afterwards."""

    exact = True
    boundary: io.Boundary | None = None
    modified = False

    @property
    def kind(self) -> str:
        return self.boundary.kind if self.boundary is not None else type(self).__name__

    def _apply(self, model: ir.Model) -> io.Boundary:
        raise NotImplementedError

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = _boundary_state(model)
        self.boundary = self._apply(model)
        self.modified = _boundary_state(model) != before
        return ir.passes.PassResult(model, self.modified)

    def detail(self) -> str:
        return self.boundary.describe() if self.boundary is not None else ""


class LayoutPass(BoundaryPass):
    """``nhwc``: an NCHW model takes NHWC data; ``nchw``: the reverse (a Transpose at the boundary)."""

    def __init__(self, layout: str, names: list[str] | None = None) -> None:
        self.layout, self.names = layout, names

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.to_layout(model, self.layout, self.names)


class NormalizePass(BoundaryPass):
    """Bake ``(x / scale - mean) / std`` into the graph."""

    def __init__(self, mean: list[float], std: list[float], scale: float | None = None, name: str | None = None) -> None:
        self.mean, self.std, self.scale, self.name = mean, std, scale, name

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.normalize(model, self.mean, self.std, self.scale, self.name)


class IoDtypePass(BoundaryPass):
    """Float inputs and outputs in ``dtype`` (Casts at the boundary)."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.set_io_dtype(model, self.dtype)


class BatchPass(BoundaryPass):
    """A static batch size for every input."""

    def __init__(self, size: int) -> None:
        self.size = size

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.set_batch(model, self.size)


class DynamicBatchPass(BoundaryPass):
    """A symbolic batch dim for every input (flatten Reshapes relaxed to -1)."""

    def __init__(self, name: str = "batch") -> None:
        self.name = name

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.dynamic_batch(model, self.name)


class RenamePass(BoundaryPass):
    """Rename inputs and outputs, ``{old: new}``."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.rename(model, self.mapping)
