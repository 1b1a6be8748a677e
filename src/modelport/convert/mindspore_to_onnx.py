"""MindSpore -> ONNX with ``mindspore.onnx.export``, in the `mindspore` toolchain.

Two sources: a ``mindspore.nn.Cell`` file (format ``mindspore-cell``: ``file.py:Name`` +
``--weights NAME.ckpt`` + ``--input`` shapes), exported from its PyNative Cell; and a MindIR file
(format ``mindspore``), loaded as ``nn.GraphCell`` and exported in graph mode. The exporter keeps a
dynamic batch on the inputs but writes the outputs (and intermediate value_info) at the sample's
batch: here those leading dims become ``batch`` again and the stale value_info is dropped, so the
result runs at any batch (convert's verification runs it at two).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.formats import mindspore_cell, mindspore_format

EXPORT_BATCH = 2  # the sample batch the toolchain exports with (mindspore_ops._sample)
DEFAULT_OPSET = 17  # MindSpore writes opset 11; the hub's passes (quantize: per-axis DequantizeLinear) want >= 13


def _free_batch(model) -> None:
    graph = model.graph
    dynamic = any(len(vi.type.tensor_type.shape.dim) and vi.type.tensor_type.shape.dim[0].HasField("dim_param")
                  for vi in graph.input)
    if not dynamic:
        return
    for vi in graph.output:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == EXPORT_BATCH:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del graph.value_info[:]


def _opset(proto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _upgrade(proto, want: int):
    """The model at opset ``want`` (onnx.version_converter), or as exported when that fails; and a note."""
    from onnx import checker, version_converter

    have = _opset(proto)
    if have >= want:
        return proto, f"opset {have}"
    try:
        upgraded = version_converter.convert_version(proto, want)
        checker.check_model(upgraded)
    except Exception as exc:  # the exporter's opset still runs: keep it, say why
        return proto, f"opset {have} (the upgrade to {want} failed: {type(exc).__name__})"
    return upgraded, f"opset {want} (exported at {have}, upgraded with onnx.version_converter)"


def _finish(raw: str, out: str, done: dict, detail: str, options: ConvertOptions) -> ConverterResult:
    import onnx

    proto = onnx.load(raw)
    _free_batch(proto)
    proto, opset = _upgrade(proto, options.opset or DEFAULT_OPSET)
    onnx.save(proto, out)
    versions = done["versions"]
    return ConverterResult(
        tool="mindspore.onnx.export (mindspore toolchain)",
        versions=tuple((k, versions[k]) for k in ("mindspore", "numpy") if k in versions),
        detail=f"{detail}; {opset}",
    )


@register("mindspore-cell", "onnx", "mindspore.onnx.export")
def cell_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    args = mindspore_cell.cell_args(src, options.weights, options.inputs)
    with tempfile.TemporaryDirectory(prefix=".mindspore-onnx-", dir=Path(out).parent) as tmp:
        raw = str((Path(tmp) / "model.onnx").resolve())
        done = mindspore_format.driver().call("cell_export", **args, out=raw, file_format="ONNX")
        return _finish(raw, out, done, "mindspore.nn.Cell (PyNative), its .ckpt loaded", options)


@register("mindspore", "onnx", "mindspore.onnx.export")
def mindir_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    from modelport.formats.base import fill_signature

    path = str(Path(src).resolve())
    sig = mindspore_format.signature_of(path)
    inputs = mindspore_format.specs_for_driver(fill_signature(sig.inputs, options.inputs, src))
    with tempfile.TemporaryDirectory(prefix=".mindspore-onnx-", dir=Path(out).parent) as tmp:
        raw = str((Path(tmp) / "model.onnx").resolve())
        done = mindspore_format.driver().call("mindir_to_onnx", path=path, inputs=inputs, out=raw)
        return _finish(raw, out, done, "MindIR loaded as nn.GraphCell (graph mode)", options)
