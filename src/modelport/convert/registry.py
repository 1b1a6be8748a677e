"""The converter registry and route planner.

Converters are edges ``(src_format, dst_format)``; a route between two formats is the
shortest path over the edges, so adding one converter adds every route through it.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelport.artifact import TensorSpec
from modelport.errors import UnsupportedError

__all__ = ["ConvertOptions", "ConverterResult", "Edge", "register", "edges", "plan", "output_kind", "companions"]


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """Options every converter may read; each ignores what does not concern it."""

    opset: int | None = None
    inputs: tuple[TensorSpec, ...] = ()
    weights: str | None = None
    dynamic_batch: bool = True
    extra: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


@dataclasses.dataclass(frozen=True)
class ConverterResult:
    """What a converter reports about the file it wrote."""

    tool: str
    versions: tuple[tuple[str, str], ...] = ()
    detail: str = ""
    warnings: tuple[str, ...] = ()
    # (rtol, atol) the result should be verified at when the caller sets none: a converter that
    # stores weights in lower precision (float16 TFLite) says so, the I/O dtypes cannot.
    tolerance: tuple[float, float] | None = None


ConverterFn = Callable[[str, str, ConvertOptions], ConverterResult]


@dataclasses.dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    name: str
    fn: ConverterFn


_EDGES: dict[tuple[str, str], Edge] = {}

# What a format's output path is: a file (with this suffix) or a directory.
_OUTPUT_KIND: dict[str, str] = {
    "onnx": ".onnx",
    "torch-export": ".pt2",
    "torchscript": ".pt",
    "keras": ".keras",
    "tflite": ".tflite",
    "savedmodel": "/",
    "torch": "/",
    "openvino": "/",
}


# Directory formats that can also be written as files: a destination with this suffix (that is not
# an existing directory) gets the main file, and the files with the companion suffixes beside it.
_FILE_FORM: dict[str, tuple[str, tuple[str, ...]]] = {
    "openvino": (".xml", (".bin",)),  # the IR pair model.xml + model.bin, as openvino.save_model writes
}


def output_kind(fmt: str, dest: str | Path | None = None) -> str:
    """``/`` for a directory, else the file suffix; with ``dest``, the kind that destination asks for."""
    kind = _OUTPUT_KIND.get(fmt, "")
    form = _FILE_FORM.get(fmt)
    if dest is not None and form is not None:
        p = Path(dest)
        if p.suffix.lower() == form[0] and not p.is_dir():
            return form[0]
    return kind


def companions(fmt: str, kind: str) -> tuple[str, ...]:
    """Suffixes of the files written beside an output of this kind (``.bin`` beside an IR's ``.xml``)."""
    form = _FILE_FORM.get(fmt)
    return form[1] if form is not None and form[0] == kind else ()


def register(src: str, dst: str, name: str) -> Callable[[ConverterFn], ConverterFn]:
    """Register ``fn(src_path, out_path, options) -> ConverterResult`` as the edge src -> dst."""

    def deco(fn: ConverterFn) -> ConverterFn:
        _EDGES[(src, dst)] = Edge(src, dst, name, fn)
        return fn

    return deco


def edges() -> list[Edge]:
    return list(_EDGES.values())


def plan(src: str, dst: str) -> list[Edge]:
    """Shortest route of converters from src to dst; UnsupportedError if there is none."""
    if src == dst:
        raise UnsupportedError(f"the model is already in format {dst!r}")
    prev: dict[str, Edge | None] = {src: None}
    queue = deque([src])
    while queue:
        fmt = queue.popleft()
        for (a, b), edge in _EDGES.items():
            if a == fmt and b not in prev:
                prev[b] = edge
                queue.append(b)
    if dst not in prev:
        targets = sorted({b for b in prev if b != src})
        raise UnsupportedError(
            f"no conversion route from {src} to {dst} (reachable from {src}: {', '.join(targets) or 'none'})"
        )
    route: list[Edge] = []
    node = dst
    while prev[node] is not None:
        edge = prev[node]
        assert edge is not None
        route.append(edge)
        node = edge.src
    return route[::-1]
