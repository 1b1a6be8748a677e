"""What changed between two models: signature, graph, weights per tensor, metrics and parity.

Either side is a registry version (``NAME@V``) or a model path. For each pair:

- **signature**: inputs and outputs matched by name (by position when no name matches across
  formats): added, removed, or changed dtype / dims;
- **graph**: the op histogram of each (from ``inspect``, for any format it describes); for two ONNX
  models also the nodes, matched by name: added, removed, op changed, rewired (inputs/outputs
  differ), attributes changed;
- **weights**: every tensor of the manifests (``registry.tensors``), matched by key, then across
  formats by the ONNX -> PyTorch compiler's name map (``to_torch.naming.identifier``: an ONNX
  initializer ``features.0.weight`` is ``features_0.weight`` in the generated module, a weight
  ``conv1/W:0`` of a layer it builds is ``conv1_W.weight``), then by
  content (the same tensor digest, or one stored as a layout transform of the other, e.g. a
  transposed kernel). Each pair is ``same`` (same digest), ``layout`` (same values, another layout:
  a transpose of the other), ``changed`` (with the L2 norm of B - A, its max abs and the L2
  relative to A), or the tensor is ``added`` / ``removed``;
- **metrics** and **parity**: what the steps that made each version recorded, side by side.

The deltas are computed in float64 from the stored bytes, one tensor pair at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelport.artifact import to_jsonable
from modelport.errors import BadInputError, ModelportError, UnsupportedError

__all__ = ["DiffReport", "TensorDelta", "SignatureChange", "NodeChange", "diff", "diff_tensors", "diff_signatures",
           "diff_onnx_nodes", "tensor_array", "name_key"]


@dataclasses.dataclass(frozen=True)
class SignatureChange:
    io: str  # "input" | "output"
    name: str
    change: str  # "added" | "removed" | "dtype" | "dims" | "dtype, dims" | "renamed"
    a: str | None
    b: str | None


@dataclasses.dataclass(frozen=True)
class NodeChange:
    name: str
    change: str  # "added" | "removed" | "op" | "rewired" | "attributes"
    a: str | None
    b: str | None


@dataclasses.dataclass(frozen=True)
class TensorDelta:
    key_a: str | None
    key_b: str | None
    status: str  # "same" | "layout" | "changed" | "added" | "removed"
    matched_by: str | None  # "key" | "name map" | "digest" | "transform" | None
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    l2: float | None = None  # ||B - A||_2
    max_abs: float | None = None  # max |B - A|
    rel_l2: float | None = None  # ||B - A|| / ||A||
    note: str = ""


@dataclasses.dataclass(frozen=True)
class DiffReport:
    """Two models compared; ``identical`` when their files are byte-identical."""

    a: str
    b: str
    a_format: str
    b_format: str
    identical: bool
    signature: tuple[SignatureChange, ...]
    ops: tuple[tuple[str, int, int], ...]  # (op, count in A, count in B), every op of either
    nodes: tuple[NodeChange, ...]
    tensors: tuple[TensorDelta, ...]
    metrics: tuple[tuple[str, Any, Any], ...]
    parity: tuple[tuple[str, Any, Any], ...]
    notes: tuple[str, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(t.status for t in self.tensors)
        return {k: c.get(k, 0) for k in ("same", "layout", "changed", "added", "removed")}

    def to_dict(self) -> dict[str, Any]:
        return {**to_jsonable(self), "counts": self.counts}


# ------------------------------------------------------------------------------------------ tensors


def name_key(key: str) -> str:
    """A tensor key as the ONNX -> PyTorch compiler names it: ``features.0.weight`` and
    ``features_0.weight`` (its generated module) both give ``features_0_weight``."""
    from modelport.to_torch.naming import identifier

    file, _, k = key.rpartition("::")
    return identifier(k or file, short=False)


def _weight_layer(t: dict) -> str | None:
    """``name_key`` of the layer whose ``.weight`` this tensor is (None for any other tensor)."""
    key = t["key"]
    return name_key(key[: -len(".weight")]) if key.endswith(".weight") else None


def tensor_array(entry: dict, blobs) -> np.ndarray | None:
    """A tensor's values from its manifest entry (its blob, inline bytes, or the transpose of another
    blob; checked against its digest). None when it has no numpy dtype or shape (e.g. a whole file)."""
    from modelport.registry.tensors import tensor_bytes

    if entry.get("shape") is None:
        return None
    try:
        dtype = np.dtype(entry["dtype"])
    except TypeError:  # bfloat16, float8, int4: no numpy dtype
        return None
    shape = tuple(int(d) for d in entry["shape"])
    data = tensor_bytes(entry, blobs)
    if len(data) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        return None
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _source_blob(entry: dict) -> str | None:
    """The blob holding a tensor's bytes in some layout (its own, or the one it is a transform of)."""
    return entry.get("blob") or (entry.get("transform") or {}).get("of")


