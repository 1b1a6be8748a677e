"""Where two models disagree: the first node of the reference whose output diverges.

``localize(a, b, feeds)`` runs A (an ONNX model, the reference) and B on one set of inputs,
captures the intermediate tensors of both, pairs them up and compares each pair with
:func:`modelport.verify.parity.compare_output` (its default tolerances by dtype unless
rtol/atol are given). Walking A's topological order, the first node with an output out of
tolerance is the first divergence. Every compared tensor is reported with the worst error
among its node's inputs, so a node where error *appears* (inputs within tolerance, output
not) stands out from one that only *propagates* it.

How each kind of B gives its intermediate tensors, and how they are paired with A's:

* **ONNX** (``method="names"``): copies of both graphs get every intermediate value of the
  main graph as a graph output (types from the graph's value_info, else from
  ``onnx.shape_inference``; a value with no known type is left out) and both run with
  onnxruntime. Tensors pair by name.
* **modelport torch directory** (``method="torch-locals"``): the generated ``model.py``
  assigns each ONNX value to a local variable of ``forward`` on one line, and
  ``modelport_torch.json``'s ``value_to_line`` says which line. The line's assignment
  targets (``ast``) name the locals: one target per defined value pairs them in order; one
  target for several values (a fused MatMul+Add) holds the *last* of them, the others are
  not exposed. ``forward`` then runs under ``sys.settrace`` with a tracer that only follows
  the frames of that generated ``forward``: after each line that defines values it copies
  those locals (a copy at that moment, so an in-place op later cannot change it). Nothing in
  the generated code is rewritten or re-traced (no fx), so any model the runner can run can
  be localized. Pairs by ONNX name.
* **OpenVINO IR** (``method="openvino-names"``): openvino's ONNX frontend keeps ONNX tensor
  names on the output ports of the ops that compute them. Every port with a name of an
  intermediate value of A becomes an extra output (``Model.add_outputs``); the model compiles
  on CPU with ``INFERENCE_PRECISION_HINT=f32``. Pairs by name. Extra outputs keep the plugin
  from fusing across them, so B's numerics are those of a slightly less fused B.
* **TFLite** (``method="tflite-dataflow"``): the tensors of a .tflite made by onnx2tf carry
  Keras layer names (``model/tf.nn.relu_1/Relu;model/tf.math.add_1/Add;...``), not ONNX
  names; only the inputs and outputs keep theirs (its signature). So tensors are paired
  along the dataflow instead: the interpreter runs with ``experimental_preserve_all_tensors``
  and without the XNNPACK delegate (whose partitions keep no intermediate tensors); then, in
  B's execution order, each op output is given the A value(s) it computes. Candidates are
  A values not yet paired, downstream of the A values paired with the op's inputs, with
  every already-paired ancestor among the op's own ancestors, and of the same shape either
  as is or after moving channels last -> first (the NHWC layout onnx2tf introduces), or
  equal up to size-1 dims. Candidates within tolerance are all paired with the tensor (a
  Reshape or Flatten A computes and B does not). The inputs anchor the walk, and a graph
  output of B is paired with the output of A of the same name. A first walk pairs only
  within tolerance; B's tensors left unpaired are either steps of B's own (onnx2tf writes
  Erf as Abs, Exp, Mul...; Transpose and Pad for the layout), which end in tensors that pair
  again, or the divergence and what follows it, which feed an output of B without passing
  a paired tensor. A second walk pairs the latter with their closest candidate (smallest max
  rel error, cosine >= 0.5), unless B's tensor is closer to a value already paired upstream.
  (The model's own tensor names cannot serve: even the Keras layer counters in them differ
  between two conversions of one model in one process.)
* **Graphs that share no names** (or a B that exposes none of A's intermediate values):
  ``method="outputs-only"`` with a note; only the final outputs are compared.

A value B does not expose (fused into another op, folded away) is not compared. Such nodes
of A, between a compared tensor and the compared tensors it is computed from, are listed in
``ComparedTensor.fused``: when the first divergent tensor has some, the error may begin in
any of them (``suspects``). Integer and bool nodes (shape arithmetic) are not listed.

What it cannot localize: values inside subgraphs (If/Loop/Scan bodies) are not compared, only
the main graph's; A's values without a known type; with TFLite, quantized (int8) tensors
(they never pair within a float tolerance), a divergence whose effect the later graph absorbs
so that every output of B is within tolerance (the diverged tensors then look like B's own
steps), and tensors of ops that run only in a delegate; with torch, values held in Python
containers (ONNX sequences). One set of inputs is compared: a divergence those inputs do not
trigger is not found.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import BadInputError, UnsupportedError
from modelport.quiet import native_output, quiet
from modelport.verify.parity import compare_output, match_names

__all__ = ["localize_failure", "ComparedTensor", "Localization", "localize", "SUPPORTED_B_FORMATS"]

SUPPORTED_B_FORMATS = ("onnx", "torch", "tflite", "openvino")
_PROTO_LIMIT = 2**31 - 1 - 2**24  # serialized protobufs stop at 2 GiB: larger copies go through a file


@dataclasses.dataclass(frozen=True)
class ComparedTensor:
    """One output of a node of A compared with the tensor of B that computes it."""

    node: str  # A's node name ("<OpType #index>" for an unnamed node)
    op_type: str
    output: str  # A's tensor name
    b_name: str  # B's tensor: the same name, a local of the generated forward, a TFLite tensor
    shape: tuple[int, ...]
    dtype: str
    max_abs: float
    max_rel: float
    inputs_max_rel: float  # the worst max rel err among the node's inputs (0.0: graph inputs, constants)
    ok: bool
    layout: str = ""  # "channels-last": B holds the tensor channels-last; compared after moving them first
    fused: tuple[str, ...] = ()  # nodes of A before this one whose outputs B does not expose
    reason: str = ""

    @property
    def suspects(self) -> tuple[str, ...]:
        """The nodes the error of this tensor may begin in: the unexposed ones before it, then its own."""
        return (*self.fused, self.node)


@dataclasses.dataclass(frozen=True)
class Localization:
    """Where B first departs from A; ``bool(loc)`` is True when nothing diverges."""

    a: str
    b: str
    b_format: str
    method: str  # names · torch-locals · openvino-names · tflite-dataflow · outputs-only
    compared: tuple[ComparedTensor, ...]  # in A's topological order
    first_divergent: ComparedTensor | None
    growth: tuple[tuple[str, float], ...]  # (output, max rel err) along the path through the divergence
    note: str = ""

    def __bool__(self) -> bool:
        return self.first_divergent is None

    def summary(self) -> str:
        d = self.first_divergent
        if self.method == "outputs-only":
            why = self.note.split(":")[0] if self.note else "B exposes no intermediate tensors"
            if d is None:
                return f"no divergence in the final outputs ({len(self.compared)}); no intermediate tensors to compare ({why})"
            return (f"output {d.output!r} (node {d.node!r}, {d.op_type}) diverges: max rel err {d.max_rel:.1e}; "
                    f"no intermediate tensors to compare ({why})")
        if d is None:
            worst = max((c.max_rel for c in self.compared), default=0.0)
            return f"no divergence: {len(self.compared)} tensor(s) within tolerance, worst max rel err {worst:.1e}"
        text = (f"first divergence at node {d.node!r} ({d.op_type}), output {d.output!r}: "
                f"max rel err {d.max_rel:.1e} (inputs: {d.inputs_max_rel:.1e})")
        if d.reason:
            text += f"; {d.reason}"
        if d.fused:
            names = ", ".join(repr(n) for n in d.fused[-5:])
            more = f"{len(d.fused) - 5} more and " if len(d.fused) > 5 else ""
            text += f"; B does not expose {more}{names} before it: the error may begin there"
        elif d.inputs_max_rel >= d.max_rel > 0:
            text += "; its inputs already differ as much, within their own (dtype) tolerance: the error is carried in, not made here"
        return text

    @property
    def ok(self) -> bool:
        return self.first_divergent is None


# ----------------------------------------------------------------------------- A's graph

@dataclasses.dataclass
class _Graph:
    """A's main graph: nodes in topological order and who produces and reads each value."""

    model: Any
    nodes: list
    labels: list[str]
    producer: dict[str, int]
    inputs: list[str]
    outputs: list[str]
    initializers: set[str]
    live: list[str]  # graph inputs, then node outputs that depend on a graph input, in order
    node_inputs: list[list[str]]  # per node: what it reads (subgraph outer references included)


