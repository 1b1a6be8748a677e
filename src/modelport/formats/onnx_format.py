"""ONNX files (external data too), run with onnxruntime."""

from __future__ import annotations

import heapq
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError, UnsupportedError
from modelport.formats.base import BaseRunner, LoadOptions, fill_signature, read_head

NAME = "onnx"
EXTENSIONS = (".onnx",)


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    head = read_head(path, 2)
    # A ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    if head[:1] != b"\x08":
        return False
    if path.suffix.lower() == ".onnx":
        return True
    try:
        _read(path, load_external_data=False)
    except BadInputError:
        return False
    return True


def _read(path: str | Path, *, load_external_data: bool) -> onnx.ModelProto:
    """The ModelProto in ``path`` as it is, protobuf errors turned into a one-line BadInputError; external
    data that escapes the model's directory is refused (UnsafeError) before anything opens it."""
    from modelport.security.loaders import read_onnx

    model = read_onnx(path, load_external_data=load_external_data)
    if not model.graph.node and not model.graph.output:
        raise BadInputError("corrupt or truncated ONNX file (empty graph)", path=path)
    return model


_NOTED: set[tuple[str, str]] = set()  # (path, note) already written to stderr by this process


def load_model(path: str | Path, *, load_external_data: bool = True, notes: list[str] | None = None) -> onnx.ModelProto:
    """Read an ONNX model and check its scopes (``validate_model``); errors are one-line BadInputErrors.

    A main graph that is only out of topological order comes back sorted, with a note: appended to
    ``notes`` where the caller gives a list (to show it in its report), else written once per
    process and file to stderr as ``modelport: warning: PATH: NOTE``.
    """
    model = _read(path, load_external_data=load_external_data)
    try:
        note = validate_model(model)
    except BadInputError as exc:
        raise BadInputError(str(exc), path=path) from None
    if note is not None:
        if notes is not None:
            notes.append(note)
        elif (str(path), note) not in _NOTED:
            _NOTED.add((str(path), note))
            sys.stderr.write(f"modelport: warning: {path}: {note}\n")
            sys.stderr.flush()
    return model


# --------------------------------------------------------------------------- scope check


