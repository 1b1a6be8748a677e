#!/usr/bin/env python3
"""Fuzz every modelport loader with mutated valid files: crashes (anything but a ModelportError), hangs, memory.

usage:
  python benchmarks/fuzz.py [--per-loader N] [--loaders a,b] [--seed S] [--jobs J] [--out DIR]

Each loader gets real, valid seed files built here with the frameworks (an ONNX model with external
data, Keras .keras/.h5 files, a SavedModel, a TFLite flatbuffer, torch checkpoints and pickles,
safetensors, .npz inputs, a Caffe prototxt + caffemodel, a model-signing bundle, a signed in-toto
provenance chain). Every input is a seed mutated 1-3 times: byte flips and interesting integers,
truncations, splices from another seed, inserted/deleted/duplicated runs, and where the format
allows it cheaply, structure-aware edits: protobuf fields (values, lengths, deletions,
duplications, wire types, recursively inside nested messages), zip members (a member's content
mutated and the archive rewritten; the central directory hit), JSON documents (a node replaced
with another type, a huge number, a long string, deep nesting; a key deleted), flatbuffer words
(4-byte offsets and lengths), the safetensors header and its length prefix.

Inputs run in worker processes forked from a per-loader supervisor that has imported the loader's
frameworks once (so a worker replaced after a crash or a hang starts in milliseconds, not after another
TensorFlow or torch import), each input under a CPU-time timer (``ITIMER_PROF``) and a parent-side
deadline: more than 10 s of CPU time on one input is a hang, and so is no answer in 60 s of wall
time (a worker blocked without using CPU); the worker is killed and replaced. Hangs are judged on
CPU time because wall time is not the input's: on a loaded machine, under ``nice``, a worker may
wait many seconds for a core (a 16 s wall-clock deadline flagged a TFLite input that loads in
milliseconds, on a 2-core machine at load 16).
A worker that dies (a signal: a segfault in native code) is a crash of the input it held. The
outcome of an input is ``accepted`` (the loader returned), ``refused`` (a ModelportError: the clean,
one-line refusal the CLI prints) or ``crash`` (any other exception). Every crash and hang is saved
under ``OUT/crashes/LOADER/`` (the mutated file, and a .txt with the traceback), and the table
lists per loader: inputs, accepted, refused, crashes, hangs, peak RSS (the largest worker RSS), the
start-up time (imports, seeds) and inputs per second after start-up. ``--until HH:MM`` stops handing
out inputs at that time (the row says so). Deterministic: input ``i`` of a loader is a function of ``--seed``, the
loader and ``i``.

  python benchmarks/fuzz.py --per-loader 10000 --out /tmp/fuzz       # the full run
  python benchmarks/fuzz.py --replay /tmp/fuzz/crashes/onnx/17.onnx --loader onnx   # one input again
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

HANG_SECONDS = 10  # of CPU time on one input
WALL_HANG_SECONDS = 60  # of wall time with no answer (a worker blocked, or starved beyond reason)
# A worker is replaced by a fresh fork after this many inputs (the loaders named): what a framework keeps
# from one load to the next (Keras' name counters, TensorFlow's caches) does not pile up over thousands.
RECYCLE_AFTER = {"keras": 500}


# =========================================================================== mutators


INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


def _bytes_mut(data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    """One generic byte-level mutation."""
    b = bytearray(data)
    n = len(b)
    op = r.randrange(10)
    if n == 0:
        return bytes(r.randbytes(r.randint(1, 16)))
    if op == 0:  # bit flips
        for _ in range(r.randint(1, 8)):
            i = r.randrange(n)
            b[i] ^= 1 << r.randrange(8)
    elif op == 1:  # random bytes
        for _ in range(r.randint(1, 8)):
            b[r.randrange(n)] = r.randrange(256)
    elif op == 2:  # an interesting integer, little or big endian
        size = r.choice((1, 2, 4, 8))
        v = r.choice(INTERESTING) & ((1 << (8 * size)) - 1)
        i = r.randrange(max(1, n - size + 1))
        b[i:i + size] = v.to_bytes(size, r.choice(("little", "big")))
    elif op == 3:  # truncate
        del b[r.randrange(n):]
    elif op == 4:  # delete a run
        i = r.randrange(n)
        del b[i:i + r.randint(1, max(1, min(n - i, 256)))]
    elif op == 5:  # insert a run
        i = r.randrange(n + 1)
        run = bytes([r.randrange(256)]) * r.randint(1, 64) if r.random() < 0.5 else r.randbytes(r.randint(1, 64))
        b[i:i] = run
    elif op == 6:  # duplicate a chunk
        i = r.randrange(n)
        chunk = b[i:i + r.randint(1, 512)]
        j = r.randrange(n + 1)
        b[j:j] = chunk
    elif op == 7 and others:  # splice with another seed
        o = r.choice(others)
        if o:
            i, j = r.randrange(n), r.randrange(len(o))
            b = b[:i] + o[j:j + r.randint(1, 4096)] + (b[i:] if r.random() < 0.5 else b"")
    elif op == 8:  # the end of the file (zip central directories, tar padding, trailing records)
        for _ in range(r.randint(1, 4)):
            i = max(0, n - 1 - r.randrange(min(n, 200)))
            b[i] = r.randrange(256)
    else:  # the head of the file (magic numbers, headers, length prefixes)
        for _ in range(r.randint(1, 4)):
            b[r.randrange(min(n, 64))] = r.randrange(256)
    return bytes(b)


# --------------------------------------------------------------------------- protobuf (wire format)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        c = buf[pos]
        pos += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return v, pos


def _enc_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        c = v & 0x7F
        v >>= 7
        if v:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def _pb_parse(buf: bytes, depth: int = 0) -> list[list[Any]] | None:
    """[[field, wire type, value (int | bytes | nested list)], ...] or None when ``buf`` is no message."""
    fields: list[list[Any]] = []
    pos = 0
    try:
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            num, wt = key >> 3, key & 7
            if num == 0:
                return None
            if wt == 0:
                v, pos = _varint(buf, pos)
            elif wt == 1:
                v, pos = buf[pos:pos + 8], pos + 8
            elif wt == 5:
                v, pos = buf[pos:pos + 4], pos + 4
            elif wt == 2:
                ln, pos = _varint(buf, pos)
                if pos + ln > len(buf):
                    return None
                raw = buf[pos:pos + ln]
                pos += ln
                sub = _pb_parse(raw, depth + 1) if depth < 12 and ln >= 2 else None
                v = sub if sub else raw
            else:
                return None
            fields.append([num, wt, v])
    except ValueError:
        return None
    return fields if pos == len(buf) else None


def _pb_dump(fields: list[list[Any]]) -> bytes:
    out = bytearray()
    for num, wt, v in fields:
        out += _enc_varint((num << 3) | wt)
        if wt == 0:
            out += _enc_varint(v) if isinstance(v, int) else b"\x00"
        elif wt == 2:
            body = _pb_dump(v) if isinstance(v, list) else v
            out += _enc_varint(len(body)) + body
        else:
            out += v if isinstance(v, bytes) else bytes(8 if wt == 1 else 4)
    return bytes(out)


def _pb_all(fields: list[list[Any]], acc: list[tuple[list, int]]) -> list[tuple[list, int]]:
    for i, f in enumerate(fields):
        acc.append((fields, i))
        if isinstance(f[2], list):
            _pb_all(f[2], acc)
    return acc


def _pb_mut(data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    tree = _pb_parse(data)
    if not tree:
        return _bytes_mut(data, r, others)
    where = _pb_all(tree, [])
    parent, i = r.choice(where)
    f = parent[i]
    op = r.randrange(8)
    if op == 0 and f[1] == 0:
        f[2] = r.choice(INTERESTING + (r.getrandbits(32), -1 & 0xFFFFFFFFFFFFFFFF))
    elif op == 1:  # delete the field
        del parent[i]
    elif op == 2:  # duplicate it
        parent.insert(i, [f[0], f[1], f[2][:] if isinstance(f[2], list) else f[2]])
    elif op == 3:  # another wire type or field number
        if r.random() < 0.5:
            f[0] = r.choice((1, 2, 3, 4, 5, 7, 8, 10, 13, 14, 15, 16, 20, r.randint(1, 2000)))
        else:
            f[1], f[2] = (0, r.choice(INTERESTING)) if f[1] == 2 else (2, r.randbytes(r.randint(0, 16)))
    elif op == 4 and f[1] == 2:  # the body's bytes mutated (a leaf: a string, a tensor's raw data)
        body = _pb_dump(f[2]) if isinstance(f[2], list) else f[2]
        f[2] = _bytes_mut(body, r, others)
    elif op == 5 and f[1] == 2:  # a lying length prefix: written by hand
        body = _pb_dump(f[2]) if isinstance(f[2], list) else f[2]
        dumped = _pb_dump(tree) if parent is tree else None
        if dumped is not None:
            key = _enc_varint((f[0] << 3) | 2)
            good = key + _enc_varint(len(body)) + body
            bad = key + _enc_varint(r.choice((0, 1, len(body) + 1, len(body) * 2 + 7, 0x7FFFFFFF, 0xFFFFFFFFF))) + body
            return dumped.replace(good, bad, 1)
        f[2] = body[: r.randrange(len(body) + 1)]
    elif op == 6:  # move a field elsewhere
        moved = parent.pop(i)
        dest, _ = r.choice(where)
        dest.insert(r.randint(0, len(dest)), moved)
    else:  # a packed repeated / string field made huge
        if f[1] == 2:
            f[2] = (f[2] if isinstance(f[2], bytes) else _pb_dump(f[2])) * r.randint(2, 64)
        else:
            f[2] = r.choice(INTERESTING)
    try:
        return _pb_dump(tree)
    except RecursionError:  # pragma: no cover
        return data


# --------------------------------------------------------------------------- JSON


_DEEP = "\x00deep:{}\x00"  # a placeholder, replaced after json.dumps (the C encoder overflows its stack on it)


def _json_values(r: random.Random) -> Any:
    deep = _DEEP.format(r.choice((50, 2000, 100000)))
    return r.choice((None, True, False, 0, -1, 2 ** 63, 2 ** 64 + 1, -(2 ** 70), 1e308, float("nan"), 1.5, "",
                     "x" * r.choice((1, 300, 100000)), "../../../../etc/hostname", "\u0000", "é", [], {},
                     {"": None}, [1, "a", None], deep, {"class_name": "Lambda", "config": {}},
                     {"module": "os", "class_name": "function", "config": "system", "registered_name": None}))


def _json_nodes(doc: Any, acc: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    stack = [doc]
    while stack and len(acc) < 20000:
        node = stack.pop()
        if isinstance(node, dict):
            for k in list(node):
                acc.append((node, k))
                stack.append(node[k])
        elif isinstance(node, list):
            for k in range(len(node)):
                acc.append((node, k))
                stack.append(node[k])
    return acc


def _json_mut(data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return _bytes_mut(data, r, others)
    nodes = _json_nodes(doc, [])
    if not nodes or r.random() < 0.15:
        return _bytes_mut(data, r, others)
    parent, key = r.choice(nodes)
    op = r.randrange(5)
    if op == 0 and isinstance(parent, dict):
        del parent[key]
    elif op == 1 and isinstance(parent, dict):
        parent[r.choice(("class_name", "module", "config", "registered_name", "dtype", "shape", "data_offsets",
                         "__metadata__", "payload", "signatures", "x" * 10))] = _json_values(r)
    elif op == 2 and isinstance(parent[key], str):
        s = parent[key]
        parent[key] = _bytes_mut(s.encode(), r, []).decode("utf-8", "replace")
    elif op == 3 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
        parent[key] = r.choice((0, -1, 1, 2 ** 31, 2 ** 63 - 1, 2 ** 64, -(2 ** 63), 1e20, 0.5, parent[key] + 1))
    else:
        parent[key] = _json_values(r)
    try:
        text = json.dumps(doc)
    except (RecursionError, ValueError):
        return _bytes_mut(data, r, others)
    for n in (50, 2000, 100000):
        text = text.replace(json.dumps(_DEEP.format(n)), "[" * n + "0" + "]" * n)
    return text.encode()


def _jsonl_mut(data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    """One line of a JSON-lines file; DSSE envelopes: their base64 payload decoded, mutated, re-encoded."""
    lines = data.split(b"\n")
    idx = [i for i, line in enumerate(lines) if line.strip()]
    if not idx or r.random() < 0.2:
        return _bytes_mut(data, r, others)
    i = r.choice(idx)
    op = r.randrange(4)
    if op == 0:
        try:
            env = json.loads(lines[i])
            payload = base64.b64decode(env["payload"])
            env["payload"] = base64.b64encode(_json_mut(payload, r, [])).decode()
            lines[i] = json.dumps(env).encode()
        except Exception:  # noqa: BLE001 - not an envelope: mutate it as JSON
            lines[i] = _json_mut(lines[i], r, [])
    elif op == 1:
        lines[i] = _json_mut(lines[i], r, [])
    elif op == 2:
        del lines[i]
    else:
        lines.insert(r.randrange(len(lines) + 1), lines[i])
    return b"\n".join(lines)


# --------------------------------------------------------------------------- zip, safetensors, flatbuffers


def _zip_mut(data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            members = [(i, z.read(i.filename)) for i in infos]
    except Exception:  # noqa: BLE001 - no (longer a) zip
        return _bytes_mut(data, r, others)
    if not members or r.random() < 0.25:
        return _bytes_mut(data, r, others)
    k = r.randrange(len(members))
    op = r.randrange(6)
    info, body = members[k]
    if op == 0:
        del members[k]
    elif op == 1:
        members.insert(k, (info, body))  # a duplicate name
    elif op == 2:
        new = zipfile.ZipInfo(r.choice(("../evil", "/abs", info.filename + "/", "a" * 300, info.filename.upper())))
        members[k] = (new, body)
    else:
        members[k] = (info, mutate_as(_kind_of_name(info.filename, body), body, r, others))
    out = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(out, "w") as z:
            for i, b in members:
                zi = zipfile.ZipInfo(i.filename, i.date_time)
                zi.compress_type = i.compress_type
                z.writestr(zi, b)
    return out.getvalue()


def _kind_of_name(name: str, body: bytes) -> str:
    if name.endswith(".json"):
        return "json"
    if name.endswith((".pb", ".onnx")):
        return "protobuf"
    if name.endswith((".npy",)):
        return "npy"
    return "bytes"


def _safetensors_mut(data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    if len(data) < 8 or r.random() < 0.25:
        return _bytes_mut(data, r, others)
    n = struct.unpack("<Q", data[:8])[0]
    if n > len(data) - 8:
        return _bytes_mut(data, r, others)
    header, body = data[8:8 + n], data[8 + n:]
    if r.random() < 0.3:  # a lying length prefix
        return struct.pack("<Q", r.choice((0, 1, n - 1, n + 1, len(data), 2 ** 32, 2 ** 63, 2 ** 64 - 1)) % 2 ** 64) \
            + header + body
    header = _json_mut(header, r, others)
    if r.random() < 0.3:
        body = _bytes_mut(body, r, others)
    return struct.pack("<Q", len(header)) + header + body


def _npy_mut(data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    """The .npy header dict (a Python literal) or its length; else bytes."""
    if data[:6] != b"\x93NUMPY" or r.random() < 0.3:
        return _bytes_mut(data, r, others)
    hl = struct.unpack("<H", data[8:10])[0]
    head = data[10:10 + hl]
    edits = [(b"'<f4'", r.choice((b"'|O'", b"'<f8'", b"'V9999999999'", b"'<U1000000000'", b"'>i8'", b"'S0'"))),
             (b"False", b"True"), (b"(", r.choice((b"(99999999999, ", b"(-1, ", b"(0, ", b"(" + b"1, " * 40)))]
    old, new = r.choice(edits)
    head = head.replace(old, new, 1)
    return data[:8] + struct.pack("<H", len(head)) + head + data[10 + hl:]


def _flatbuffer_mut(data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    b = bytearray(data)
    if len(b) < 8 or r.random() < 0.3:
        return _bytes_mut(data, r, others)
    for _ in range(r.randint(1, 4)):
        i = r.randrange(0, len(b) - 4, 4) if r.random() < 0.8 else r.randrange(0, min(len(b) - 4, 256))
        v = r.choice(INTERESTING + (len(b), len(b) - 4, struct.unpack_from("<I", b, i)[0] + r.choice((-8, -4, 4, 8))))
        struct.pack_into("<I", b, i, v & 0xFFFFFFFF)
    return bytes(b)


def _text_mut(data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    """A protobuf text file (Caffe prototxt): tokens swapped, numbers made extreme, braces broken."""
    import re

    text = data.decode("utf-8", "replace")
    tokens = re.findall(r"\s+|[{}:\"]|[^\s{}:\"]+", text)
    if not tokens or r.random() < 0.2:
        return _bytes_mut(data, r, others)
    op = r.randrange(5)
    i = r.randrange(len(tokens))
    if op == 0:
        tokens[i] = r.choice(("-1", "0", "99999999999999999999", "1e309", "nan", "4294967297", "-2147483649",
                              "{", "}", ":", '"', "\\", "layer", "input_dim", "MAX", "\u0000", "1" * 400))
    elif op == 1:
        del tokens[i]
    elif op == 2:
        j = r.randrange(len(tokens))
        tokens.insert(j, "".join(tokens[i:i + r.randint(1, 40)]))
    elif op == 3:
        tokens.insert(i, "{" * r.choice((2, 200, 20000)))
    else:
        j = r.randrange(len(tokens))
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return "".join(tokens).encode()


MUTATORS: dict[str, Callable[[bytes, random.Random, list[bytes]], bytes]] = {
    "bytes": _bytes_mut, "protobuf": _pb_mut, "json": _json_mut, "jsonl": _jsonl_mut, "zip": _zip_mut,
    "safetensors": _safetensors_mut, "flatbuffer": _flatbuffer_mut, "text": _text_mut, "npy": _npy_mut,
}


def mutate_as(kind: str, data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    if kind != "bytes" and r.random() < 0.65:
        return MUTATORS[kind](data, r, others)
    return _bytes_mut(data, r, others)


def mutate(seed: Seed, data: bytes, r: random.Random, others: list[bytes]) -> bytes:
    for _ in range(r.choice((1, 1, 1, 2, 2, 3))):
        data = mutate_as(seed.kind, data, r, others)
        if len(data) > 64 << 20:
            data = data[:64 << 20]
    return data


# =========================================================================== seeds and loaders


@dataclasses.dataclass(frozen=True)
class Seed:
    """A valid model: a directory template, the file in it that is mutated, and what the loader is given."""

    template: str  # directory (absolute)
    target: str  # relative path of the mutated file
    entry: str  # relative path handed to the loader ("" for the directory itself)
    kind: str  # mutator: bytes | protobuf | json | jsonl | zip | safetensors | flatbuffer | text | npy
    extra: dict[str, str] = dataclasses.field(default_factory=dict)  # loader arguments (relative paths)


def _quiet():
    from modelport.quiet import native_output

    return native_output()


def _seed_onnx(d: Path) -> list[Seed]:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def model(name: str, external: bool) -> Seed:
        g = np.random.default_rng(0)
        sub = d / name
        sub.mkdir(parents=True, exist_ok=True)
        w = numpy_helper.from_array(g.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
        b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
        fc = numpy_helper.from_array(g.standard_normal((4 * 6 * 6, 5)).astype(np.float32), "fc")
        shape = numpy_helper.from_array(np.array([-1, 4 * 6 * 6], np.int64), "shape")
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("Reshape", ["p", "shape"], ["f"]),
                 helper.make_node("MatMul", ["f", "fc"], ["y"])]
        graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 12, 12])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], [w, b, fc, shape])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fuzz")
        m.ir_version = 8
        onnx.checker.check_model(m)
        path = sub / "model.onnx"
        if external:
            onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.bin",
                      size_threshold=64)
        else:
            onnx.save(m, str(path))
        return Seed(str(sub), "model.onnx", "model.onnx", "protobuf")

    return [model("external", True), model("inline", False)]


def _keras_model():
    with _quiet():
        import keras
    keras.utils.set_random_seed(0)
    return keras, keras.Sequential([keras.Input((6,), name="x"), keras.layers.Dense(4, activation="relu"),
                                    keras.layers.BatchNormalization(), keras.layers.Dense(2, name="out")])


def _seed_keras(d: Path) -> list[Seed]:
    import logging

    keras, m = _keras_model()
    (d / "k").mkdir(parents=True, exist_ok=True)
    (d / "h").mkdir(parents=True, exist_ok=True)
    with _quiet():
        m.save(d / "k" / "model.keras")
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)
        try:
            m.save(d / "h" / "model.h5")
        finally:
            absl.setLevel(level)
    return [Seed(str(d / "k"), "model.keras", "model.keras", "zip"),
            Seed(str(d / "h"), "model.h5", "model.h5", "bytes")]


def _seed_savedmodel(d: Path) -> list[Seed]:
    import contextlib

    with _quiet():
        import tensorflow as tf
    module = tf.Module()
    module.w = tf.Variable(tf.ones((4, 2)))
    module.serve = tf.function(lambda x: {"y": tf.nn.relu(tf.matmul(x, module.w))},
                               input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):
        tf.saved_model.save(module, str(d / "sm"), signatures={"serving_default": module.serve})
    return [Seed(str(d / "sm"), "saved_model.pb", "", "protobuf")]


def _seed_tflite(d: Path) -> list[Seed]:
    import contextlib

    with _quiet():
        import tensorflow as tf
    _, m = _keras_model()
    with _quiet(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        conv = tf.lite.TFLiteConverter.from_keras_model(m)
        data = conv.convert()
    (d / "t").mkdir(parents=True, exist_ok=True)
    (d / "t" / "model.tflite").write_bytes(data)
    return [Seed(str(d / "t"), "model.tflite", "model.tflite", "flatbuffer")]


def _state_dict():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5))
    return net.state_dict()


def _seed_pickles(d: Path, scan: bool) -> list[Seed]:
    import pickle

    import numpy as np
    import torch

    sd = _state_dict()
    seeds = []

    def add(name: str, write: Callable[[Path], None], kind: str) -> None:
        sub = d / name.replace(".", "_")
        sub.mkdir(parents=True, exist_ok=True)
        write(sub / name)
        seeds.append(Seed(str(sub), name, name, kind))

    add("zip.pt", lambda p: torch.save(sd, str(p)), "zip")
    add("legacy.pt", lambda p: torch.save(sd, str(p), _use_new_zipfile_serialization=False), "bytes")
    add("lightning.ckpt", lambda p: torch.save({"epoch": 1, "state_dict": sd, "hyper_parameters": {"lr": 0.1},
                                                "optimizer_states": []}, str(p)), "zip")
    if scan:
        data = {"a": [1, 2.5, None], "b": (b"\x00", "s"), "c": {1, 2}}
        add("p2.pkl", lambda p: p.write_bytes(pickle.dumps(data, protocol=2)), "bytes")
        add("p5.pkl", lambda p: p.write_bytes(pickle.dumps(data, protocol=5)), "bytes")
        add("p0.pkl", lambda p: p.write_bytes(pickle.dumps(data, protocol=0)), "bytes")
        add("objects.npy", lambda p: np.save(str(p), np.array(["a", 1, None], dtype=object), allow_pickle=True), "npy")
        add("arrays.npz", lambda p: np.savez(str(p), a=np.ones(3, np.float32), o=np.array([1, "x"], dtype=object)),
            "zip")
        try:
            import joblib

            add("model.joblib", lambda p: joblib.dump({"coef": np.arange(6.0)}, str(p), compress=("zlib", 3)), "bytes")
        except ImportError:  # pragma: no cover
            pass

        def tar(p: Path) -> None:
            import tarfile

            buf = io.BytesIO()
            torch.save(sd, buf)
            with tarfile.open(str(p), "w") as t:
                info = tarfile.TarInfo("run/model.pt")
                info.size = len(buf.getvalue())
                t.addfile(info, io.BytesIO(buf.getvalue()))

        add("bundle.tar", tar, "bytes")
    return seeds


def _seed_safetensors(d: Path) -> list[Seed]:
    import numpy as np
    from safetensors.numpy import save_file

    (d / "s").mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    save_file({"conv.weight": g.standard_normal((4, 3, 3, 3)).astype(np.float32),
               "conv.bias": np.zeros(4, np.float16), "fc.weight": g.standard_normal((5, 8)).astype(np.float32),
               "steps": np.arange(3, dtype=np.int64), "mask": np.array([True, False])},
              str(d / "s" / "model.safetensors"), metadata={"format": "pt"})
    return [Seed(str(d / "s"), "model.safetensors", "model.safetensors", "safetensors")]


def _seed_npz(d: Path) -> list[Seed]:
    import numpy as np

    seeds = []
    for name, save in (("plain", np.savez), ("compressed", np.savez_compressed)):
        (d / name).mkdir(parents=True, exist_ok=True)
        save(str(d / name / "inputs.npz"), x=np.ones((2, 3, 4, 4), np.float32), ids=np.arange(6, dtype=np.int64))
        seeds.append(Seed(str(d / name), "inputs.npz", "inputs.npz", "zip"))
    return seeds


_PROTOTXT = """name: "fuzznet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _seed_caffe(d: Path) -> list[Seed]:
    import numpy as np

    from modelport.formats import caffe_format

    g = np.random.default_rng(0)
    blobs = {"conv1": [g.standard_normal((4, 3, 3, 3)).astype(np.float32), np.zeros(4, np.float32)],
             "bn1": [np.zeros(4, np.float32), np.ones(4, np.float32), np.ones(1, np.float32)],
             "fc": [g.standard_normal((5, 64)).astype(np.float32), np.zeros(5, np.float32)]}
    msgs = caffe_format.messages()
    net = msgs["NetParameter"](name="fuzznet")
    for name, arrays in blobs.items():
        layer = net.layer.add(name=name)
        for a in arrays:
            layer.blobs.append(caffe_format.array_blob(a))
    (d / "c").mkdir(parents=True, exist_ok=True)
    (d / "c" / "net.prototxt").write_text(_PROTOTXT)
    (d / "c" / "net.caffemodel").write_bytes(net.SerializeToString())
    return [Seed(str(d / "c"), "net.prototxt", "net.prototxt", "text"),
            Seed(str(d / "c"), "net.caffemodel", "net.prototxt", "protobuf")]