def _outer_refs(graph) -> set[str]:
    from modelport.formats.onnx_format import iter_nodes

    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in iter_nodes(graph):
        used.update(node.input)
        defined.update(node.output)
    used.update(o.name for o in graph.output)
    return {u for u in used - defined if u}


def node_reads(node) -> list[str]:
    """The values a node reads: its inputs and what its subgraphs take from the outer scope."""
    import onnx

    names = [i for i in node.input if i]
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in subs:
            names.extend(sorted(_outer_refs(g) - set(names)))
    return names


def graph_of(model) -> _Graph:
    g = model.graph
    inits = {i.name for i in g.initializer} | {s.values.name for s in g.sparse_initializer}
    inputs = [v.name for v in g.input if v.name not in inits]
    nodes = list(g.node)
    producer, labels, reads = {}, [], []
    live_set = set(inputs)
    live = list(inputs)
    for i, node in enumerate(nodes):
        labels.append(node.name or f"<{node.op_type} #{i}>")
        r = node_reads(node)
        reads.append(r)
        for o in node.output:
            if o:
                producer[o] = i
        if any(x in live_set for x in r):
            for o in node.output:
                if o and o not in live_set:
                    live_set.add(o)
                    live.append(o)
    return _Graph(model, nodes, labels, producer, inputs, [o.name for o in g.output], inits, live, reads)