def _subgraphs(node: onnx.NodeProto):
    """(label, graph) for each subgraph attribute of ``node``: 'then_branch', 'body', 'branches[1]', ..."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            for k, g in enumerate(a.graphs):
                yield f"{a.name}[{k}]", g


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"unnamed {node.op_type} node #{index}"


def _owner_label(node: onnx.NodeProto, index: int) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else f"unnamed {node.op_type} node #{index}"


def _where(ctx: tuple) -> str:
    """'in the main graph', or 'in the then_branch of If 'if_3' in the body of Loop 'L'' (innermost first)."""
    if not ctx:
        return "in the main graph"
    return " ".join(f"in the {attr} of {_owner_label(owner, i)}" for attr, owner, i in reversed(ctx))


def _graph_names(graph: onnx.GraphProto) -> set[str]:
    """What a graph defines before its first node: inputs and (sparse) initializers."""
    names = {v.name for v in graph.input}
    names.update(t.name for t in graph.initializer)
    names.update(t.values.name for t in graph.sparse_initializer)
    names.discard("")
    return names


def _defined_somewhere(model: onnx.ModelProto, name: str) -> str | None:
    """Where ``name`` is produced anywhere in the model (for an error's hint); a second walk, on failure only."""
    def walk(graph, ctx):
        if name in _graph_names(graph):
            return f"an input or initializer of {_where(ctx)[3:]}" if ctx else "an input or initializer of the main graph"
        for i, node in enumerate(graph.node):
            if name in node.output:
                return f"{_node_label(node, i)} {_where(ctx)}"
            for attr, g in _subgraphs(node):
                hit = walk(g, ctx + ((attr, node, i),))
                if hit:
                    return hit
        return None

    return walk(model.graph, ())


class _Undefined(Exception):
    def __init__(self, user: str, name: str) -> None:
        super().__init__(user, name)
        self.user, self.name = user, name


def validate_model(model: onnx.ModelProto) -> str | None:
    """Checks that every value a node uses is defined before it in its scope; sorts a main graph out of order.

    Scope rules: a node input must be a graph input, an initializer or the output of an earlier node of
    its graph, or, in a subgraph (If/Loop/Scan bodies), a value its enclosing graphs define before the node
    that owns the subgraph; an empty name is an omitted optional input. Graph outputs must be defined too.
    One linear walk over names only: no shape inference, no tensor data read (external data stays unread).

    When the only fault is the main graph's node order (a node, or a subgraph of it, uses a value that a
    later main-graph node defines), the main graph's nodes are sorted topologically in place (stable: the
    earliest ready node first) and the note saying so is returned; otherwise None. Anything else raises
    BadInputError with one line naming the node, the graph it sits in and the undefined value.
    """
    main = model.graph
    nodes = main.node
    base = _graph_names(main)
    main_all = set(base)  # every name the main graph defines, wherever
    for node in nodes:
        main_all.update(node.output)
    main_all.discard("")
    defined = set(base)  # grows in node order: what the main graph defines before the current node
    outer: dict[int, set[str]] = {}  # main node index -> main-graph names its subgraphs use (sort dependencies)
    first_late: tuple[int, str, str] | None = None  # the first use before definition: (node index, name, how), for the note

    def check_subgraph(graph: onnx.GraphProto, chain: list[set[str]], ctx: tuple, top: int) -> None:
        local = _graph_names(graph)
        levels = chain + [local]

        def resolve(name: str, node: onnx.NodeProto | None, i: int) -> None:
            for level in reversed(levels):
                if name in level:
                    return
            if name in defined:  # the main graph, before the owning top-level node
                outer.setdefault(top, set()).add(name)
                return
            if name in main_all:  # a later main-graph node: fixed by sorting the main graph
                nonlocal first_late
                outer.setdefault(top, set()).add(name)
                if first_late is None:
                    first_late = (top, name, f"in its {ctx[0][0]}")
                return
            user = f"{_where(ctx)[3:]} (as a graph output)" if node is None else f"{_node_label(node, i)} {_where(ctx)}"
            raise _Undefined(user, name)  # the labels are built on failure only

        for i, node in enumerate(graph.node):
            for name in node.input:
                if name:
                    resolve(name, node, i)
            for attr, g in _subgraphs(node):
                check_subgraph(g, levels, ctx + ((attr, node, i),), top)
            local.update(node.output)
        local.discard("")
        for out in graph.output:
            if out.name:
                resolve(out.name, None, -1)

    try:
        for i, node in enumerate(nodes):
            for name in node.input:
                if name and name not in defined:
                    if name not in main_all:
                        raise _Undefined(f"{_node_label(node, i)} in the main graph", name)
                    if first_late is None:
                        first_late = (i, name, "")
            for attr, g in _subgraphs(node):
                check_subgraph(g, [], ((attr, node, i),), i)
            defined.update(node.output)
        for out in main.output:
            if out.name and out.name not in main_all:
                raise _Undefined("the main graph (as a graph output)", out.name)
    except _Undefined as exc:
        hint = _defined_somewhere(model, exc.name)
        more = f" (only {hint} does, later or out of its scope)" if hint else ""
        raise BadInputError(f"{exc.user} uses {exc.name!r}, which nothing defines before it{more}") from None
    if first_late is None:
        return None
    return _sort_main(model, outer, first_late)


def _sort_main(model: onnx.ModelProto, outer: dict[int, set[str]], first_late: tuple[int, str, str]) -> str:
    """Sorts the main graph's nodes topologically in place (the earliest ready node first); returns the note."""
    nodes = list(model.graph.node)
    base = _graph_names(model.graph)
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.output:
            if not name:
                continue
            if name in producer:
                raise BadInputError(f"the main graph is out of topological order and {name!r} is defined twice "
                                    f"({_node_label(nodes[producer[name]], producer[name])} and {_node_label(node, i)}), "
                                    "so no order of its nodes is certain")
            producer[name] = i
    users: list[list[int]] = [[] for _ in nodes]
    indegree = [0] * len(nodes)
    for i, node in enumerate(nodes):
        needs = {producer[n] for n in node.input if n and n not in base and n in producer}
        needs.update(producer[n] for n in outer.get(i, ()) if n not in base and n in producer)
        for j in needs:
            users[j].append(i)
        indegree[i] = len(needs)
    ready = [i for i, d in enumerate(indegree) if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        j = heapq.heappop(ready)
        order.append(j)
        for i in users[j]:
            indegree[i] -= 1
            if indegree[i] == 0:
                heapq.heappush(ready, i)
    if len(order) < len(nodes):
        stuck = min(i for i, d in enumerate(indegree) if d > 0)
        raise BadInputError(f"the main graph has a cycle: {_node_label(nodes[stuck], stuck)} depends, directly or "
                            "through other nodes, on its own output")
    field = model.graph.node
    for i in order:  # the sorted copies after the originals, then the originals dropped
        field.add().CopyFrom(nodes[i])
    del field[: len(nodes)]
    moved = sum(1 for pos, i in enumerate(order) if pos != i)
    top, name, how = first_late
    user = f"{_node_label(nodes[top], top)}{' ' + how if how else ''}"
    definer = producer[name]
    return (f"the main graph's nodes are out of topological order ({user} uses {name!r} before "
            f"{_node_label(nodes[definer], definer)} defines it); sorted them on load, "
            f"{moved} of {len(nodes)} node(s) moved (onnx's checker rejects such a file)")


def iter_nodes(graph: onnx.GraphProto):
    """Every node of a graph, subgraph nodes (If/Loop/Scan bodies) included, depth first."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(a.g)
            for g in a.graphs:
                yield from iter_nodes(g)


def np_dtype(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        try:
            return onnx.TensorProto.DataType.Name(elem_type).lower()
        except ValueError:  # no such element type: a corrupt file
            from modelport.errors import BadInputError

            raise BadInputError(f"corrupt ONNX file (unknown tensor element type {elem_type})") from None


def value_spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    tt = vi.type.tensor_type
    shape = None
    if tt.HasField("shape"):
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_value"):  # a negative size (paddle2onnx writes -1): not known
                dims.append(None)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorSpec(vi.name, np_dtype(tt.elem_type), shape)


def graph_signature(model: onnx.ModelProto) -> Signature:
    inits = {i.name for i in model.graph.initializer}
    inputs = tuple(value_spec(v) for v in model.graph.input if v.name not in inits)
    outputs = tuple(value_spec(v) for v in model.graph.output)
    return Signature(inputs, outputs)


def index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Integer graph inputs that index a constant table (Gather/embedding): name -> table rows."""
    inits = {i.name: i for i in model.graph.initializer}
    consts = {}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = a.t
    tables = {**consts, **inits}
    producers = {o: n for n in model.graph.node for o in n.output}
    passthrough = {"Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Expand"}
    bounds: dict[str, int] = {}
    graph_inputs = {v.name for v in model.graph.input}

    def source_input(name: str) -> str | None:
        seen = 0
        while name not in graph_inputs and seen < 8:
            node = producers.get(name)
            if node is None or node.op_type not in passthrough:
                return None
            name = node.input[0]
            seen += 1
        return name if name in graph_inputs else None

    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in tables:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = tables[node.input[0]]
        if not table.dims:
            continue
        rows = int(table.dims[axis])
        src = source_input(node.input[1])
        if src is not None:
            bounds[src] = min(rows, bounds.get(src, rows))
    return bounds


def session_options(threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise UnsupportedError("device cuda requested but onnxruntime has no CUDAExecutionProvider here")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRunner(BaseRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        import onnxruntime as ort

        model = load_model(path, load_external_data=False)
        self._bounds = index_bounds(model)
        sig = graph_signature(model)
        self._signature = Signature(fill_signature(sig.inputs, options.inputs, path), sig.outputs)
        try:
            self.session = ort.InferenceSession(
                path, sess_options=session_options(options.threads), providers=providers_for(options.device)
            )
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "NOT_IMPLEMENTED" in msg or "Could not find an implementation" in msg:
                raise UnsupportedError(f"onnxruntime cannot run this model: {msg}", path=path) from None
            raise BadInputError(f"onnxruntime cannot load this model: {msg}", path=path) from None

    @property
    def signature(self) -> Signature:
        return self._signature

    def index_bounds(self) -> dict[str, int]:
        return dict(self._bounds)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.signature.output_names
        arrays = {k: np.asarray(v) for k, v in feeds.items()}
        try:
            outs = self.session.run(names, arrays)
        except Exception as exc:  # onnxruntime's Fail / InvalidArgument / RuntimeException at run time
            if type(exc).__module__.split(".")[0] != "onnxruntime":
                raise
            shapes = ", ".join(f"{k}:{'x'.join(map(str, a.shape)) or 'scalar'}:{a.dtype}" for k, a in arrays.items())
            first = " ".join(str(exc).strip().split())[:300]
            raise BadInputError(f"the model fails on inputs {shapes}: {first}", path=self.path) from None
        return dict(zip(names, outs))


def open(path: str, options: LoadOptions) -> OnnxRunner:  # noqa: A001 - the format interface
    return OnnxRunner(path, options)
