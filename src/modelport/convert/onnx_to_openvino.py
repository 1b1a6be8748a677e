"""ONNX -> OpenVINO IR with openvino's own ONNX frontend (``ov.convert_model``).

The IR is written with float32 weights (``save_model`` would compress them to float16 by
default): as ``OUT`` + ``OUT``'s ``.bin`` beside it when ``OUT`` is an ``.xml`` path, else as
the directory ``OUT`` holding ``model.xml`` + ``model.bin``.

When OpenVINO cannot convert the graph as it is, it is tried at the user's static ``--input``
shapes, and with each ``If`` that the user's input values decide (``--input sr=16000``, or ``sr`` in
``--inputs``) folded to its taken branch (``modelport.convert.if_fold``); what was frozen or folded
is in the step's detail, and a fold is also a warning: the IR then holds only for those values.
"""

from __future__ import annotations

import re
import tempfile
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


def _read(ov, src: str):
    """``ov.convert_model``; above the external-data threshold ``Core.read_model``, which memory-maps the external
    data (convert_model holds a second copy of the weights: 2.1x their bytes on a 2 GiB model, read_model 1.0x)."""
    from modelport.formats import onnx_data

    return ov.Core().read_model(src) if onnx_data.is_large(src) else ov.convert_model(src)


@register("onnx", "openvino", "openvino")
def onnx_to_openvino(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    ov = require("openvino", "openvino", "ONNX -> OpenVINO")
    frozen = _given_shapes(options)
    note, warnings = "", ()
    with tempfile.TemporaryDirectory(prefix="modelport-ov-") as tmp:
        try:
            model = _read(ov, src)
        except Exception as exc:
            first = _reason(exc)
            # A graph whose ranks OpenVINO cannot infer (silero's Conv after an inlined If) often converts
            # at the user's static shapes; an If on an input the user fixed (sr=16000) folds to its branch.
            tries: list[tuple[str, str]] = [(src, "frozen")] if frozen else []
            folded, folds = _fold(src, options, Path(tmp))
            if folded is not None:
                tries = [*tries, (folded, "dynamic"), *([(folded, "frozen")] if frozen else [])]
            if not tries:
                raise ExportError(f"openvino cannot convert the model: {first}", path=src) from None
            failures = []
            for path, shapes in tries:
                try:
                    model = ov.convert_model(path, input=frozen) if shapes == "frozen" else ov.convert_model(path)
                    break
                except Exception as exc2:
                    failures.append(("after folding: " if path != src else "at the given input shapes: ") + _reason(exc2))
            else:
                hint = "" if folds or not _has_if(src) else (
                    "; an If whose condition reads an input converts once that input is fixed "
                    "(--input NAME=VALUE, or NAME in --inputs)")
                raise ExportError(f"openvino cannot convert the model: {first}; " + "; ".join(
                    dict.fromkeys(failures)) + hint, path=src) from None
            parts = []
            if shapes == "frozen":
                given = ", ".join(f"{n}={'x'.join(map(str, s)) or 'scalar'}" for n, s in frozen)
                parts.append(f"input shapes frozen at {given}")
            if path != src:
                parts.extend(f.describe() for f in folds)
                warnings = tuple(f"{f.describe()}: the OpenVINO model holds only for these values" for f in folds)
            note = "; " + "; ".join(parts) + f" (as given, openvino failed: {first[:160]})"
        xml = Path(out) if Path(out).suffix.lower() == ".xml" else Path(out) / MODEL_FILE
        xml.parent.mkdir(parents=True, exist_ok=True)
        saved = xml.with_suffix(".xml")  # save_model wants the suffix in lower case; it writes the .bin beside
        ov.save_model(model, str(saved), compress_to_fp16=False)
    if saved != xml:
        saved.replace(xml)
    return ConverterResult(tool="openvino.convert_model", versions=(("openvino", ov.get_version()),),
                           detail="float32 weights" + note, warnings=warnings)


def _has_if(src: str) -> bool:
    import onnx

    try:
        return any(n.op_type == "If" for n in onnx.load(src, load_external_data=False).graph.node)
    except Exception:
        return False


def _fold(src: str, options: ConvertOptions, tmp: Path) -> tuple[str | None, list]:
    """``src`` with the Ifs that the user's input values decide folded (a file in ``tmp``), and the folds;
    (None, []) when there is nothing to fold (or the weights are external: they are not copied)."""
    import onnx

    from modelport.convert.if_fold import fold_ifs, given_values
    from modelport.formats import onnx_data

    if onnx_data.file_has_external(src):
        return None, []
    model = onnx.load(src)
    names = [v.name for v in model.graph.input]
    values = given_values(names, options.inputs, options.get("input_values"))
    folded, folds = fold_ifs(model, values)
    if not folds:
        return None, []
    path = tmp / "folded.onnx"
    onnx.save(folded, str(path))
    return str(path), folds


def _given_shapes(options: ConvertOptions) -> list[tuple[str, list[int]]]:
    """The ``--input`` specs whose every dim is a size, as convert_model's ``input``: [(name, shape)]."""
    return [(s.name, [int(d) for d in s.shape]) for s in options.inputs
            if s.shape is not None and all(isinstance(d, int) and d >= 0 for d in s.shape)]
