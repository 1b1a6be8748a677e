"""ONNX -> PyTorch with modelport's own compiler (modelport.to_torch)."""

from __future__ import annotations

from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import UnsupportedError


@register("onnx", "torch", "modelport onnx2torch")
def onnx_to_torch(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    import os

    from modelport.formats.base import require

    require("torch", "torch", "ONNX -> PyTorch")
    from modelport import to_torch
    from modelport.formats.onnx_format import load_model

    model = load_model(src, load_external_data=False)  # external data is memory-mapped by the compiler
    os.makedirs(out, exist_ok=True)
    try:
        result = to_torch.convert(model, out, base_dir=os.path.dirname(os.path.abspath(src)), source_path=src)
    except to_torch.UnsupportedOpsError as exc:
        items = exc.unsupported
        listed = ", ".join(f"{u.op_type}-{u.opset} ({u.node_name or '<unnamed>'}: {u.reason})" for u in items[:10])
        more = f" and {len(items) - 10} more" if len(items) > 10 else ""
        raise UnsupportedError(f"{len(items)} unsupported node(s) for torch: {listed}{more}", path=src) from None
    import torch

    return ConverterResult(tool="modelport onnx2torch", versions=(("torch", torch.__version__),),
                           detail=f"{getattr(result, 'n_nodes', '?')} nodes", warnings=tuple(getattr(result, "warnings", ())))
