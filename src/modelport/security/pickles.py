"""Untrusted pickles, read without running them: a static scanner and a restricted unpickler.

Neither reader ever imports, looks up or calls anything a file names.

**The scanner** (:func:`scan_path`) walks the opcodes of every pickle inside a file, one at a
time with pickletools' opcode table, keeping a symbolic stack and memo: every global a pickle
would import is known exactly, ``GLOBAL``/``INST`` from their arguments and ``STACK_GLOBAL`` from
the strings on the stack (pushed there or fetched from the memo). Each is checked against
:data:`ALLOWED_GLOBALS`: what torch's ``weights_only`` unpickler permits (tensor rebuilds,
storages, dtypes, ``OrderedDict``, ``set``, …), plus ``frozenset``, numpy's array and dtype
reconstruction and joblib's array wrapper. A finding (exit 4) is any of:

- ``global``: an import off the allow-list;
- ``computed-global``: a ``STACK_GLOBAL`` whose module or name is not a constant string;
- ``extension``: an ``EXT1/2/4`` code (a global registered in the loading process);
- ``computed-call``: ``REDUCE``/``NEWOBJ``/``OBJ`` calling an object that is not an imported global
  (``getattr(...)(...)``, ``pkgutil.resolve_name(...)(...)`` chains);
- ``global-mutation``: ``BUILD``/``APPEND``/``SETITEM`` applied to an imported class or function;
- ``persistent-id``: a persistent id that is not a torch storage;
- ``torchscript``: a TorchScript archive (its ``code/`` is compiled and run by ``torch.jit.load``).

Where: ``.pt/.pth/.bin/.ckpt`` (torch's zip format and its legacy format: five pickles, then the
storages, whose sizes are checked), bare pickles of protocols 0-5, joblib files (arrays written
between opcodes are skipped by their size; object arrays are nested pickles, scanned), zip and tar
archives (nested, any depth up to :data:`MAX_DEPTH`), gzip/bz2/xz/zlib streams, ``.npy``/``.npz``
with object arrays, and directories of those. A truncated or corrupt pickle is an error (exit 2)
unless it imported a bad global before the cut (exit 4).

**The restricted unpickler** (:func:`load_checkpoint`) rebuilds a ``torch.save`` file, zip or
legacy format: ``find_class`` returns only allow-listed objects (taken from torch's own table,
never imported by name), every call, ``BUILD`` and container update is checked against them as
torch's ``weights_only`` does, and ``persistent_load`` reads the storages from the file itself.
:func:`read_static` is an independent second reader for the files torch's ``weights_only``
reader cannot parse (pickle protocols 0, 1, 4, 5): the scanner's symbolic values, with tensors
built from the raw storage bytes.
"""

from __future__ import annotations

import _compat_pickle
import ast
import bz2
import collections
import dataclasses
import functools
import gzip
import io
import lzma
import os
import pickle
import pickletools
import re
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from modelport.errors import BadInputError, UnsafeError, UnsupportedError

__all__ = [
    "ALLOWED_GLOBALS",
    "TORCH_ALLOWED_GLOBALS",
    "MAX_DEPTH",
    "Finding",
    "GlobalUse",
    "PickleScan",
    "ScanReport",
    "Checkpoint",
    "RestrictedUnpickler",
    "is_allowed",
    "scan_path",
    "load_checkpoint",
    "read_static",
]

# --------------------------------------------------------------------------- the allow-list

# Exactly the globals torch's weights_only unpickler permits (torch/_weights_only_unpickler.py,
# _get_allowed_globals(), torch 2.13), as (module, name) pairs; tests compare it with torch's table.
_TORCH_TABLE = """
_codecs: encode
builtins: bytearray complex set
collections: Counter OrderedDict
torch: Size Tensor device
  BFloat16Storage BoolStorage ByteStorage CharStorage ComplexDoubleStorage ComplexFloatStorage DoubleStorage
  FloatStorage HalfStorage IntStorage LongStorage QInt32Storage QInt8Storage QUInt2x4Storage QUInt4x2Storage
  QUInt8Storage ShortStorage
  BFloat16Tensor BoolTensor ByteTensor CharTensor DoubleTensor FloatTensor HalfTensor IntTensor LongTensor ShortTensor
  bfloat16 bits16 bits1x8 bits2x4 bits4x2 bits8 bool complex128 complex32 complex64 float16 float32
  float4_e2m1fn_x2 float64 float8_e4m3fn float8_e4m3fnuz float8_e5m2 float8_e5m2fnuz float8_e8m0fnu
  int1 int2 int3 int4 int5 int6 int7 int8 int16 int32 int64 qint32 qint8 quint2x4 quint4x2 quint8
  uint1 uint2 uint3 uint4 uint5 uint6 uint7 uint8 uint16 uint32 uint64
  per_channel_affine per_channel_affine_float_qparams per_channel_symmetric per_tensor_affine per_tensor_symmetric
torch.cuda: BFloat16Storage BoolStorage ByteStorage CharStorage ComplexDoubleStorage ComplexFloatStorage
  DoubleStorage FloatStorage HalfStorage IntStorage LongStorage ShortStorage
  BFloat16Tensor BoolTensor ByteTensor CharTensor DoubleTensor FloatTensor HalfTensor IntTensor LongTensor ShortTensor
torch.sparse: BFloat16Tensor ByteTensor CharTensor DoubleTensor FloatTensor HalfTensor IntTensor LongTensor ShortTensor
torch.cuda.sparse: BFloat16Tensor ByteTensor CharTensor DoubleTensor FloatTensor HalfTensor IntTensor LongTensor
  ShortTensor
torch._utils: _rebuild_device_tensor_from_cpu_tensor _rebuild_device_tensor_from_numpy
  _rebuild_meta_tensor_no_storage _rebuild_nested_tensor _rebuild_parameter _rebuild_parameter_with_state
  _rebuild_qtensor _rebuild_sparse_tensor _rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3
  _rebuild_wrapper_subclass
torch._tensor: _rebuild_from_type_v2
torch.nn.parameter: Parameter
torch.serialization: _get_layout
torch.storage: TypedStorage UntypedStorage
"""

# What modelport allows beyond torch's table: frozenset (as harmless as set), numpy's array, scalar
# and dtype reconstruction (what torch's docs tell users to allowlist for numpy arrays; both the
# numpy 1 and numpy 2 module names), and joblib's array wrapper (joblib reads the array's bytes
# that follow it; the scanner checks and skips them).
_EXTRA_TABLE = """
builtins: frozenset
numpy: ndarray dtype
numpy.core.multiarray: _reconstruct scalar
numpy._core.multiarray: _reconstruct scalar
joblib.numpy_pickle: NumpyArrayWrapper
"""


def _pairs(table: str) -> frozenset[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    module = ""
    for line in table.strip().splitlines():
        head, sep, rest = line.partition(":")
        if sep and not line.startswith(" "):
            module, line = head.strip(), rest
        pairs.update((module, name) for name in line.split())
    return frozenset(pairs)


TORCH_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = _pairs(_TORCH_TABLE)
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = TORCH_ALLOWED_GLOBALS | _pairs(_EXTRA_TABLE)
_NUMPY_DTYPE_CLASS = re.compile(r"[A-Z][A-Za-z0-9]*DType")  # numpy.dtypes.Float32DType & co (numpy >= 1.25)


def _mapped(module: str, name: str) -> tuple[str, str] | None:
    """What pickle imports for a Python 2 name (``__builtin__.eval`` -> ``builtins.eval``), None if unmapped."""
    mapped = _compat_pickle.NAME_MAPPING.get((module, name))
    if mapped is None and module in _compat_pickle.IMPORT_MAPPING:
        mapped = (_compat_pickle.IMPORT_MAPPING[module], name)
    return mapped


def _shown(module: str, name: str) -> str:
    mapped = _mapped(module, name)
    return f"{module}.{name}" + (f" (= {mapped[0]}.{mapped[1]})" if mapped else "")


def is_allowed(module: str, name: str) -> bool:
    """Whether importing ``module.name`` is on the allow-list (Python 2 names mapped as pickle maps them)."""
    if (module, name) in ALLOWED_GLOBALS:
        return True
    if module == "numpy.dtypes" and _NUMPY_DTYPE_CLASS.fullmatch(name):
        return True
    mapped = _mapped(module, name)
    return mapped is not None and mapped in ALLOWED_GLOBALS


# --------------------------------------------------------------------------- report

MAX_DEPTH = 8  # archives inside archives
_MAX_LINE = 1 << 16  # text opcode arguments (GLOBAL, INT, STRING, ...)
_KEEP_BYTES = 1 << 20  # longer string/bytes arguments are skipped, not kept
_MAX_SPOOL = 16 << 30  # a nested archive is copied to a temporary file up to this size
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".jbl", ".dat", ".p"}


