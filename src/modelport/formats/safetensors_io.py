"""Safetensors read memory-mapped, single files or shards (written by ``modelport.to_torch.weights``).

The generated torch directory's weights: ``weights.safetensors``, or, when they exceed the external-data
threshold (``modelport.formats.onnx_data.threshold``), shards ``weights-00001-of-0000N.safetensors`` with
``weights.safetensors.index.json`` (the Hugging Face index layout: ``weight_map`` name -> shard). The writer
(``modelport.to_torch.weights``) streams each tensor from its source (a memmap of ONNX external data, or a view of one such as a transpose)
in chunks, so no second copy of the weights is ever held; the reader maps the files, so loading costs no
memory until a weight is used.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from modelport.errors import BadInputError

INDEX_SUFFIX = ".index.json"
_HEADER_LIMIT = 100 << 20  # a safetensors header larger than this is no header

# numpy dtype name -> safetensors dtype code (ml_dtypes names included)
_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
          "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
          "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
# safetensors code -> (numpy storage dtype, torch dtype name)
_STORAGE = {"F64": ("float64", "float64"), "F32": ("float32", "float32"), "F16": ("float16", "float16"),
            "BF16": ("uint16", "bfloat16"), "I64": ("int64", "int64"), "I32": ("int32", "int32"),
            "I16": ("int16", "int16"), "I8": ("int8", "int8"), "U8": ("uint8", "uint8"), "U16": ("uint16", "uint16"),
            "U32": ("uint32", "uint32"), "U64": ("uint64", "uint64"), "BOOL": ("bool", "bool"),
            "F8_E4M3": ("uint8", "float8_e4m3fn"), "F8_E5M2": ("uint8", "float8_e5m2")}


def index_path(weights: Path) -> Path:
    return weights.with_name(weights.name + INDEX_SUFFIX)


def is_sharded(weights: Path) -> bool:
    return index_path(weights).is_file()


def _read_header(path: Path) -> tuple[dict, int]:
    from modelport.security.jsonsafe import loads  # bounded nesting: [[[[...]]]] is a refusal, not a crash

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BadInputError("truncated safetensors file", path=path)
            (n,) = struct.unpack("<Q", head)
            if n > _HEADER_LIMIT:
                raise BadInputError(f"safetensors header of {n} bytes (corrupt file)", path=path)
            header = loads(f.read(n))
    except OSError as exc:
        raise BadInputError(f"unreadable weights ({exc.strerror or exc})", path=path) from None
    except (ValueError, RecursionError):
        raise BadInputError("corrupt safetensors header", path=path) from None
    if not isinstance(header, dict):
        raise BadInputError("corrupt safetensors header", path=path)
    return header, 8 + n


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def load_mapped(path: Path) -> dict:
    """The tensors of a safetensors file as torch tensors over a copy-on-write map of it (nothing read yet)."""
    import torch

    header, start = _read_header(path)
    size = os.path.getsize(path)
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (a, b) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
            storage, torch_name = _STORAGE[code]
        except (KeyError, TypeError, ValueError):
            raise BadInputError(f"corrupt safetensors entry {name[:120]!r}", path=path) from None
        if not all(_is_count(v) for v in (a, b, *shape)):
            raise BadInputError(f"corrupt safetensors entry {name[:120]!r} (offsets and dims must be integers >= 0)", path=path)
        count = math.prod(shape)  # Python ints: no overflow
        if not (0 <= a <= b and start + b <= size and b - a == count * np.dtype(storage).itemsize):
            raise BadInputError(f"safetensors entry {name[:120]!r} lies outside the file or has the wrong size", path=path)
        try:
            if count == 0:
                arr = np.zeros(shape, storage)
            else:
                arr = np.memmap(path, dtype=storage, mode="c", offset=start + a, shape=tuple(shape))
        except (ValueError, OverflowError, MemoryError):  # e.g. a dim numpy cannot index, in an empty tensor
            raise BadInputError(f"safetensors entry {name[:120]!r} has an impossible shape", path=path) from None
        t = torch.from_numpy(arr)
        want = getattr(torch, torch_name)
        if t.dtype != want:
            t = t.view(want)
        out[name] = t
    return out


def load(weights: Path) -> dict:
    """The state dict of ``weights`` (single file or sharded, memory-mapped)."""
    if not is_sharded(weights):
        return load_mapped(weights)
    from modelport.security.jsonsafe import loads

    index = index_path(weights)
    try:
        weight_map = loads(index.read_bytes())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise BadInputError("unreadable shard index", path=index) from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise BadInputError("corrupt shard index (weight_map must map names to shard files)", path=index)
    state: dict = {}
    for shard in sorted(set(weight_map.values())):
        if shard in ("", ".", "..") or not shard.isprintable() or Path(shard).name != shard:
            raise BadInputError(f"shard index names a file outside its directory: {shard[:120]!r}", path=index)
        state.update(load_mapped(weights.with_name(shard)))
    missing = set(weight_map) - set(state)
    if missing:
        raise BadInputError(f"shards lack {len(missing)} weight(s) the index lists, e.g. {sorted(missing)[0]!r}", path=index)
    return state