def _delta(ta: dict, tb: dict, blobs_a, blobs_b, matched_by: str) -> TensorDelta:
    base = dict(key_a=ta["key"], key_b=tb["key"], matched_by=matched_by, dtype_a=str(ta["dtype"]),
                dtype_b=str(tb["dtype"]), shape_a=tuple(ta["shape"]), shape_b=tuple(tb["shape"]))
    if ta["digest"] == tb["digest"]:
        return TensorDelta(status="same", **base)
    a, b = tensor_array(ta, blobs_a), tensor_array(tb, blobs_b)
    if a is None or b is None:
        return TensorDelta(status="changed", note="numpy cannot read this dtype: no delta", **base)
    if a.shape != b.shape:
        if a.size == b.size and a.ndim == b.ndim and sorted(a.shape) == sorted(b.shape):
            for perm in _perms(a.shape, b.shape):
                if np.array_equal(np.transpose(a, perm), b):
                    return TensorDelta(status="layout", note=f"B = transpose(A, {list(perm)})", **base)
        return TensorDelta(status="changed", note="shapes differ: no elementwise delta", **base)
    d = b.astype(np.float64) - a.astype(np.float64)
    l2 = float(np.linalg.norm(d.ravel()))
    na = float(np.linalg.norm(a.astype(np.float64).ravel()))
    return TensorDelta(status="changed", l2=l2, max_abs=float(np.abs(d).max()) if d.size else 0.0,
                       rel_l2=l2 / na if na > 0 else None,
                       note="" if ta["dtype"] == tb["dtype"] else "dtypes differ: compared as float64", **base)


