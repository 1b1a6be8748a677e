"""`modelport data convert`: .npz <-> .mindrecord, the rows on axis 0 of every array."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from modelport.data.mindrecord import is_mindrecord, read_with_info, write_mindrecord
from modelport.errors import BadInputError, UnsupportedError

__all__ = ["DataConvertReport", "convert_data"]


@dataclasses.dataclass(frozen=True)
class DataConvertReport:
    src: str
    out: str
    src_format: str
    dst_format: str
    rows: int
    fields: tuple[tuple[str, str, tuple[int, ...]], ...]  # name, dtype, per-row shape
    widened: tuple[tuple[str, str, str], ...] = ()  # name, from dtype, to dtype (MindRecord keeps 4 dtypes)
    skipped: tuple[str, ...] = ()  # bytes/string fields of a MindRecord file (no array to make of them)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        from modelport.artifact import to_jsonable

        return to_jsonable(self)


def _kind(path: str | Path) -> str:
    if is_mindrecord(path):
        return "mindrecord"
    if str(path).lower().endswith(".npz"):
        return "npz"
    raise UnsupportedError("unknown data format (modelport converts .npz and .mindrecord)", path=path)


def _fields(arrays: dict[str, np.ndarray]) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    return tuple((k, a.dtype.name, tuple(int(d) for d in a.shape[1:])) for k, a in arrays.items())


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise BadInputError("no such data file", path=path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            from modelport.errors import UnsafeError

            raise UnsafeError("refusing to load pickled arrays from an .npz", path=path) from None
        raise BadInputError(f"unreadable .npz ({exc})", path=path) from None
    except Exception as exc:
        raise BadInputError(f"unreadable .npz ({type(exc).__name__}: {exc})", path=path) from None


def _save_npz(arrays: dict[str, np.ndarray], out: Path) -> None:
    if not out.parent.is_dir():
        raise BadInputError("its directory does not exist", path=out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".npz", dir=out.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def convert_data(src: str | Path, out: str | Path) -> DataConvertReport:
    """Convert a data file between .npz and .mindrecord (by their suffixes)."""
    start = time.perf_counter()
    a, b = _kind(src), _kind(out)
    if a == b:
        raise BadInputError(f"{src} and {out} are both .{a}: nothing to convert")
    if Path(src).resolve() == Path(out).resolve():
        raise BadInputError("the output is the input", path=out)
    if a == "npz":
        arrays = _load_npz(Path(src))
        info = write_mindrecord(arrays, out)
        widened = tuple((k, f, t) for k, (f, t) in sorted(dict(info.get("widened", {})).items()))
        rows, skipped = int(info["rows"]), ()
    else:
        arrays, info = read_with_info(src)
        _save_npz(arrays, Path(out))
        widened, rows, skipped = (), int(info["rows"]), tuple(info.get("skipped", ()))
    return DataConvertReport(str(src), str(out), a, b, rows, _fields(arrays), widened, skipped,
                             round(time.perf_counter() - start, 2))
