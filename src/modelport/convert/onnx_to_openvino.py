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
    named = [ln for ln in lines if re.search(r"No conversion rule|Conversion is failed for|operation", ln, re.I)
             and "detailed log" not in ln]
    return " ".join((named or lines[-1:] or [type(exc).__name__])[:3])[:300]


@register("onnx", "openvino", "openvino")
def onnx_to_openvino(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    ov = require("openvino", "openvino", "ONNX -> OpenVINO")
    frozen = _given_shapes(options)
    note = ""
    try:
        model = ov.convert_model(src)
    except Exception as exc:
        if not frozen:
            raise ExportError(f"openvino cannot convert the model: {_reason(exc)}", path=src) from None
        # A graph whose ranks OpenVINO cannot infer (silero's Conv after an inlined If) often converts
        # at the user's static shapes.
        try:
            model = ov.convert_model(src, input=frozen)
        except Exception as exc2:
            raise ExportError(f"openvino cannot convert the model: {_reason(exc)}; nor at the given input shapes: "
                              f"{_reason(exc2)}", path=src) from None
        shapes = ", ".join(f"{n}={'x'.join(map(str, s)) or 'scalar'}" for n, s in frozen)
        note = f"; input shapes frozen at {shapes} (dynamic: {_reason(exc)[:160]})"
    xml = Path(out) if Path(out).suffix.lower() == ".xml" else Path(out) / MODEL_FILE
    xml.parent.mkdir(parents=True, exist_ok=True)
    saved = xml.with_suffix(".xml")  # save_model wants the suffix in lower case; it writes the .bin beside
    ov.save_model(model, str(saved), compress_to_fp16=False)
    if saved != xml:
        saved.replace(xml)
    return ConverterResult(tool="openvino.convert_model", versions=(("openvino", ov.get_version()),),
                           detail="float32 weights" + note)


def _given_shapes(options: ConvertOptions) -> list[tuple[str, list[int]]]:
    """The ``--input`` specs whose every dim is a size, as convert_model's ``input``: [(name, shape)]."""
    return [(s.name, [int(d) for d in s.shape]) for s in options.inputs
            if s.shape is not None and all(isinstance(d, int) and d >= 0 for d in s.shape)]
