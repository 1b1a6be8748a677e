"""PaddlePaddle -> ONNX with paddle2onnx, in the `paddle` toolchain.

paddle2onnx runs in the toolchain's Python (it pins onnx 1.17) and writes the ONNX file; here
the graph outputs get Paddle's output names (paddle2onnx writes ``fetch_name_N`` for a legacy
``.pdmodel``'s outputs) and the leading dynamic dim is called ``batch``. A ``paddle.nn.Layer``
file (format ``paddle-layer``) is first saved as an inference model with ``paddle.jit.save``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.formats import paddle_format, paddle_layer

DEFAULT_OPSET = 17


def _fix_names(model, names: list[str]) -> None:
    """Graph outputs renamed to the Paddle outputs' names; dynamic leading dims of the IO called `batch`."""
    graph = model.graph
    if len(names) == len(graph.output) and len(set(names)) == len(names):
        taken = {v for n in graph.node for v in n.input} | {i.name for i in graph.input}
        for vi, new in zip(graph.output, names):
            old = vi.name
            if old == new or new in taken:
                continue
            for node in graph.node:
                node.output[:] = [new if o == old else o for o in node.output]
            vi.name = new
    lead = {vi.type.tensor_type.shape.dim[0].dim_param for vi in [*graph.input, *graph.output]
            if len(vi.type.tensor_type.shape.dim) and vi.type.tensor_type.shape.dim[0].HasField("dim_param")}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in lead:
                d.dim_param = "batch"


def _to_onnx(model: str, params: str, out: str, options: ConvertOptions, detail: str) -> ConverterResult:
    import onnx

    driver = paddle_format.driver()
    sig = paddle_format.signature_of(model, params)
    opset = options.opset or DEFAULT_OPSET
    with tempfile.TemporaryDirectory(prefix=".paddle2onnx-", dir=Path(out).parent) as tmp:
        raw = str(Path(tmp) / "model.onnx")
        done = driver.call("to_onnx", model=model, params=params, out=raw, opset=opset)
        proto = onnx.load(raw)
    _fix_names(proto, sig.output_names)
    onnx.save(proto, out)
    versions = done["versions"]
    got = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opset)
    return ConverterResult(
        tool="paddle2onnx (paddle toolchain)",
        versions=tuple((k, versions[k]) for k in ("paddlepaddle", "paddle2onnx", "onnx") if k in versions),
        detail=f"{detail}; opset {got}",
    )


@register("paddle", "onnx", "paddle2onnx")
def paddle_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    model, params = paddle_format.model_files(src, options.weights)
    kind = "PIR program (.json)" if model.endswith(".json") else "legacy program (.pdmodel)"
    return _to_onnx(model, params, out, options, kind)


@register("paddle-layer", "onnx", "paddle.jit.save + paddle2onnx")
def paddle_layer_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    with tempfile.TemporaryDirectory(prefix=".paddle-jit-", dir=Path(out).parent) as tmp:
        model, params = paddle_layer.export(src, options.weights, options.inputs, tmp)
        return _to_onnx(model, params, out, options, "paddle.nn.Layer saved with paddle.jit.save")
