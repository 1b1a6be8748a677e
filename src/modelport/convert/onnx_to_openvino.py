"""ONNX -> OpenVINO IR with openvino's own ONNX frontend (``ov.convert_model``).

The IR is written with float32 weights (``save_model`` would compress them to float16 by
default): as ``OUT`` + ``OUT``'s ``.bin`` beside it when ``OUT`` is an ``.xml`` path, else as
the directory ``OUT`` holding ``model.xml`` + ``model.bin``.
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
    xml = Path(out) if Path(out).suffix.lower() == ".xml" else Path(out) / MODEL_FILE
    xml.parent.mkdir(parents=True, exist_ok=True)
    saved = xml.with_suffix(".xml")  # save_model wants the suffix in lower case; it writes the .bin beside
    ov.save_model(model, str(saved), compress_to_fp16=False)
    if saved != xml:
        saved.replace(xml)
    return ConverterResult(tool="openvino.convert_model", versions=(("openvino", ov.get_version()),),
                           detail="float32 weights")