@dataclasses.dataclass(frozen=True)
class GlobalUse:
    """One global a pickle imports: where first, how often, and whether it is on the allow-list."""

    name: str
    allowed: bool
    opcode: str
    offset: int
    count: int = 1


@dataclasses.dataclass(frozen=True)
class Finding:
    """Something a loader would import or run that the allow-list does not cover."""

    kind: str  # global, computed-global, extension, computed-call, global-mutation, persistent-id, torchscript
    detail: str  # what: "posix.system", "a call of getattr(...)'s result", ...
    where: str  # the file, then each archive member: "ckpt.pt!archive/data.pkl"
    offset: int | None  # byte offset of the opcode in that member (decompressed), None for a whole member
    count: int = 1

    def __str__(self) -> str:
        at = f" at byte {self.offset}" if self.offset is not None else ""
        more = f" ({self.count}x)" if self.count > 1 else ""
        return f"{self.detail} in {self.where}{at}{more}"


@dataclasses.dataclass(frozen=True)
class PickleScan:
    """One pickle read statically."""

    where: str
    offset: int  # where the pickle starts in its member
    length: int  # bytes read (to its STOP, or to where it broke)
    protocol: int
    globals: tuple[GlobalUse, ...]
    storages: int  # torch storages it references (persistent ids)
    error: str | None = None  # truncated or corrupt: why, and where


@dataclasses.dataclass(frozen=True)
class ScanReport:
    """What ``modelport scan`` found: every pickle, the globals each imports, and what is not allowed.

    ``verdict`` is ``unsafe`` when there is any finding (exit 4), else ``unreadable`` when a part
    could not be read (exit 2), else ``clean`` (exit 0).
    """

    path: str
    pickles: tuple[PickleScan, ...]
    findings: tuple[Finding, ...]
    errors: tuple[str, ...]
    notes: tuple[str, ...]
    files: int  # files scanned (1 for a single file)
    allow_list: str = "torch weights_only (torch 2.13 table) + frozenset, numpy arrays/dtypes, joblib arrays"

    @property
    def verdict(self) -> str:
        return "unsafe" if self.findings else "unreadable" if self.errors else "clean"

    @property
    def ok(self) -> bool:
        return self.verdict == "clean"

    def __bool__(self) -> bool:
        return self.ok

    @property
    def exit_code(self) -> int:
        return {"unsafe": 4, "unreadable": 2, "clean": 0}[self.verdict]

    def imported(self) -> list[str]:
        """Every global imported anywhere, sorted, each once."""
        return sorted({g.name for p in self.pickles for g in p.globals})

    def summary(self) -> str:
        if self.findings:
            shown = "; ".join(str(f) for f in self.findings[:3])
            more = f"; and {len(self.findings) - 3} more" if len(self.findings) > 3 else ""
            return (f"refused: {len(self.findings)} unsafe item(s) outside the allow-list (loading would run them): "
                    f"{shown}{more}")
        if self.errors:
            return self.errors[0] + (f" (and {len(self.errors) - 1} more errors)" if len(self.errors) > 1 else "")
        return f"clean: {len(self.pickles)} pickle(s), every global on the allow-list"

    def check(self) -> ScanReport:
        """Raise UnsafeError (a finding) or BadInputError (an unreadable part); else return self."""
        if self.findings:
            raise UnsafeError(self.summary(), path=self.path)
        if self.errors:
            raise BadInputError(self.summary(), path=self.path)
        return self

    def to_dict(self) -> dict[str, Any]:
        from modelport.artifact import to_jsonable

        return {**to_jsonable(self), "verdict": self.verdict, "exit_code": self.exit_code, "imported": self.imported()}


# --------------------------------------------------------------------------- symbolic values


class _Global:
    __slots__ = ("module", "name", "offset", "allowed")

    def __init__(self, module: str, name: str, offset: int, allowed: bool) -> None:
        self.module, self.name, self.offset, self.allowed = module, name, offset, allowed

    @property
    def full(self) -> str:
        return f"{self.module}.{self.name}"


class _Call:
    """The result of calling ``func`` (REDUCE, NEWOBJ, OBJ, INST), with what BUILD/SETITEM/APPEND added."""

    __slots__ = ("func", "args", "kwargs", "state", "items", "appends")

    def __init__(self, func: Any, args: Any, kwargs: Any = None) -> None:
        self.func, self.args, self.kwargs = func, args, kwargs
        self.state: Any = None
        self.items: list[tuple[Any, Any]] = []
        self.appends: list[Any] = []

    def func_name(self) -> str:
        return self.func.full if isinstance(self.func, _Global) else "?"


class _Dict:
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[Any, Any]] | None = None) -> None:
        self.items = items or []


class _Set:
    __slots__ = ("items",)

    def __init__(self, items: list[Any] | None = None) -> None:
        self.items = items or []


class _Persistent:
    __slots__ = ("pid",)

    def __init__(self, pid: Any) -> None:
        self.pid = pid


class _Blob:
    """A long bytes/str argument that was skipped, not kept."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


_MARK = object()


def _describe(value: Any) -> str:
    if isinstance(value, _Global):
        return value.full
    if isinstance(value, _Call):  # one level only: a chain of calls can be as long as the file
        inner = value.func.full if isinstance(value.func, _Global) else "a computed object"
        return f"the result of {inner}(...)"
    if isinstance(value, _Persistent):
        return "a persistent object"
    return f"a {type(value).__name__} value"


# --------------------------------------------------------------------------- streams


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


class _Stream:
    """A binary stream read forward only, with its position counted (replays ``head`` first)."""

    def __init__(self, fh: BinaryIO, head: bytes = b"", pos: int = 0) -> None:
        self.fh, self.head, self.pos = fh, head, pos

    def read(self, n: int) -> bytes:
        if n <= 0:
            return b""
        if self.head:
            data, self.head = self.head[:n], self.head[n:]
            if len(data) < n:
                data += self.fh.read(n - len(data))
        else:
            data = self.fh.read(n)
        self.pos += len(data)
        return data

    def exact(self, n: int, what: str = "data") -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise _Truncated(f"ends inside {what} (wanted {n} bytes, {len(data)} left)")
        return data

    def readline(self) -> bytes:
        out = bytearray()
        while len(out) < _MAX_LINE:
            b = self.read(1)
            if not b:
                raise _Truncated("ends inside a text argument (no newline)")
            out += b
            if b == b"\n":
                return bytes(out)
        raise _Corrupt(f"a text argument longer than {_MAX_LINE} bytes")

    def skip(self, n: int, what: str = "data") -> None:
        if not self.head and isinstance(self.fh, io.BufferedReader):  # a real file: seek, do not read
            here, size = self.fh.tell(), os.fstat(self.fh.fileno()).st_size
            if here + n > size:
                raise _Truncated(f"ends inside {what} ({here + n - size} bytes missing)")
            self.fh.seek(n, io.SEEK_CUR)
            self.pos += n
            return
        while n > 0:
            got = len(self.read(min(n, 1 << 20)))
            if got == 0:
                raise _Truncated(f"ends inside {what} ({n} bytes missing)")
            n -= got

    def at_eof(self) -> bool:
        if self.head:
            return False
        b = self.fh.read(1)
        if not b:
            return True
        self.head = b
        return False

    def peek(self, n: int) -> bytes:
        while len(self.head) < n:
            more = self.fh.read(n - len(self.head))
            if not more:
                break
            self.head += more
        return self.head[:n]


class _ZlibReader(io.RawIOBase):
    """A zlib stream (joblib's compress='zlib') decompressed on the fly."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.d, self.buf = fh, zlib.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self.buf) < n) and not self.d.eof:
            chunk = self.fh.read(1 << 16)
            if not chunk:
                raise EOFError("zlib stream ends early")
            self.buf += self.d.decompress(chunk)
        n = len(self.buf) if n < 0 else n
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


# --------------------------------------------------------------------------- one pickle

_OPS = {ord(op.code): op for op in pickletools.opcodes}
_LENGTH_PREFIXED = {"string4": ("<i", "latin-1"), "bytes4": ("<I", None), "bytes8": ("<Q", None),
                    "bytearray8": ("<Q", None), "unicodestring4": ("<I", "utf-8"), "unicodestring8": ("<Q", "utf-8"),
                    "long4": ("<i", "long")}
_CONSTANTS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
              "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE",
              "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT"}