def _perms(sa: tuple[int, ...], sb: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    from itertools import permutations

    if len(sa) > 6:
        return
    for perm in permutations(range(len(sa))):
        if tuple(sa[p] for p in perm) == tuple(sb) and perm != tuple(range(len(sa))):
            yield perm


def diff_tensors(tensors_a: list[dict], tensors_b: list[dict], blobs_a, blobs_b) -> list[TensorDelta]:
    """Match the tensors of two manifests (see the module docstring) and compare each pair."""
    left = list(range(len(tensors_a)))
    right = list(range(len(tensors_b)))
    pairs: list[tuple[int, int, str]] = []

    def match(key_of, how: str, key_of_b=None) -> None:
        nonlocal left, right
        ka: dict[Any, list[int]] = {}
        kb: dict[Any, list[int]] = {}
        for i in left:
            k = key_of(tensors_a[i])
            if k is not None:
                ka.setdefault(k, []).append(i)
        for j in right:
            k = (key_of_b or key_of)(tensors_b[j])
            if k is not None:
                kb.setdefault(k, []).append(j)
        used_a, used_b = set(), set()
        for k, ia in ka.items():
            jb = kb.get(k)
            if jb and len(ia) == 1 and len(jb) == 1:  # only unambiguous matches
                pairs.append((ia[0], jb[0], how))
                used_a.add(ia[0])
                used_b.add(jb[0])
        left = [i for i in left if i not in used_a]
        right = [j for j in right if j not in used_b]

    match(lambda t: (t.get("file", ""), t["key"]), "key")
    match(lambda t: t["key"], "key")
    match(lambda t: name_key(t["key"]), "name map")
    # a weight W of a layer the compiler builds is `identifier(W).weight` (its bias keeps no ONNX name)
    match(lambda t: name_key(t["key"]), "name map", _weight_layer)
    match(_weight_layer, "name map", lambda t: name_key(t["key"]))
    match(lambda t: t["digest"], "digest")
    match(lambda t: (t["dtype"], _source_blob(t)) if _source_blob(t) else None, "transform")
    out = [_delta(tensors_a[i], tensors_b[j], blobs_a, blobs_b, how) for i, j, how in sorted(pairs)]
    out += [TensorDelta(tensors_a[i]["key"], None, "removed", None, str(tensors_a[i]["dtype"]), None,
                        tuple(tensors_a[i]["shape"]), None) for i in left]
    out += [TensorDelta(None, tensors_b[j]["key"], "added", None, None, str(tensors_b[j]["dtype"]), None,
                        tuple(tensors_b[j]["shape"])) for j in right]
    return out


# ---------------------------------------------------------------------------------- signature, graph


def _spec(s) -> str:
    return f"{s.dtype}[{s.shape_str()}]"


def diff_signatures(sa, sb) -> list[SignatureChange]:
    """Inputs and outputs by name; when no name is shared (e.g. across formats), by position."""
    out: list[SignatureChange] = []
    if sa is None or sb is None:
        return out
    for io, xa, xb in (("input", sa.inputs, sb.inputs), ("output", sa.outputs, sb.outputs)):
        na, nb = {s.name: s for s in xa}, {s.name: s for s in xb}
        if not set(na) & set(nb) and len(xa) == len(xb):
            pairs = list(zip(xa, xb))
            for a, b in pairs:
                if a.name != b.name:
                    out.append(SignatureChange(io, f"{a.name} -> {b.name}", "renamed", str(a), str(b)))
                out.extend(_spec_change(io, b.name, a, b))
            continue
        for name, a in na.items():
            if name not in nb:
                out.append(SignatureChange(io, name, "removed", _spec(a), None))
            else:
                out.extend(_spec_change(io, name, a, nb[name]))
        for name, b in nb.items():
            if name not in na:
                out.append(SignatureChange(io, name, "added", None, _spec(b)))
    return out


def _spec_change(io: str, name: str, a, b) -> list[SignatureChange]:
    what = [w for w, differs in (("dtype", a.dtype != b.dtype), ("dims", a.shape != b.shape)) if differs]
    return [SignatureChange(io, name, ", ".join(what), _spec(a), _spec(b))] if what else []


def _node_key(node, i: int) -> str:
    return node.name or f"<{node.op_type} -> {','.join(node.output)}>"


def diff_onnx_nodes(path_a: Path, path_b: Path) -> list[NodeChange]:
    """Nodes of two ONNX graphs matched by name (unnamed ones by op type and outputs)."""
    import onnx

    ga = onnx.load(str(path_a), load_external_data=False).graph
    gb = onnx.load(str(path_b), load_external_data=False).graph
    na = {_node_key(n, i): n for i, n in enumerate(ga.node)}
    nb = {_node_key(n, i): n for i, n in enumerate(gb.node)}
    out: list[NodeChange] = []
    for key, a in na.items():
        b = nb.get(key)
        if b is None:
            out.append(NodeChange(key, "removed", a.op_type, None))
        elif a.op_type != b.op_type:
            out.append(NodeChange(key, "op", a.op_type, b.op_type))
        elif list(a.input) != list(b.input) or list(a.output) != list(b.output):
            out.append(NodeChange(key, "rewired", f"{list(a.input)} -> {list(a.output)}",
                                  f"{list(b.input)} -> {list(b.output)}"))
        elif [x.SerializeToString(deterministic=True) for x in a.attribute] != \
                [x.SerializeToString(deterministic=True) for x in b.attribute]:
            out.append(NodeChange(key, "attributes", ", ".join(sorted(x.name for x in a.attribute)),
                                  ", ".join(sorted(x.name for x in b.attribute))))
    for key, b in nb.items():
        if key not in na:
            out.append(NodeChange(key, "added", None, b.op_type))
    return out


# ------------------------------------------------------------------------------------------- sides


@dataclasses.dataclass
class _Side:
    label: str
    format: str
    path: Path
    manifest: dict
    blobs: Any
    files_sha256: str
    step: dict | None


def _open_side(text: str, registry, stack: contextlib.ExitStack) -> _Side:
    from modelport.registry.blobs import BlobStore
    from modelport.registry.record import files_sha256
    from modelport.registry.tensors import decompose

    if Path(text).exists():
        from modelport.formats import detect

        path = Path(text)
        try:
            fmt = detect(path, None)
        except UnsupportedError as exc:  # not a model at all: unreadable input, as for `registry add`
            raise BadInputError(f"is no model modelport can read ({exc})", path=path) from None
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="modelport-diff-")))
        blobs = BlobStore(tmp / "blobs")
        manifest = decompose(path, fmt, blobs)
        return _Side(str(path), fmt, path, manifest, blobs, files_sha256(path), None)
    if registry is None:
        raise BadInputError(f"{text!r} is neither a model path nor a registry version (NAME@V)")
    version = registry.resolve(text)
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="modelport-diff-")))
    path = registry.get(version, tmp)
    return _Side(version.ref, version.format, path, registry.manifest(version), registry.blobs,
                 version.files_sha256, version.step)


