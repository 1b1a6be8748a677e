"""ONNX -> OpenVINO IR with openvino's own ONNX frontend (``ov.convert_model``).

The IR is written as ``OUT/model.xml`` + ``OUT/model.bin`` with float32 weights
(``save_model`` would compress them to float16 by default).
"""

from __future__ import annotations

import re
from pathlib import Path

from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import ExportError
from modelport.formats.base import require
from modelport.formats.openvino_format import MODEL_FILE

__all__ = ["onnx_to_openvino"]


def _reason(exc: Exception) -> str:
    """OpenVINO's conversion errors are long; keep the lines that name ops."""
    lines = [ln.strip().lstrip("- ").strip() for ln in str(exc).splitlines() if ln.strip()]
    named = [ln for ln in lines if re.search(r"No conversion rule|operation", ln, re.I)]
    return " ".join((named or lines[-1:] or [type(exc).__name__])[:3])[:300]


@register("onnx", "openvino", "openvino")
def onnx_to_openvino(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    ov = require("openvino", "openvino", "ONNX -> OpenVINO")
    try:
        model = ov.convert_model(src)
    except Exception as exc:
        raise ExportError(f"openvino cannot convert the model: {_reason(exc)}", path=src) from None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / MODEL_FILE), compress_to_fp16=False)
    return ConverterResult(tool="openvino.convert_model", versions=(("openvino", ov.get_version()),),
                           detail="float32 weights")