_STORAGE_ELEMENT_SIZE = {"Double": 8, "Float": 4, "Half": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1, "Byte": 1,
                         "Bool": 1, "BFloat16": 2, "ComplexDouble": 16, "ComplexFloat": 8, "QInt8": 1, "QUInt8": 1,
                         "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1}
_JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"


class _Recorder:
    """Collects what a whole scan finds, merging repeats (same kind, detail, place)."""

    def __init__(self) -> None:
        self.pickles: list[PickleScan] = []
        self.findings: dict[tuple[str, str, str], Finding] = {}
        self.errors: list[str] = []
        self.notes: list[str] = []

    def find(self, kind: str, detail: str, where: str, offset: int | None) -> None:
        key = (kind, detail, where)
        old = self.findings.get(key)
        self.findings[key] = (Finding(kind, detail, where, offset) if old is None
                              else dataclasses.replace(old, count=old.count + 1))

    def merge(self, other: _Recorder, *, errors_as_notes: bool = False) -> None:
        self.pickles += other.pickles
        for f in other.findings.values():
            old = self.findings.get((f.kind, f.detail, f.where))
            self.findings[(f.kind, f.detail, f.where)] = f if old is None else dataclasses.replace(
                old, count=old.count + f.count)
        (self.notes if errors_as_notes else self.errors).extend(other.errors)
        self.notes += other.notes


class _PickleMachine:
    """Evaluates one pickle symbolically: values are kept, nothing is imported or called."""

    def __init__(self, stream: _Stream, where: str, rec: _Recorder) -> None:
        self.s, self.where, self.rec = stream, where, rec
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[Any, Any] = {}
        self.protocol = 0
        self.globals: dict[str, GlobalUse] = {}
        self.storages: dict[str, tuple[str, int]] = {}  # storage key -> (storage type, numel)

    # -- stack
    def pop(self) -> Any:
        if not self.stack:
            raise _Corrupt("stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise _Corrupt("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise _Corrupt("no MARK to pop to")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    # -- arguments
    def arg(self, op: pickletools.OpcodeInfo) -> Any:
        desc = op.arg
        if desc is None:
            return None
        if op.name in ("GLOBAL", "INST"):
            module = self.s.readline()[:-1].decode("utf-8", "surrogateescape")
            name = self.s.readline()[:-1].decode("utf-8", "surrogateescape")
            return module, name
        if desc.name in _LENGTH_PREFIXED:
            fmt, decode = _LENGTH_PREFIXED[desc.name]
            n = struct.unpack(fmt, self.s.exact(struct.calcsize(fmt), f"the length of a {op.name}"))[0]
            if n < 0:
                raise _Corrupt(f"negative length in {op.name}")
            if n > _KEEP_BYTES:
                self.s.skip(n, f"a {op.name} of {n} bytes")
                return _Blob(n)
            data = self.s.exact(n, f"a {op.name} of {n} bytes")
            if decode == "long":
                return pickle.decode_long(data)
            return data.decode(decode, "surrogatepass") if decode else data
        try:
            return desc.reader(self.s)
        except ValueError as exc:
            if self.s.at_eof():
                raise _Truncated(f"ends inside the argument of {op.name}") from None
            raise _Corrupt(f"bad argument of {op.name}: {exc}") from None

    # -- imports and calls
    def global_(self, module: Any, name: Any, opcode: str, offset: int) -> _Global:
        if not (isinstance(module, str) and isinstance(name, str)):
            self.rec.find("computed-global", f"{opcode} of a name computed at load time "
                          f"({_describe(module)}, {_describe(name)})", self.where, offset)
            return _Global("?", "?", offset, False)
        ok = is_allowed(module, name)
        g = _Global(module, name, offset, ok)
        use = self.globals.get(g.full)
        self.globals[g.full] = (GlobalUse(g.full, ok, opcode, offset) if use is None
                                else dataclasses.replace(use, count=use.count + 1))
        if not ok:
            self.rec.find("global", _shown(module, name), self.where, offset)
        return g

    def call(self, func: Any, args: Any, kwargs: Any, opcode: str, offset: int) -> _Call:
        if not isinstance(func, _Global):
            self.rec.find("computed-call", f"{opcode} calls {_describe(func)}", self.where, offset)
        return _Call(func, args, kwargs)

    def mutate(self, target: Any, opcode: str, offset: int) -> Any:
        if isinstance(target, _Global):
            self.rec.find("global-mutation", f"{opcode} on {target.full} itself", self.where, offset)
        return target

    def persistent(self, pid: Any, offset: int) -> _Persistent:
        if (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _Global) and isinstance(pid[2], (str, bytes))):
            key = pid[2].decode("latin-1") if isinstance(pid[2], bytes) else pid[2]
            self.storages[key] = (pid[1].name, pid[4] if isinstance(pid[4], int) else -1)
        else:
            kind = pid[0] if isinstance(pid, tuple) and pid and isinstance(pid[0], (str, bytes)) else pid
            text = repr(kind) if isinstance(kind, (str, bytes)) else _describe(kind)
            self.rec.find("persistent-id", f"a persistent id that is not a torch storage ({text[:60]})", self.where,
                          offset)
        return _Persistent(pid)

    # -- the loop
    def run(self) -> Any:
        start = self.s.pos
        error = None
        value = None
        try:
            value = self._loop()
        except _Truncated as exc:
            error = f"truncated pickle: {exc} (at byte {self.s.pos})"
        except _Corrupt as exc:
            error = f"corrupt pickle: {exc} (at byte {self.s.pos})"
        except (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as exc:
            error = f"unreadable pickle stream: {type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001  (a malformed argument: bad UTF-8, a huge number, ...)
            error = f"corrupt pickle: {type(exc).__name__}: {str(exc)[:120]} (at byte {self.s.pos})"
        self.rec.pickles.append(PickleScan(self.where, start, self.s.pos - start, self.protocol,
                                           tuple(self.globals.values()), len(self.storages), error))
        if error:
            raise _Broken(error)
        return value

    def _loop(self) -> Any:  # noqa: C901  (one branch per opcode family)
        s = self.s
        while True:
            offset = s.pos
            b = s.read(1)
            if not b:
                raise _Truncated("ends before its STOP opcode")
            op = _OPS.get(b[0])
            if op is None:
                raise _Corrupt(f"byte 0x{b[0]:02x} at {offset} is no pickle opcode")
            arg = self.arg(op)
            name = op.name
            if name in _CONSTANTS:
                self.stack.append(arg)
            elif name == "NONE":
                self.stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                self.stack.append(name == "NEWTRUE")
            elif name == "PROTO":
                self.protocol = arg
            elif name == "FRAME":
                pass
            elif name == "STOP":
                return self.pop()
            elif name == "MARK":
                self.metastack.append(self.stack)
                self.stack = []
            elif name == "POP":
                if self.stack:
                    self.stack.pop()
                else:
                    self.pop_mark()
            elif name == "POP_MARK":
                self.pop_mark()
            elif name == "DUP":
                self.stack.append(self.top())
            elif name == "EMPTY_LIST":
                self.stack.append([])
            elif name == "EMPTY_TUPLE":
                self.stack.append(())
            elif name == "EMPTY_DICT":
                self.stack.append(_Dict())
            elif name == "EMPTY_SET":
                self.stack.append(_Set())
            elif name == "LIST":
                items = self.pop_mark()  # (before naming self.stack: pop_mark replaces it)
                self.stack.append(items)
            elif name == "TUPLE":
                items = self.pop_mark()
                self.stack.append(tuple(items))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                if len(self.stack) < n:
                    raise _Corrupt("stack underflow")
                items = tuple(self.stack[-n:])
                del self.stack[-n:]
                self.stack.append(items)
            elif name == "DICT":
                items = self.pop_mark()
                self.stack.append(_Dict(list(zip(items[::2], items[1::2]))))
            elif name == "FROZENSET":
                items = self.pop_mark()
                self.stack.append(_Set(items))
            elif name == "APPEND":
                value = self.pop()
                self._append(self.mutate(self.top(), name, offset), [value])
            elif name == "APPENDS":
                items = self.pop_mark()
                self._append(self.mutate(self.top(), name, offset), items)
            elif name == "SETITEM":
                value, key = self.pop(), self.pop()
                self._setitems(self.mutate(self.top(), name, offset), [(key, value)])
            elif name == "SETITEMS":
                items = self.pop_mark()
                self._setitems(self.mutate(self.top(), name, offset), list(zip(items[::2], items[1::2])))
            elif name == "ADDITEMS":
                items = self.pop_mark()
                target = self.mutate(self.top(), name, offset)
                if isinstance(target, _Set):
                    target.items.extend(items)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                self.memo[arg] = self.top()
            elif name == "MEMOIZE":
                self.memo[len(self.memo)] = self.top()
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in self.memo:
                    raise _Corrupt(f"memo key {arg!r} was never stored")
                self.stack.append(self.memo[arg])
            elif name in ("GLOBAL", "INST"):
                g = self.global_(arg[0], arg[1], name, offset)
                if name == "INST":
                    items = self.pop_mark()
                    self.stack.append(self.call(g, tuple(items), None, name, offset))
                else:
                    self.stack.append(g)
            elif name == "STACK_GLOBAL":
                gname, module = self.pop(), self.pop()
                self.stack.append(self.global_(module, gname, name, offset))
            elif name in ("EXT1", "EXT2", "EXT4"):
                self.rec.find("extension", f"{name} {arg} (a global from the loading process's copyreg registry)",
                              self.where, offset)
                self.stack.append(_Global("?", f"ext{arg}", offset, False))
            elif name == "REDUCE":
                args = self.pop()
                self.stack.append(self.call(self.pop(), args, None, name, offset))
            elif name == "NEWOBJ":
                args = self.pop()
                self.stack.append(self.call(self.pop(), args, None, name, offset))
            elif name == "NEWOBJ_EX":
                kwargs, args = self.pop(), self.pop()
                self.stack.append(self.call(self.pop(), args, kwargs, name, offset))
            elif name == "OBJ":
                items = self.pop_mark()
                if not items:
                    raise _Corrupt("OBJ without a class")
                self.stack.append(self.call(items[0], tuple(items[1:]), None, name, offset))
            elif name == "BUILD":
                state = self.pop()
                inst = self.mutate(self.top(), name, offset)
                if isinstance(inst, _Call):
                    inst.state = state
                    if inst.func_name() == _JOBLIB_WRAPPER:
                        self.stack[-1] = self._joblib_array(inst)
            elif name == "PERSID":
                self.stack.append(self.persistent(arg, offset))
            elif name == "BINPERSID":
                self.stack.append(self.persistent(self.pop(), offset))
            elif name == "NEXT_BUFFER":
                self.stack.append(_Blob(0))
            elif name == "READONLY_BUFFER":
                self.top()
            else:  # pragma: no cover  (every opcode of pickletools' table is handled above)
                raise _Corrupt(f"unhandled opcode {name}")

    def _append(self, target: Any, items: list[Any]) -> None:
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, _Call):
            target.appends.extend(items)

    def _setitems(self, target: Any, pairs: list[tuple[Any, Any]]) -> None:
        if isinstance(target, (_Dict, _Call)):
            target.items.extend(pairs)

    def _joblib_array(self, wrapper: _Call) -> Any:
        """Skip the bytes joblib writes after a NumpyArrayWrapper; an object array is a nested pickle, scanned."""
        state = _as_dict(wrapper.state)
        dtype, shape = state.get("dtype"), state.get("shape")
        if not isinstance(dtype, _Call) or not isinstance(shape, tuple) or \
                not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _Corrupt("a joblib array wrapper without a readable dtype and shape")
        itemsize, hasobject = _dtype_size(dtype)
        if hasobject:
            return _PickleMachine(self.s, self.where + " (joblib object array)", self.rec).run()
        if "numpy_array_alignment_bytes" in state:
            self.s.skip(self.s.exact(1, "joblib's padding length")[0], "joblib's padding")
        count = 1
        for d in shape:
            count *= d
        self.s.skip(count * itemsize, f"a joblib array of {count} x {itemsize} bytes")
        return _Blob(count * itemsize)


class _Broken(Exception):
    """A pickle that did not parse; its message is already recorded as the PickleScan's error."""


def _as_dict(value: Any) -> dict[Any, Any]:
    if isinstance(value, _Dict):
        return {k: v for k, v in value.items if isinstance(k, (str, int, bytes))}
    return {}


def _dtype_size(dtype: _Call) -> tuple[int, bool]:
    """(itemsize, has objects) of a symbolic ``numpy.dtype(spec, align, copy)`` with its BUILD state."""
    import numpy as np

    args = dtype.args if isinstance(dtype.args, tuple) else ()
    state = dtype.state if isinstance(dtype.state, tuple) else ()
    spec = args[0] if args else None
    if not isinstance(spec, str) or not re.fullmatch(r"[|<>=]?[a-zA-Z]\d*", spec):
        raise _Corrupt("a joblib array with an unreadable dtype")
    flags = state[7] if len(state) > 7 and isinstance(state[7], int) else 0
    elsize = state[5] if len(state) > 5 and isinstance(state[5], int) else -1
    try:
        base = np.dtype(spec)
    except TypeError:
        raise _Corrupt(f"a joblib array of unknown dtype {spec!r}") from None
    return (elsize if elsize > 0 else base.itemsize), bool(base.hasobject or flags & 1)


# --------------------------------------------------------------------------- files and archives

# How to treat content that has no magic bytes (the first bytes of a pickle are often not telling):
#   pickle  - it must be a pickle: a failure is an error (a .pkl, a member named data.pkl)
#   file    - the file a user named: a pickle if it parses, or if it imported something before breaking
#   member  - an archive member starting like a pickle: a failure is only a note (raw tensor bytes can look so)
#   maybe   - a file in a scanned directory: a pickle only if it parses completely
#   skip    - an archive member without magic: not read


class _Scanner:
    def __init__(self) -> None:
        self.rec = _Recorder()

    def stream(self, s: _Stream, where: str, name: str, depth: int, path: Path | None = None,
               mode: str = "maybe") -> bool:
        """Scan one stream; False when it is none of the things a scan reads."""
        if depth > MAX_DEPTH:
            self.rec.errors.append(f"{where}: archives nested deeper than {MAX_DEPTH}")
            return True
        head = s.peek(512)
        pickle_name = Path(name).suffix.lower() in _PICKLE_SUFFIXES
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            self.zip(s, where, depth, path)
        elif len(head) >= 262 and head[257:262] == b"ustar":
            self.tar(s, where, depth, path)
        elif head[:6] == b"\x93NUMPY":
            self.npy(s, where)
        elif head[:2] == b"\x1f\x8b":
            self.decompressed(s, where, name, depth, "gzip", lambda fh: gzip.GzipFile(fileobj=fh))
        elif head[:3] == b"BZh":
            self.decompressed(s, where, name, depth, "bz2", bz2.BZ2File)
        elif head[:6] == b"\xfd7zXZ\x00" or head[:3] == b"\x5d\x00\x00":
            self.decompressed(s, where, name, depth, "xz", lzma.LZMAFile)
        elif len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
            self.decompressed(s, where, name, depth, "zlib", _ZlibReader)
        elif head[:4] == b"\x04\x22\x4d\x18":
            self.rec.errors.append(f"{where}: lz4-compressed (joblib compress='lz4'): no lz4 decoder to scan it with")
        elif head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
            return self.pickles(s, where, "pickle" if mode in ("pickle", "file") or pickle_name else "member")
        elif mode == "skip":
            return False
        else:
            return self.pickles(s, where, "pickle" if mode == "pickle" or pickle_name else mode)
        return True

    def pickles(self, s: _Stream, where: str, mode: str) -> bool:
        """Every pickle of a stream: the first, then those that follow it (torch's legacy format has five)."""
        first_rec = _Recorder()
        try:
            first = _PickleMachine(s, where, first_rec).run()
        except _Broken as exc:
            imported = bool(first_rec.findings)
            if mode == "pickle" or (mode == "file" and imported):
                self.rec.merge(first_rec)
                self.rec.errors.append(f"{where}: {exc}")
                return True
            if mode == "member" and imported:
                self.rec.merge(first_rec)
                self.rec.notes.append(f"{where}: {exc}")
                return True
            return False
        self.rec.merge(first_rec)
        if first == _LEGACY_MAGIC:
            self.legacy(s, where)
        index = 2
        while not s.at_eof():
            if s.peek(1) != b"\x80":
                self.rec.notes.append(f"{where}: {_remaining(s)} bytes after the pickle, not a pickle: not scanned")
                break
            tag, more = f"{where} [pickle {index}]", _Recorder()
            try:
                _PickleMachine(s, tag, more).run()
            except _Broken as exc:  # bytes after a pickle that only start like one: a note, unless it imported
                more.pickles.clear()
                self.rec.merge(more, errors_as_notes=True)
                self.rec.notes.append(f"{tag}: {exc}")
                break
            self.rec.merge(more)
            index += 1
        return True

    def legacy(self, s: _Stream, where: str) -> None:
        """torch's legacy format: magic, protocol, sys_info, the object, the storage keys; then the storages."""
        machines = []
        try:
            for i in range(2, 6):
                m = _PickleMachine(s, f"{where} [pickle {i}]", self.rec)
                machines.append((m, m.run()))
        except _Broken as exc:
            self.rec.errors.append(f"{where}: {exc}")
            return
        main, keys = machines[2][0], machines[3][1]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            self.rec.errors.append(f"{where}: torch legacy checkpoint without a list of storage keys")
            return
        try:
            for key in keys:
                numel, elsize = _legacy_storage(main.storages, key)
                got = struct.unpack("<q", s.exact(8, f"the size of storage {key}"))[0]
                if got != numel:
                    raise _Corrupt(f"storage {key} holds {got} elements, its tensor says {numel}")
                s.skip(numel * elsize, f"storage {key}")
        except (_Truncated, _Corrupt) as exc:
            self.rec.errors.append(f"{where}: torch legacy checkpoint: {exc}")
            return
        self.rec.notes.append(f"{where}: torch legacy checkpoint, {len(keys)} storage(s) checked by size")

    def decompressed(self, s: _Stream, where: str, name: str, depth: int, kind: str,
                     opener: Callable[[Any], Any]) -> None:
        inner = f"{where}!({kind})"
        try:
            with opener(_Reader(s)) as fh:
                if not self.stream(_Stream(fh), inner, Path(name).stem, depth + 1, mode="file"):
                    self.rec.notes.append(f"{inner}: neither pickle nor archive: not scanned")
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            self.rec.errors.append(f"{inner}: corrupt {kind} stream ({exc})")

    def zip(self, s: _Stream, where: str, depth: int, path: Path | None) -> None:
        with _Seekable(s, path) as fh:
            if fh is None:
                self.rec.errors.append(f"{where}: a nested archive larger than {_MAX_SPOOL >> 30} GiB: not scanned")
                return
            try:
                zf = zipfile.ZipFile(fh)
            except _ZIP_ERRORS as exc:
                self.rec.errors.append(f"{where}: corrupt or truncated zip archive ({exc})")
                return
            with zf:
                self.zip_members(zf, where, depth)

    def zip_members(self, zf: zipfile.ZipFile, where: str, depth: int) -> None:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        roots = {n[: -len("data.pkl")] for n in names if n == "data.pkl" or n.endswith("/data.pkl")}
        for root in sorted(roots):
            code = [n for n in names if n.startswith(root + "code/") and not n.endswith("/")]
            if code or root + "constants.pkl" in names:
                self.rec.find("torchscript", f"a TorchScript archive ({len(code)} code file(s) under {root}code/, "
                              "compiled and run by torch.jit.load)", where, None)
        storages = tuple(r + d for r in roots for d in ("data/", ".data/", "constants/"))
        skipped = 0
        for info in infos:
            if info.filename.endswith("/"):  # a directory (info.is_dir() fails on an empty name)
                continue
            member = f"{where}!{info.filename}"
            if info.filename.startswith(storages) and not info.filename.endswith(".pkl"):
                skipped += 1  # raw tensor bytes: torch never unpickles them
                continue
            if info.flag_bits & 0x1:
                self.rec.errors.append(f"{member}: encrypted member: cannot be scanned")
                continue
            named = Path(info.filename).suffix.lower() in (".pkl", ".pickle")
            try:
                with zf.open(info) as fh:
                    self.stream(_Stream(fh), member, info.filename, depth + 1, mode="pickle" if named else "skip")
            except _ZIP_ERRORS as exc:
                self.rec.errors.append(f"{member}: unreadable zip member ({exc})")
        if skipped:
            self.rec.notes.append(f"{where}: {skipped} tensor storage record(s) (raw bytes, never unpickled)")

    def tar(self, s: _Stream, where: str, depth: int, path: Path | None) -> None:
        with _Seekable(s, path) as fh:
            if fh is None:
                self.rec.errors.append(f"{where}: a nested archive larger than {_MAX_SPOOL >> 30} GiB: not scanned")
                return
            self.tar_as_pickle(fh, where)
            fh.seek(0)
            try:
                with tarfile.open(fileobj=fh, mode="r:") as tf:
                    for m in tf:
                        self.tar_member(tf, m, f"{where}!{m.name}", depth)
            except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
                self.rec.errors.append(f"{where}: corrupt or truncated tar archive ({exc})")

    def tar_member(self, tf: tarfile.TarFile, m: tarfile.TarInfo, member: str, depth: int) -> None:
        if not m.isfile():
            if not m.isdir():
                kind = "link" if m.issym() or m.islnk() else "special file"
                self.rec.notes.append(f"{member}: a {kind}: not followed")
            return
        fh = tf.extractfile(m)
        if fh is not None:
            named = Path(m.name).suffix.lower() in (".pkl", ".pickle")
            self.stream(_Stream(fh), member, m.name, depth + 1, mode="pickle" if named else "skip")

    def tar_as_pickle(self, fh: BinaryIO, where: str) -> None:
        """A tar starts with a member name its author chose, which can begin a pickle that runs when the
        .tar is given to pickle.load (a polyglot). Its imports count; that it breaks is no error."""
        other = _Recorder()
        try:
            _PickleMachine(_Stream(fh), where + " (read as a pickle)", other).run()
        except _Broken:
            pass
        if other.findings:
            other.pickles.clear()
            self.rec.merge(other, errors_as_notes=True)

    def npy(self, s: _Stream, where: str) -> None:
        import numpy as np

        try:
            s.exact(6, "the .npy magic")
            major, _minor = s.exact(2, "the .npy version")
            size = struct.unpack("<H" if major == 1 else "<I", s.exact(2 if major == 1 else 4, "the .npy header size"))[0]
            if size > 1 << 20:
                raise _Corrupt(f"a .npy header of {size} bytes")
            header = ast.literal_eval(s.exact(size, "the .npy header").decode("latin-1"))
            dtype = np.lib.format.descr_to_dtype(header["descr"])
        except (_Truncated, _Corrupt, ValueError, SyntaxError, KeyError, TypeError, MemoryError,
                RecursionError, IndexError) as exc:
            self.rec.errors.append(f"{where}: corrupt .npy header ({exc})")
            return
        if not dtype.hasobject:
            self.rec.notes.append(f"{where}: numeric array ({dtype}): no pickle")
            return
        try:
            _PickleMachine(s, where + " (object array)", self.rec).run()
        except _Broken as exc:
            self.rec.errors.append(f"{where}: {exc}")

    def appended_zip(self, p: Path) -> None:
        """A pickle with a zip appended (a polyglot): zip readers see the zip. Its errors are only notes."""
        other = _Scanner()
        with open(p, "rb") as fh:
            other.zip(_Stream(fh), p.name + " (appended zip)", 0, p)
        self.rec.merge(other.rec, errors_as_notes=True)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
# What zipfile raises on a damaged archive (bad names raise UnicodeDecodeError, a ValueError).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error,
               NotImplementedError, RuntimeError, zlib.error, KeyError)


