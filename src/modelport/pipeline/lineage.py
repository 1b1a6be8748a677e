"""The one lineage writer: an output's lineage is its input's lineage plus the steps that made it.

ONNX models keep it in the metadata property ``modelport.lineage``; directories (a generated
PyTorch model, a SavedModel) in ``modelport_lineage.json``. Other single files (.tflite, .pt2,
.keras) have no place for it: the report still carries it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from modelport.artifact import StepRecord

__all__ = ["LINEAGE_KEY", "LINEAGE_FILE", "read_lineage", "write_lineage"]

LINEAGE_KEY = "modelport.lineage"
LINEAGE_FILE = "modelport_lineage.json"


def _records(text: str) -> tuple[StepRecord, ...]:
    try:
        items = json.loads(text)
        fields = {f.name for f in dataclasses.fields(StepRecord)}
        return tuple(StepRecord(**{k: (tuple(tuple(v) for v in val) if k == "versions" else val)
                                   for k, val in item.items() if k in fields}) for item in items)
    except (ValueError, TypeError, AttributeError):
        return ()  # unreadable lineage is no lineage: it is replaced by what this run knows


def read_lineage(path: str | Path) -> tuple[StepRecord, ...]:
    """The lineage recorded in a model file or directory, () when there is none."""
    p = Path(path)
    if p.is_dir():
        f = p / LINEAGE_FILE
        return _records(f.read_text()) if f.is_file() else ()
    if p.suffix == ".onnx" and p.is_file():
        import onnx

        try:
            model = onnx.load(str(p), load_external_data=False)
        except Exception:  # noqa: BLE001  (not readable as ONNX: no lineage to inherit)
            return ()
        return next((_records(prop.value) for prop in model.metadata_props if prop.key == LINEAGE_KEY), ())
    return ()


def write_lineage(path: str | Path, fmt: str, lineage: tuple[StepRecord, ...]) -> bool:
    """Record ``lineage`` in the model at ``path`` (replacing what was there); False when the format has no place."""
    p = Path(path)
    payload = json.dumps([dataclasses.asdict(s) for s in lineage])
    if fmt == "onnx" and p.is_file():
        import onnx

        model = onnx.load(str(p), load_external_data=False)
        for prop in [m for m in model.metadata_props if m.key == LINEAGE_KEY]:
            model.metadata_props.remove(prop)
        model.metadata_props.add(key=LINEAGE_KEY, value=payload)
        onnx.save(model, str(p))
        return True
    if p.is_dir():
        (p / LINEAGE_FILE).write_text(payload)
        return True
    return False
