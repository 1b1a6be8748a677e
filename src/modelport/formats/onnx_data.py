"""ONNX weights without copies: external data memory-mapped, written in chunks, released after use.

A model whose weights exceed protobuf's 2 GiB limit cannot be serialized whole (``EncodeError: Failed
to serialize proto``), and every copy of its weights costs their size in memory. This module keeps the
weights out of the ModelProto: a model is read with ``load_external_data=False``; an external tensor's
values are a read-only ``numpy.memmap`` of its file (:func:`array`), whose pages leave the process's
resident set again after use (:func:`release`); a model is written with its large tensors as external
data (:func:`save`) whenever its weights exceed :func:`threshold` bytes, each tensor copied from its
source file in chunks rather than through memory.

``MODELPORT_EXTERNAL_DATA_THRESHOLD`` (bytes) lowers the limit, so that the tests prove the mechanism
on small models; the default, 1.8 GiB, leaves protobuf headroom below 2 GiB.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from modelport.errors import BadInputError, UnsupportedError

THRESHOLD_ENV = "MODELPORT_EXTERNAL_DATA_THRESHOLD"
DEFAULT_THRESHOLD = int(1.8 * 2**30)
#: tensors at least this large go to the external data file of a model written with external data
MIN_EXTERNAL_BYTES = 1024
_CHUNK = 64 << 20  # bytes per read/write when a tensor is copied between files


def threshold() -> int:
    """Weight bytes above which a model is written with external data (env ``MODELPORT_EXTERNAL_DATA_THRESHOLD``)."""
    raw = os.environ.get(THRESHOLD_ENV, "").strip()
    if not raw:
        return DEFAULT_THRESHOLD
    try:
        value = int(float(raw))
    except ValueError:
        raise BadInputError(f"{THRESHOLD_ENV}={raw!r}: expected a number of bytes") from None
    if value < 0:
        raise BadInputError(f"{THRESHOLD_ENV}={raw!r}: expected a number of bytes >= 0")
    return value


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def _info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _np_dtype(t: onnx.TensorProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's values, from its metadata (nothing read)."""
    n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    if is_external(t):
        length = _info(t).get("length")
        if length is not None:
            return int(length)
    try:
        return n * _np_dtype(t).itemsize
    except Exception:  # noqa: BLE001  (strings, sub-byte types: their stored size)
        return len(t.raw_data) or t.ByteSize()