def _value_types(model) -> dict[str, Any]:
    """name -> TypeProto of every value with a known tensor type (inferred where the graph has none)."""
    import onnx

    g = model.graph
    types = {vi.name: vi.type for vi in [*g.input, *g.output, *g.value_info]}
    missing = any(o and o not in types for n in g.node for o in n.output)
    if missing and model.ByteSize() < _PROTO_LIMIT:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            for vi in [*inferred.graph.value_info, *inferred.graph.output]:
                types.setdefault(vi.name, vi.type)
        except Exception:  # noqa: BLE001 - inference is a hint: values without a type are left out
            pass
    return {k: t for k, t in types.items() if t.HasField("tensor_type") and t.tensor_type.elem_type}


@contextlib.contextmanager
def _model_source(model) -> Iterator[Any]:
    """What onnxruntime takes: the serialized model, or a temporary file for one over 2 GiB."""
    import onnx

    if model.ByteSize() < _PROTO_LIMIT:
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="modelport-localize-") as d:
        path = Path(d) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
        yield str(path)


def run_onnx(model, feeds: dict[str, np.ndarray], names: list[str] | None = None, *, what: str = "A") -> dict[str, np.ndarray]:
    """Run ``model`` with onnxruntime; ``names``: values to return besides its outputs (each made an
    output on a copy of the model; those without a known type are left out)."""
    import onnx
    import onnxruntime as ort

    from modelport.formats.onnx_format import session_options

    m = model
    if names:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        types = _value_types(m)
        have = {o.name for o in m.graph.output}
        inputs = {i.name for i in m.graph.input}
        for n in names:
            if n not in have and n not in inputs and n in types:
                vi = m.graph.output.add()
                vi.name = n
                vi.type.CopyFrom(types[n])
                have.add(n)
    with native_output(), _model_source(m) as source:
        try:
            sess = ort.InferenceSession(source, sess_options=session_options(None), providers=["CPUExecutionProvider"])
            wanted = [o.name for o in sess.get_outputs()]
            given = {i.name for i in sess.get_inputs()}
            outs = sess.run(wanted, {k: np.asarray(v) for k, v in feeds.items() if k in given})
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"onnxruntime cannot run {what} with its intermediate values exposed: {msg[:300]}") from None
    return dict(zip(wanted, outs))


# ----------------------------------------------------------------------------- comparison

def _entries(graph: _Graph, ref: dict[str, np.ndarray], got: dict[str, tuple[str, np.ndarray, str]],
             rtol: float | None, atol: float | None, only: set[str] | None = None) -> tuple[ComparedTensor, ...]:
    """Compare every paired output in A's order; inputs' error and unexposed nodes through uncompared values."""
    err: dict[str, float] = {n: 0.0 for n in graph.inputs}
    live = set(graph.live)
    hidden: dict[str, frozenset[int]] = {}
    out: list[ComparedTensor] = []
    for i, node in enumerate(graph.nodes):
        reads = graph.node_inputs[i]
        in_err = max((err.get(x, 0.0) for x in reads), default=0.0)
        in_hidden = frozenset().union(*(hidden.get(x, frozenset()) for x in reads)) if reads else frozenset()
        for o in node.output:
            if not o:
                continue
            if o in got and o in ref and (only is None or o in only):
                b_name, arr, layout = got[o]
                p = compare_output(o, ref[o], arr, rtol, atol)
                fused = tuple(graph.labels[j] for j in sorted(in_hidden))
                out.append(ComparedTensor(graph.labels[i], node.op_type, o, b_name, p.shape, p.dtype, p.max_abs, p.max_rel,
                                          in_err, p.ok, layout, fused, p.reason))
                err[o] = p.max_rel
                hidden[o] = frozenset()
            else:
                err[o] = in_err
                value = ref.get(o)
                floating = value is None or np.asarray(value).dtype.kind in "fc"
                hidden[o] = in_hidden | {i} if floating and o in live else in_hidden
    return tuple(out)


def _growth(graph: _Graph, entries: tuple[ComparedTensor, ...], first: ComparedTensor | None) -> tuple[tuple[str, float], ...]:
    """The compared tensors upstream and downstream of the first divergence (all of them without one)."""
    if first is None:
        return tuple((e.output, e.max_rel) for e in entries)
    consumers: dict[str, list[int]] = {}
    for i, reads in enumerate(graph.node_inputs):
        for x in reads:
            consumers.setdefault(x, []).append(i)
    related = {first.output}
    stack = [first.output]
    while stack:  # downstream
        v = stack.pop()
        for i in consumers.get(v, []):
            for o in graph.nodes[i].output:
                if o and o not in related:
                    related.add(o)
                    stack.append(o)
    stack = [first.output]
    up: set[str] = set()
    while stack:  # upstream
        v = stack.pop()
        j = graph.producer.get(v)
        if j is None:
            continue
        for x in graph.node_inputs[j]:
            if x not in up:
                up.add(x)
                stack.append(x)
    related |= up
    return tuple((e.output, e.max_rel) for e in entries if e.output in related)