def _legacy_storage(storages: dict[str, tuple[str, int]], key: str) -> tuple[int, int]:
    if key not in storages:
        raise _Corrupt(f"storage {key} is listed but no tensor uses it")
    type_name, numel = storages[key]
    elsize = 1 if type_name == "UntypedStorage" else _STORAGE_ELEMENT_SIZE.get(type_name.removesuffix("Storage"), 0)
    if not elsize or numel < 0:
        raise _Corrupt(f"storage {key} of unknown type {type_name}")
    return numel, elsize


def _remaining(s: _Stream) -> int:
    n = len(s.head)
    if isinstance(s.fh, io.BufferedReader):  # a real file: its size says it
        rest = os.fstat(s.fh.fileno()).st_size - s.fh.tell()
        s.fh.seek(0, io.SEEK_END)
        s.head = b""
        return n + rest
    while chunk := s.fh.read(1 << 20):
        n += len(chunk)
    s.head = b""
    return n


class _Reader(io.RawIOBase):
    """A _Stream as a file object (for tarfile and the decompressors)."""

    def __init__(self, s: _Stream) -> None:
        self.s = s

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.s.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Seekable:
    """The stream as a seekable file: the file itself, or a temporary copy (None when too large)."""

    def __init__(self, s: _Stream, path: Path | None) -> None:
        self.s, self.path, self.fh = s, path, None

    def __enter__(self) -> BinaryIO | None:
        if self.path is not None:
            self.fh = open(self.path, "rb")  # noqa: SIM115
            return self.fh
        self.fh = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115
        total = 0
        while chunk := self.s.read(1 << 20):
            total += len(chunk)
            if total > _MAX_SPOOL:
                return None
            self.fh.write(chunk)
        self.fh.seek(0)
        return self.fh  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.close()


