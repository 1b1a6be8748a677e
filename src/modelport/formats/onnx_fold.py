"""Evaluate the cone of one ONNX value from tensors that are known: the one constant evaluator of modelport.

Several rewrites need the value a small part of a graph computes when its inputs are known: an ``If``
condition once the user fixed ``sr=16000`` (``modelport.convert.if_fold``), or the ``axes`` of a
Squeeze computed by a Constant -> Cast -> Unsqueeze chain that onnx's version converter cannot read
(``modelport.adapt.opset``). Each collects the nodes that compute the value (its *cone*: walking
producers back from the value until known tensors or values no node of the graph makes) and runs
them as a small model through ``onnx.reference`` (exact, numpy). This module is that walk and that run.

A node that carries a subgraph (If/Loop/Scan) ends the walk with no cone: what its body reads from the
enclosing graph is not followed, so its value is never claimed to be known. Callers may also bound the
walk (ops allowed, node count), which keeps folds to small shape and switch computations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["Cone", "cone_value", "evaluate_cone", "find_cone", "shape_values"]

_SUBGRAPH = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


@dataclasses.dataclass(frozen=True)
class Cone:
    """The nodes computing ``value`` (in graph order) and the leaves they read: values no node of the
    graph produces (graph inputs, initializers, outer-scope values) or that the walk was told to stop at."""

    value: str
    nodes: tuple[onnx.NodeProto, ...]
    leaves: frozenset[str]


def find_cone(graph: onnx.GraphProto, name: str, *, stop: Collection[str] = (),
              producer: Mapping[str, onnx.NodeProto] | None = None, ops: Collection[str] | None = None,
              limit: int | None = None) -> Cone | None:
    """The cone of ``name`` in ``graph``; the walk does not go past the names in ``stop``. None when a node
    of it carries a subgraph, is of a non-standard domain, is not in ``ops`` (when given), or when it has
    more than ``limit`` nodes."""
    if producer is None:
        producer = {o: n for n in graph.node for o in n.output if o}
    picked: dict[int, onnx.NodeProto] = {}
    leaves: set[str] = set()
    todo, seen = [name], set()
    while todo:
        v = todo.pop()
        if not v or v in seen:
            continue
        seen.add(v)
        node = producer.get(v) if v not in stop else None
        if node is None:
            leaves.add(v)
            continue
        if id(node) in picked:
            continue
        if node.domain not in ("", "ai.onnx") or (ops is not None and node.op_type not in ops) \
                or any(a.type in _SUBGRAPH for a in node.attribute):
            return None
        picked[id(node)] = node
        if limit is not None and len(picked) > limit:
            return None
        todo.extend(node.input)
    order = {id(n): k for k, n in enumerate(graph.node)}
    nodes = sorted(picked.values(), key=lambda n: order.get(id(n), -1))
    return Cone(name, tuple(nodes), frozenset(leaves))


def evaluate_cone(cone: Cone, known: Mapping[str, np.ndarray | onnx.TensorProto],
                  opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int | None = None) -> np.ndarray | None:
    """The value of ``cone.value`` from its nodes, every leaf taken from ``known`` (arrays or initializers),
    with onnx's reference evaluator; None when a leaf is unknown or the evaluator fails (an op it lacks,
    a value it refuses)."""
    from onnx.reference import ReferenceEvaluator

    if not cone.leaves <= set(known):
        return None
    inits = []
    for n in sorted(cone.leaves):
        t = known[n]
        if isinstance(t, onnx.TensorProto):
            if t.name != n:
                t = onnx.TensorProto.FromString(t.SerializeToString())
                t.name = n
            inits.append(t)
        else:
            inits.append(numpy_helper.from_array(np.asarray(t), n))
    graph = onnx.helper.make_graph(list(cone.nodes), "cone", [],
                                   [onnx.helper.make_tensor_value_info(cone.value, onnx.TensorProto.UNDEFINED, None)],
                                   inits)
    kwargs = {"ir_version": ir_version} if ir_version else {}
    model = onnx.helper.make_model(graph, opset_imports=list(opset_imports), **kwargs)
    try:
        (value,) = ReferenceEvaluator(model).run(None, {})
    except Exception:  # noqa: BLE001 - not foldable after all: the caller keeps the graph as it is
        return None
    return np.asarray(value)


def cone_value(graph: onnx.GraphProto, name: str, known: Mapping[str, np.ndarray | onnx.TensorProto],
               opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int | None = None, *,
               ops: Collection[str] | None = None, limit: int | None = None) -> np.ndarray | None:
    """The value of ``name`` computed from ``known`` tensors (the walk stops at them), or None."""
    cone = find_cone(graph, name, stop=set(known), ops=ops, limit=limit)
    return None if cone is None else evaluate_cone(cone, known, opset_imports, ir_version)


def shape_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The outputs of the top-level ``Shape`` and ``Size`` nodes whose input has a fully static shape
    (onnx shape inference with data propagation, on a copy): ``{output name: int64 value}``. With the
    graph inputs at static shapes, a condition on them (``Shape(state)[1] == 1``) is then a constant."""
    wanted = [n for n in model.graph.node if n.op_type in ("Shape", "Size") and n.domain in ("", "ai.onnx")
              and n.input and n.output and n.output[0]]
    if not wanted:
        return {}
    try:
        copy = onnx.ModelProto.FromString(model.SerializeToString())
        del copy.graph.value_info[:]
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:  # noqa: BLE001 - no shapes known: nothing is decided by them
        return {}
    dims: dict[str, list[int]] = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = v.type.tensor_type
        if v.type.HasField("tensor_type") and t.HasField("shape") \
                and all(d.HasField("dim_value") and d.dim_value >= 0 for d in t.shape.dim):
            dims[v.name] = [d.dim_value for d in t.shape.dim]
    for t in model.graph.initializer:
        dims[t.name] = list(t.dims)
    out: dict[str, np.ndarray] = {}
    for n in wanted:
        shape = dims.get(n.input[0])
        if shape is None:
            continue
        if n.op_type == "Size":
            out[n.output[0]] = np.asarray(int(np.prod(shape, dtype=np.int64)), np.int64)
        else:
            bounds = {a.name: a.i for a in n.attribute if a.name in ("start", "end")}
            out[n.output[0]] = np.asarray(shape[bounds.get("start", 0):bounds.get("end", len(shape))], np.int64)
    return out
