"""The smallest contiguous piece of an ONNX model that still fails parity against another.

``reduce(a, b, feeds, out_path)`` runs both ONNX models once with every intermediate value
exposed (as :func:`modelport.verify.localize.localize` does), then bisects over A's
topological order, as Polygraphy's ``debug reduce`` does: a window ``[start, stop)`` of A's
nodes is cut out of A, and the nodes of B that compute the same tensors from the same
inputs (matched by tensor name) are cut out of B; both run on the window's inputs as A
computed them in the full run, so error that B made upstream cannot leak in, and every
tensor the window computes that both models name is compared. First the smallest ``stop``
whose prefix ``[0, stop)`` fails, then the largest ``start`` for which ``[start, stop)`` still
fails. The bisection assumes a failure persists as the window grows (with every tensor of
the window compared this holds for ``stop``; for ``start`` it can break where a node only
fails on inputs that already carry error from upstream, and then the window stays larger).

Written: A's piece to ``out_path``, B's beside it (``NAME.b.onnx``), and the piece's inputs
(``NAME.inputs.npz``, keyed by input name); ``modelport verify NAME.onnx NAME.b.onnx --inputs
NAME.inputs.npz`` reproduces the failure. Constant nodes feeding the window are copied into
it rather than fed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from modelport.errors import BadInputError, UnsupportedError
from modelport.verify.localize import _Graph, graph_of, run_onnx
from modelport.verify.parity import OutputParity, compare_output, match_names

__all__ = ["Reduced", "reduce", "written_paths"]


@dataclasses.dataclass(frozen=True)
class Reduced:
    """The piece of A (and of B) that still fails parity, where it was written and what it holds."""

    a: str
    b: str
    path: str  # A's piece
    b_path: str  # B's piece
    inputs_path: str  # the piece's inputs (.npz)
    window: tuple[int, int]  # [start, stop) in A's topological order
    nodes: tuple[str, ...]  # A's nodes kept, in order
    op_types: tuple[str, ...]
    b_nodes: tuple[str, ...]  # B's nodes kept, in order
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    parity: tuple[OutputParity, ...]  # the written pieces compared on the written inputs
    checks: int  # windows tried
    note: str = ""

    @property
    def ok(self) -> bool:
        """True when the written pieces fail parity, as they should."""
        return not all(self.parity)

    def summary(self) -> str:
        bad = [p for p in self.parity if not p.ok]
        worst = max(bad, key=lambda p: p.max_rel) if bad else None
        kept = ", ".join(f"{n!r} ({t})" for n, t in zip(self.nodes, self.op_types))
        figure = f": {worst.name!r} max rel err {worst.max_rel:.1e}" if worst is not None else " (it no longer fails!)"
        return f"{len(self.nodes)} node(s) of A still fail parity ({kept}){figure}; written to {self.path}"


def written_paths(out_path: str | Path) -> tuple[Path, Path, Path]:
    """(A's piece, B's piece, inputs) for an output path NAME.onnx."""
    out = Path(out_path)
    stem = out.name[:-5] if out.name.lower().endswith(".onnx") else out.name
    return out, out.with_name(stem + ".b.onnx"), out.with_name(stem + ".inputs.npz")


@dataclasses.dataclass
class _Piece:
    a_model: object
    b_model: object
    a_nodes: list[int]
    b_nodes: list[int]
    inputs: list[str]
    b_extra: list[str]  # graph inputs of B the piece of B also reads (B names them unlike A)
    outputs: list[str]
    parity: tuple[OutputParity, ...]

    @property
    def fails(self) -> bool:
        return not all(self.parity)


def _needed(g: _Graph, outs: list[str], available: set[str]) -> tuple[list[int], list[str], list[str]]:
    """Nodes computing ``outs`` from ``available`` values and initializers: (node indices, inputs read, unresolved)."""
    idx: set[int] = set()
    used: list[str] = []
    leaked: list[str] = []
    seen: set[str] = set()
    stack = list(reversed(outs))
    while stack:
        v = stack.pop()
        if not v or v in seen:
            continue
        seen.add(v)
        if v in available:
            used.append(v)
        elif v in g.initializers:
            continue
        elif v in g.producer:
            j = g.producer[v]
            if j not in idx:
                idx.add(j)
                stack.extend(reversed(g.node_inputs[j]))
        else:
            leaked.append(v)
    return sorted(idx), used, leaked


def _value_info(name: str, arr: np.ndarray):
    from onnx import helper

    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape))


def _build(g: _Graph, idx: list[int], inputs: list[tuple[str, np.ndarray]], outputs: list[tuple[str, np.ndarray]], name: str):
    """A standalone model of ``g``'s nodes ``idx``, typed from example arrays."""
    import onnx
    from onnx import helper

    src = g.model
    reads = {x for i in idx for x in g.node_inputs[i]}
    graph = helper.make_graph(
        [g.nodes[i] for i in idx], name,
        [_value_info(n, a) for n, a in inputs], [_value_info(n, a) for n, a in outputs],
        initializer=[t for t in src.graph.initializer if t.name in reads],
    )
    graph.sparse_initializer.extend(s for s in src.graph.sparse_initializer if s.values.name in reads)
    model = helper.make_model(graph, opset_imports=list(src.opset_import), producer_name="modelport reduce")
    model.ir_version = max(int(src.ir_version), 4)  # initializers need not be graph inputs from IR 4 on
    model.functions.extend(src.functions)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError and ValueError (size)
        raise BadInputError(f"the extracted piece {name!r} is no valid ONNX model: {str(exc).splitlines()[0][:200]}") from None
    return model


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz as numpy writes one, for any tensor name (np.savez would take a name like 'file' as its own argument)."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(arr), allow_pickle=False)