def _scan_file(sc: _Scanner, p: Path, where: str, mode: str) -> bool:
    try:
        fh = open(p, "rb")  # noqa: SIM115
    except OSError as exc:
        raise BadInputError(f"cannot read file: {exc.strerror}", path=p) from None
    with fh:
        return sc.stream(_Stream(fh), where, p.name, 0, path=p, mode=mode)


def scan_path(path: str | Path) -> ScanReport:
    """Statically read every pickle in ``path`` (a file or a directory); nothing is unpickled or imported.

    Returns the report whatever it finds (``report.check()`` raises on findings or errors).

    Raises:
        BadInputError: no such path, or nothing in it is a pickle, an archive or a .npy/.npz file.
    """
    p = Path(path)
    if not p.exists():
        raise BadInputError("no such file or directory", path=path)
    sc = _Scanner()
    files = 0
    if p.is_dir():
        skipped = []
        for f in sorted(p.rglob("*")):
            rel = str(f.relative_to(p))
            if f.is_symlink():
                sc.rec.notes.append(f"{rel}: a symlink: not followed")
            elif f.is_file() and f.stat().st_size:
                if _scan_file(sc, f, rel, "maybe"):
                    files += 1
                else:
                    skipped.append(rel)
        if skipped:
            shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            sc.rec.notes.append(f"{len(skipped)} file(s) neither pickle nor archive, not scanned: {shown}")
        if not files:
            raise BadInputError("the directory holds no pickle, zip/tar archive or .npy/.npz file to scan", path=path)
    else:
        if not p.is_file():
            raise BadInputError("not a regular file", path=path)
        if p.stat().st_size == 0:
            raise BadInputError("file is empty", path=path)
        if not _scan_file(sc, p, p.name, "file"):
            raise BadInputError("not a pickle, a zip/tar archive or a .npy/.npz file: nothing to scan", path=path)
        files = 1
        if sc.rec.pickles and sc.rec.pickles[0].where == p.name and _is_zipfile(p):
            sc.appended_zip(p)  # the file itself is a pickle (not an archive) and yet a zip reader finds a zip
    rec = sc.rec
    return ScanReport(str(path), tuple(rec.pickles), tuple(rec.findings.values()), tuple(rec.errors),
                      tuple(rec.notes), files)


