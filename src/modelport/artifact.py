"""The core nouns: TensorSpec, Signature, StepRecord and Artifact."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Dim", "TensorSpec", "Signature", "StepRecord", "Artifact", "to_jsonable"]

# A dimension: a fixed size, a symbolic name ("batch"), or None when unknown.
Dim = int | str | None


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and shape of one model input or output."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None = None

    @property
    def is_dynamic(self) -> bool:
        return self.shape is None or any(not isinstance(d, int) for d in self.shape)

    def shape_str(self) -> str:
        if self.shape is None:
            return "?"
        return "x".join("?" if d is None else str(d) for d in self.shape) or "scalar"

    def __str__(self) -> str:
        return f"{self.name}:{self.shape_str()}:{self.dtype}"


@dataclasses.dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a model, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One step of an artifact's history: what produced it, with which tools, and its parity."""

    step: str
    src_format: str
    dst_format: str
    tool: str
    versions: tuple[tuple[str, str], ...] = ()
    detail: str = ""
    verified: bool | None = None


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An immutable model on disk: path, format, signature and lineage."""

    path: str
    format: str
    signature: Signature | None = None
    lineage: tuple[StepRecord, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def to_jsonable(value: Any) -> Any:
    """Turn dataclasses, tuples and numpy scalars into plain JSON-able values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value

