"""The generated torch directory's weights, written one tensor at a time (shards above the threshold).

Layout and reader: ``modelport.formats.safetensors_io``. Each tensor is streamed from its source (a memmap
of ONNX external data, or a view of one such as a transpose) in chunks, so no second copy of the weights
is ever held.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from modelport.errors import BadInputError
from modelport.formats import onnx_data
from modelport.formats.safetensors_io import _CODES, index_path


def _code(arr: np.ndarray) -> str | None:
    return _CODES.get(arr.dtype.name)


def save(state: dict[str, np.ndarray], weights: Path, *, shard_bytes: int | None = None) -> list[Path]:
    """Write ``state`` as safetensors at ``weights`` (one file) or as shards beside it; returns the files.

    Entries whose dtype safetensors stores as is (and memmaps of any size) are streamed in chunks; the
    others (few, small) go through ``modelport.to_torch.dtypes.to_torch`` as before.
    """
    limit = onnx_data.threshold() if shard_bytes is None else shard_bytes
    sizes = {k: int(np.asarray(v).nbytes) if not onnx_data.is_mapped(v) else int(v.nbytes) for k, v in state.items()}
    total = sum(sizes.values())
    groups: list[list[str]] = [[]]
    if total > limit:
        run = 0
        for k in state:
            if groups[-1] and run + sizes[k] > limit:
                groups.append([])
                run = 0
            groups[-1].append(k)
            run += sizes[k]
    else:
        groups[0] = list(state)
    if len(groups) == 1:
        _write(state, groups[0], weights)
        return [weights]
    stem = weights.name.removesuffix(".safetensors")
    files = []
    weight_map = {}
    for i, keys in enumerate(groups, 1):
        shard = weights.with_name(f"{stem}-{i:05d}-of-{len(groups):05d}.safetensors")
        _write(state, keys, shard)
        files.append(shard)
        weight_map.update({k: shard.name for k in keys})
    index = index_path(weights)
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return [*files, index]


def _bytes_of(v) -> tuple[str, list[int], object]:
    """(code, shape, source): source is an ndarray streamed as is (mapped or plain)."""
    if onnx_data.is_mapped(v) and _code(v) is not None:
        return _code(v), list(v.shape), v
    from modelport.to_torch import dtypes

    t = dtypes.to_torch(np.asarray(v), copy=False).contiguous()
    import torch

    code = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
            torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
            torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64", torch.float8_e4m3fn: "F8_E4M3",
            torch.float8_e5m2: "F8_E5M2"}.get(t.dtype)
    if code is None:
        raise BadInputError(f"a weight of dtype {t.dtype} has no safetensors type")
    raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
    return code, list(t.shape), raw


def _write(state: dict[str, np.ndarray], keys: list[str], path: Path) -> None:
    entries = [(k, *_bytes_of(state[k])) for k in keys]
    header: dict = {}
    offset = 0
    for k, code, shape, src in entries:
        n = int(src.nbytes)
        header[k] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((-len(blob)) % 8)  # 8-byte aligned data, as safetensors writes it
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for _k, _code_, _shape, src in entries:
            onnx_data.write_array(src, out)