def initializers(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and Constant tensor of the model, subgraphs included."""
    from modelport.formats.onnx_format import iter_nodes

    yield from model.graph.initializer
    for node in iter_nodes(model.graph):
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from a.g.initializer
            for g in a.graphs:
                yield from g.initializer


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def has_external(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in initializers(model))


def file_has_external(path: str | os.PathLike) -> bool:
    """Whether the ONNX file at ``path`` keeps tensors in external data files (only the protobuf is read)."""
    from modelport.security.loaders import read_onnx

    return has_external(read_onnx(path, load_external_data=False))


def _source(t: onnx.TensorProto, base_dir: str | os.PathLike) -> tuple[Path, int, int]:
    info = _info(t)
    loc = info.get("location")
    if not loc:
        raise BadInputError(f"tensor {t.name!r} is marked external but names no location")
    path = Path(base_dir) / loc
    offset = int(info.get("offset", 0) or 0)
    length = int(info["length"]) if info.get("length") else None
    try:
        size = path.stat().st_size
    except OSError:
        raise BadInputError(f"missing external data file ({path}) for tensor {t.name!r}") from None
    want = tensor_bytes(t) if length is None else length
    if offset + want > size:
        raise BadInputError(f"external data of tensor {t.name!r} runs past the end of {path.name} "
                            f"(offset {offset} + {want} bytes > {size})")
    return path, offset, want


def array(t: onnx.TensorProto, base_dir: str | os.PathLike | None) -> np.ndarray:
    """A tensor's values: a read-only memmap of its external data file, else ``numpy_helper.to_array``.

    ``base_dir``: the directory of the model file (where external locations are resolved).
    """
    if not is_external(t) or t.raw_data:  # raw_data present: the data was loaded into the proto
        return numpy_helper.to_array(t)
    if base_dir is None:
        raise BadInputError(f"tensor {t.name!r} has external data but the model's directory is unknown")
    path, offset, length = _source(t, base_dir)
    dtype = _np_dtype(t)
    shape = tuple(int(d) for d in t.dims)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n * dtype.itemsize != length:
        raise BadInputError(f"external data of tensor {t.name!r} has {length} bytes, its shape {list(shape)} "
                            f"and type {dtype.name} need {n * dtype.itemsize}")
    if n == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _mapping(arr) -> mmap.mmap | None:
    base = arr
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        m = getattr(base, "_mmap", None)
        if isinstance(m, mmap.mmap):
            return m
        base = getattr(base, "base", None)
    return None


def is_mapped(arr) -> bool:
    """Whether ``arr`` (or the array it views) is backed by a memory-mapped file."""
    return _mapping(arr) is not None


def release(arr) -> None:
    """Drop the resident pages of the file mapping under ``arr`` (they stay in the page cache).

    Reading a memmap makes its pages part of the process's resident set until the mapping goes;
    after a tensor is used (copied, quantized, written) this gives them back.
    """
    m = _mapping(arr)
    if m is None or not hasattr(m, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        m.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # a closed or unsupported mapping: nothing to give back
        pass


def copy_range(src: Path, offset: int, length: int, out) -> None:
    """Append ``length`` bytes of ``src`` from ``offset`` to the open file ``out``, in chunks."""
    with open(src, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            buf = f.read(min(_CHUNK, left))
            if not buf:
                raise BadInputError(f"external data file {src.name} ends early")
            out.write(buf)
            left -= len(buf)


def write_array(arr: np.ndarray, out) -> None:
    """Append an array's bytes (C order) to the open file ``out``, a chunk of rows at a time."""
    if arr.ndim == 0 or arr.size == 0:
        out.write(np.ascontiguousarray(arr).tobytes())
        return
    flat = arr.reshape(arr.shape[0], -1) if arr.flags.c_contiguous else arr
    row = max(1, arr[0].nbytes if arr.ndim else arr.nbytes)
    step = max(1, _CHUNK // row)
    for i in range(0, arr.shape[0], step):
        out.write(np.ascontiguousarray(flat[i:i + step]).tobytes())
    release(arr)


def _tensors_to_place(model: onnx.ModelProto, given=()) -> list[onnx.TensorProto]:
    return [t for t in initializers(model) if tensor_bytes(t) >= MIN_EXTERNAL_BYTES or is_external(t) or t.name in given]


def save(model: onnx.ModelProto, dst: str | os.PathLike, *, base_dir: str | os.PathLike | None = None,
         arrays: dict[str, np.ndarray] | None = None, external: bool | None = None) -> bool:
    """Write ``model`` to ``dst``; large tensors as external data (``DST.data``) when its weights exceed the threshold.

    Tensors of ``model`` may refer to external data of a source model in ``base_dir`` (read without its data)
    or carry their values; ``arrays`` gives values by initializer name that replace a tensor's (memmaps, written in
    chunks, or writers ``fn(file) -> bytes written`` that append the tensor's bytes, computed chunk by chunk;
    a writer's tensor carries its dims and type, and is always written as external data). ``external``: force (True) or forbid
    (False) external data; None decides by size. Nothing is loaded whole: external tensors are copied from
    their files in chunks. ``model`` is changed in place (its tensors point at ``DST.data``). Returns
    whether external data was written.
    """
    dst = Path(dst)
    arrays = arrays or {}
    tensors = _tensors_to_place(model, arrays)
    total = sum(tensor_bytes(t) if t.name not in arrays or callable(arrays[t.name]) else int(arrays[t.name].nbytes)
                for t in tensors)
    if external is None:
        external = total > threshold()
    if any(callable(v) for v in arrays.values()):
        external = True
    if not external:
        for t in tensors:
            if t.name in arrays:
                t.CopyFrom(_embedded(t, np.asarray(arrays[t.name])))
            elif is_external(t) and not t.raw_data:
                t.CopyFrom(_embedded(t, np.asarray(array(t, base_dir))))
        onnx.save(model, str(dst))
        return False
    data = dst.with_name(dst.name + ".data")
    offset = 0
    with open(data, "wb") as out:
        for t in tensors:
            align = (-offset) % 4096  # page-aligned tensors: onnxruntime maps them instead of copying
            if align:
                out.write(b"\0" * align)
                offset += align
            if t.name in arrays and callable(arrays[t.name]):
                length = int(arrays[t.name](out))  # a writer: appends the tensor's bytes, returns how many
            elif t.name in arrays:
                arr = arrays[t.name]
                write_array(arr, out)
                length = int(arr.nbytes)
            elif is_external(t) and not t.raw_data:
                src, start, length = _source(t, base_dir)
                copy_range(src, start, length, out)
            else:
                arr = numpy_helper.to_array(t)
                out.write(np.ascontiguousarray(arr).tobytes())
                length = int(arr.nbytes)
            _point(t, data.name, offset, length)
            offset += length
    onnx.save(model, str(dst))
    return True


def data_files(model: onnx.ModelProto) -> list[str]:
    """The external data locations ``model``'s tensors name, in order of first use."""
    return list(dict.fromkeys(_info(t).get("location", "") for t in initializers(model) if is_external(t)))


def name_data_for(path: str | os.PathLike, dest_name: str) -> list[Path]:
    """Make the staged model ``path`` keep its external data in one file named for its destination.

    An exporter names the data after the file it wrote (torch.onnx's ``model.onnx.data`` for a staged
    ``model.onnx``, or one file per tensor): placed under another name, the model would point at files that
    are not there. The data becomes ``DEST_NAME.data`` beside ``path`` (as :func:`save` names it): one file is
    renamed, several are copied into one in chunks. Returns the data file to place beside the destination
    (none for a model without external data)."""
    import uuid

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = data_files(model)
    if not locations:
        return []
    want = path.parent / f"{dest_name}.data"
    if locations == [want.name]:
        return [want]
    if len(locations) == 1:
        os.replace(path.parent / locations[0], want)
        for t in initializers(model):
            if is_external(t):
                for e in t.external_data:
                    if e.key == "location":
                        e.value = want.name
        onnx.save(model, str(path))
        return [want]
    side = path.parent / f".relocate-{uuid.uuid4().hex[:8]}"
    side.mkdir()
    save(model, side / dest_name, base_dir=path.parent, external=True)
    os.replace(side / dest_name, path)
    os.replace(side / want.name, want)
    side.rmdir()
    for loc in locations:
        (path.parent / loc).unlink(missing_ok=True)
    return [want]


def _embedded(t: onnx.TensorProto, arr: np.ndarray) -> onnx.TensorProto:
    out = numpy_helper.from_array(np.ascontiguousarray(arr).astype(_np_dtype(t), copy=False), t.name)
    out.data_type = t.data_type
    out.doc_string = t.doc_string
    return out


def _point(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    t.ClearField("raw_data")
    for fld in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        t.ClearField(fld)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def without_weights(model: onnx.ModelProto, *, max_elements: int = 1024) -> onnx.ModelProto:
    """A copy whose large main-graph initializers (and those with external data not loaded) are typed graph
    inputs: what shape inference and the checker read (they serialize the model, which a model over 2 GiB
    cannot be, and the checker would look for external files relative to the working directory; values of
    weights never matter to them)."""
    g = model.graph
    slim = onnx.ModelProto()
    for fld in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(slim, fld, getattr(model, fld))
    slim.opset_import.extend(model.opset_import)
    slim.functions.extend(model.functions)
    sg = slim.graph
    sg.name = g.name
    sg.node.extend(g.node)
    sg.input.extend(g.input)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    sg.sparse_initializer.extend(g.sparse_initializer)
    listed = {i.name for i in g.input}
    for init in g.initializer:
        n = int(np.prod(init.dims, dtype=np.int64)) if len(init.dims) else 1
        if n <= max_elements and not (is_external(init) and not init.raw_data):
            sg.initializer.append(init)
        elif init.name not in listed:
            sg.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return slim


def is_large(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ONNX file whose weights exceed :func:`threshold` (only its protobuf is read).

    Such a model's two sides of a parity check run one after the other, never both in memory."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() != ".onnx":
        return False
    from modelport.security.loaders import read_onnx

    try:
        return weight_bytes(read_onnx(p, load_external_data=False)) > threshold()
    except Exception:  # noqa: BLE001  (unreadable: the runner that opens it says why)
        return False


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, or for a model read without its external data, :func:`without_weights` of it (for onnx's checker)."""
    return without_weights(model) if has_external(model) else model


#: a FlatBuffer addresses its contents with 32-bit signed offsets: a TFLite file holds at most 2 GiB
FLATBUFFER_LIMIT = 2**31


def check_flatbuffer_limit(path: str | os.PathLike, target: str = "TFLite") -> None:
    """UnsupportedError when the ONNX model at ``path`` has more weight bytes than a FlatBuffer can hold.

    Only the protobuf is read; called before any converter runs, so nothing is converted or written."""
    p = Path(path)
    if not p.is_file():
        return
    from modelport.security.loaders import read_onnx

    try:
        size = weight_bytes(read_onnx(p, load_external_data=False))
    except Exception:  # noqa: BLE001  (unreadable: the converter that opens it says why)
        return
    if size >= FLATBUFFER_LIMIT:
        raise UnsupportedError(
            f"a {target} file cannot hold this model: its weights are {size} bytes ({size / 2**30:.2f} GiB) and a "
            f"FlatBuffer is limited to 2 GiB ({FLATBUFFER_LIMIT} bytes); nothing converted (--to openvino or "
            "--to torch take models of any size)", path=p)
