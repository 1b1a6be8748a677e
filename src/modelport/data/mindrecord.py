"""MindRecord files: MindSpore's dataset format (rows of named fields), not a model format.

A MindRecord file ``NAME.mindrecord`` comes with its index ``NAME.mindrecord.db`` beside it, and
its header names the file (MindSpore refuses a renamed one). modelport reads it with
``mindspore.mindrecord.FileReader`` and writes it with ``FileWriter``, in the `mindspore`
toolchain; the arrays cross as .npz files. The mapping to modelport's arrays: row ``i`` of the
file is index ``i`` of every array's axis 0, so a field of shape ``3x32x32`` over ``N`` rows is an
array of ``N x 3 x 32 x 32`` (a scalar field is an array of ``N``). MindRecord keeps int32, int64,
float32 and float64 (and bytes/string fields, which modelport skips when it reads): narrower
ints, bools and float16 are widened when written (the report says which).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from modelport.errors import BadInputError, UnsupportedError

__all__ = ["SUFFIX", "is_mindrecord", "read_mindrecord", "read_with_info", "write_mindrecord"]

SUFFIX = ".mindrecord"
TOOLCHAIN = "mindspore"
OPS = "mindspore_ops.py"
_FIELD = re.compile(r"^[A-Za-z0-9_]+$")


def is_mindrecord(path: str | Path) -> bool:
    return str(path).lower().endswith(SUFFIX)


def _driver():
    from modelport.toolchains.process import DriverProcess

    return DriverProcess.shared(TOOLCHAIN, OPS)


def _check_readable(path: Path) -> None:
    if not path.is_file():
        raise BadInputError("no such MindRecord file" if not path.exists() else "not a file", path=path)
    if path.stat().st_size == 0:
        raise BadInputError("file is empty", path=path)
    index = path.with_name(path.name + ".db")
    if not index.is_file():
        raise BadInputError(f"its index {index.name} is missing (MindRecord keeps it beside the file)", path=path)


def read_with_info(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays of a MindRecord file (one per field, rows on axis 0) and what the reader said
    (``rows``, ``fields``: the schema, ``skipped``: bytes/string fields)."""
    p = Path(path).resolve()
    _check_readable(p)
    tmp = tempfile.mkdtemp(prefix="modelport-mindrecord-")
    try:
        out = os.path.join(tmp, "rows.npz")
        try:
            info = _driver().call("mindrecord_read", path=str(p), out=out)
        except BadInputError as exc:
            raise BadInputError(str(exc).removeprefix("mindspore toolchain: "), path=path) from None
        with np.load(out, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not arrays:
        skipped = f" (only bytes/string fields: {info.get('skipped')})" if info.get("skipped") else ""
        raise BadInputError(f"the MindRecord file has no numeric field{skipped}", path=path)
    return arrays, info


def read_mindrecord(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a MindRecord file: one per numeric field, its rows stacked on axis 0."""
    return read_with_info(path)[0]


def write_mindrecord(arrays: dict[str, np.ndarray], out: str | Path) -> dict:
    """Write arrays as MindRecord rows (row i: every array's [i]); ``out`` and ``out.db`` appear together
    or not at all. Returns the writer's ``rows``, ``fields`` (the schema) and ``widened`` dtypes."""
    dest = Path(out).resolve()
    if not is_mindrecord(dest):
        raise BadInputError(f"a MindRecord file's name ends in {SUFFIX}", path=out)
    if not dest.parent.is_dir():
        raise BadInputError("its directory does not exist", path=out)
    if not arrays:
        raise BadInputError("no arrays to write", path=out)
    bad = [k for k in arrays if not _FIELD.match(k)]
    if bad:
        raise BadInputError(f"MindRecord field names are letters, digits and _ only: {bad}", path=out)
    lengths = {}
    for k, a in arrays.items():
        a = np.asarray(a)
        if a.ndim == 0:
            raise BadInputError(f"array {k!r} is a scalar: MindRecord rows are axis 0 of every array", path=out)
        lengths[k] = a.shape[0]
        if a.dtype.kind not in "biuf" or a.dtype.itemsize > 8:
            raise UnsupportedError(f"array {k!r} has dtype {a.dtype.name}, which MindRecord cannot hold "
                                   "(it keeps int32, int64, float32, float64; narrower ints, bool, float16 are widened)",
                                   path=out)
    if len(set(lengths.values())) != 1:
        raise BadInputError(f"the arrays have different numbers of rows (axis 0): {lengths}", path=out)
    if next(iter(lengths.values())) == 0:
        raise BadInputError("the arrays have no rows", path=out)
    tmp = tempfile.mkdtemp(prefix="modelport-mindrecord-")
    try:
        src = os.path.join(tmp, "rows.npz")
        np.savez(src, **{k: np.asarray(v) for k, v in arrays.items()})
        return _driver().call("mindrecord_write", src=src, out=str(dest))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
