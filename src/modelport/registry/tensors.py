"""A model as a skeleton plus tensors, and its byte-identical rebuild.

``decompose`` finds the byte range of every tensor in a model's files, stores each range as a
blob and each file with those ranges cut out (its *skeleton*) as another blob, and returns a
JSON-able *manifest*. ``rebuild`` splices the ranges back into the skeletons at their offsets,
so the files it writes are byte-identical to the ones decomposed by construction (and checked:
every file written is hashed and compared with the checksum recorded for it, see *Checksums*).

Where the byte ranges come from (found from each file's content, whatever ``fmt`` says):

==================  ===========================================================================
ONNX                every TensorProto's ``raw_data`` (and packed ``float_data``/``double_data``)
                    located by walking the protobuf wire format: initializers, Constant
                    attributes, sparse initializers, subgraphs, functions; external data files
                    (``location``/``offset``/``length``)
safetensors         the JSON header's ``data_offsets`` (a generated torch directory is
                    ``model.py`` + ``weights.safetensors`` + JSON: the same rule per file)
Keras               HDF5 datasets stored contiguous (``h5py`` ``get_offset``): ``.weights.h5``,
                    legacy ``.h5``, and the ``.h5`` member of a ``.keras`` zip when it is stored
                    uncompressed; a compressed member is one segment (noted in the manifest)
TFLite              the flatbuffer's ``Model.buffers``: data vectors, and the offset/size
                    buffers of models over 2 GiB
OpenVINO            the ``.xml``'s Const layers (offset, size, element_type, shape) into the ``.bin``
torch zips          stored ``data/`` members of TorchScript and ``.pt2`` archives (raw bytes)
anything else       the whole file is one blob (SavedModel variables, unknown files): still
                    deduplicated by content
==================  ===========================================================================

A tensor's identity is ``tensor_digest(dtype, shape, blob)`` with ``blob = sha256(bytes)``: two
tensors with equal bytes share one blob whatever their dtype or shape. Tensors under
``INLINE_MAX`` bytes are kept in the manifest (base64) instead of as blobs of their own. A
tensor whose bytes are a transpose of a tensor already stored (a Keras HWIO kernel and the ONNX
OIHW one, a Dense kernel and a Linear weight) is stored as ``{"of": blob, "shape", "perm"}``:
``np.transpose(of.reshape(shape), perm)`` is its bytes, checked exactly before it is chosen.
Candidates come from ``known(dtype, numel)`` (the store's index) and from the tensors stored
earlier in the same call.

Manifest (version 1)::

    {"manifest": 1, "format": "onnx", "kind": "file" | "dir", "dirs": [...] (kind dir),
     "files": [{"path": "" | "rel/path", "size": N, "sha256": "...", "blake3": "...", "mode": 0o644,
                "method": "onnx" | "safetensors" | ... | "whole", "notes": [...] (optional),
                "skeleton": "<blob>",
                "segments": [{"offset", "length", "key", "dtype", "shape", "digest",
                              "blob": "<blob>" | null, "inline": "<base64>" (optional),
                              "transform": {"of", "shape", "perm"} (optional)}]}]}

For kind ``file`` the entry with path ``""`` is the model file itself; any other entry is a
companion (ONNX external data, an OpenVINO ``.bin``) at that path relative to the model file's
directory. For kind ``dir`` paths are relative to the directory.

Checksums. A file's ``sha256`` is its identity (``files_sha256`` of a version is made of them) and
every blob is named by the SHA-256 of its bytes (``fsck`` re-hashes every blob with it). To check
a rebuild at copy speed, ``decompose`` also records each file's BLAKE3 (``blake3``; multithreaded
and SIMD, several times faster than SHA-256 on one core) in the same pass that reads the file.
``rebuild`` writes the pieces of a file straight from maps of their blobs (one copy, by the
kernel) while a thread hashes each piece behind the write, and compares the BLAKE3 of every file
with the recorded one; a manifest written before ``blake3`` was recorded (or a Python without the
``blake3`` module) is checked with the file's SHA-256 instead. When a file's checksum
does not match, every blob it uses is re-hashed with SHA-256 and the first damaged one is named.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import itertools
import json
import math
import mmap
import os
import queue
import re
import shutil
import stat
import struct
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from modelport.errors import BadInputError, CheckFailedError
from modelport.registry import blobs as blobs_mod
from modelport.registry.blobs import BlobCorruptError, BlobError, BlobMissingError, BlobStore

__all__ = [
    "Known",
    "MANIFEST_VERSION",
    "INLINE_MAX",
    "decompose",
    "rebuild",
    "manifest_blobs",
    "manifest_tensors",
    "tensor_bytes",
    "tensor_digest",
    "ManifestError",
]

MANIFEST_VERSION = 1
INLINE_MAX = 64  # tensors smaller than this stay in the manifest
TRANSFORM_MAX = 256 << 20  # the largest tensor checked for being a transpose of a stored one
MAX_CANDIDATES = 32

Known = Callable[[str, int], Iterable[tuple[str, tuple[int, ...]]]]

ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
    "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1, "complex64": 8,
    "complex128": 16, "float8e4m3fn": 1, "float8e4m3fnuz": 1, "float8e5m2": 1, "float8e5m2fnuz": 1,
    "float8e8m0": 1,
}
ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64",
    15: "complex128", 16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2",
    20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1", 24: "float8e8m0",
}
SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
    "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8e4m3fn", "F8_E5M2": "float8e5m2",
    "F8_E8M0": "float8e8m0", "C64": "complex64",
}
TFLITE_DTYPES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
    7: "int16", 8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64",
    13: "resource", 14: "variant", 15: "uint32", 16: "uint16", 17: "int4", 18: "bfloat16",
}
OPENVINO_DTYPES = {
    "f64": "float64", "f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64",
    "i32": "int32", "i16": "int16", "i8": "int8", "u64": "uint64", "u32": "uint32", "u16": "uint16",
    "u8": "uint8", "boolean": "bool", "f8e4m3": "float8e4m3fn", "f8e5m2": "float8e5m2",
}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ManifestError(CheckFailedError):
    """A manifest that cannot be what decompose wrote (exit 1)."""


def fast_hasher():
    """A BLAKE3 hasher using every core (None when the ``blake3`` module is missing: then no
    ``blake3`` is recorded and files are checked by their SHA-256)."""
    try:
        import blake3
    except ImportError:
        return None
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def tensor_digest(dtype: str, shape: Iterable[int] | None, blob: str) -> str:
    """sha256 of ``dtype|d0,d1,...|blob``: a tensor's identity, whatever file it sits in."""
    dims = "?" if shape is None else ",".join(str(int(d)) for d in shape)
    return hashlib.sha256(f"{dtype}|{dims}|{blob}".encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Spans: where a tensor's bytes are in a file


@dataclass(frozen=True)
class Span:
    offset: int
    length: int
    key: str
    dtype: str
    shape: tuple[int, ...] | None


@dataclass
class FilePlan:
    """What the scanners found for one file: the method, its tensor spans, notes."""

    method: str = "whole"
    spans: list[Span] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _numel(shape: tuple[int, ...] | None) -> int | None:
    return None if shape is None else math.prod(shape)


def _expected_nbytes(dtype: str, shape: tuple[int, ...] | None) -> int | None:
    n = _numel(shape)
    size = ITEMSIZE.get(dtype)
    return None if n is None or size is None else n * size


# ---------------------------------------------------------------------------------------------
# ONNX: the protobuf wire format


class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint too long")


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field; for varints start is the value."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if wt == 0:
            value, pos = _varint(buf, pos, end)
            yield num, wt, value, pos
            continue
        if wt == 1:
            n = 8
        elif wt == 5:
            n = 4
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
        else:
            raise _Malformed(f"unsupported wire type {wt}")
        if pos + n > end:
            raise _Malformed("field runs past its message")
        yield num, wt, pos, pos + n
        pos += n


def _packed_varints(buf, start: int, end: int) -> list[int]:
    out, pos = [], start
    while pos < end:
        v, pos = _varint(buf, pos, end)
        out.append(v)
    return out


def _text(buf, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", "replace")


@dataclass
class _OnnxScan:
    spans: list[Span] = field(default_factory=list)
    external: list[tuple[str, int, int | None, str, str, tuple[int, ...]]] = field(default_factory=list)


def _onnx_tensor(buf, start: int, end: int, fallback_key: str, scan: _OnnxScan) -> None:
    dims: list[int] = []
    data_type = 0
    name = ""
    payload: tuple[int, int] | None = None
    packed: dict[int, tuple[int, int]] = {}
    location = 0
    ext: dict[str, str] = {}
    for num, wt, a, b in _fields(buf, start, end):
        if num == 1:
            dims.extend(_packed_varints(buf, a, b) if wt == 2 else [a])
        elif num == 2 and wt == 0:
            data_type = a
        elif num == 8 and wt == 2:
            name = _text(buf, a, b)
        elif num == 9 and wt == 2:
            payload = (a, b)
        elif num in (4, 10) and wt == 2:
            packed[num] = (a, b)
        elif num == 14 and wt == 0:
            location = a
        elif num == 13 and wt == 2:
            entry = {n: _text(buf, x, y) for n, w, x, y in _fields(buf, a, b) if w == 2}
            ext[entry.get(1, "")] = entry.get(2, "")
    dtype = ONNX_DTYPES.get(data_type, f"onnx:{data_type}")
    shape = tuple(int(d) for d in dims)
    key = name or fallback_key
    if location == 1:
        try:
            offset = int(ext.get("offset", "0") or 0)
            length = int(ext["length"]) if ext.get("length") else None
        except ValueError:
            raise _Malformed(f"tensor {key!r}: external data offset/length are not integers") from None
        scan.external.append((ext.get("location", ""), offset, length, key, dtype, shape))
        return
    if payload is None:  # typed fields: packed float_data (FLOAT) / double_data (DOUBLE) hold the raw bytes
        payload = packed.get(4) if data_type == 1 else packed.get(10) if data_type == 11 else None
    if payload is not None and payload[1] > payload[0]:
        scan.spans.append(Span(payload[0], payload[1] - payload[0], key, dtype, shape))


def _onnx_sparse(buf, start: int, end: int, key: str, scan: _OnnxScan) -> None:
    for num, wt, a, b in _fields(buf, start, end):
        if wt == 2 and num in (1, 2):
            _onnx_tensor(buf, a, b, f"{key}.{'values' if num == 1 else 'indices'}", scan)


def _onnx_node(buf, start: int, end: int, scan: _OnnxScan) -> None:
    outputs: list[str] = []
    name = ""
    attrs: list[tuple[int, int]] = []
    for num, wt, a, b in _fields(buf, start, end):
        if wt != 2:
            continue
        if num == 2:
            outputs.append(_text(buf, a, b))
        elif num == 3:
            name = _text(buf, a, b)
        elif num == 5:
            attrs.append((a, b))
    owner = (outputs[0] if outputs else "") or name
    for a, b in attrs:
        attr_name = ""
        for num, wt, x, y in _fields(buf, a, b):
            if wt != 2:
                continue
            if num == 1:
                attr_name = _text(buf, x, y)
            elif num in (5, 11):
                _onnx_tensor(buf, x, y, f"{owner}.{attr_name}", scan)
            elif num in (22, 23):
                _onnx_sparse(buf, x, y, f"{owner}.{attr_name}", scan)
            elif num in (6, 10):
                _onnx_graph(buf, x, y, scan)


def _onnx_graph(buf, start: int, end: int, scan: _OnnxScan) -> None:
    for num, wt, a, b in _fields(buf, start, end):
        if wt != 2:
            continue
        if num == 1:
            _onnx_node(buf, a, b, scan)
        elif num == 5:
            _onnx_tensor(buf, a, b, "initializer", scan)
        elif num == 15:
            _onnx_sparse(buf, a, b, "sparse_initializer", scan)


def _onnx_model(buf, size: int) -> _OnnxScan:
    scan = _OnnxScan()
    for num, wt, a, b in _fields(buf, 0, size):
        if wt != 2:
            continue
        if num == 7:
            _onnx_graph(buf, a, b, scan)
        elif num == 25:  # FunctionProto: node = 7
            for n, w, x, y in _fields(buf, a, b):
                if n == 7 and w == 2:
                    _onnx_node(buf, x, y, scan)
        elif num == 20:  # TrainingInfoProto: initialization = 1, algorithm = 2 (graphs)
            for n, w, x, y in _fields(buf, a, b):
                if n in (1, 2) and w == 2:
                    _onnx_graph(buf, x, y, scan)
    return scan


def _safe_relpath(rel: str, what: str, where: Path) -> str:
    p = PurePosixPath(rel.replace("\\", "/"))
    if not rel or p.is_absolute() or ".." in p.parts or re.match(r"[A-Za-z]:", rel):
        raise BadInputError(f"{what} {_shown(rel, quote=True)} is not a path inside the model's directory", path=where)
    return str(p)


def _shown(name: str, quote: bool = False) -> str:
    """A name read from the file, for a one-line message: escaped (quoted) unless plain, at most 120 characters of it."""
    if not quote and name.isprintable() and len(name) <= 120:
        return name
    return repr(name[:120]) + ("…" if len(name) > 120 else "")


def _scan_onnx(path: Path) -> tuple[FilePlan, dict[str, list[Span]]]:
    """Spans in the .onnx itself, and in each external data file (by location)."""
    with _mapped(path) as buf:
        try:
            scan = _onnx_model(buf, len(buf))
        except _Malformed as exc:
            return FilePlan(notes=[f"not parsed as ONNX ({exc}): stored whole"]), {}
    external: dict[str, list[Span]] = {}
    for location, offset, length, key, dtype, shape in scan.external:
        rel = _safe_relpath(location, "external data location", path)
        data = path.parent / rel
        if not data.is_file():
            raise BadInputError(f"missing external data file ({_shown(rel)})", path=path)
        if length is None:
            length = data.stat().st_size - offset
        external.setdefault(rel, []).append(Span(offset, length, key, dtype, shape))
    return FilePlan("onnx", scan.spans), external


@contextlib.contextmanager
def _mapped(path: Path):
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
            yield m


# ---------------------------------------------------------------------------------------------
# safetensors


def _bounded_json(data: bytes):
    """json.loads with nesting capped near 1000 levels (a RecursionError), whatever the process's recursion limit:
    past it the C parser overflows the C stack (a segfault) on ``[[[[...]]]]``."""
    import sys

    frame, depth = sys._getframe(), 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(min(old, depth + 1000))
    try:
        return json.loads(data)
    finally:
        sys.setrecursionlimit(old)


def _scan_safetensors(path: Path) -> FilePlan:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return FilePlan(notes=["not a safetensors file (too short): stored whole"])
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            return FilePlan(notes=["safetensors header size out of range: stored whole"])
        try:
            header = _bounded_json(fh.read(n))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return FilePlan(notes=["safetensors header is not JSON: stored whole"])
    if not isinstance(header, dict):
        return FilePlan(notes=["safetensors header is not an object: stored whole"])
    spans = []
    base = 8 + n
    for key, info in header.items():
        if key == "__metadata__" or not isinstance(info, dict):
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            continue
        dtype = SAFETENSORS_DTYPES.get(str(info.get("dtype")), f"safetensors:{info.get('dtype')}")
        if end > begin:
            spans.append(Span(base + begin, end - begin, key, dtype, shape))
    return FilePlan("safetensors", spans)


# ---------------------------------------------------------------------------------------------
# HDF5 (Keras .weights.h5, legacy .h5, the member of a .keras zip)


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of an open file from ``offset`` (for h5py)."""

    def __init__(self, fh, offset: int, length: int) -> None:
        self._fh, self._base, self._len, self._pos = fh, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = {0: pos, 1: self._pos + pos, 2: self._len + pos}[whence]
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self._len - self._pos))
        self._fh.seek(self._base + self._pos)
        data = self._fh.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _hdf5_spans(fileobj, base: int, prefix: str = "") -> list[Span]:
    import h5py
    import numpy as np

    spans: list[Span] = []

    def visit(name: str, obj) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        try:
            offset = obj.id.get_offset()
        except Exception:  # h5py raises for some layouts (compact, virtual)
            return
        dt = obj.dtype
        if offset is None or dt.byteorder == ">" or dt.kind not in "fiubc" or dt.fields is not None:
            return
        dtype = "bool" if dt.kind == "b" else np.dtype(dt).name
        nbytes = obj.id.get_storage_size()
        if nbytes <= 0 or nbytes != math.prod(obj.shape) * dt.itemsize:
            return
        if not _hdf5_bytes_match(fileobj, obj, offset, nbytes):
            return
        spans.append(Span(base + offset, nbytes, prefix + name, dtype, tuple(int(d) for d in obj.shape)))

    with h5py.File(fileobj, "r") as f:
        f.visititems(visit)
    return spans


def _hdf5_bytes_match(fileobj, dataset, offset: int, nbytes: int) -> bool:
    """The bytes at the offset h5py reports are the dataset's (its whole, or head and tail when large)."""
    import numpy as np

    if nbytes <= blobs_mod.CHUNK:
        expected = np.ascontiguousarray(dataset[()]).tobytes()
    else:  # the first elements in C order: index 0 on every axis but the last
        expected = np.ascontiguousarray(dataset[(0,) * (dataset.ndim - 1) + (slice(0, 1024),)]).tobytes()
    fileobj.seek(offset)
    return fileobj.read(len(expected)) == expected


def _scan_hdf5(path: Path) -> FilePlan:
    try:
        with open(path, "rb") as fh:
            return FilePlan("hdf5", _hdf5_spans(fh, 0))
    except ImportError:
        return FilePlan(notes=["h5py is not installed: stored whole"])
    except Exception as exc:  # h5py's errors for a damaged file are OSError/KeyError/ValueError
        return FilePlan(notes=[f"not parsed as HDF5 ({_one_line(exc)}): stored whole"])


# ---------------------------------------------------------------------------------------------
# Zip archives (.keras, TorchScript, .pt2)


def _member_data_offset(fh, info: zipfile.ZipInfo) -> int:
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise _Malformed(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _scan_zip(path: Path) -> FilePlan:
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            names = {i.filename for i in infos}
            if "config.json" in names and any(n.startswith("model.weights") for n in names):
                return _scan_keras_zip(fh, infos)
            return _scan_torch_zip(fh, infos)
    except (zipfile.BadZipFile, _Malformed, OSError, EOFError) as exc:
        return FilePlan(notes=[f"not parsed as a zip archive ({_one_line(exc)}): stored whole"])


def _scan_keras_zip(fh, infos: list[zipfile.ZipInfo]) -> FilePlan:
    plan = FilePlan("keras-zip")
    for info in infos:
        if not info.filename.endswith(".h5") or info.file_size == 0:
            continue
        start = _member_data_offset(fh, info)
        if info.compress_type != zipfile.ZIP_STORED:
            plan.spans.append(Span(start, info.compress_size, info.filename, "bytes", (info.compress_size,)))
            plan.notes.append(f"{info.filename}: compressed member, stored whole (no tensor-level dedup)")
            continue
        try:
            plan.spans.extend(_hdf5_spans(_Window(fh, start, info.file_size), start, f"{info.filename}:"))
        except ImportError:
            plan.notes.append("h5py is not installed: weights stored with the skeleton")
        except Exception as exc:
            plan.notes.append(f"{info.filename}: not parsed as HDF5 ({_one_line(exc)})")
    return plan


def _scan_torch_zip(fh, infos: list[zipfile.ZipInfo]) -> FilePlan:
    spans = []
    for info in infos:
        parts = info.filename.split("/")
        if (info.compress_type == zipfile.ZIP_STORED and "data" in parts[:-1] and "." not in parts[-1]
                and info.file_size >= INLINE_MAX):
            spans.append(Span(_member_data_offset(fh, info), info.file_size, info.filename, "uint8", (info.file_size,)))
    return FilePlan("torch-zip" if spans else "whole", spans)


# ---------------------------------------------------------------------------------------------
# TFLite: the flatbuffer's Model.buffers


class _Flat:
    """Just enough of the FlatBuffers layout to read tables, vectors and scalars."""

    def __init__(self, buf) -> None:
        self.b = buf

    def u32(self, p: int) -> int:
        return struct.unpack_from("<I", self.b, p)[0]

    def field(self, table: int, index: int) -> int | None:
        vtable = table - struct.unpack_from("<i", self.b, table)[0]
        vsize = struct.unpack_from("<H", self.b, vtable)[0]
        if 4 + 2 * index >= vsize:
            return None
        off = struct.unpack_from("<H", self.b, vtable + 4 + 2 * index)[0]
        return table + off if off else None

    def ref(self, p: int) -> int:
        return p + self.u32(p)

    def vector(self, table: int, index: int) -> tuple[int, int]:
        p = self.field(table, index)
        if p is None:
            return 0, 0
        v = self.ref(p)
        n = self.u32(v)
        if v + 4 + n > len(self.b):  # a count no file this size can hold (elements are >= 1 byte)
            raise ValueError(f"vector at {v} runs past the end of the file")
        return v + 4, n

    def tables(self, table: int, index: int) -> list[int]:
        start, n = self.vector(table, index)
        return [self.ref(start + 4 * i) for i in range(n)]

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        p = self.field(table, index)
        return default if p is None else struct.unpack_from(fmt, self.b, p)[0]

    def string(self, table: int, index: int) -> str:
        start, n = self.vector(table, index)
        return bytes(self.b[start:start + n]).decode("utf-8", "replace") if n else ""


def _scan_tflite(path: Path) -> FilePlan:
    with _mapped(path) as buf:
        try:
            fb = _Flat(buf)
            model = fb.ref(0)
            described: dict[int, tuple[str, str, tuple[int, ...]]] = {}
            for sub in fb.tables(model, 2):
                for tensor in fb.tables(sub, 0):
                    index = fb.scalar(tensor, 2, "<I")
                    if index and index not in described:
                        start, n = fb.vector(tensor, 0)
                        shape = struct.unpack_from(f"<{n}i", buf, start) if n else ()
                        dtype = TFLITE_DTYPES.get(fb.scalar(tensor, 1, "<b"), "tflite:?")
                        described[index] = (fb.string(tensor, 3), dtype, tuple(int(d) for d in shape))
            spans = []
            for i, buffer in enumerate(fb.tables(model, 4)):
                start, n = fb.vector(buffer, 0)
                if not n:
                    start, n = fb.scalar(buffer, 1, "<Q"), fb.scalar(buffer, 2, "<Q")
                    if start <= 1 or not n:
                        continue
                name, dtype, shape = described.get(i, (f"buffer{i}", "uint8", (n,)))
                if _expected_nbytes(dtype, shape) != n:  # strings, int4, or a buffer typed by none
                    dtype, shape = "uint8", (n,)
                spans.append(Span(start, n, name or f"buffer{i}", dtype, shape))
        except (struct.error, IndexError, ValueError, OverflowError) as exc:
            return FilePlan(notes=[f"not parsed as a TFLite flatbuffer ({_one_line(exc)}): stored whole"])
    return FilePlan("tflite", spans)


# ---------------------------------------------------------------------------------------------
# OpenVINO IR: the .xml's Const layers into the .bin


def _scan_openvino(xml: Path) -> tuple[FilePlan, dict[str, list[Span]]]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as exc:
        return FilePlan(notes=[f"not parsed as OpenVINO XML ({_one_line(exc)})"]), {}
    spans = []
    for layer in root.iter("layer"):
        if layer.get("type") != "Const":
            continue
        data = layer.find("data")
        if data is None:
            continue
        try:
            offset, size = int(data.get("offset", "")), int(data.get("size", ""))
            text = (data.get("shape") or "").strip()
            shape = tuple(int(d) for d in text.split(",")) if text else ()
        except ValueError:
            continue
        et = data.get("element_type", "")
        dtype = OPENVINO_DTYPES.get(et, f"openvino:{et}")
        if size > 0:
            spans.append(Span(offset, size, layer.get("name") or layer.get("id", ""), dtype, shape))
    return FilePlan("openvino-xml"), {xml.with_suffix(".bin").name: spans}


# ---------------------------------------------------------------------------------------------
# Which scanner a file gets


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _scan(path: Path, fmt: str | None = None) -> tuple[FilePlan, dict[str, list[Span]]]:
    """The plan for ``path``, and spans it names in other files (relative to its directory).

    Spans only say where tensors are, never what the rebuilt bytes are, so a file a scanner
    cannot make sense of (damaged, or a layout it does not know) is stored whole, with a note.
    """
    try:
        return _scan_by_content(path, fmt)
    except (BadInputError, OSError):
        raise
    except Exception as exc:  # a parser's error on damaged input: the bytes are still stored exactly
        return FilePlan(notes=[f"not parsed ({type(exc).__name__}: {_one_line(exc)}): stored whole"]), {}


def _scan_by_content(path: Path, fmt: str | None) -> tuple[FilePlan, dict[str, list[Span]]]:
    head = _head(path, 512)
    suffix = path.suffix.lower()
    if suffix == ".onnx" or fmt == "onnx":
        return _scan_onnx(path)
    if suffix == ".safetensors":
        return _scan_safetensors(path), {}
    if head[4:8] == b"TFL3":
        return _scan_tflite(path), {}
    if head[:8] == HDF5_MAGIC:
        return _scan_hdf5(path), {}
    if head[:4] == b"PK\x03\x04":
        return _scan_zip(path), {}
    if suffix == ".xml" and b"<net " in head and path.with_suffix(".bin").is_file():
        return _scan_openvino(path)
    return FilePlan(), {}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# decompose


class _Candidates:
    """Tensors a new one may be a transpose of: the store's (``known``) and this call's."""

    def __init__(self, blobs: BlobStore, known: Known | None) -> None:
        self.blobs, self.known = blobs, known
        self.local: dict[tuple[str, int], list[tuple[str, tuple[int, ...]]]] = {}

    def add(self, dtype: str, shape: tuple[int, ...] | None, blob: str) -> None:
        if shape is not None and len(shape) >= 2:
            self.local.setdefault((dtype, math.prod(shape)), []).append((blob, shape))

    def transform_for(self, read: Callable[[int, int], bytes], nbytes: int, sha: str, dtype: str,
                      shape: tuple[int, ...]) -> dict | None:
        """A transform of a stored tensor that gives this one's bytes exactly, or None.

        ``read(offset, n)``: ``n`` bytes of this tensor from ``offset``; the whole tensor is read
        only when a candidate's first and last elements match.
        """
        import numpy as np

        itemsize = ITEMSIZE.get(dtype)
        if itemsize is None or len(shape) < 2 or len(shape) > 6 or nbytes != math.prod(shape) * itemsize:
            return None
        numel = math.prod(shape)
        seen: set[str] = set()
        pool = itertools.chain(self.local.get((dtype, numel), ()), self.known(dtype, numel) if self.known else ())
        tried = 0
        ends: tuple[bytes, bytes] | None = None
        data: bytes | None = None
        for blob, cshape in pool:
            cshape = tuple(int(d) for d in cshape)
            if blob == sha or blob in seen or sorted(cshape) != sorted(shape):
                continue
            seen.add(blob)
            tried += 1
            if tried > MAX_CANDIDATES:
                break
            # Any transpose keeps the first and the last element where they are: probe those first.
            if ends is None:
                ends = (read(0, itemsize), read(nbytes - itemsize, itemsize))
            if not self._ends_match(blob, ends, nbytes, itemsize):
                continue
            try:  # not re-hashed: the comparison below is exact, whatever the blob holds
                src = self.blobs.read(blob)
            except BlobError:
                continue  # a candidate gone is no candidate (fsck reports it)
            if len(src) != nbytes:
                continue
            if data is None:
                data = read(0, nbytes)
            arr = np.frombuffer(src, dtype=f"V{itemsize}").reshape(cshape)
            for perm in itertools.permutations(range(len(shape))):
                if list(perm) == sorted(perm) or tuple(cshape[i] for i in perm) != shape:
                    continue
                if arr.transpose(perm).tobytes() == data:
                    return {"of": blob, "shape": list(cshape), "perm": list(perm)}
        return None

    def _ends_match(self, blob: str, ends: tuple[bytes, bytes], nbytes: int, itemsize: int) -> bool:
        try:
            with self.blobs.open(blob) as f:
                size = os.fstat(f.fileno()).st_size
                if size != nbytes:
                    return False
                head = f.read(itemsize)
                f.seek(size - itemsize)
                return head == ends[0] and f.read(itemsize) == ends[1]
        except BlobError:
            return False


class _Decomposer:
    def __init__(self, blobs: BlobStore, known: Known | None) -> None:
        self.blobs = blobs
        self.candidates = _Candidates(blobs, known)
        (blobs.root / "tmp").mkdir(parents=True, exist_ok=True)

    def store(self, src: Path, rel: str, plan: FilePlan) -> dict:
        st = src.stat()
        spans = _clean_spans(plan.spans, st.st_size)
        entry: dict = {"path": rel, "size": st.st_size, "sha256": "", "mode": stat.S_IMODE(st.st_mode),
                       "method": plan.method if spans else "whole", "skeleton": ""}
        if plan.notes:
            entry["notes"] = list(plan.notes)
        fast = fast_hasher()
        file_sinks = (fast.update,) if fast is not None else ()
        if not spans:
            entry["sha256"] = entry["skeleton"] = self.blobs.put_file(src, also=file_sinks)
            entry["segments"] = []
        else:
            # One read of the file: every byte goes to the file's checksums and to its skeleton or
            # tensor blob, each hashed once.
            file_hash = hashlib.sha256()
            file_sinks = (file_hash.update, *file_sinks)
            skel_hash = hashlib.sha256()
            segments = []
            with open(src, "rb") as fh, tempfile.SpooledTemporaryFile(
                    blobs_mod.CHUNK, dir=self.blobs.root / "tmp") as skel:
                skel_sinks = (skel.write, skel_hash.update, *file_sinks)
                pos = 0
                for span in spans:
                    _copy_range(fh, pos, span.offset - pos, skel_sinks)
                    segments.append(self._segment(fh, span, file_sinks))
                    pos = span.offset + span.length
                _copy_range(fh, pos, st.st_size - pos, skel_sinks)
                entry["skeleton"] = self.blobs.put_fileobj(skel, 0, skel.tell(), digest=skel_hash.hexdigest())
            entry["sha256"] = file_hash.hexdigest()
            entry["segments"] = segments
        if fast is not None:
            entry["blake3"] = fast.hexdigest()
        return entry

    def _segment(self, fh, span: Span, file_sinks) -> dict:
        data: bytes | None = None
        pending = None
        if span.length <= blobs_mod.CHUNK:
            fh.seek(span.offset)
            data = fh.read(span.length)
            if len(data) != span.length:
                raise CheckFailedError(f"ended before byte {span.offset + span.length}", path=fh.name)
            for sink in file_sinks:
                sink(data)
            sha = hashlib.sha256(data).hexdigest()
        else:  # streamed into a temp blob as it is hashed; dropped below when it is not needed
            pending = self.blobs.pending()
        try:
            if pending is not None:
                _copy_range(fh, span.offset, span.length, (pending.write, *file_sinks))
                sha = pending.digest
            return self._segment_of(fh, span, sha, data, pending)
        finally:
            if pending is not None:
                pending.discard()

    def _segment_of(self, fh, span: Span, sha: str, data: bytes | None, pending) -> dict:
        seg = {"offset": span.offset, "length": span.length, "key": span.key, "dtype": span.dtype,
               "shape": None if span.shape is None else list(span.shape),
               "digest": tensor_digest(span.dtype, span.shape, sha), "blob": None}
        if span.length < INLINE_MAX:
            seg["inline"] = base64.b64encode(data).decode("ascii")
            return seg
        if self.blobs.has(sha):
            seg["blob"] = sha
        else:
            transform = None
            if span.shape is not None and len(span.shape) >= 2 and span.length <= TRANSFORM_MAX:
                if data is not None:
                    def read(offset: int, n: int, data: bytes = data) -> bytes:
                        return data[offset:offset + n]
                else:
                    def read(offset: int, n: int) -> bytes:
                        fh.seek(span.offset + offset)
                        return fh.read(n)
                transform = self.candidates.transform_for(read, span.length, sha, span.dtype, span.shape)
            if transform is not None:
                seg["transform"] = transform
                return seg
            if pending is not None:
                pending.commit()
            else:
                self.blobs.put(data, digest=sha)
            seg["blob"] = sha
        self.candidates.add(span.dtype, span.shape, sha)
        return seg


def _clean_spans(spans: list[Span], size: int) -> list[Span]:
    """Sorted, inside the file, non-empty and not overlapping (a later overlapping one is dropped)."""
    out: list[Span] = []
    end = 0
    for s in sorted(spans, key=lambda s: (s.offset, -s.length)):
        if s.length <= 0 or s.offset < end or s.offset + s.length > size:
            continue
        out.append(s)
        end = s.offset + s.length
    return out


def _copy_range(fh, offset: int, length: int, sinks) -> None:
    fh.seek(offset)
    left = length
    while left > 0:
        chunk = fh.read(min(blobs_mod.CHUNK, left))
        if not chunk:
            raise CheckFailedError(f"ended before byte {offset + length}", path=fh.name)
        for sink in sinks:
            sink(chunk)
        left -= len(chunk)


def _dir_files(root: Path) -> tuple[list[str], list[str]]:
    """(every file, every subdirectory) under root, as sorted posix paths relative to it."""
    files, dirs = [], []
    for here, subdirs, names in os.walk(root):
        base = Path(here)
        for d in subdirs:
            if (base / d).is_symlink():
                raise BadInputError("symlinked directories are not supported in a model directory", path=base / d)
            dirs.append((base / d).relative_to(root).as_posix())
        for n in names:
            p = base / n
            if not p.is_file():
                raise BadInputError("not a regular file (a model directory holds files and directories only)", path=p)
            files.append(p.relative_to(root).as_posix())
    return sorted(files), sorted(dirs)


def decompose(path: Path | str, fmt: str, blobs: BlobStore, known: Known | None = None) -> dict:
    """Store the model at ``path`` (a file or a directory) as skeletons + tensors; returns its manifest.

    Args:
        path: the model: a file (its companions, such as ONNX external data or an OpenVINO
            ``.bin``, are stored with it) or a directory (every file in it).
        fmt: the model's format as ``modelport.formats.detect`` names it (recorded; each file's
            layout is found from its content).
        blobs: where the blobs go.
        known: ``known(dtype, numel) -> [(blob, shape), ...]``, tensors already stored with that
            dtype and element count; a new tensor that is an exact transpose of one of them is
            stored as a transform of it.

    Raises:
        BadInputError: the path is missing or unreadable, or names external data that is missing
            or outside the model's directory.
    """
    p = Path(path)
    if not p.exists():
        raise BadInputError("no such file or directory", path=p)
    work = _Decomposer(blobs, known)
    try:
        if p.is_dir():
            return _decompose_dir(p, fmt, work)
        if not p.is_file():
            raise BadInputError("not a regular file or directory", path=p)
        return _decompose_file(p, fmt, work)
    except PermissionError as exc:
        raise BadInputError(f"cannot read: {exc.strerror}", path=exc.filename or p) from None
    except IsADirectoryError as exc:
        raise BadInputError("is a directory where a file was expected", path=exc.filename or p) from None
    except FileNotFoundError as exc:
        raise BadInputError("disappeared while it was being read", path=exc.filename or p) from None
    except OSError as exc:  # a location too long to be a file name, and friends
        raise BadInputError(f"cannot read: {exc.strerror or exc}", path=p) from None


def _decompose_file(p: Path, fmt: str, work: _Decomposer) -> dict:
    plan, extra = _scan(p, fmt)
    entries = [work.store(p, "", plan)]
    for rel in sorted(extra):
        companion = p.parent / rel
        if not companion.is_file():
            raise BadInputError(f"missing companion file ({rel})", path=p)
        entries.append(work.store(companion, rel, FilePlan("companion", extra[rel])))
    return {"manifest": MANIFEST_VERSION, "format": fmt, "kind": "file", "files": entries}


def _decompose_dir(root: Path, fmt: str, work: _Decomposer) -> dict:
    files, dirs = _dir_files(root)
    present = set(files)
    plans: dict[str, FilePlan] = {}
    named: dict[str, list[Span]] = {}  # spans one file names in another (external data, .bin)
    for rel in files:
        plan, extra = _scan(root / rel)
        plans[rel] = plan
        for other, spans in extra.items():
            target = (PurePosixPath(rel).parent / other).as_posix()
            if target not in present:
                raise BadInputError(f"names {other!r}, which is not in the directory", path=root / rel)
            named.setdefault(target, []).extend(spans)
    entries = []
    for rel in files:
        plan = plans[rel]
        if rel in named:
            plan = FilePlan(plan.method if plan.spans else "companion", plan.spans + named[rel], plan.notes)
        entries.append(work.store(root / rel, rel, plan))
    return {"manifest": MANIFEST_VERSION, "format": fmt, "kind": "dir", "dirs": dirs, "files": entries}


# ---------------------------------------------------------------------------------------------
# rebuild


def _check_manifest(manifest: dict) -> list[dict]:
    def bad(why: str) -> ManifestError:
        return ManifestError(f"manifest is malformed: {why}")

    if not isinstance(manifest, dict) or manifest.get("manifest") != MANIFEST_VERSION:
        raise bad(f"not a version {MANIFEST_VERSION} manifest")
    if manifest.get("kind") not in ("file", "dir") or not isinstance(manifest.get("files"), list):
        raise bad("no kind or no file list")
    seen = set()
    for entry in manifest["files"]:
        try:
            rel = entry["path"]
            if rel or manifest["kind"] == "dir":
                rel = _safe_relpath(rel, "file path", Path("manifest"))
            if rel in seen:
                raise bad(f"file {rel!r} listed twice")
            seen.add(rel)
            end = 0
            for seg in entry["segments"]:
                if seg["offset"] < end or seg["length"] <= 0:
                    raise bad(f"segments of {rel or 'the model file'} overlap or are empty")
                end = seg["offset"] + seg["length"]
                if seg.get("blob") is None and "inline" not in seg and "transform" not in seg:
                    raise bad(f"segment {seg.get('key')!r} has no bytes")
            if end > entry["size"] or not isinstance(entry["skeleton"], str):
                raise bad(f"segments of {rel or 'the model file'} run past its size")
            if "blake3" in entry and not (isinstance(entry["blake3"], str) and _HEX64.fullmatch(entry["blake3"])):
                raise bad(f"the blake3 of {rel or 'the model file'} is not 64 hex digits")
        except (KeyError, TypeError) as exc:
            raise bad(f"missing or mistyped field ({_one_line(exc)})") from None
        except BadInputError as exc:
            raise bad(str(exc)) from None
    if manifest["kind"] == "file" and "" not in seen:
        raise bad("a file manifest without its model file")
    return manifest["files"]


def rebuild(manifest: dict, blobs: BlobStore, out: Path | str) -> None:
    """Write the model the manifest describes at ``out``, byte-identical to what was decomposed.

    Every file is written to a temp name beside its destination and renamed into place once all
    of them are written and their SHA-256 checked, so a failure leaves nothing at ``out``.

    Raises:
        BadInputError: ``out`` (or a companion file beside it) already exists.
        BlobMissingError, BlobCorruptError: a blob the manifest needs is missing or damaged (the
            message names the blob and the tensor).
        ManifestError: the manifest is malformed.
    """
    entries = _check_manifest(manifest)
    out = Path(out)
    try:
        if manifest["kind"] == "dir":
            _rebuild_dir(manifest, entries, blobs, out)
        else:
            _rebuild_file(entries, blobs, out)
    except (PermissionError, NotADirectoryError, FileExistsError, IsADirectoryError, FileNotFoundError) as exc:
        raise BadInputError(f"cannot write there: {exc.strerror or exc}", path=exc.filename or out) from None


def _rebuild_dir(manifest: dict, entries: list[dict], blobs: BlobStore, out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise BadInputError("already exists", path=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    tmp.mkdir()
    try:
        for d in manifest.get("dirs", []):
            (tmp / _safe_relpath(d, "directory", out)).mkdir(parents=True, exist_ok=True)
        for entry in entries:
            dest = tmp / entry["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            _write_file(entry, blobs, dest)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rebuild_file(entries: list[dict], blobs: BlobStore, out: Path) -> None:
    targets = [(e, out if e["path"] == "" else out.parent / e["path"]) for e in entries]
    for _, dest in targets:
        if dest.exists() or dest.is_symlink():
            raise BadInputError("already exists", path=dest)
    written: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for entry, dest in targets:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.partial"
            written.append((tmp, dest))
            _write_file(entry, blobs, tmp)
        for tmp, dest in sorted(written, key=lambda td: td[1] == out):  # the model file last
            os.replace(tmp, dest)
            placed.append(dest)
    except BaseException:
        for tmp, _ in written:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        for dest in placed:  # a rename failed: take back the companions placed (none existed before)
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
        raise


def _write_file(entry: dict, blobs: BlobStore, dest: Path) -> None:
    """Rebuild one file at ``dest`` and check it against its recorded BLAKE3 (else its SHA-256)."""
    fast = fast_hasher() if entry.get("blake3") else None
    expected, what = (entry["blake3"], "blake3") if fast is not None else (entry["sha256"], "sha256")
    try:
        skel_file = blobs.open(entry["skeleton"])
    except BlobError as exc:
        raise type(exc)(f"{exc} (the skeleton of {entry['path'] or 'the model file'})", digest=exc.digest) from None
    short = False
    with skel_file as skel, open(dest, "wb", buffering=0) as f:
        out = _Out(f, int(entry["size"]), fast if fast is not None else hashlib.sha256())
        try:
            pos = skel_pos = 0  # in the file, in the skeleton
            for seg in entry["segments"]:
                out.copy(skel, skel_pos, seg["offset"] - pos)
                skel_pos += seg["offset"] - pos
                _segment_into(seg, blobs, out)
                pos = seg["offset"] + seg["length"]
            out.copy(skel, skel_pos, None)
        except _Short:
            short = True  # diagnosed below: a short blob is a corrupt (or wrongly recorded) one
        finally:
            digest = out.finish()
    if short or out.written != entry["size"] or digest != expected:
        _diagnose(entry, blobs)
        raise CheckFailedError(
            f"rebuilt {entry['path'] or 'model file'} does not match its recorded {what} {expected} "
            "although every blob it uses is intact: the manifest is wrong")
    os.chmod(dest, entry.get("mode", 0o644) & 0o777)


class _Short(Exception):
    pass


class _Out:
    """The file being rebuilt, written in order from blob ranges and bytes, and hashed as written.

    A blob range is mapped (``mmap``) and written in slices of ``STEP`` bytes straight from the
    map: one copy, by the kernel, as ``shutil.copyfile`` does (a ``copy_file_range`` to an offset
    not aligned like the source's is slower on Linux's large-folio page cache than a ``write``
    from a map). Each slice is hashed by a thread while the next one is written, so copying and
    hashing overlap; small ranges and files that cannot be mapped are read into memory instead,
    and a small file is hashed in line. The hash covers exactly the bytes handed to ``write``, in
    file order.
    """

    STEP = 4 << 20
    SMALL = 1 << 20  # ranges up to this are read rather than mapped

    def __init__(self, f, size: int, hasher) -> None:
        self.f, self.hasher = f, hasher
        self.written = 0
        self._queue: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if size >= 4 * self.STEP:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._hash_loop, name="modelport-rebuild-hash", daemon=True)
            self._thread.start()

    def copy(self, src, offset: int, length: int | None) -> None:
        """``length`` bytes of the open blob ``src`` from ``offset`` (to its end when None);
        raises ``_Short`` when the blob ends first."""
        have = os.fstat(src.fileno()).st_size
        if length is None:
            length = have - offset
        if length < 0 or offset + length > have:
            raise _Short()
        if length == 0:
            return
        mapped = None
        if length > self.SMALL:
            with contextlib.suppress(OSError, ValueError, OverflowError):  # cannot map: read it instead
                mapped = mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ)
        if mapped is None:
            src.seek(offset)
            while length > 0:
                chunk = src.read(min(length, blobs_mod.CHUNK))
                if not chunk:
                    raise _Short()
                self.write(chunk)
                length -= len(chunk)
            return
        try:
            with memoryview(mapped) as view:
                for a in range(offset, offset + length, self.STEP):
                    b = min(a + self.STEP, offset + length)
                    with view[a:b] as piece:
                        self._write(piece)
                    self._hash(mapped, a, b)
        finally:
            self._done_with(mapped)

    def write(self, data: bytes) -> None:
        self._write(data)
        self._hash(data, 0, len(data))

    def _write(self, data) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)  # (a slice holds no export of ``data``)
        while view:
            view = view[self.f.write(view):]
        self.written += len(data)

    # -- hashing: in the thread, in the order written

    def _hash(self, buf, a: int, b: int) -> None:
        """Hash ``buf[a:b]`` (bytes or a map), in the thread when there is one."""
        if self._queue is not None:
            self._queue.put((buf, a, b))
        else:
            with memoryview(buf) as view, view[a:b] as piece:
                self.hasher.update(piece)

    def _done_with(self, mapped: mmap.mmap) -> None:
        if self._queue is not None:
            self._queue.put((mapped, -1, -1))  # the thread closes it once it has hashed it
        else:
            with contextlib.suppress(BufferError):  # a view still held by an error's traceback: closed when freed
                mapped.close()

    def _hash_loop(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            buf, a, b = item
            try:
                if a < 0:
                    with contextlib.suppress(BufferError):
                        buf.close()
                elif self._error is None:
                    with memoryview(buf) as view, view[a:b] as piece:
                        self.hasher.update(piece)
            except BaseException as exc:  # re-raised by finish, in the caller's thread
                self._error = exc

    def finish(self) -> str:
        """The digest of everything written (joins the thread; safe to call after an error)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            if self._error is not None:
                raise self._error
        return self.hasher.hexdigest()


def _segment_into(seg: dict, blobs: BlobStore, out: _Out) -> None:
    try:
        if "inline" in seg:
            out.write(base64.b64decode(seg["inline"]))
        elif seg.get("blob"):
            with blobs.open(seg["blob"]) as f:
                out.copy(f, 0, seg["length"])
        else:
            out.write(_transformed(seg, blobs))
    except BlobError as exc:
        raise type(exc)(f"{exc} (needed by tensor {seg['key']!r})", digest=exc.digest) from None


def _transformed(seg: dict, blobs: BlobStore) -> bytes:
    """A transform segment's bytes (the source blob is not re-hashed: callers check the result)."""
    import numpy as np

    t = seg["transform"]
    itemsize = ITEMSIZE[seg["dtype"]]
    src = blobs.read(t["of"])
    try:
        arr = np.frombuffer(src, dtype=f"V{itemsize}").reshape(t["shape"])
    except ValueError:
        raise _corrupt_for(t["of"], seg, "its size does not fit the transform's shape") from None
    return arr.transpose(t["perm"]).tobytes()


def _corrupt_for(blob: str, seg: dict | None, why: str = "") -> BlobCorruptError:
    what = f"tensor {seg['key']!r}" if seg else "a skeleton"
    return BlobCorruptError(f"blob {blob} ({what}) is corrupt{': ' + why if why else ''}", digest=blob)


def _diagnose(entry: dict, blobs: BlobStore) -> None:
    """Raise naming the first blob (or inline tensor) of ``entry`` that is damaged."""
    where = entry["path"] or "the model file"
    if not blobs.verify(entry["skeleton"]) or blobs.size(entry["skeleton"]) != entry["size"] - sum(
            s["length"] for s in entry["segments"]):
        raise BlobCorruptError(f"blob {entry['skeleton']} (skeleton of {where}) is corrupt: its bytes no longer "
                               "hash to its name", digest=entry["skeleton"])
    for seg in entry["segments"]:
        if seg.get("blob"):
            if not blobs.verify(seg["blob"]) or blobs.size(seg["blob"]) != seg["length"]:
                raise BlobCorruptError(f"blob {seg['blob']} (tensor {seg['key']!r} of {where}) is corrupt: its bytes "
                                       "no longer hash to its name", digest=seg["blob"])
        else:
            of = seg.get("transform", {}).get("of") if "inline" not in seg else None
            if of is not None and not blobs.verify(of):
                if not blobs.has(of):
                    raise BlobMissingError(f"blob {of} is missing from {blobs.root} (needed by tensor {seg['key']!r} "
                                           f"of {where}, stored as its transpose)", digest=of)
                raise BlobCorruptError(f"blob {of} (of {where}) is corrupt: its bytes no longer hash to its name "
                                       f"(needed by tensor {seg['key']!r}, stored as its transpose)", digest=of)
            data = base64.b64decode(seg["inline"]) if "inline" in seg else _transformed(seg, blobs)
            if tensor_digest(seg["dtype"], seg["shape"], hashlib.sha256(data).hexdigest()) != seg["digest"]:
                src = seg.get("transform", {}).get("of", "inline")
                raise BlobCorruptError(f"tensor {seg['key']!r} of {where} (from {src}) does not match its "
                                       f"digest {seg['digest']}", digest=str(src))


# ---------------------------------------------------------------------------------------------
# reading manifests


def manifest_blobs(manifest: dict) -> set[str]:
    """Every blob the manifest references: skeletons, tensor blobs, transform sources."""
    out: set[str] = set()
    for entry in manifest.get("files", []):
        out.add(entry["skeleton"])
        for seg in entry["segments"]:
            if seg.get("blob"):
                out.add(seg["blob"])
            if "transform" in seg:
                out.add(seg["transform"]["of"])
    return out


def manifest_tensors(manifest: dict) -> list[dict]:
    """One row per tensor: key, file, digest, dtype, shape, nbytes, blob (None when inline or a
    transform), and ``transform`` / ``inline`` where they apply."""
    rows = []
    for entry in manifest.get("files", []):
        for seg in entry["segments"]:
            row = {"key": seg["key"], "file": entry["path"], "digest": seg["digest"], "dtype": seg["dtype"],
                   "shape": seg["shape"], "nbytes": seg["length"], "blob": seg.get("blob")}
            for extra in ("transform", "inline"):
                if extra in seg:
                    row[extra] = seg[extra]
            rows.append(row)
    return rows


def tensor_bytes(tensor: dict, blobs: BlobStore) -> bytes:
    """The bytes of one row of ``manifest_tensors`` (or one segment), checked against its digest."""
    if "inline" in tensor:
        data = base64.b64decode(tensor["inline"])
    elif tensor.get("blob"):
        data = blobs.read(tensor["blob"])  # hashed once, below: its sha256 is the blob's name
    else:
        data = _transformed(tensor, blobs)
    sha = hashlib.sha256(data).hexdigest()
    if tensor.get("blob") and "inline" not in tensor and sha != tensor["blob"]:
        raise BlobCorruptError(f"blob {tensor['blob']} in {blobs.root} is corrupt: its bytes no longer hash to "
                               f"its name (tensor {tensor['key']!r})", digest=tensor["blob"])
    if tensor_digest(tensor["dtype"], tensor["shape"], sha) != tensor["digest"]:
        raise BlobCorruptError(f"tensor {tensor['key']!r} does not match its digest {tensor['digest']}",
                               digest=str(tensor.get("blob") or tensor.get("transform", {}).get("of")))
    return data