def _seed_signing(d: Path) -> list[Seed]:
    import numpy as np

    from modelport.security import signing

    (d / "g").mkdir(parents=True, exist_ok=True)
    keys = signing.keygen(d / "g" / "key.pem")
    np.save(str(d / "g" / "weights.npy"), np.arange(100, dtype=np.float32))
    (d / "g" / "model").mkdir()
    (d / "g" / "model" / "a.bin").write_bytes(b"\x01" * 300)
    (d / "g" / "model" / "config.json").write_text('{"layers": 2}')
    signing.sign(d / "g" / "weights.npy", keys.private)
    signing.sign(d / "g" / "model", keys.private)
    pub = os.path.relpath(keys.public, d / "g")
    file_sig = os.path.relpath(signing.default_signature(d / "g" / "weights.npy"), d / "g")
    dir_sig = os.path.relpath(signing.default_signature(d / "g" / "model"), d / "g")
    return [Seed(str(d / "g"), file_sig, "weights.npy", "json", {"pub": pub, "sig": file_sig}),
            Seed(str(d / "g"), dir_sig, "model", "json", {"pub": pub, "sig": dir_sig})]


def _seed_provenance(d: Path) -> list[Seed]:
    import contextlib

    import torch

    from modelport.cli.app import main as modelport_main
    from modelport.security import provenance, signing

    p = d / "p"
    p.mkdir(parents=True, exist_ok=True)
    keys = signing.keygen(p / "key.pem")
    torch.save(_state_dict(), str(p / "ckpt.pt"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = modelport_main(["convert", str(p / "ckpt.pt"), "--to", "safetensors", "-o", str(p / "model.safetensors"),
                             "--sign", keys.private])
    if rc != 0:
        raise RuntimeError(f"seed: convert --sign failed: {out.getvalue()}")
    bundle = provenance.bundle_path(p / "model.safetensors")
    return [Seed(str(p), bundle.name, "model.safetensors", "jsonl", {"pub": os.path.relpath(keys.public, p)})]


# --------------------------------------------------------------------------- what each loader does with an input


def _run_onnx(path: Path, seed: Seed) -> None:
    from modelport.formats import detect, open_runner
    from modelport.inspect.run import inspect
    from modelport.security.loaders import check_onnx_file

    check_onnx_file(path)
    inspect(path)
    detect(path)
    with open_runner(path) as runner:
        runner.signature


def _run_keras(path: Path, seed: Seed) -> None:
    from modelport.formats import open_runner
    from modelport.security.loaders import check_keras_file

    check_keras_file(path)
    with open_runner(path) as runner:
        runner.signature


def _run_savedmodel(path: Path, seed: Seed) -> None:
    from modelport.security.loaders import check_savedmodel

    check_savedmodel(path)


def _run_tflite(path: Path, seed: Seed) -> None:
    from modelport.inspect.run import inspect
    from modelport.security.loaders import tflite_custom_ops

    tflite_custom_ops(path)
    inspect(path)


def _run_scan(path: Path, seed: Seed) -> None:
    from modelport.security.pickles import scan_path

    scan_path(path).summary()


def _run_rescue(path: Path, seed: Seed) -> None:
    from modelport.convert.pickle_to_safetensors import convert_checkpoint

    convert_checkpoint(path, path.parent / "rescued.safetensors")


def _decompose(path: Path, fmt: str) -> None:
    from modelport.registry.blobs import BlobStore
    from modelport.registry.tensors import decompose

    decompose(path, fmt, BlobStore(path.parent / "_blobs"))


def _run_tensors_safetensors(path: Path, seed: Seed) -> None:
    _decompose(path, "safetensors")


def _run_tensors_onnx(path: Path, seed: Seed) -> None:
    _decompose(path, "onnx")


def _seed_weights(d: Path) -> list[Seed]:
    """A generated torch directory's weights: one safetensors file, and shards with their index."""
    import numpy as np
    from safetensors.numpy import save_file

    g = np.random.default_rng(1)
    (d / "w1").mkdir(parents=True, exist_ok=True)
    save_file({"conv.weight": g.standard_normal((4, 3, 3, 3)).astype(np.float32),
               "conv.bias": np.zeros(4, np.float16), "steps": np.arange(3, dtype=np.int64),
               "empty": np.zeros((0, 4), np.float32)}, str(d / "w1" / "weights.safetensors"))
    (d / "w2").mkdir(parents=True, exist_ok=True)
    shards = {"weights-00001-of-00002.safetensors": {"a.weight": g.standard_normal((6, 4)).astype(np.float32)},
              "weights-00002-of-00002.safetensors": {"b.weight": g.standard_normal((3,)).astype(np.float32)}}
    for name, tensors in shards.items():
        save_file(tensors, str(d / "w2" / name))
    index = {"metadata": {}, "weight_map": {k: name for name, t in shards.items() for k in t}}
    (d / "w2" / "weights.safetensors.index.json").write_text(json.dumps(index))
    return [Seed(str(d / "w1"), "weights.safetensors", "weights.safetensors", "safetensors"),
            Seed(str(d / "w2"), "weights.safetensors.index.json", "weights.safetensors", "json"),
            Seed(str(d / "w2"), "weights-00001-of-00002.safetensors", "weights.safetensors", "safetensors")]


def _run_weights(path: Path, seed: Seed) -> None:
    from modelport.formats import safetensors_io

    for t in safetensors_io.load(path).values():
        t.sum()  # touch every mapped byte


def _run_npz(path: Path, seed: Seed) -> None:
    from modelport.inputs import load_npz

    load_npz(path)


def _run_caffe(path: Path, seed: Seed) -> None:
    from modelport.formats import caffe_format

    caffe_format.network(caffe_format.load(path))


def _run_signing(path: Path, seed: Seed) -> None:
    from modelport.security import signing

    base = path.parent if seed.entry else path
    while not (base / seed.extra["pub"]).exists():
        base = base.parent
    signing.verify(path, base / seed.extra["pub"], base / seed.extra["sig"])


def _run_provenance(path: Path, seed: Seed) -> None:
    from modelport.security import provenance

    provenance.verify(path, [path.parent / seed.extra["pub"]])


@dataclasses.dataclass(frozen=True)
class Loader:
    name: str
    build: Callable[[Path], list[Seed]]
    run: Callable[[Path, Seed], None]
    warm: tuple[str, ...]  # modules a worker imports before its first input
    what: str


LOADERS: dict[str, Loader] = {l.name: l for l in (
    Loader("onnx", _seed_onnx, _run_onnx, ("onnx", "onnxruntime", "sympy", "torch", "onnx_ir", "onnxscript.optimizer"),
           "check_onnx_file + inspect (detect, signature, params) + open_runner().signature()"),
    Loader("keras", _seed_keras, _run_keras, ("keras",), "check_keras_file (config allow-list) + open_runner (load)"),
    Loader("savedmodel", _seed_savedmodel, _run_savedmodel, ("tensorflow.core.protobuf.saved_model_pb2",),
           "check_savedmodel (op scan of saved_model.pb)"),
    Loader("tflite", _seed_tflite, _run_tflite, ("ai_edge_litert.interpreter",),
           "tflite_custom_ops + inspect (interpreter)"),
    Loader("pickle-scan", lambda d: _seed_pickles(d, True), _run_scan, ("torch",),
           "security.pickles.scan_path (static)"),
    Loader("pickle-rescue", lambda d: _seed_pickles(d, False), _run_rescue, ("torch", "safetensors.torch"),
           "convert_checkpoint: restricted unpickler + static reader + compare"),
    Loader("tensors-safetensors", _seed_safetensors, _run_tensors_safetensors, ("numpy",),
           "registry.tensors.decompose(safetensors)"),
    Loader("tensors-onnx", _seed_onnx, _run_tensors_onnx, ("numpy",), "registry.tensors.decompose(onnx)"),
    Loader("weights-safetensors", _seed_weights, _run_weights, ("torch",),
           "formats.safetensors_io.load (memory-mapped, single file and shards + index)"),
    Loader("npz-inputs", _seed_npz, _run_npz, ("numpy",), "inputs.load_npz"),
    Loader("caffe", _seed_caffe, _run_caffe, ("google.protobuf",), "caffe_format.load + network"),
    Loader("signing", _seed_signing, _run_signing, ("cryptography", "model_signing"), "signing.verify (mutated .sig)"),
    Loader("provenance", _seed_provenance, _run_provenance, ("cryptography",),
           "provenance.verify (mutated .intoto.jsonl)"),
)}


# =========================================================================== running one input


class _Hang(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang("".join(traceback.format_stack(frame, limit=15)))


def _place(seed: Seed, data: bytes, scratch: Path) -> Path:
    """A fresh copy of the seed's directory with the mutated file in place; returns what the loader is given."""
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(seed.template, scratch, symlinks=True)
    target = scratch / seed.target
    if target.is_symlink() or target.exists():
        target.unlink()
    target.write_bytes(data)
    return scratch / seed.entry if seed.entry else scratch


def run_input(loader: Loader, seed: Seed, data: bytes, scratch: Path) -> tuple[str, str]:
    """(outcome, detail): accepted | refused | crash | hang. In this process, with a CPU-time timer for hangs."""
    from modelport.errors import ModelportError

    path = _place(seed, data, scratch)
    old = signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, HANG_SECONDS)  # CPU time of this process (all its threads)
    try:
        with open(os.devnull, "w") as null:
            import contextlib

            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                loader.run(path, seed)
        return "accepted", ""
    except _Hang as exc:
        return "hang", f"still running after {HANG_SECONDS} s of CPU time, in:\n{exc}"
    except ModelportError as exc:
        text = str(exc)
        if "\n" in text.strip():
            return "crash", f"a ModelportError of several lines: {text!r}"
        return "refused", f"{type(exc).__name__} (exit {exc.exit_code}): {text[:200]}"
    except BaseException as exc:  # noqa: BLE001 - the point of fuzzing
        if isinstance(exc, KeyboardInterrupt):
            raise
        return "crash", "".join(traceback.format_exception(exc))[-6000:]
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


def _warm(loader: Loader) -> None:
    """Import the loader's frameworks (no model is loaded: nothing starts a thread pool before a fork)."""
    import importlib
    import warnings

    warnings.simplefilter("ignore")
    with _quiet():
        for mod in loader.warm:
            try:
                importlib.import_module(mod)
            except ImportError:
                pass


def _worker(conn: Connection, loader: Loader, seeds: list[Seed], scratch: Path) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)  # native code logs from C++
    _warm(loader)  # a no-op when forked from a warmed supervisor
    for i, seed in enumerate(seeds):  # lazy imports on the loader's path happen now, not under an input's alarm
        try:
            with open(os.devnull, "w") as null:
                import contextlib

                with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                    loader.run(_place(seed, (Path(seed.template) / seed.target).read_bytes(), scratch), seed)
        except Exception:  # noqa: BLE001 - reported when the inputs run
            pass
    conn.send(("ready", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        idx, seed_i, data = msg
        t0 = time.perf_counter()
        outcome, detail = run_input(loader, seeds[seed_i], data, scratch)
        conn.send((idx, outcome, detail, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   time.perf_counter() - t0))


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used, from /proc; 0 where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclasses.dataclass
class Stats:
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: int = 0
    hangs: int = 0
    peak_rss_kb: int = 0
    peak_input: int = -1  # the input during which a worker's RSS reached peak_rss_kb
    base_rss_kb: int = 0
    seconds: float = 0.0
    startup: float = 0.0  # importing the frameworks and the workers' first loads of the seeds
    slowest: float = 0.0
    stopped_early: bool = False  # --until came before every input had run
    findings: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def inputs_for(loader: Loader, seeds: list[Seed], n: int, seed: int, start: int = 0):
    """Input i (start <= i < n): (seed index, mutated bytes), deterministic in (seed, loader, i)."""
    originals = [(Path(s.template) / s.target).read_bytes() for s in seeds]
    for i in range(start, n):
        r = random.Random(f"{seed}:{loader.name}:{i}")
        k = i % len(seeds)
        yield k, mutate(seeds[k], originals[k], r, originals)


def _save_finding(out: Path | None, loader: Loader, seeds: list[Seed], idx: int, seed_i: int, data: bytes,
                  outcome: str, detail: str, stats: Stats) -> None:
    seed = seeds[seed_i]
    first = detail.strip().splitlines()[-1] if detail.strip() else outcome
    rec = {"loader": loader.name, "input": idx, "seed": seed_i, "outcome": outcome, "error": first[:300]}
    if out is not None:
        d = out / "crashes" / loader.name
        d.mkdir(parents=True, exist_ok=True)
        name = f"{idx}-{Path(seed.target).name}"
        (d / name).write_bytes(data)
        (d / f"{idx}.txt").write_text(f"loader {loader.name}, seed {seed_i} ({seed.template}/{seed.target}), "
                                      f"{outcome}\n\n{detail}\n")
        rec["file"] = str(d / name)
    stats.findings.append(rec)


def fuzz_loader(loader: Loader, seeds: list[Seed], n: int, *, seed: int = 0, jobs: int = 2, out: Path | None = None,
                work: Path, progress: Callable[[str], None] | None = None, until: float | None = None,
                checkpoint: Callable[[Stats], None] | None = None, start: int = 0) -> Stats:
    """Run ``n`` mutated inputs through ``loader`` in ``jobs`` workers forked from this process.

    Call it in a process that has run ``_warm(loader)`` (``fuzz_in_child`` does): a worker is then a fork of
    an interpreter that has already imported the frameworks, so starting one, or replacing one after a
    crash or a hang, costs milliseconds rather than another import of TensorFlow or torch. ``until`` (a
    ``time.time()``) stops handing out inputs; ``checkpoint`` gets the running stats every 30 s.
    """
    stats = Stats()
    gen = inputs_for(loader, seeds, n, seed, start)
    workers: dict[Connection, tuple[int, Any]] = {}  # conn -> (pid, (idx, seed_i, data, started) | None)
    done: dict[Connection, int] = {}  # conn -> inputs that worker has answered
    serial = [0]

    def spawn() -> None:
        parent, child = Pipe()
        serial[0] += 1
        pid = os.fork()
        if pid == 0:
            parent.close()
            try:
                _worker(child, loader, seeds, work / f"w{serial[0]}")
            finally:
                os._exit(0)
        child.close()
        _, rss = parent.recv()  # ("ready", rss)
        stats.base_rss_kb = max(stats.base_rss_kb, rss)
        workers[parent] = (pid, None)

    def reap(conn: Connection, kill: bool) -> int:
        pid, _ = workers.pop(conn)
        if kill:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        conn.close()
        return status

    t0 = time.perf_counter()
    for _ in range(jobs):
        spawn()
    stats.startup = time.perf_counter() - t0
    exhausted = False
    last = time.time()
    while workers:
        for conn, (pid, job) in list(workers.items()):
            if job is None and not exhausted and until is not None and time.time() >= until:
                exhausted = stats.stopped_early = True
            if job is None and not exhausted:
                nxt = next(gen, None)
                if nxt is None:
                    exhausted = True
                else:
                    serial_idx = start + stats.inputs
                    stats.inputs += 1
                    conn.send((serial_idx, nxt[0], nxt[1]))
                    workers[conn] = (pid, (serial_idx, nxt[0], nxt[1], time.time(), _cpu_seconds(pid)))
            if job is None and exhausted and workers[conn][1] is None:
                conn.send(None)
                reap(conn, False)
        if not workers:
            break
        ready = wait(list(workers), timeout=1.0)
        now = time.time()
        for conn in list(workers):
            pid, job = workers[conn]
            if job is None:
                continue
            idx, seed_i, data, started, cpu0 = job
            if conn in ready:
                try:
                    _, outcome, detail, rss, secs = conn.recv()
                except (EOFError, OSError):  # the worker died: a signal from native code
                    status = reap(conn, False)
                    why = f"worker died: signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else \
                        f"worker exited {os.WEXITSTATUS(status)}"
                    stats.crashes += 1
                    _save_finding(out, loader, seeds, idx, seed_i, data, "crash", why, stats)
                    spawn()
                    continue
                if rss > stats.peak_rss_kb:
                    stats.peak_rss_kb, stats.peak_input = rss, idx
                stats.slowest = max(stats.slowest, secs)
                workers[conn] = (pid, None)
                done[conn] = done.get(conn, 0) + 1
                if done[conn] >= RECYCLE_AFTER.get(loader.name, 1 << 62):  # a fresh fork: no growth across inputs
                    done.pop(conn)
                    conn.send(None)
                    reap(conn, False)
                    spawn()
                if outcome == "accepted":
                    stats.accepted += 1
                elif outcome == "refused":
                    stats.refused += 1
                else:
                    if outcome == "hang":
                        stats.hangs += 1
                    else:
                        stats.crashes += 1
                    _save_finding(out, loader, seeds, idx, seed_i, data, outcome, detail, stats)
            elif (cpu := _cpu_seconds(pid) - cpu0) > HANG_SECONDS + 5 or now - started > WALL_HANG_SECONDS:
                # stuck in native code, where the timer's Python handler cannot run, or blocked
                reap(conn, True)
                stats.hangs += 1
                _save_finding(out, loader, seeds, idx, seed_i, data, "hang",
                              f"no answer after {cpu:.0f} s of CPU time, {now - started:.0f} s of wall time", stats)
                spawn()
        if time.time() - last > 30:
            last = time.time()
            stats.seconds = time.perf_counter() - t0
            if progress:
                progress(f"{loader.name}: {stats.inputs}/{n} inputs, {stats.crashes} crashes, {stats.hangs} hangs, "
                         f"{stats.inputs / max(stats.seconds - stats.startup, 1e-9):.1f}/s")
            if checkpoint:
                checkpoint(stats)
    stats.seconds = time.perf_counter() - t0
    return stats


def fuzz_in_child(loader: Loader, seeds: list[Seed], n: int, *, report: Path, **kw: Any) -> Stats:
    """``fuzz_loader`` in a forked supervisor that imports the loader's frameworks once and forks the workers.

    The calling process stays free of frameworks (each loader gets a fresh supervisor); the supervisor
    writes its stats to ``report`` every 30 s and at the end, so a run stopped from outside still says
    how far each loader got.
    """
    def write(st: Stats) -> None:
        tmp = report.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(st)))
        os.replace(tmp, report)

    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _warm(loader)
            warmed = time.perf_counter() - t0
            st = fuzz_loader(loader, seeds, n, checkpoint=write, **kw)
            st.startup += warmed
            st.seconds += warmed
            write(st)
            code = 0
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not report.is_file():
        raise RuntimeError(f"the {loader.name} supervisor failed (status {status})")
    return Stats(**json.loads(report.read_text()))


def build_seeds(loader: Loader, d: Path) -> list[Seed]:
    """Seeds built in a forked child (so that the parent, which forks the workers, imports no framework)."""
    d.mkdir(parents=True, exist_ok=True)
    listing = d / "seeds.json"
    if listing.is_file():
        return [Seed(**s) for s in json.loads(listing.read_text())]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import warnings

            warnings.simplefilter("ignore")
            with _quiet():
                seeds = loader.build(d)
            listing.write_text(json.dumps([dataclasses.asdict(s) for s in seeds]))
            code = 0
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not listing.is_file():
        raise RuntimeError(f"building the {loader.name} seeds failed")
    return [Seed(**s) for s in json.loads(listing.read_text())]


def table(results: dict[str, Stats]) -> str:
    """One row per loader; inputs/s counts from the end of start-up (imports and the seeds' first loads)."""
    rows = [f"{'loader':<20} {'inputs':>7} {'accepted':>8} {'refused':>8} {'crashes':>7} {'hangs':>5} "
            f"{'peak RSS':>9} {'base RSS':>9} {'slowest':>8} {'start-up':>8} {'wall':>7} {'inputs/s':>8}"]
    for name, s in results.items():
        rows.append(f"{name:<20} {s.inputs:>7} {s.accepted:>8} {s.refused:>8} {s.crashes:>7} {s.hangs:>5} "
                    f"{s.peak_rss_kb / 1024:>7.0f}MB {s.base_rss_kb / 1024:>7.0f}MB {s.slowest:>7.2f}s "
                    f"{s.startup:>7.1f}s {s.seconds:>6.0f}s {s.inputs / max(s.seconds - s.startup, 1e-9):>8.1f}"
                    + ("  (stopped by --until)" if s.stopped_early else ""))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-loader", type=int, default=10000, help="inputs per loader (default 10000)")
    ap.add_argument("--loaders", default=",".join(LOADERS), help=f"comma-separated, of {', '.join(LOADERS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first input index (finish a run that --until stopped: "
                                                          "inputs are deterministic in --seed, loader and index)")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--out", help="where crashes, hangs and the summary go (default: a temporary directory)")
    ap.add_argument("--until", help="HH:MM (local time): hand out no input after it; the table says where each "
                                    "loader stopped")
    ap.add_argument("--replay", help="run this one file through --loader, in this process, and print the outcome")
    ap.add_argument("--loader", help="with --replay: the loader")
    ap.add_argument("--seed-index", type=int, default=0, help="with --replay: which seed's directory to place it in")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="modelport-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.replay:
        loader = LOADERS[args.loader]
        seeds = build_seeds(loader, out / "seeds" / loader.name)
        outcome, detail = run_input(loader, seeds[args.seed_index], Path(args.replay).read_bytes(),
                                    Path(tempfile.mkdtemp(prefix="fuzz-replay-")) / "x")
        print(outcome, detail, sep="\n")
        return 0 if outcome in ("accepted", "refused") else 1
    names = [n for n in args.loaders.split(",") if n]
    unknown = [n for n in names if n not in LOADERS]
    if unknown:
        ap.error(f"unknown loaders {unknown}")
    until = None
    if args.until:
        try:
            hh, mm = (int(x) for x in args.until.split(":"))
            now = time.localtime()
            until = time.mktime((now.tm_year, now.tm_mon, now.tm_mday, hh, mm, 0, 0, 0, -1))
        except ValueError:
            ap.error(f"--until {args.until!r}: expected HH:MM")
        if until < time.time():
            until += 86400
    results: dict[str, Stats] = {}
    work = Path(tempfile.mkdtemp(prefix="modelport-fuzz-work-"))
    (out / "running").mkdir(exist_ok=True)
    try:
        for name in names:
            loader = LOADERS[name]
            if until is not None and time.time() >= until:
                results[name] = Stats(stopped_early=True)
                continue
            seeds = build_seeds(loader, out / "seeds" / name)
            results[name] = fuzz_in_child(loader, seeds, args.per_loader, report=out / "running" / f"{name}.json",
                                          seed=args.seed, jobs=args.jobs, out=out, work=work / name, until=until,
                                          start=args.start,
                                          progress=lambda m: print(m, file=sys.stderr, flush=True))
            s = results[name]
            print(f"{name}: {s.inputs} inputs in {s.seconds:.0f} s, {s.crashes} crashes, {s.hangs} hangs",
                  file=sys.stderr, flush=True)
            (out / "summary.json").write_text(json.dumps({k: dataclasses.asdict(v) for k, v in results.items()},
                                                         indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    findings = [f for s in results.values() for f in s.findings]
    for f in findings[:50]:
        print(f"{f['outcome'].upper()} {f['loader']} #{f['input']}: {f['error']}  ({f.get('file', '')})")
    print(f"summary: {out / 'summary.json'}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
