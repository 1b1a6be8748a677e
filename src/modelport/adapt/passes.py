"""The adapt changes as onnx_ir passes, to compose with ``onnx_ir.passes.Sequential``.

    >>> import onnx_ir as ir
    >>> from modelport.adapt.passes import LayoutPass, NormalizePass, RewriteRulePass
    >>> ir.passes.Sequential(RewriteRulePass("Gelu=decompose"), NormalizePass([0.5] * 3, [0.2] * 3), LayoutPass("nhwc"))(model)

Each pass keeps what it did (``application`` / ``boundary``) for the caller to verify or
report; ``modelport.adapt.adapt`` runs the same functions and verifies the result.
"""

from __future__ import annotations

import onnx_ir as ir

from modelport.errors import BadInputError
from modelport.adapt import io

__all__ = ["RewriteRulePass", "OpsetPass", "LayoutPass", "NormalizePass", "IoDtypePass", "BatchPass", "DynamicBatchPass", "RenamePass"]


class RewriteRulePass(ir.passes.InPlacePass):
    """Apply one rewrite rule, ``"Op=name"`` (``modified`` is False when it matched nothing)."""

    def __init__(self, key: str) -> None:
        from modelport.adapt.rules import find_rule

        op, _, name = key.partition("=")
        rule = find_rule(op, name)
        if rule is None:
            raise BadInputError(f"no such rewrite rule {key!r}")
        self.rule = rule
        self.application = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from modelport.adapt.rules import apply_rule

        self.application = apply_rule(model, self.rule)
        return ir.passes.PassResult(model, bool(self.application.nodes))


class OpsetPass(ir.passes.FunctionalPass):
    """Convert the default-domain opset (onnx's version converter plus modelport's adapters)."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.result = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from modelport.adapt.opset import convert_opset

        self.result = convert_opset(ir.serde.serialize_model(model), self.opset)
        return ir.passes.PassResult(ir.serde.deserialize_model(self.result.model), self.result.src != self.result.dst)


class _BoundaryPass(ir.passes.InPlacePass):
    boundary: io.Boundary | None = None

    def _apply(self, model: ir.Model) -> io.Boundary:
        raise NotImplementedError

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.boundary = self._apply(model)
        return ir.passes.PassResult(model, True)


class LayoutPass(_BoundaryPass):
    """``nhwc``: an NCHW model takes NHWC data; ``nchw``: the reverse (a Transpose at the boundary)."""

    def __init__(self, layout: str, names: list[str] | None = None) -> None:
        self.layout, self.names = layout, names

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.to_layout(model, self.layout, self.names)


class NormalizePass(_BoundaryPass):
    """Bake ``(x / scale - mean) / std`` into the graph."""

    def __init__(self, mean: list[float], std: list[float], scale: float | None = None, name: str | None = None) -> None:
        self.mean, self.std, self.scale, self.name = mean, std, scale, name

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.normalize(model, self.mean, self.std, self.scale, self.name)


class IoDtypePass(_BoundaryPass):
    """Float inputs and outputs in ``dtype`` (Casts at the boundary)."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.set_io_dtype(model, self.dtype)


class BatchPass(_BoundaryPass):
    """A static batch size for every input."""

    def __init__(self, size: int) -> None:
        self.size = size

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.set_batch(model, self.size)


class DynamicBatchPass(_BoundaryPass):
    """A symbolic batch dim for every input (flatten Reshapes relaxed to -1)."""

    def __init__(self, name: str = "batch") -> None:
        self.name = name

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.dynamic_batch(model, self.name)


class RenamePass(_BoundaryPass):
    """Rename inputs and outputs, ``{old: new}``."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def _apply(self, model: ir.Model) -> io.Boundary:
        return io.rename(model, self.mapping)