def _outputs_only(graph: _Graph, b_out: dict[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray, str]]:
    """A's outputs paired with B's final outputs: by name, else by position (as verify pairs them)."""
    mapping = match_names(graph.outputs, list(b_out), "outputs")
    return {a: (mapping[a], b_out[mapping[a]], "") for a in graph.outputs}


# ----------------------------------------------------------------------------- B: ONNX

@dataclasses.dataclass
class _Side:
    got: dict[str, tuple[str, np.ndarray, str]]  # A's name -> (B's name, array in A's layout, layout note)
    outputs: dict[str, np.ndarray]  # B's final outputs by B's names, in order
    method: str
    note: str = ""


def _b_feeds(feeds: dict[str, np.ndarray], a_inputs: list[str], b_inputs: list[tuple[str, str | None]]) -> dict[str, np.ndarray]:
    """A's feeds renamed for B (by name, else by position) and cast where only the width differs."""
    mapping = match_names(a_inputs, [n for n, _ in b_inputs], "inputs")
    dtypes = dict(b_inputs)
    out = {}
    for a, b in mapping.items():
        v = np.asarray(feeds[a])
        want = dtypes.get(b)
        if want and want != "bfloat16" and v.dtype != np.dtype(want) and v.dtype.kind == np.dtype(want).kind:
            v = v.astype(want)
        out[b] = v
    return out


def _onnx_b(graph: _Graph, path: str, feeds: dict[str, np.ndarray]) -> _Side:
    from modelport.formats.onnx_format import graph_signature, load_model

    model = load_model(path)
    bg = graph_of(model)
    sig = graph_signature(model)
    bfeeds = _b_feeds(feeds, graph.inputs, [(s.name, s.dtype) for s in sig.inputs])
    shared = [o for o in bg.live if o in graph.producer and o not in bg.inputs]
    values = run_onnx(model, bfeeds, shared, what="B")
    outs = {o: values[o] for o in bg.outputs}
    inner = [o for o in shared if o in values and o not in graph.outputs]
    if not inner:
        return _Side({}, outs, "outputs-only", "A and B share no names of intermediate tensors")
    return _Side({o: (o, values[o], "") for o in shared if o in values}, outs, "names")


# ----------------------------------------------------------------------------- B: torch directory

def _assign_targets(text: str) -> list[str] | None:
    """The names a one-line assignment binds (``_`` placeholders dropped), else None."""
    try:
        stmt = ast.parse(text.strip()).body[0]
    except (SyntaxError, IndexError):
        return None
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
        return None
    t = stmt.targets[0]
    elts = t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]
    if not all(isinstance(e, ast.Name) for e in elts):
        return None
    return [e.id for e in elts if e.id != "_"]


def _line_offset(lines: list[str], by_line: dict[int, list[str]]) -> int:
    """How far value_to_line's numbers are off in this model.py (0 when they are right).

    The compiler numbers lines by the entries of the text it joins, and each runtime function it
    embeds before ``class Model`` is one entry of many lines: from there on its numbers fall short
    by the same amount. The offset is the shift (up to the ``class Model`` line) under which the most
    lines bind a local named after the value they define, as the compiler names locals.
    """
    import re

    from modelport.to_torch.naming import identifier

    head = next((i for i, ln in enumerate(lines) if ln.startswith("class ")), 0)
    targets: dict[int, list[str]] = {}
    bases = {v: identifier(v) for vs in by_line.values() for v in vs}

    def score(shift: int) -> int:
        hits = 0
        for line, values in by_line.items():
            k = line + shift
            if not 1 <= k <= len(lines):
                continue
            if k not in targets:
                targets[k] = _assign_targets(lines[k - 1]) or []
            names = targets[k]
            hits += any(n == bases[v] or re.fullmatch(re.escape(bases[v]) + r"_\d+", n) for v in values[:1] for n in names)
        return hits

    best, best_score = 0, score(0)
    if best_score == len(by_line):
        return 0
    for shift in range(1, head + 1):
        sc = score(shift)
        if sc > best_score:
            best, best_score = shift, sc
    return best


def _torch_targets(directory: Path, meta: dict) -> dict[int, list[tuple[str, str]]]:
    """line number -> [(local variable, ONNX value)] for the lines of forward that define values."""
    from modelport.formats.torch_dir import MODEL_FILE

    v2l = meta.get("value_to_line") or {}
    try:
        lines = (directory / MODEL_FILE).read_text().splitlines()
    except OSError as exc:
        raise BadInputError(f"unreadable {MODEL_FILE} ({exc.strerror})", path=directory) from None
    by_line: dict[int, list[str]] = {}
    for value, line in v2l.items():  # insertion order: the order of the line's defines
        by_line.setdefault(int(line), []).append(value)
    shift = _line_offset(lines, by_line) if by_line else 0
    targets: dict[int, list[tuple[str, str]]] = {}
    for line, values in by_line.items():
        line += shift
        if not 1 <= line <= len(lines):
            continue
        names = _assign_targets(lines[line - 1])
        if not names:
            continue
        if len(names) == len(values):
            targets[line] = list(zip(names, values))
        elif len(names) == 1:  # a fused chain (MatMul+Add): the local holds the last value
            targets[line] = [(names[0], values[-1])]
    return targets