def _cast(arr: np.ndarray, like: np.ndarray | None) -> np.ndarray:
    if like is not None and arr.dtype != like.dtype and arr.dtype.kind == like.dtype.kind:
        return arr.astype(like.dtype)
    return arr


class _Reducer:
    def __init__(self, ga: _Graph, gb: _Graph, ref: dict, bvals: dict, b_inputs: dict[str, str], feeds: dict,
                 rtol: float | None, atol: float | None) -> None:
        self.ga, self.gb, self.ref, self.bvals = ga, gb, ref, bvals
        self.b_inputs = b_inputs  # B's graph input -> A's
        self.feeds, self.rtol, self.atol = feeds, rtol, atol
        self.checks = 0
        self.order = {v: k for k, v in enumerate(ga.live)}

    def piece(self, start: int, stop: int) -> _Piece | None:
        """The window [start, stop) of A and its counterpart in B, run and compared; None if it cannot be."""
        ga, gb, ref, bvals = self.ga, self.gb, self.ref, self.bvals
        window = range(start, stop)
        made = {o for i in window for o in ga.nodes[i].output if o}
        outs = [o for i in window for o in ga.nodes[i].output if o and o in ref and o in bvals and o in gb.producer]
        if not outs:
            return None
        constant = {o for o, j in ga.producer.items() if ga.nodes[j].op_type == "Constant" and not ga.node_inputs[j]}
        available = {v for v in ref if v not in made and v not in constant}
        a_idx, a_in, leaked = _needed(ga, outs, available)
        if leaked:
            return None
        a_in = sorted(set(a_in), key=lambda v: self.order.get(v, -1))
        b_idx, b_in, b_leaked = _needed(gb, outs, set(a_in))
        extra = [v for v in b_leaked if v in self.b_inputs]
        if len(extra) != len(b_leaked):
            return None  # B's piece needs values it cannot be fed
        self.checks += 1
        a_feeds = {n: np.asarray(ref[n]) for n in a_in}
        b_used = [n for n in a_in if n in set(b_in)]
        b_feeds = {n: _cast(a_feeds[n], bvals.get(n)) for n in b_used}
        b_feeds.update({n: _cast(np.asarray(self.feeds[self.b_inputs[n]]), bvals.get(n)) for n in extra})
        a_model = _build(ga, a_idx, list(a_feeds.items()), [(o, np.asarray(ref[o])) for o in outs], "a_piece")
        b_model = _build(gb, b_idx, list(b_feeds.items()), [(o, np.asarray(bvals[o])) for o in outs], "b_piece")
        got_a = run_onnx(a_model, a_feeds, what="A's piece")
        got_b = run_onnx(b_model, b_feeds, what="B's piece")
        parity = tuple(compare_output(o, got_a[o], got_b[o], self.rtol, self.atol) for o in outs)
        return _Piece(a_model, b_model, a_idx, b_idx, a_in, extra, outs, parity)

    def fails(self, start: int, stop: int) -> _Piece | None:
        p = self.piece(start, stop)
        return p if p is not None and p.fails else None