def _inspect(path: Path, fmt: str, notes: list[str], label: str):
    from modelport.inspect.run import inspect
    from modelport.quiet import quiet

    try:
        with quiet():
            return inspect(path, fmt)
    except ModelportError as exc:
        notes.append(f"{label}: no signature or op histogram ({exc})")
        return None


def _side_by_side(a: dict | None, b: dict | None, keys=None) -> list[tuple[str, Any, Any]]:
    a, b = a or {}, b or {}
    keys = keys or list(dict.fromkeys([*a, *b]))
    return [(k, a.get(k), b.get(k)) for k in keys if not isinstance(a.get(k, b.get(k)), (dict, list))]


_PARITY_KEYS = ["ok", "enforced", "compared", "max_abs", "max_rel", "rtol", "atol", "inputs", "summary"]


def diff(a: str, b: str, *, registry=None) -> DiffReport:
    """Compare two models (registry versions or paths); see the module docstring."""
    from modelport.registry.tensors import manifest_tensors

    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        sa = _open_side(a, registry, stack)
        sb = _open_side(b, registry, stack)
        ia = _inspect(sa.path, sa.format, notes, sa.label)
        ib = _inspect(sb.path, sb.format, notes, sb.label)
        signature = diff_signatures(getattr(ia, "signature", None), getattr(ib, "signature", None))
        ha, hb = dict(getattr(ia, "op_histogram", {}) or {}), dict(getattr(ib, "op_histogram", {}) or {})
        ops = tuple((op, ha.get(op, 0), hb.get(op, 0)) for op in sorted(set(ha) | set(hb)))
        nodes: list[NodeChange] = []
        if sa.format == "onnx" and sb.format == "onnx" and sa.path.is_file() and sb.path.is_file():
            nodes = diff_onnx_nodes(sa.path, sb.path)
        elif sa.format != sb.format:
            notes.append(f"graphs of {sa.format} and {sb.format} are compared by op histogram only")
        tensors = diff_tensors(manifest_tensors(sa.manifest), manifest_tensors(sb.manifest), sa.blobs, sb.blobs)
        metrics = _side_by_side((sa.step or {}).get("metrics"), (sb.step or {}).get("metrics"))
        parity = _side_by_side((sa.step or {}).get("parity"), (sb.step or {}).get("parity"), _PARITY_KEYS)
        parity = [row for row in parity if row[1] is not None or row[2] is not None]
        verdicts = [("verified", (sa.step or {}).get("verified"), (sb.step or {}).get("verified")),
                    ("made by", (sa.step or {}).get("command"), (sb.step or {}).get("command"))]
        parity = [r for r in verdicts if r[1] is not None or r[2] is not None] + parity
        return DiffReport(sa.label, sb.label, sa.format, sb.format, sa.files_sha256 == sb.files_sha256,
                          tuple(signature), ops, tuple(nodes), tuple(tensors), tuple(metrics), tuple(parity),
                          tuple(notes))