def _to_numpy(value: Any) -> np.ndarray | None:
    if value is None or isinstance(value, (str, bytes)):
        return None
    if hasattr(value, "detach"):  # a torch tensor
        import torch

        t = value.detach().to("cpu", copy=True)
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - a list of tensors (a sequence) and such
        return None
    return arr.astype(np.int64) if arr.dtype.kind in "iu" else (arr if arr.dtype.kind in "fb" else None)


def _torch_b(graph: _Graph, path: str, feeds: dict[str, np.ndarray]) -> _Side:
    from modelport.formats import open_runner
    from modelport.formats.torch_dir import read_meta

    directory = Path(path)
    meta = read_meta(directory)
    targets = _torch_targets(directory, meta)
    with open_runner(path, "torch") as runner:
        code = type(runner.module).forward.__code__
        bfeeds = _b_feeds(feeds, graph.inputs, [(s.name, s.dtype) for s in runner.signature.inputs])
        captured: dict[str, tuple[str, np.ndarray]] = {}
        prev: list[int | None] = [None]

        def local(frame, event, arg):
            if event in ("line", "return"):
                done = prev[0]
                if done in targets:
                    f_locals = frame.f_locals
                    for name, value in targets[done]:
                        if name in f_locals:
                            arr = _to_numpy(f_locals[name])
                            if arr is not None:
                                captured[value] = (name, arr)
                prev[0] = frame.f_lineno if event == "line" else None
            return local

        def calls(frame, event, arg):
            return local if event == "call" and frame.f_code is code else None

        old = sys.gettrace()
        sys.settrace(calls)
        try:
            outs = runner.run(bfeeds)
        finally:
            sys.settrace(old)
    got = {v: (name, arr, "") for v, (name, arr) in captured.items()}
    if not targets or not any(v in graph.producer and v not in graph.outputs for v in got):
        why = "B's modelport_torch.json maps no value to a line" if not targets else \
            "no local of B's generated forward holds an intermediate value of A"
        return _Side({}, outs, "outputs-only", why)
    return _Side(got, outs, "torch-locals")


# ----------------------------------------------------------------------------- B: OpenVINO

def _openvino_b(graph: _Graph, path: str, feeds: dict[str, np.ndarray]) -> _Side:
    from modelport.formats.base import require
    from modelport.formats.openvino_format import xml_path

    ov = require("openvino", "openvino", "OpenVINO IR")
    xml = xml_path(Path(path))
    if xml is None:
        raise BadInputError("not an OpenVINO IR (.xml with a .bin beside it)", path=path)
    want = set(graph.producer)
    with native_output():
        try:
            core = ov.Core()
            model = core.read_model(str(xml))
            final = [o.get_any_name() if o.get_names() else f"output_{i}" for i, o in enumerate(model.outputs)]
            ports, seen = [], set()
            for op in model.get_ordered_ops():
                if op.get_type_name() in ("Parameter", "Constant", "Result"):
                    continue
                for port in op.outputs():
                    names = set(port.get_names()) & want
                    if names - seen:
                        ports.append(port)
                        seen |= names
            if ports:
                model.add_outputs(ports)
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            ins = [(p.get_any_name(), np.dtype(p.get_element_type().to_dtype()).name) for p in compiled.inputs]
            bfeeds = _b_feeds(feeds, graph.inputs, ins)
            results = compiled.create_infer_request().infer([np.ascontiguousarray(bfeeds[n]) for n, _ in ins],
                                                            share_inputs=False)
        except (BadInputError, UnsupportedError):
            raise
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"cannot run the OpenVINO IR with its intermediate tensors exposed ({msg[:200]})",
                                path=path) from None
    got, outs = {}, {}
    for i, port in enumerate(compiled.outputs):
        arr = np.array(results[port])
        if i < len(final):
            outs[final[i]] = arr
        for n in sorted(set(port.get_names()) & want):
            got.setdefault(n, (n, arr, ""))
    if not any(n not in graph.outputs for n in got):
        return _Side({}, outs, "outputs-only", "no tensor of the OpenVINO IR carries a name of an intermediate value of A")
    return _Side(got, outs, "openvino-names")


# ----------------------------------------------------------------------------- B: TFLite