def reduce(
    a: str | Path,
    b: str | Path,
    feeds: dict[str, np.ndarray],
    out_path: str | Path,
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> Reduced:
    """Bisect A's nodes down to the smallest contiguous piece that still fails parity against B.

    Args:
        a: the reference ONNX model.
        b: the ONNX model under test (its tensors named as A's, as a converter or an ONNX pass keeps them).
        feeds: one input array per input of A, keyed by A's input names.
        out_path: where A's piece goes (``NAME.onnx``); B's piece and the inputs go beside it.

    Raises:
        BadInputError: unreadable models or feeds, or A and B agree (nothing to reduce).
        UnsupportedError: A or B is no ONNX model.
    """
    import onnx

    from modelport.formats import detect
    from modelport.formats.onnx_format import graph_signature, load_model
    from modelport.inputs import check_feeds
    from modelport.quiet import native_output

    a, b = str(a), str(b)
    for path, role in ((a, "A"), (b, "B")):
        fmt = detect(path)
        if fmt != "onnx":
            raise UnsupportedError(f"reduce cuts pieces out of two ONNX models; {role} is {fmt} (localize it instead)",
                                   path=path)
    out, b_out, npz = written_paths(out_path)
    if not out.parent.is_dir():
        raise BadInputError("no such directory for the reduced model", path=out.parent)
    ma, mb = load_model(a), load_model(b)
    ga, gb = graph_of(ma), graph_of(mb)
    if not isinstance(feeds, dict):
        raise BadInputError("feeds must be a dict of arrays keyed by A's input names")
    feeds = check_feeds(feeds, graph_signature(ma).inputs, "feeds")
    mapping = match_names(ga.inputs, gb.inputs, "inputs")
    b_sig = {s.name: s.dtype for s in graph_signature(mb).inputs}
    b_feeds = {}
    for k, v in feeds.items():
        want = b_sig.get(mapping[k])
        like = np.zeros(0, want) if want and want != "bfloat16" else None
        b_feeds[mapping[k]] = _cast(np.asarray(v), like)
    ref = run_onnx(ma, feeds, [o for o in ga.live if o not in ga.inputs], what="A")
    ref.update({k: np.asarray(v) for k, v in feeds.items()})
    bvals = run_onnx(mb, b_feeds, [o for o in gb.live if o not in gb.inputs], what="B")
    bvals.update(b_feeds)
    r = _Reducer(ga, gb, ref, bvals, {bn: an for an, bn in mapping.items()}, feeds, rtol, atol)

    n = len(ga.nodes)
    whole = r.fails(0, n)
    if whole is None:
        shared = r.piece(0, n)
        if shared is None:
            raise BadInputError("A and B share no tensor names: there is no piece of B to compare with a piece of A")
        raise BadInputError("A and B agree within tolerance on these inputs: nothing to reduce")
    lo, hi, best = 1, n, whole  # the smallest stop whose prefix fails
    while lo < hi:
        mid = (lo + hi) // 2
        p = r.fails(0, mid)
        if p is not None:
            hi, best = mid, p
        else:
            lo = mid + 1
    stop = hi  # best is the piece [0, stop)
    lo, hi = 0, stop - 1  # the largest start whose window [start, stop) still fails
    while lo < hi:
        mid = (lo + hi + 1) // 2
        p = r.fails(mid, stop)
        if p is not None:
            lo, best = mid, p
        else:
            hi = mid - 1
    start = lo  # best is the piece [start, stop)

    with native_output():
        onnx.save(best.a_model, str(out))
        onnx.save(best.b_model, str(b_out))
    save_npz(npz, {k: np.asarray(ref[k]) for k in best.inputs})

    # The written files, compared on the written inputs, as `modelport verify` would compare them.
    from modelport.formats.onnx_format import load_model as reload
    from modelport.inputs import load_npz

    inputs = load_npz(npz)
    got_a = run_onnx(reload(out), inputs, what="A's piece")
    b_in = {k: _cast(v, bvals.get(k)) for k, v in inputs.items() if k in {i.name for i in best.b_model.graph.input}}
    b_in.update({k: _cast(np.asarray(feeds[r.b_inputs[k]]), bvals.get(k)) for k in best.b_extra})
    got_b = run_onnx(reload(b_out), b_in, what="B's piece")
    parity = tuple(compare_output(o, got_a[o], got_b[o], rtol, atol) for o in best.outputs)
    note = ""
    if best.b_extra:
        note = f"B's piece also reads B's graph input(s) {best.b_extra}, not in the .npz: B names the window's inputs differently"
    if all(parity):
        note = (note + "; " if note else "") + "the written pieces no longer fail parity (numerics differ between runs)"
    kept_b = tuple(gb.labels[i] for i in best.b_nodes)
    return Reduced(a, b, str(out), str(b_out), str(npz), (start, stop), tuple(ga.labels[i] for i in best.a_nodes),
                   tuple(ga.nodes[i].op_type for i in best.a_nodes), kept_b, tuple(best.inputs), tuple(best.outputs),
                   parity, r.checks, note)
