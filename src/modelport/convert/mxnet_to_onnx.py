"""Apache MXNet -> ONNX with ``mx.onnx.export_model``, in the `mxnet` toolchain.

mx.onnx runs in the toolchain's Python (MXNet 1.9.1 needs numpy < 2) and writes opset 13, the
newest it has translations for. Here the file is tidied for the hub: the weights it also lists
as graph inputs are made plain initializers (onnxruntime cannot fold them otherwise), graph
outputs get the MXNet outputs' names, a dynamic leading dim is called ``batch``, and the model
is checked (and moved to ``--opset`` when one is asked for) with onnx.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import BadInputError, UnsupportedError
from modelport.formats import mxnet_format

EXPORT_OPSET = 13


def _tidy(model, output_names: list[str]) -> None:
    """Dead initializers dropped, live ones out of the graph inputs; outputs named as MXNet names them; dynamic dim 0 -> batch."""
    graph = model.graph
    used = {v for n in graph.node for v in n.input} | {o.name for o in graph.output}
    live = [t for t in graph.initializer if t.name in used]  # a training label's zeros feed nothing
    if len(live) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(live)
    weights = {t.name for t in graph.initializer}
    keep = [vi for vi in graph.input if vi.name not in weights and vi.name in used]
    del graph.input[:]
    graph.input.extend(keep)
    if len(output_names) == len(graph.output) and len(set(output_names)) == len(output_names):
        taken = {v for n in graph.node for v in n.input} | {i.name for i in graph.input} | weights
        for vi, new in zip(graph.output, output_names):
            old = vi.name
            if old == new or new in taken:
                continue
            for node in graph.node:
                node.output[:] = [new if o == old else o for o in node.output]
            vi.name = new
    for vi in [*graph.input, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value") and not dims[0].dim_param:
            dims[0].dim_param = "batch"


@register("mxnet", "onnx", "mx.onnx.export_model")
def mxnet_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    import onnx

    symbol, params = mxnet_format.model_files(src, options.weights)
    sig = mxnet_format.signature_of(symbol, params, options.inputs, src)
    missing = [s.name for s in sig.inputs if s.shape is None]
    if missing:
        raise BadInputError(f"an MXNet symbol keeps no input shapes: give them with --input "
                            f"{missing[0]}:1x3x224x224:float32 (inputs: {', '.join(s.name for s in sig.inputs)})",
                            path=src)
    specs = mxnet_format.spec_dicts(sig.inputs)
    if not options.dynamic_batch:  # --static-batch: the batch given with --input (else 1) is frozen
        given = [s.shape[0] if s.shape and isinstance(s.shape[0], int) else 1 for s in options.inputs]
        for i, spec in enumerate(specs):
            spec["shape"][0] = given[i] if i < len(given) else 1
    with tempfile.TemporaryDirectory(prefix=".mx2onnx-", dir=Path(out).parent) as tmp:
        raw = str(Path(tmp) / "model.onnx")
        done = mxnet_format.driver().call("to_onnx", symbol=symbol, params=params, out=raw, inputs=specs,
                                          dynamic_batch=options.dynamic_batch)
        proto = onnx.load(raw)
    _tidy(proto, sig.output_names)
    opset = EXPORT_OPSET
    if options.opset and options.opset != EXPORT_OPSET:
        from onnx import version_converter

        try:
            proto = version_converter.convert_version(proto, options.opset)
        except Exception as exc:  # onnx's converter raises RuntimeError/ValueError on an op it cannot move
            raise UnsupportedError(f"cannot move mx.onnx's opset {EXPORT_OPSET} output to opset {options.opset}: "
                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
        opset = options.opset
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise UnsupportedError(f"mx.onnx wrote an invalid ONNX model: {str(exc).strip().splitlines()[0]}") from None
    onnx.save(proto, out)
    versions = done["versions"]
    return ConverterResult(
        tool="mx.onnx (mxnet toolchain)",
        versions=tuple((k, versions[k]) for k in ("mxnet", "onnx", "numpy") if k in versions),
        detail=f"symbol {Path(symbol).name} + {Path(params).name}; opset {opset}",
    )