def _layouts(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> list[tuple[str, list[int] | None]]:
    """How B's tensor can be read in A's layout: as is, channels-last moved first, or up to size-1 dims."""
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    size = int(np.prod(a_shape)) if a_shape else 1
    if size != (int(np.prod(b_shape)) if b_shape else 1):
        return []
    found: list[tuple[str, list[int] | None]] = []
    squeezed = tuple(d for d in a_shape if d != 1)
    if b_shape == a_shape or tuple(d for d in b_shape if d != 1) == squeezed:
        found.append(("", None))
    r = len(b_shape)
    if 3 <= r <= 5:
        perm = [0, r - 1, *range(1, r - 1)]
        moved = tuple(b_shape[p] for p in perm)
        # offered even when the moved shape equals B's own (1x16x16x16): the data still moves
        if moved == a_shape or (len(moved) != len(a_shape) and tuple(d for d in moved if d != 1) == squeezed):
            found.append(("channels-last", perm))
    return found


def _in_layout(arr: np.ndarray, a_shape: tuple[int, ...], perm: list[int] | None) -> np.ndarray:
    out = np.transpose(arr, perm) if perm is not None else arr
    return out.reshape(a_shape) if out.shape != tuple(a_shape) else out


def _tflite_run(path: str, feeds: dict[str, np.ndarray], a_inputs: list[str]):
    """B's tensors after one run that keeps them all: values, names, ops, and I/O names."""
    from modelport.formats.base import require
    from modelport.formats.tflite import io_details

    litert = require("ai_edge_litert.interpreter", "tf", "TFLite models")
    with quiet():  # the interpreter warns that preserving all tensors costs memory
        try:
            interp = litert.Interpreter(
                model_path=path, experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            named_in, named_out = io_details(interp)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"cannot load TFLite model ({msg})", path=path) from None
        bfeeds = _b_feeds(feeds, a_inputs, [(n, np.dtype(d["dtype"]).name) for n, d in named_in])
        try:
            for n, d in named_in:
                interp.resize_tensor_input(d["index"], bfeeds[n].shape, strict=False)
            interp.allocate_tensors()
            for n, d in named_in:
                interp.set_tensor(d["index"], bfeeds[n].astype(d["dtype"], copy=False))
            interp.invoke()
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"the TFLite model fails on these inputs ({msg[:200]})", path=path) from None
        try:
            ops = [([int(i) for i in op["inputs"]], [int(o) for o in op["outputs"]]) for op in interp._get_ops_details()]
        except Exception:  # noqa: BLE001 - a runtime without op details: only the outputs can be compared
            ops = []
        ins = {int(d["index"]): n for n, d in named_in}
        outs = {int(d["index"]): n for n, d in named_out}
        computed = {o for _, op_out in ops for o in op_out} | set(ins) | set(outs)  # not the weights
        names, values = {}, {}
        for d in interp.get_tensor_details():
            idx = int(d["index"])
            names[idx] = d["name"]
            if idx in computed:
                try:
                    values[idx] = np.array(interp.get_tensor(idx))
                except Exception:  # noqa: BLE001 - scratch tensors hold no data
                    pass
    return values, names, ops, ins, outs


def _tflite_b(graph: _Graph, ref: dict[str, np.ndarray], path: str, feeds: dict[str, np.ndarray], rtol, atol) -> _Side:
    values, names, ops, ins, outs = _tflite_run(path, feeds, graph.inputs)
    final = {n: values[i] for i, n in outs.items() if i in values}
    if not ops:
        return _Side({}, final, "outputs-only", "this LiteRT runtime lists no ops of the model")
    in_map = match_names(graph.inputs, list(ins.values()), "inputs")
    b_to_a_in = {b: a for a, b in in_map.items()}
    out_map = {}
    try:
        out_map = {b: a for a, b in match_names(graph.outputs, list(outs.values()), "outputs").items()}
    except BadInputError:
        pass
    got = align_dataflow(graph, ref, values, names, ops,
                         {i: b_to_a_in[n] for i, n in ins.items() if n in b_to_a_in},
                         {i: out_map[n] for i, n in outs.items() if n in out_map}, rtol, atol)
    if not any(v not in graph.outputs and v not in graph.inputs for v in got):
        return _Side({}, final, "outputs-only", "no tensor of the TFLite model could be paired with an intermediate value of A")
    return _Side(got, final, "tflite-dataflow")


def align_dataflow(graph: _Graph, ref: dict[str, np.ndarray], values: dict[int, np.ndarray], names: dict[int, str],
                   ops: list[tuple[list[int], list[int]]], inputs: dict[int, str], outputs: dict[int, str],
                   rtol: float | None, atol: float | None) -> dict[str, tuple[str, np.ndarray, str]]:
    """Pair B's tensors with A's values along B's dataflow (see the module docstring).

    Two passes. The first pairs only tensors that reproduce an A value within tolerance. A
    tensor of B that feeds one of B's outputs and no tensor paired so is where B went wrong
    (or downstream of it); B's other unpaired tensors are steps of B's own (onnx2tf writes Erf
    as Abs, Exp and Mul) that end in values A has too. The second pass may pair the former
    with the A value they come closest to, so that the error there is measured and named.
    """
    paired, exact = _align(graph, ref, values, names, ops, inputs, outputs, rtol, atol, frozenset())
    producer = {t: k for k, (_, outs) in enumerate(ops) for t in outs}
    suspects = _upstream(ops, producer, set(outputs)) - _upstream(ops, producer, exact)
    if not suspects:
        return paired
    return _align(graph, ref, values, names, ops, inputs, outputs, rtol, atol, frozenset(suspects))[0]