def _is_zipfile(p: Path) -> bool:
    """``zipfile.is_zipfile``, False where it raises (it lets BadZipFile out for a multi-disk end record)."""
    try:
        return zipfile.is_zipfile(p)
    except _ZIP_ERRORS:
        return False


def _head(p: Path, n: int) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(n)


# --------------------------------------------------------------------------- the restricted unpickler


@functools.lru_cache(maxsize=1)
def _allowed_objects() -> dict[tuple[str, str], Any]:
    """The allow-list's objects: torch's own table (what weights_only uses), frozenset, numpy reconstruction."""
    import builtins

    import numpy as np
    import torch

    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        table = _get_allowed_globals()
    except ImportError:  # pragma: no cover  (torch moved its table: fall back to attribute lookups)
        table = {}
    out: dict[tuple[str, str], Any] = {}
    for module, name in TORCH_ALLOWED_GLOBALS:
        obj = table.get(f"{module}.{name}")
        if obj is None and module.startswith("torch"):
            obj = functools.reduce(getattr, (module.split(".")[1:] + [name]), torch)
        if obj is not None:
            out[(module, name)] = obj
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(module, "_reconstruct")] = multiarray._reconstruct
        out[(module, "scalar")] = multiarray.scalar
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    for name in dir(np.dtypes):
        if _NUMPY_DTYPE_CLASS.fullmatch(name):
            out[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    out[("builtins", "frozenset")] = builtins.frozenset
    return out


@functools.lru_cache(maxsize=1)
def _allowed_ids() -> frozenset[int]:
    return frozenset(id(v) for v in _allowed_objects().values())


def _is_allowed_object(obj: Any) -> bool:
    return id(obj) in _allowed_ids()


class _Refused(pickle.UnpicklingError):
    pass


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """A pickle.Unpickler that imports nothing: only allow-listed objects, checked at every use.

    ``find_class`` returns objects from the allow-list's table (never imported by name); ``REDUCE``,
    ``NEWOBJ(_EX)``, ``OBJ`` and ``INST`` call only those; ``BUILD`` applies only to instances of
    them (tensors, parameters, OrderedDicts, ...); ``APPEND(S)`` only to lists, ``SETITEM(S)`` only
    to dicts, ``ADDITEMS`` only to sets, as torch's ``weights_only`` unpickler does. It extends the
    pure-Python unpickler because the C one calls whatever a ``REDUCE`` finds on its stack.
    ``persistent_load`` is the caller's ``storages(pid)``.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: BinaryIO, storages: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file, encoding="utf-8")
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        objects = _allowed_objects()
        obj = objects.get((module, name))
        if obj is None and (mapped := _mapped(module, name)) is not None:
            obj = objects.get(mapped)
        if obj is None:
            raise _Refused(f"{module}.{name}")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise _Refused("a persistent id")
        return self._storages(pid)

    def _callable(self, obj: Any, what: str) -> Any:
        if not _is_allowed_object(obj):
            raise _Refused(f"{what} of {type(obj).__name__} {getattr(obj, '__qualname__', '')!s}".strip())
        return obj

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self._callable(self.stack[-1], "a call")
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self._callable(self.stack.pop(), "a NEWOBJ")
        self.append(_new(cls, args, {}))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self._callable(self.stack.pop(), "a NEWOBJ_EX")
        self.append(_new(cls, args, kwargs))

    def _instantiate(self, klass: Any, args: Any) -> None:
        self.append(self._callable(klass, "an INST/OBJ")(*args))

    def load_build(self) -> None:
        import torch

        inst = self.stack[-2]  # under the state BUILD applies
        kind = type(inst)
        if kind not in (torch.Tensor, torch.nn.Parameter, collections.OrderedDict, collections.Counter) \
                and not _is_allowed_object(kind):
            raise _Refused(f"a BUILD of {kind.__name__}")
        super().load_build()

    def load_append(self) -> None:
        if type(self.stack[-2]) is not list:
            raise _Refused("an APPEND to a non-list")
        super().load_append()

    def load_appends(self) -> None:
        if type(self.metastack[-1][-1]) is not list:
            raise _Refused("an APPENDS to a non-list")
        super().load_appends()

    def load_setitem(self) -> None:
        _check_mapping(self.stack[-3])
        super().load_setitem()

    def load_setitems(self) -> None:
        _check_mapping(self.metastack[-1][-1])
        super().load_setitems()

    def load_additems(self) -> None:
        if type(self.metastack[-1][-1]) is not set:
            raise _Refused("an ADDITEMS to a non-set")
        super().load_additems()

    for _code, _fn in (("REDUCE", load_reduce), ("NEWOBJ", load_newobj), ("NEWOBJ_EX", load_newobj_ex),
                       ("BUILD", load_build), ("APPEND", load_append), ("APPENDS", load_appends),
                       ("SETITEM", load_setitem), ("SETITEMS", load_setitems), ("ADDITEMS", load_additems)):
        dispatch[getattr(pickle, _code)[0]] = _fn
    del _code, _fn


def _new(cls: Any, args: Any, kwargs: Any) -> Any:
    import torch

    if cls is torch.nn.Parameter:
        return torch.nn.Parameter(*args, **kwargs)
    return cls.__new__(cls, *args, **kwargs)


def _check_mapping(target: Any) -> None:
    if type(target) not in (dict, collections.OrderedDict, collections.Counter):
        raise _Refused(f"a SETITEM on {type(target).__name__}")


# --------------------------------------------------------------------------- torch checkpoints


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A ``torch.save`` file rebuilt: the object, the container format, the storages read."""

    obj: Any
    container: str  # "zip" or "legacy"
    storages: int
    reader: str  # "restricted unpickler" or "static read"


def checkpoint_container(path: str | Path) -> str:
    """``zip`` (torch >= 1.6), ``legacy`` (``_use_new_zipfile_serialization=False``), ``tar`` (torch < 0.4) or ``other``."""
    p = Path(path)
    head = _head(p, 512)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    try:
        with open(p, "rb") as fh:
            if RestrictedUnpickler(fh).load() == _LEGACY_MAGIC:
                return "legacy"
    except Exception:  # noqa: BLE001  (anything else is simply not the legacy format)
        pass
    return "other"


def _dtype_of(storage_type: Any) -> Any:
    import torch

    if storage_type is torch.storage.UntypedStorage:
        return torch.uint8
    dtype = getattr(storage_type, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise BadInputError(f"a storage of unknown type {storage_type!r}")
    return dtype


def _element_size(dtype: Any) -> int:
    import torch

    return torch._utils._element_size(dtype)


def _refusal(path: str | Path, exc: Exception) -> UnsafeError:
    return UnsafeError(f"refused: the checkpoint asks for {exc}, which is outside the allow-list "
                       f"(see `modelport scan {path}`)", path=path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild a ``torch.save`` file with :class:`RestrictedUnpickler`; never falls back to anything looser.

    Raises:
        UnsafeError: the file asks for a global or an operation outside the allow-list, or is TorchScript.
        BadInputError: corrupt or truncated.
        UnsupportedError: a container format this reader does not read (the pre-1.0 tar format,
            big-endian storages, storage views).
    """
    kind = checkpoint_container(path)
    if kind == "zip":
        return _load_zip(Path(path))
    if kind == "legacy":
        return _load_legacy(Path(path))
    if kind == "tar":
        raise UnsupportedError("torch's pre-1.0 tar checkpoint format is not read (load and re-save it with torch < 2)",
                               path=path)
    raise UnsupportedError("not a torch.save checkpoint (a zip archive with data.pkl, or torch's legacy format)",
                           path=path)


def _zip_root(zf: zipfile.ZipFile, path: str | Path) -> str:
    names = zf.namelist()
    twice = sorted(n for n, k in collections.Counter(names).items() if k > 1)
    if twice:  # readers disagree on which copy they read (Python's zipfile takes the last)
        raise UnsafeError(f"refused: the archive holds {len(twice)} member name(s) twice ({', '.join(twice[:3])})",
                          path=path)
    pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkl) != 1:
        raise UnsupportedError(f"a zip archive with {len(pkl) or 'no'} data.pkl record(s): not one torch.save "
                               "checkpoint", path=path)
    root = pkl[0][: -len("data.pkl")]
    if any(n.startswith(root + "code/") for n in names) or root + "constants.pkl" in names:
        raise UnsafeError("refused: a TorchScript archive (it carries code that torch.jit.load runs), not a checkpoint",
                          path=path)
    if root + "byteorder" in names and _read_member(zf, root + "byteorder", Path(path)).strip() not in (b"little", b""):
        raise UnsupportedError("a big-endian checkpoint: not read", path=path)
    return root


def _load_zip(path: Path) -> Checkpoint:
    import torch

    zf = _open_zip(path)
    with zf:
        root = _zip_root(zf, path)
        loaded: dict[str, Any] = {}

        def storages(pid: Any) -> Any:
            if not (type(pid) is tuple and len(pid) == 5 and pid[0] in ("storage", b"storage")):
                raise _Refused("a persistent id that is not a torch storage")
            _, storage_type, key, _location, numel = pid
            dtype = _dtype_of(storage_type)
            key = key.decode("latin-1") if isinstance(key, bytes) else str(key)
            if key not in loaded:
                nbytes = int(numel) * _element_size(dtype)
                buf = _read_record(zf, f"{root}data/{key}", nbytes, path)
                loaded[key] = torch.storage.TypedStorage(wrap_storage=buf.untyped_storage(), dtype=dtype, _internal=True)
            return loaded[key]

        obj = _unpickle(io.BytesIO(_read_member(zf, root + "data.pkl", path)), storages, path)
    return Checkpoint(obj, "zip", len(loaded), "restricted unpickler")


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as exc:
        raise BadInputError(f"corrupt or truncated archive ({exc})", path=path) from None


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return zf.read(name)
    except _ZIP_ERRORS as exc:
        raise BadInputError(f"unreadable archive member {name} ({exc})", path=path) from None


def _read_record(zf: zipfile.ZipFile, name: str, nbytes: int, path: Path) -> Any:
    import torch

    try:
        info = zf.getinfo(name)
    except KeyError:
        raise BadInputError(f"the archive has no storage record {name}", path=path) from None
    if info.file_size < nbytes:
        raise BadInputError(f"storage record {name} holds {info.file_size} bytes, its tensor needs {nbytes}", path=path)
    buf = torch.empty(nbytes, dtype=torch.uint8)
    try:
        with zf.open(info) as fh:
            _readinto(fh, buf, name)
    except _ZIP_ERRORS as exc:
        raise BadInputError(f"unreadable storage record {name} ({exc})", path=path) from None
    return buf


def _readinto(fh: Any, buf: Any, what: str) -> None:
    view = memoryview(buf.numpy()).cast("B") if buf.numel() else memoryview(b"")
    done = 0
    while done < len(view):
        n = fh.readinto(view[done:])
        if not n:
            raise EOFError(f"{what} ends after {done} of {len(view)} bytes")
        done += n


def _unpickle(fh: BinaryIO, storages: Callable[[Any], Any] | None, path: str | Path) -> Any:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation notes
            return RestrictedUnpickler(fh, storages).load()
    except _Refused as exc:
        raise _refusal(path, exc) from None
    except (BadInputError, UnsafeError, UnsupportedError):
        raise
    except RecursionError:
        raise BadInputError("corrupt checkpoint: nested too deeply", path=path) from None
    except Exception as exc:  # noqa: BLE001  (corrupt data makes the unpickler fail in many ways)
        raise BadInputError(f"corrupt or truncated checkpoint ({type(exc).__name__}: {str(exc)[:200]})",
                            path=path) from None


def _load_legacy(path: Path) -> Checkpoint:
    import torch

    created: dict[str, tuple[Any, Any, int]] = {}  # key -> (buffer, typed storage, numel)
    room = path.stat().st_size  # every storage must fit in the file: no allocation beyond it

    def storages(pid: Any) -> Any:
        if not (type(pid) is tuple and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise _Refused("a persistent id that is not a torch storage (a pickled module's source?)")
        _, storage_type, key, _location, numel, view = pid
        if view is not None:
            raise UnsupportedError("a legacy checkpoint with storage views: not read", path=path)
        dtype = _dtype_of(storage_type)
        key = str(key)
        if key not in created:
            nbytes = int(numel) * _element_size(dtype)
            if not 0 <= nbytes <= room:
                raise BadInputError(f"storage {key} claims {nbytes} bytes, more than the file holds", path=path)
            buf = torch.zeros(nbytes, dtype=torch.uint8)
            typed = torch.storage.TypedStorage(wrap_storage=buf.untyped_storage(), dtype=dtype, _internal=True)
            created[key] = (buf, typed, int(numel))
        return created[key][1]

    with open(path, "rb") as fh:
        magic, version, sys_info = (_unpickle(fh, None, path) for _ in range(3))
        if magic != _LEGACY_MAGIC or version != 1001 or not isinstance(sys_info, dict):
            raise BadInputError("corrupt torch legacy checkpoint header", path=path)
        if not sys_info.get("little_endian", True):
            raise UnsupportedError("a big-endian checkpoint: not read", path=path)
        obj = _unpickle(fh, storages, path)
        keys = _unpickle(fh, None, path)
        if not isinstance(keys, list) or set(map(str, keys)) != set(created):
            raise BadInputError("corrupt torch legacy checkpoint: its storage list does not match its tensors", path=path)
        try:
            for key in keys:
                buf, _, numel = created[str(key)]
                got = struct.unpack("<q", _exact(fh, 8))[0]
                if got != numel:
                    raise EOFError(f"storage {key} holds {got} elements, its tensor says {numel}")
                _readinto(fh, buf, f"storage {key}")
        except (EOFError, struct.error) as exc:
            raise BadInputError(f"truncated torch legacy checkpoint ({exc})", path=path) from None
    return Checkpoint(obj, "legacy", len(created), "restricted unpickler")


def _exact(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise EOFError("the file ends inside a storage header")
    return data


# --------------------------------------------------------------------------- the independent static read


def read_static(path: str | Path) -> Checkpoint:
    """A second reader of a ``torch.save`` file that shares nothing with :class:`RestrictedUnpickler`.

    The pickle is evaluated symbolically by the scanner's machine; tensors are cut from the raw
    storage bytes (``torch.as_strided`` over a ``uint8`` buffer viewed as the storage's dtype);
    containers become dicts, lists and tuples; any other object becomes an :class:`Opaque` marker.
    Only ``_rebuild_tensor(_v2/_v3)`` and ``_rebuild_parameter(_with_state)`` make tensors.
    """
    p = Path(path)
    kind = checkpoint_container(p)
    rec = _Recorder()
    if kind == "zip":
        with _open_zip(p) as zf:
            root = _zip_root(zf, p)
            machine = _PickleMachine(_Stream(io.BytesIO(_read_member(zf, root + "data.pkl", p))), "data.pkl", rec)
            value = _run_static(machine, p)
            _no_findings(rec, p)
            cache = _StorageCache(lambda key, nbytes: _read_record(zf, f"{root}data/{key}", nbytes, p))
            obj = _materialize(value, cache, p)
        return Checkpoint(obj, "zip", len(machine.storages), "static read")
    if kind != "legacy":
        return load_checkpoint(p)  # refuses the same way, for the same reason
    with open(p, "rb") as fh:
        s = _Stream(fh)
        machines = [_PickleMachine(s, f"pickle {i + 1}", rec) for i in range(5)]
        values = [_run_static(m, p) for m in machines]
        start = s.pos
    _no_findings(rec, p)
    offsets: dict[str, int] = {}
    pos = start
    for key in values[4] if isinstance(values[4], list) else []:
        try:
            numel, elsize = _legacy_storage(machines[3].storages, str(key))
        except _Corrupt as exc:
            raise BadInputError(f"corrupt torch legacy checkpoint ({exc})", path=path) from None
        offsets[str(key)] = pos + 8
        pos += 8 + numel * elsize

    def raw(key: str, nbytes: int) -> Any:
        import torch

        if key not in offsets:
            raise BadInputError(f"storage {key} is not in the legacy checkpoint's list", path=path)
        buf = torch.empty(nbytes, dtype=torch.uint8)
        with open(p, "rb") as fh:
            fh.seek(offsets[key])
            try:
                _readinto(fh, buf, f"storage {key}")
            except EOFError as exc:
                raise BadInputError(f"truncated torch legacy checkpoint ({exc})", path=path) from None
        return buf

    if pos > p.stat().st_size:
        raise BadInputError("truncated torch legacy checkpoint: its storages end past the file", path=path)
    obj = _materialize(values[3], _StorageCache(raw), p)
    return Checkpoint(obj, "legacy", len(offsets), "static read")


def _run_static(machine: _PickleMachine, path: Path) -> Any:
    try:
        return machine.run()
    except _Broken as exc:
        raise BadInputError(f"corrupt checkpoint ({exc})", path=path) from None


def _no_findings(rec: _Recorder, path: Path) -> None:
    if rec.findings:
        raise UnsafeError("refused: " + "; ".join(str(f) for f in rec.findings.values()), path=path)


class _StorageCache:
    """Storage bytes by key, read once: (uint8 buffer, dtype) for a persistent id."""

    def __init__(self, raw: Callable[[str, int], Any]) -> None:
        self.raw, self.cache = raw, {}

    def get(self, pid: Any) -> tuple[Any, Any]:
        import torch

        by_name = {name: dtype for dtype, name in torch.storage._dtype_to_storage_type_map().items()}
        key = pid[2].decode("latin-1") if isinstance(pid[2], bytes) else str(pid[2])
        type_name = pid[1].name if len(pid) > 4 and isinstance(pid[1], _Global) else "?"
        dtype = torch.uint8 if type_name == "UntypedStorage" else by_name.get(type_name)
        if dtype is None or not isinstance(pid[4], int):
            raise BadInputError(f"a storage of unknown type {type_name}")
        if key not in self.cache:
            self.cache[key] = self.raw(key, pid[4] * _element_size(dtype))
        return self.cache[key], dtype


class Opaque:
    """An object the static read does not rebuild, named by the global that would build it."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_TENSOR_REBUILDS = ("torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3")


def _materialize(value: Any, storages: _StorageCache, path: Path, depth: int = 0) -> Any:
    if depth > 200:
        raise BadInputError("checkpoint nested too deeply", path=path)
    again = functools.partial(_materialize, storages=storages, path=path, depth=depth + 1)
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return value
    if isinstance(value, list):
        return [again(v) for v in value]
    if isinstance(value, tuple):
        return tuple(again(v) for v in value)
    if isinstance(value, _Dict):
        return _plain_dict(value.items, again)
    if isinstance(value, _Set):
        return [again(v) for v in value.items]
    if isinstance(value, _Global):
        return Opaque(value.full)
    if not isinstance(value, _Call):
        return Opaque(type(value).__name__.lstrip("_"))
    name, args = value.func_name(), value.args if isinstance(value.args, tuple) else ()
    if name == "collections.OrderedDict":
        return _plain_dict(value.items, again)
    if name in ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state") and args:
        return again(args[0])
    if name in _TENSOR_REBUILDS:
        return _static_tensor(name, args, storages, path)
    if name == "torch.Size" and args:
        return tuple(again(args[0]))
    return Opaque(name)


def _static_tensor(name: str, args: tuple[Any, ...], storages: _StorageCache, path: Path) -> Any:
    import torch

    if len(args) < 4 or not isinstance(args[0], _Persistent) or not isinstance(args[0].pid, tuple):
        raise BadInputError(f"a tensor rebuild without a storage ({name})", path=path)
    buf, dtype = storages.get(args[0].pid)
    if name.endswith("_v3"):
        spec = args[6] if len(args) > 6 else None
        dtype = getattr(torch, spec.name, None) if isinstance(spec, _Global) and spec.module == "torch" else None
        if not isinstance(dtype, torch.dtype):
            raise BadInputError("a _rebuild_tensor_v3 without a dtype", path=path)
    offset, size, stride = args[1], args[2], args[3]
    try:
        flat = buf.view(dtype) if buf.numel() else torch.empty(0, dtype=dtype)
        return torch.as_strided(flat, tuple(size), tuple(stride), int(offset))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise BadInputError(f"a tensor outside its storage ({str(exc)[:160]})", path=path) from None


def _plain_dict(items: list[tuple[Any, Any]], again: Callable[[Any], Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for k, v in items:
        key = again(k)
        try:
            out[key] = again(v)
        except TypeError:  # an unhashable key: kept by its text
            out[repr(key)] = again(v)
    return out