def _upstream(ops: list[tuple[list[int], list[int]]], producer: dict[int, int], tensors: set[int]) -> set[int]:
    """``tensors`` and every tensor of B they are computed from."""
    seen = set(tensors)
    stack = list(tensors)
    while stack:
        k = producer.get(stack.pop())
        if k is None:
            continue
        for i in ops[k][0]:
            if i >= 0 and i not in seen:
                seen.add(i)
                stack.append(i)
    return seen


def _align(graph: _Graph, ref: dict[str, np.ndarray], values: dict[int, np.ndarray], names: dict[int, str],
           ops: list[tuple[list[int], list[int]]], inputs: dict[int, str], outputs: dict[int, str],
           rtol: float | None, atol: float | None, approx: frozenset[int]
           ) -> tuple[dict[str, tuple[str, np.ndarray, str]], set[int]]:
    """One walk over B's ops: (A value -> (B tensor, array, layout), B tensors paired within tolerance).

    Approximate pairing (the closest candidate, none within tolerance) only for tensors in ``approx``.
    """
    live = [v for v in graph.live if v in ref]
    order = {v: k for k, v in enumerate(live)}
    bit = {v: 1 << k for k, v in enumerate(live)}
    dep: dict[str, int] = {v: bit[v] for v in graph.inputs if v in bit}  # each value and its ancestors
    for i, node in enumerate(graph.nodes):
        m = 0
        for x in graph.node_inputs[i]:
            m |= dep.get(x, 0)
        for o in node.output:
            if o in bit:
                dep[o] = m | bit[o]
    by_size: dict[int, list[str]] = {}
    for v in live:
        if v in dep and v not in graph.inputs:
            by_size.setdefault(int(np.asarray(ref[v]).size), []).append(v)
    by_bit = {b: v for v, b in bit.items()}

    def score(v: str, arr: np.ndarray):
        """(within tolerance, max rel err, cosine, layout, B's array in A's layout) of the best layout."""
        a_shape = np.asarray(ref[v]).shape
        best = None
        for layout, perm in _layouts(a_shape, arr.shape):
            mine = _in_layout(arr, a_shape, perm)
            p = compare_output(v, ref[v], mine, rtol, atol)
            cand = (p.ok, p.max_rel, p.cosine, layout, mine)
            if best is None or (not cand[0], cand[1]) < (not best[0], best[1]):
                best = cand
        return best

    paired: dict[str, tuple[str, np.ndarray, str]] = {}
    exact: set[int] = set()
    paired_mask = 0
    acc: dict[int, int] = {}  # B tensor -> A values paired along its ancestry
    front: dict[int, int] = {}  # B tensor -> the latest A values paired along its ancestry
    for idx, a in inputs.items():
        if a in bit:
            acc[idx] = front[idx] = bit[a]
            paired_mask |= bit[a]
            exact.add(idx)
    for op_in, op_out in ops:
        flowing = [i for i in op_in if i >= 0 and i in acc]
        if not flowing:
            continue  # computed from constants only
        base = _union([acc[i] for i in flowing])
        fronts = [front[i] for i in flowing if front[i]]
        for t in op_out:
            arr = values.get(t)
            if arr is None or t < 0:
                acc[t], front[t] = base, _union(fronts)
                continue
            cands = []
            for v in by_size.get(int(arr.size), []):
                if v in paired:
                    continue
                m = dep[v]
                if (m & ~bit[v]) & paired_mask & ~base:
                    continue  # an ancestor of v is paired with a tensor that does not feed t
                if not all(m & f for f in fronts):
                    continue  # v is not downstream of every input of the op
                sc = score(v, arr)
                if sc is not None:
                    cands.append((v, sc))
            good = [(v, sc) for v, sc in cands if sc[0]]
            forced = outputs.get(t)
            chosen: list[tuple[str, tuple]] = []
            if forced is not None and any(v == forced for v, _ in cands):
                chosen = [(forced, next(sc for v, sc in cands if v == forced))] + [c for c in good if c[0] != forced]
            elif good:
                chosen = good
            elif t in approx and cands:
                v, sc = min(cands, key=lambda c: (c[1][1], order[c[0]]))
                upstream = [by_bit[b] for b in _bits(_union(fronts))]
                closest = min((u[1] for u in (score(x, arr) for x in upstream) if u is not None), default=float("inf"))
                plausible = sc[2] is not None and sc[2] >= 0.5 and np.isfinite(sc[1])
                if plausible and sc[1] < closest:  # not a layout op of B's own on an upstream value
                    flat = np.asarray(ref[v]).reshape(-1)
                    # values A computes with no arithmetic between them (a Flatten after the pool) are all this tensor
                    chosen = [(v2, sc2) for v2, sc2 in cands
                              if v2 == v or (sc2[1] == sc[1] and np.array_equal(np.asarray(ref[v2]).reshape(-1), flat))]
            mask = 0
            for v, sc in chosen:
                paired[v] = (names.get(t, str(t)), sc[4], sc[3])
                mask |= bit[v]
                if sc[0]:
                    exact.add(t)
            paired_mask |= mask
            acc[t] = base | mask
            front[t] = mask or _union(fronts)
    return paired, exact


def _union(masks: list[int]) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low
        mask ^= low


# ----------------------------------------------------------------------------- the entry point

def localize(
    a: str | Path,
    b: str | Path,
    feeds: dict[str, np.ndarray],
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> Localization:
    """The first node of A (ONNX, the reference) whose output B does not reproduce.

    Args:
        a: an ONNX model, the reference.
        b: the model under test: an ONNX model, a modelport torch directory, a .tflite or an
            OpenVINO IR (.xml, or a directory holding model.xml).
        feeds: one input array per input of A, keyed by A's input names.
        rtol, atol: tolerances; the defaults of modelport.verify.parity by dtype when omitted.

    Raises:
        BadInputError: a model is unreadable or fails to run, or the feeds do not fit A.
        UnsupportedError: A is no ONNX model, or B is of a format this cannot look inside.
    """
    from modelport.formats import detect
    from modelport.formats.onnx_format import graph_signature, load_model
    from modelport.inputs import check_feeds

    a, b = str(a), str(b)
    a_fmt, b_fmt = detect(a), detect(b)
    if a_fmt != "onnx":
        raise UnsupportedError(f"localize takes an ONNX model as the reference A, not {a_fmt}", path=a)
    if b_fmt not in SUPPORTED_B_FORMATS:
        raise UnsupportedError(f"localize cannot look inside {b_fmt} models (it can: {', '.join(SUPPORTED_B_FORMATS)})",
                               path=b)
    model = load_model(a)
    graph = graph_of(model)
    if not isinstance(feeds, dict):
        raise BadInputError("feeds must be a dict of arrays keyed by A's input names")
    feeds = check_feeds(feeds, graph_signature(model).inputs, "feeds")
    ref = run_onnx(model, feeds, [o for o in graph.live if o not in graph.inputs], what="A")
    for k, v in feeds.items():
        ref.setdefault(k, v)
    if b_fmt == "onnx":
        side = _onnx_b(graph, b, feeds)
    elif b_fmt == "torch":
        side = _torch_b(graph, b, feeds)
    elif b_fmt == "openvino":
        side = _openvino_b(graph, b, feeds)
    else:
        side = _tflite_b(graph, ref, b, feeds, rtol, atol)
    note = side.note
    if side.method == "outputs-only":
        got = _outputs_only(graph, side.outputs)
        entries = tuple(dataclasses.replace(e, fused=())
                        for e in _entries(graph, ref, got, rtol, atol, only=set(graph.outputs)))
        note = (note + ": compared the final outputs only").strip(": ")
    else:
        entries = _entries(graph, ref, side.got, rtol, atol)
        missing = [o for o in graph.outputs if o not in side.got]
        if missing and side.outputs:
            try:  # outputs B does not name as A does still get compared, matched as verify matches them
                extra = _outputs_only(graph, side.outputs)
                merged = {**{o: extra[o] for o in missing}, **side.got}
                entries = _entries(graph, ref, merged, rtol, atol)
            except BadInputError:
                pass
        exposed = sum(1 for o in graph.live if o in ref and o not in graph.inputs)
        skipped = exposed - len(entries)
        if skipped > 0:
            note = f"{skipped} of {exposed} intermediate values of A have no counterpart in B (fused or folded) and were not compared"
    first = next((e for e in entries if not e.ok), None)
    return Localization(a, b, b_fmt, side.method, entries, first, _growth(graph, entries, first), note)


def localize_failure(a: str | Path, b: str | Path, failure_file: str | Path, *, rtol: float | None = None,
                     atol: float | None = None) -> str:
    """Where ONNX model ``a`` and ``b`` first diverge on a kept failure file's inputs, as one phrase
    for an error message ("first divergence at node ..."), or why it could not be localized."""
    from modelport.errors import ModelportError
    from modelport.inputs import load_npz
    from modelport.verify import FAILURE_KEYS

    feeds = {k: v for k, v in load_npz(failure_file).items() if not k.startswith(FAILURE_KEYS)}
    try:
        return localize(a, b, feeds, rtol=rtol, atol=atol).summary()
    except ModelportError as exc:  # an unsupported pair: the parity failure stands on its own
        return f"not localized ({exc})"
