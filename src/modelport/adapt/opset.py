"""Opset conversion: onnx's version converter, plus our own adapters where it fails.

Where ``onnx.version_converter`` fails today, and what we do first:

- an op that does not exist at the target opset (Gelu < 20, LayerNormalization < 17,
  HardSwish < 14, Mish < 18): its exact decomposition rule rewrites it into primitive ops;
- ``ReduceX``-18 / ``Squeeze``/``Unsqueeze``/``Split``-13 with axes from a ``Constant`` node:
  the converter only reads initializers, so constants are lifted into initializers;
- a version that only added optional attributes (GatherND-12 ``batch_dims``, …), crossed
  downwards by a node that leaves them at their defaults: the attributes are dropped;
- ``Softmax``/``LogSoftmax``/``Hardmax``-13 down to 12: the converter relabels them, which changes the
  result unless the axis is the last; ours moves the axis last with a Transpose pair;
- ``Split``-18 down to 17 (no adapter): ``num_outputs`` becomes equal parts or explicit sizes;
- ``Pad``-18 down to 17 (no adapter): constant ``axes`` are folded into ``pads`` over every axis of the
  input (rank from shape inference) and dropped; without ``axes`` the node is unchanged;
- ``Pad``-19 down to 18: the converter passes ``mode="wrap"`` on, which opset 18 lacks; ours refuses it;
- ``Pad``-11 down to 10 (no adapter): constant ``pads`` / ``constant_value`` inputs become attributes;
- ``BatchNormalization``-14 down to 13 (no adapter): inference mode (``training_mode=0``, one output) is
  BatchNormalization-9's formula, so the attribute is dropped; training mode, bfloat16 or statistics of
  another type than the data are refused naming the node;
- an ``axes``-like input an If/Loop/Scan body reads from an enclosing graph (the converter looks only in the
  node's own graph): small constants are copied into the body; one computed from constants only
  (Constant -> Cast -> Unsqueeze) is folded with onnx.reference; one computed at run time is refused
  naming the node;
- ``Reshape``-14 down to 13 (no adapter at all): the node is held out of the conversion in a
  private domain and put back without ``allowzero``, which is exact when ``allowzero`` is 0 or
  the target shape is a constant without zeros; otherwise no automatic fix.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.defs
import onnx_ir as ir
from onnx import numpy_helper

from modelport.errors import BadInputError, ModelportError, UnsupportedError
from modelport.formats.onnx_format import iter_nodes
from modelport.formats.onnx_names import NameAllocator, value_names

__all__ = ["MIN_OPSET", "max_opset", "model_opset", "convert_opset", "OpsetResult", "missing_at"]

MIN_OPSET = 7  # the lowest opset current runtimes (onnxruntime) load
HOLD_DOMAIN = "modelport.hold"


def max_opset() -> int:
    return onnx.defs.onnx_opset_version()


def model_opset(model: onnx.ModelProto, domain: str = "") -> int | None:
    for imp in model.opset_import:
        if imp.domain in ((domain, "ai.onnx") if domain == "" else (domain,)):
            return int(imp.version)
    return None


@dataclasses.dataclass(frozen=True)
class OpsetResult:
    model: onnx.ModelProto
    src: int
    dst: int
    rewrites: tuple[str, ...]  # rule keys applied to make the conversion possible
    notes: tuple[str, ...]


def missing_at(op_type: str, opset: int, domain: str = "") -> bool:
    """True when ``op_type`` has no schema at ``opset`` (it was introduced later)."""
    try:
        onnx.defs.get_schema(op_type, opset, domain)
        return False
    except onnx.defs.SchemaError:
        return True


def _decompose_missing(model: onnx.ModelProto, target: int) -> tuple[onnx.ModelProto, list[str]]:
    from modelport.adapt.rules import apply_rule, find_rule

    missing = sorted({n.op_type for n in iter_nodes(model.graph) if n.domain in ("", "ai.onnx") and missing_at(n.op_type, target)})
    if not missing:
        return model, []
    no_rule = [op for op in missing if find_rule(op, "decompose") is None]
    if no_rule:
        names = [f"{n.name or '?'} ({n.op_type})" for n in iter_nodes(model.graph) if n.op_type in no_rule][:8]
        raise UnsupportedError(f"opset {target} has no {', '.join(no_rule)} and modelport has no exact decomposition for it "
                               f"(nodes: {', '.join(names)}); no automatic fix")
    irm = ir.serde.deserialize_model(model)
    applied = []
    for op in missing:
        res = apply_rule(irm, find_rule(op, "decompose"))
        if res.skipped:
            node, why = res.skipped[0]
            raise UnsupportedError(f"cannot decompose {op} node {node!r} for opset {target}: {why}")
        applied.append(res.rule)
    return ir.serde.serialize_model(irm), applied


def _lift_constants(model: onnx.ModelProto) -> None:
    """Constant nodes of the main graph -> initializers (the version converter reads only those)."""
    outputs = {o.name for o in model.graph.output}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs and len(node.attribute) == 1:
            a = node.attribute[0]
            value = None
            if a.name == "value":
                value = numpy_helper.to_array(a.t)
            elif a.name == "value_ints":
                value = np.array(list(a.ints), dtype=np.int64)
            elif a.name == "value_int":
                value = np.array(a.i, dtype=np.int64)
            elif a.name == "value_floats":
                value = np.array(list(a.floats), dtype=np.float32)
            elif a.name == "value_float":
                value = np.array(a.f, dtype=np.float32)
            if value is not None:
                model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


_LOCAL_MAX = 64  # elements: shape-like constants (axes, pads, sizes, scalars), never weights


def _localize_outer_constants(model: onnx.ModelProto) -> int:
    """Small constants a subgraph node reads from an enclosing graph -> a ``Constant`` node in that subgraph.

    onnx's version converter reads an input such as ``axes`` (ReduceX-18, Squeeze-13, ...) only from an
    initializer or ``Constant`` of the node's own graph: an ``If`` branch reading ``axes`` from the main graph's
    initializers (torch.onnx's dynamo exporter writes them so) fails with "No initializer or constant input to
    node found". A copy inside the branch is the same value. Returns how many inputs were rewired.
    """
    taken = {t.name for t in model.graph.initializer} | {o for n in iter_nodes(model.graph) for o in n.output}
    fresh = NameAllocator(taken).fresh

    def small(t: onnx.TensorProto) -> bool:
        return int(np.prod(list(t.dims))) <= _LOCAL_MAX and t.data_location != onnx.TensorProto.EXTERNAL

    def scope_of(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
        out = {t.name: t for t in graph.initializer if small(t)}
        for node in graph.node:
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value" \
                    and small(node.attribute[0].t):
                out[node.output[0]] = node.attribute[0].t
        return out

    count = 0

    def visit(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto]) -> None:
        nonlocal count
        local = scope_of(graph)
        defined = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        defined.update(o for n in graph.node for o in n.output)
        copies: dict[str, str] = {}
        added = []
        if outer:
            for node in graph.node:
                for i, name in enumerate(node.input):
                    if i == 0 or not name or name in defined or name not in outer:
                        continue
                    if name not in copies:
                        copies[name] = fresh(f"{name}.local")
                        tensor = onnx.TensorProto()
                        tensor.CopyFrom(outer[name])
                        tensor.name = copies[name]
                        added.append(onnx.helper.make_node("Constant", [], [copies[name]], name=f"{copies[name]}/Constant",
                                                           value=tensor))
                    node.input[i] = copies[name]
                    count += 1
        inner = {**outer, **local}
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g, inner)
                for g in a.graphs:
                    visit(g, inner)
        if added:
            nodes = added + list(graph.node)
            del graph.node[:]
            graph.node.extend(nodes)

    visit(model.graph, {})
    return count


# ops a computed axes/split value may pass through that are folded (pure functions of their constant inputs)
_FOLDABLE = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Concat", "Identity", "Gather", "Slice", "Add", "Sub", "Mul",
             "Neg", "Abs", "Range", "Shape", "Size", "Constant", "Flatten", "Expand", "Div", "Mod"}


def _fold_computed_axes(model: onnx.ModelProto) -> int:
    """The ``axes`` / ``split`` inputs of ReduceX / Squeeze / Unsqueeze / Split that are computed from constants
    only (a Constant -> Cast -> Unsqueeze chain) -> evaluated once (onnx.reference, through
    ``modelport.formats.onnx_fold``) into a Constant of the node's graph, which onnx's version converter can
    read. Returns how many inputs were folded; others are left."""
    from modelport.formats.onnx_fold import evaluate_cone, find_cone

    taken = {t.name for t in model.graph.initializer} | {o for n in iter_nodes(model.graph) for o in n.output}
    opsets = [onnx.helper.make_opsetid("", model_opset(model) or 1)]
    folded = 0

    def visit(graph: onnx.GraphProto) -> None:
        nonlocal folded
        inits = {t.name: t for t in graph.initializer}
        consts = {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
        producer = {o: n for n in graph.node for o in n.output if o}
        added = []
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                for g in a.graphs:
                    visit(g)
            if node.op_type not in _AXES_OPS or len(node.input) < 2 or not node.input[1] \
                    or node.input[1] in inits or node.input[1] in consts:
                continue
            # only this graph's constants: a value of an enclosing graph or an input leaves it as it is
            cone = find_cone(graph, node.input[1], producer=producer, ops=_FOLDABLE, limit=64)
            value = evaluate_cone(cone, inits, opsets) if cone is not None and cone.leaves <= inits.keys() else None
            if value is None:  # not foldable after all: the converter's own error then names the node
                continue
            name, k = f"{node.input[1]}.folded", 0
            while name in taken:
                k += 1
                name = f"{node.input[1]}.folded_{k}"
            taken.add(name)
            added.append(onnx.helper.make_node("Constant", [], [name], name=f"{name}/Constant",
                                               value=numpy_helper.from_array(np.asarray(value), name)))
            node.input[1] = name
            folded += 1
        if added:
            rest = list(graph.node)
            del graph.node[:]
            graph.node.extend(added + rest)

    visit(model.graph)
    return folded


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    # tensors with external data (weights of a model read without them) are no shape constants: left out
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
            if i.data_location != onnx.TensorProto.EXTERNAL or i.raw_data}


def _signature(schema) -> tuple:
    attrs = tuple(sorted((a.name, a.required, int(a.type)) for a in schema.attributes.values()))
    ins = tuple((i.name, int(i.option)) for i in schema.inputs)
    outs = tuple((o.name, int(o.option)) for o in schema.outputs)
    return attrs, ins, outs


def _changed_type_only(op: str, version: int) -> bool:
    """True when ``op``'s schema at ``version`` differs from the one before only in its type constraints."""
    try:
        new = onnx.defs.get_schema(op, version, "")
        old = onnx.defs.get_schema(op, version - 1, "")
    except onnx.defs.SchemaError:
        return False
    return _signature(new) == _signature(old)


def _strip_default_noop(model: onnx.ModelProto) -> None:
    """``noop_with_empty_axes=0`` is the default; the converter's axes adapters leave it behind."""
    for node in iter_nodes(model.graph):
        if node.op_type.startswith("Reduce"):
            for a in list(node.attribute):
                if a.name == "noop_with_empty_axes" and a.i == 0:
                    node.attribute.remove(a)


_INFERRED: dict[int, tuple[onnx.ModelProto, dict[str, list]]] = {}  # one shape inference per model and conversion


def _all_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Value name -> inferred dims (TensorShapeProto.Dimension) over every graph, computed once per model."""
    hit = _INFERRED.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1]
    try:
        from modelport.formats.onnx_data import checkable

        inferred = onnx.shape_inference.infer_shapes(checkable(model), strict_mode=False)
    except Exception:  # noqa: BLE001  (nothing known: nothing proven)
        inferred = model
    out = {}
    graphs = [inferred.graph]
    while graphs:
        g = graphs.pop()
        for vi in [*g.input, *g.value_info, *g.output]:
            if vi.type.tensor_type.HasField("shape"):
                out[vi.name] = list(vi.type.tensor_type.shape.dim)
        for n in g.node:
            for a in n.attribute:
                graphs.extend([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
    _INFERRED[id(model)] = (model, out)
    return out


def _shape_pieces(node: onnx.NodeProto, model: onnx.ModelProto, consts: dict[str, np.ndarray]):
    """Reshape's ``shape`` as its Concat pieces: (values, None, 0, 0) for a constant piece, (None, X, s, e) for
    ``Shape(X)[s:e]`` (Shape-15 start/end, or Slice of a whole Shape); None when a piece is anything else."""
    producer = {o: n for n in iter_nodes(model.graph) for o in n.output}

    def const(name: str):
        if name in consts:
            return np.asarray(consts[name]).reshape(-1)
        p = producer.get(name)
        if p is not None and p.op_type == "Constant" and p.attribute and p.attribute[0].name == "value":
            return numpy_helper.to_array(p.attribute[0].t).reshape(-1)
        return None

    top = producer.get(node.input[1])
    names = list(top.input) if top is not None and top.op_type == "Concat" else [node.input[1]]
    out = []
    for name in names:
        value = const(name)
        if value is not None:
            out.append((value, None, 0, 0))
            continue
        p = producer.get(name)
        attrs = {a.name: a.i for a in p.attribute} if p is not None else {}
        if p is not None and p.op_type == "Shape":
            out.append((None, p.input[0], attrs.get("start", 0), attrs.get("end")))
            continue
        whole = producer.get(p.input[0]) if p is not None and p.op_type == "Slice" else None
        if whole is None or whole.op_type != "Shape" or any(a.name in ("start", "end") for a in whole.attribute):
            return None
        starts, ends = const(p.input[1]), const(p.input[2])
        axes = const(p.input[3]) if len(p.input) > 3 and p.input[3] else np.zeros(1, np.int64)
        steps = const(p.input[4]) if len(p.input) > 4 and p.input[4] else np.ones(1, np.int64)
        if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)) or int(axes[0]) != 0 or int(steps[0]) != 1:
            return None
        out.append((None, whole.input[0], int(starts[0]), int(ends[0])))
    return out


def _zero_copies_the_same(node: onnx.NodeProto, model: onnx.ModelProto, consts: dict[str, np.ndarray]) -> bool:
    """Whether Reshape's ``allowzero`` cannot change its result: every entry of the computed shape is a nonzero
    constant, a static nonzero dim, or the dim the data tensor has at that very position (the same tensor, or the
    same symbolic dim after shape inference). A 0 there reads 0 under allowzero=1 and copies the data's 0 under
    allowzero=0: the same shape. (``h.reshape(*h.shape[:-1], heads, -1)``, as torch.onnx writes every view.)"""
    pieces = _shape_pieces(node, model, consts)
    dims = _all_dims(model)
    data = dims.get(node.input[0])
    if pieces is None or data is None:
        return False
    offset = 0
    for value, src, start, end in pieces:
        if value is not None:
            if (value == 0).any():
                return False
            offset += value.size
            continue
        have = dims.get(src)
        if have is None:
            return False
        rank = len(have)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
        for k in range(max(0, end - start)):
            i, d = offset + k, have[start + k]
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if i >= len(data):
                return False
            same_tensor = src == node.input[0] and i == start + k
            same_symbol = d.dim_param and data[i].dim_param == d.dim_param
            if not (same_tensor or same_symbol):
                return False
        offset += max(0, end - start)
    return True


def _reshape_14_down(node: onnx.NodeProto, model: onnx.ModelProto, consts: dict[str, np.ndarray], dropped: list[str]) -> None:
    allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
    if allowzero and consts.get(node.input[1]) is None and _zero_copies_the_same(node, model, consts):
        allowzero = 0  # a computed shape whose zeros (if any) copy the data's own zero dims: exact without it
    if allowzero:
        shape = consts.get(node.input[1])
        if shape is None or (shape == 0).any():
            raise UnsupportedError(f"Reshape node {node.name!r} uses allowzero=1 with a shape that may contain 0, "
                                   f"which opset 13 cannot express; no automatic fix")
    for a in list(node.attribute):
        if a.name == "allowzero":
            node.attribute.remove(a)
            dropped.append(node.name)


def _split_18_down(node: onnx.NodeProto, model: onnx.ModelProto, consts: dict[str, np.ndarray], dropped: list[str]) -> None:
    """Split-18 ``num_outputs=n`` -> Split-13: equal parts, or explicit sizes ceil(d/n)..., remainder when d % n."""
    num = next((a.i for a in node.attribute if a.name == "num_outputs"), None)
    if num is None:
        return
    for a in list(node.attribute):
        if a.name == "num_outputs":
            node.attribute.remove(a)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    dim = _static_dim(model, node.input[0], axis)
    if dim is not None and dim % num:
        chunk = -(-dim // num)
        sizes = [chunk] * (num - 1) + [dim - chunk * (num - 1)]
        name = f"{node.name or node.output[0]}.split_sizes"
        model.graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
        while len(node.input) < 2:
            node.input.append("")
        node.input[1] = name


def _inferred_dims(model: onnx.ModelProto, name: str) -> list | None:
    """The shape dims (TensorShapeProto.Dimension) of value ``name`` after shape inference; None if unknown
    (one inference per model and conversion, shared with the Reshape adapter: ``_all_dims``)."""
    return _all_dims(model).get(name)


def _static_dim(model: onnx.ModelProto, name: str, axis: int) -> int | None:
    dims = _inferred_dims(model, name)
    d = dims[axis] if dims is not None and -len(dims) <= axis < len(dims) else None
    return int(d.dim_value) if d is not None and d.HasField("dim_value") else None


def _drop_new_default_attrs(node: onnx.NodeProto, version: int) -> bool:
    """Down across a version that only added optional attributes: exact when the node leaves them at their defaults."""
    try:
        new = onnx.defs.get_schema(node.op_type, version, "")
        old = onnx.defs.get_schema(node.op_type, version - 1, "")
    except onnx.defs.SchemaError:
        return False
    (a_new, i_new, o_new), (a_old, i_old, o_old) = _signature(new), _signature(old)
    added = set(a_new) - set(a_old)
    if i_new != i_old or o_new != o_old or set(a_old) - set(a_new) or not added:
        return False
    extra = {name for name, required, _ in added}
    if any(required for _, required, _ in added):
        return False
    for a in node.attribute:
        if a.name in extra:
            default = new.attributes[a.name].default_value
            if default is None or default.type == 0 or onnx.helper.get_attribute_value(a) != onnx.helper.get_attribute_value(default):
                return False
    for a in [a for a in node.attribute if a.name in extra]:
        node.attribute.remove(a)
    return True


def _softmax_13_down(node: onnx.NodeProto, model: onnx.ModelProto, consts: dict[str, np.ndarray], dropped: list[str]) -> None:
    """Softmax-13 (one axis) -> Softmax-11 (flattens from ``axis``): exact on the last axis; on another axis the
    axis is moved last by a Transpose pair. onnx's converter relabels it, which is wrong for axis != last."""
    rank = _rank(model, node.input[0])
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    for a in list(node.attribute):
        if a.name == "axis":
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute("axis", -1))
    if rank is None:
        if axis != -1:
            raise UnsupportedError(f"{node.op_type} node {node.name!r} on axis {axis} of an input of unknown rank has no "
                                   f"opset-12 form modelport can prove; no automatic fix")
        return
    axis = axis % rank
    if axis == rank - 1:
        return
    perm = [i for i in range(rank) if i != axis] + [axis]
    inverse = [perm.index(i) for i in range(rank)]
    base = node.name or node.output[0]
    moved, result = f"{base}.axis_last", f"{base}.axis_last_out"
    before = onnx.helper.make_node("Transpose", [node.input[0]], [moved], name=f"{base}/axis_last", perm=perm)
    after = onnx.helper.make_node("Transpose", [result], [node.output[0]], name=f"{base}/axis_back", perm=inverse)
    node.input[0], node.output[0] = moved, result
    nodes = list(model.graph.node)
    i = next((k for k, n in enumerate(nodes) if n is node), None)
    if i is None:
        raise UnsupportedError(f"{node.op_type} node {node.name!r} inside a subgraph on axis {axis}: no automatic fix")
    nodes[i:i + 1] = [before, node, after]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    dims = _inferred_dims(model, name)
    return None if dims is None else len(dims)


def _pad_18_down(node: onnx.NodeProto, model: onnx.ModelProto, consts: dict[str, np.ndarray], dropped: list[str]) -> None:
    """Pad-18 (optional ``axes``) -> Pad-13: constant ``pads`` over ``axes`` become ``pads`` over every axis
    (zeros elsewhere), which is exact; ``axes`` is dropped. Without ``axes`` the node is already Pad-13."""
    if len(node.input) < 4 or not node.input[3]:
        del node.input[3:]
        return

    def refuse(why: str):
        return UnsupportedError(f"Pad node {node.name or node.output[0]!r}: {why}, so its axes cannot be folded into pads "
                                f"for opset 17 (Pad-18 -> 17); no automatic fix")

    axes, pads = consts.get(node.input[3]), consts.get(node.input[1]) if node.input[1] else None
    if axes is None:
        raise refuse("axes is not a constant")
    if pads is None:
        raise refuse("pads is not a constant")
    rank = _rank(model, node.input[0])
    if rank is None:
        raise refuse("the rank of its input is unknown")
    axes, pads = [int(a) for a in axes.reshape(-1)], [int(p) for p in pads.reshape(-1)]
    if len(pads) != 2 * len(axes):
        raise refuse(f"pads has {len(pads)} values for {len(axes)} axes")
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise refuse(f"axes {axes} are out of range or repeated for a rank-{rank} input")
    full = [0] * (2 * rank)
    for k, a in enumerate(axes):
        full[a % rank], full[a % rank + rank] = pads[k], pads[k + len(axes)]
    taken = {i.name for i in model.graph.initializer} | {o for n in iter_nodes(model.graph) for o in n.output}
    name = NameAllocator(taken).fresh(f"{node.name or node.output[0]}.pads_all_axes")
    model.graph.initializer.append(numpy_helper.from_array(np.array(full, dtype=np.int64), name))
    consts[name] = np.array(full, dtype=np.int64)
    node.input[1] = name
    del node.input[3:]
    while node.input and not node.input[-1]:
        del node.input[-1]


def _pad_19_down(node: onnx.NodeProto, model: onnx.ModelProto, consts: dict[str, np.ndarray], dropped: list[str]) -> None:
    """Pad-19 added ``mode="wrap"``; any other mode is the same op at 18 (onnx's converter would pass wrap on)."""
    mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
    if mode == b"wrap":
        raise UnsupportedError(f"Pad node {node.name or node.output[0]!r} uses mode 'wrap', which Pad has only from "
                               f"opset 19 (Pad-19 -> 18); no automatic fix")


def _pad_11_down(node: onnx.NodeProto, model: onnx.ModelProto, consts: dict[str, np.ndarray], dropped: list[str]) -> None:
    """Pad-11 (``pads``, ``constant_value`` inputs) -> Pad-2 (attributes): exact when both are constants."""
    def refuse(why: str):
        return UnsupportedError(f"Pad node {node.name or node.output[0]!r}: {why}, which Pad below opset 11 takes only as an "
                                f"attribute (Pad-11 -> 10); no automatic fix")

    pads = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if pads is None:
        raise refuse("pads is not a constant")
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        cv = consts.get(node.input[2])
        if cv is None or cv.size != 1:
            raise refuse("constant_value is not a constant scalar")
        value = float(cv.reshape(-1)[0])
    del node.input[1:]
    node.attribute.append(onnx.helper.make_attribute("pads", [int(p) for p in pads.reshape(-1)]))
    if value != 0.0:
        node.attribute.append(onnx.helper.make_attribute("value", value))


def _batchnorm_14_down(node: onnx.NodeProto, model: onnx.ModelProto, consts: dict[str, np.ndarray],
                       dropped: list[str]) -> None:
    """BatchNormalization-14 -> 9: inference mode (``training_mode=0``, the one output ``Y``) is BN-9's formula
    y = scale * (x - mean) / sqrt(var + epsilon) + B. Training mode (running statistics as outputs), bfloat16, or
    statistics of another type than ``X`` (BN-14's ``U``; BN-9 has one type) have no opset-13 form."""
    label = node.name or node.output[0]

    def refuse(why: str):
        return UnsupportedError(f"BatchNormalization node {label!r} {why}, which BatchNormalization below opset 14 "
                                f"cannot express (BatchNormalization-14 -> 13); no automatic fix")

    if next((a.i for a in node.attribute if a.name == "training_mode"), 0):
        raise refuse("uses training_mode=1")
    if any(o for o in node.output[1:]):
        raise refuse(f"has the running statistics as outputs ({', '.join(o for o in node.output[1:] if o)})")
    types = _elem_types(model)
    x = types.get(node.input[0])
    if x == onnx.TensorProto.BFLOAT16:
        raise refuse("computes in bfloat16")
    other = {types.get(i) for i in node.input[1:] if i} - {None}
    if x is not None and other - {x}:
        names = {v: onnx.TensorProto.DataType.Name(v).lower() for v in other | {x}}
        raise refuse(f"takes {names[x]} data with {'/'.join(sorted(names[t] for t in other - {x}))} parameters")
    for a in [a for a in node.attribute if a.name == "training_mode"]:
        node.attribute.remove(a)
    del node.output[1:]


def _slice_shape_15_down(model: onnx.ModelProto, target: int) -> int:
    """Shape-15 ``start``/``end`` -> Shape-1 + Slice-13 (no adapter exists): ``Shape(x)[start:end]`` is exactly
    Slice(Shape(x), [start], [end]), both counting a negative index from the back and clamping to [0, rank]
    (an absent ``end`` is the rank: INT64_MAX for Slice). Returns how many Shape nodes were rewritten."""
    if target >= 15:
        return 0
    fresh = NameAllocator(value_names(model.graph) | {n.name for n in iter_nodes(model.graph)}).fresh
    count = 0

    def visit(graph: onnx.GraphProto) -> None:
        nonlocal count
        out = []
        for node in graph.node:
            for a in node.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    visit(g)
            bounds = {a.name: a.i for a in node.attribute if a.name in ("start", "end")}
            if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or not bounds:
                out.append(node)
                continue
            label = node.name or node.output[0]
            whole, starts, ends = fresh(f"{label}.whole"), fresh(f"{label}.start"), fresh(f"{label}.end")
            graph.initializer.append(numpy_helper.from_array(np.array([bounds.get("start", 0)], np.int64), starts))
            graph.initializer.append(numpy_helper.from_array(np.array([bounds.get("end", np.iinfo(np.int64).max)],
                                                                      np.int64), ends))
            result = node.output[0]
            for a in [a for a in node.attribute if a.name in ("start", "end")]:
                node.attribute.remove(a)
            node.output[0] = whole
            out.append(node)
            out.append(onnx.helper.make_node("Slice", [whole, starts, ends], [result], name=fresh(f"{label}.slice")))
            count += 1
        if len(out) != len(graph.node):
            del graph.node[:]
            graph.node.extend(out)

    visit(model.graph)
    return count


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of the values whose type is known (initializers, Constants, inputs, inferred value_info)."""
    out = {t.name: t.data_type for t in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001  (types unknown: nothing refused for them)
        inferred = model
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for node in iter_nodes(model.graph):
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out.setdefault(node.output[0], node.attribute[0].t.data_type)
    return out


# Our adapters for down-conversions the converter lacks: (op, version) -> rewrite into the version-1 form.
_DOWN_ADAPTERS = {("BatchNormalization", 14): _batchnorm_14_down, ("Reshape", 14): _reshape_14_down, ("Split", 18): _split_18_down, ("Pad", 18): _pad_18_down,
                  ("Pad", 19): _pad_19_down, ("Pad", 11): _pad_11_down,
                  ("Softmax", 13): _softmax_13_down,
                  ("LogSoftmax", 13): _softmax_13_down, ("Hardmax", 13): _softmax_13_down}
# Where onnx's converter "succeeds" but changes the result: ours run first.
_PREEMPT = {("Softmax", 13), ("LogSoftmax", 13), ("Hardmax", 13), ("Pad", 19)}


def _hold_op(model: onnx.ModelProto, op: str, version: int, down: bool, dropped: list[str]) -> int:
    """Hold the ``op`` nodes out of the converter's way across the boundary at ``version``, where that is
    exact: a type-only schema change, new optional attributes left at their defaults, or our own adapter."""
    consts = _constant_values(model)
    held = 0
    for node in iter_nodes(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type != op:
            continue
        adapter = _DOWN_ADAPTERS.get((op, version)) if down else None
        if adapter is not None:
            try:
                adapter(node, model, consts, dropped)
            except ModelportError:
                raise
            except Exception as exc:  # noqa: BLE001  (a bug or an odd node: a clean error naming it, never a traceback)
                raise UnsupportedError(f"cannot take {op} node {node.name or '?'!r} from opset {version} to {version - 1}: "
                                       f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}; no automatic fix") from None
        elif not _changed_type_only(op, version) and not (down and _drop_new_default_attrs(node, version)):
            return 0
        node.domain = HOLD_DOMAIN
        held += 1
    if held and not any(i.domain == HOLD_DOMAIN for i in model.opset_import):
        model.opset_import.add(domain=HOLD_DOMAIN, version=1)
    return held


def _step(model: onnx.ModelProto, src: int, dst: int, dropped: list[str]) -> tuple[onnx.ModelProto, int]:
    """One opset step with onnx's converter; where it has no adapter for an op, hold that op if exact and retry."""
    import re

    boundary = max(src, dst)
    held = 0
    tried: set[str] = set()
    if dst < src:
        for op, version in _PREEMPT:
            if version == boundary:
                held += _hold_op(model, op, boundary, True, dropped)
                tried.add(op)
    while True:
        try:
            out = onnx.version_converter.convert_version(model, dst)
            break
        except Exception as exc:
            msg = " ".join(str(exc).split())
            m = re.search(r"[Aa]dapter (?:From|To) Version \$?\d+ for (\w+)", msg)
            op = m.group(1) if m else None
            if op is not None and op not in tried:
                tried.add(op)
                n = _hold_op(model, op, boundary, dst < src, dropped)
                if n:
                    held += n
                    continue
            where = ""
            if "No initializer or constant input to node found" in msg:
                dynamic = _dynamic_axes_nodes(model)
                if dynamic:
                    raise UnsupportedError(
                        f"cannot take this model from opset {src} to {dst}: "
                        + ", ".join(f"{op} node {name!r}" for op, name in dynamic[:6])
                        + f" read{'s' if len(dynamic) == 1 else ''} axes computed at run time, which the target opset takes "
                          "only as a constant attribute; no automatic fix") from None
            if op:
                nodes = [n.name or "?" for n in iter_nodes(model.graph) if n.op_type == op][:6]
                where = f" ({op} nodes: {', '.join(nodes)}; no automatic fix)" if nodes else ""
            raise UnsupportedError(f"onnx's version converter cannot take this model from opset {src} to {dst}{where}: {msg}") from None
    _release(out)
    return out, held


_AXES_OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
             "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze", "Unsqueeze", "Split")


def _dynamic_axes_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(op, node name) of the nodes whose ``axes`` / ``split`` input is no constant of their own graph."""
    found: list[tuple[str, str]] = []

    def visit(graph: onnx.GraphProto) -> None:
        local = {t.name for t in graph.initializer}
        local.update(n.output[0] for n in graph.node if n.op_type == "Constant" and n.output)
        for node in graph.node:
            if node.op_type in _AXES_OPS and len(node.input) > 1 and node.input[1] and node.input[1] not in local:
                found.append((node.op_type, node.name or node.output[0]))
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                for g in a.graphs:
                    visit(g)

    visit(model.graph)
    return found


def _release(model: onnx.ModelProto) -> None:
    for node in iter_nodes(model.graph):
        if node.domain == HOLD_DOMAIN:
            node.domain = ""
    for imp in list(model.opset_import):
        if imp.domain == HOLD_DOMAIN:
            model.opset_import.remove(imp)


def convert_opset(model: onnx.ModelProto, target: int) -> OpsetResult:
    """Convert the default-domain opset of ``model`` to ``target``, up or down.

    Raises:
        BadInputError: ``target`` is outside the opsets onnx knows (``MIN_OPSET``..latest).
        UnsupportedError: an op cannot be expressed at ``target`` (the message names the nodes).
    """
    top = max_opset()
    if not MIN_OPSET <= target <= top:
        raise BadInputError(f"opset {target} is impossible: it must be between {MIN_OPSET} and {top} (the newest onnx {onnx.__version__} knows)")
    src = model_opset(model) or 1
    if target == src:
        return OpsetResult(model, src, target, (), ())
    notes: list[str] = []
    work = onnx.ModelProto()
    work.CopyFrom(model)
    applied: list[str] = []
    dropped: list[str] = []
    held = 0
    step = -1 if target < src else 1
    where = f"preparing the conversion from opset {src} to {target}"
    _INFERRED.clear()
    try:
        if target < src:
            work, applied = _decompose_missing(work, target)
            if _localize_outer_constants(work):
                notes.append("small constants that If/Loop/Scan bodies read from an enclosing graph copied into those "
                             "bodies (onnx's version converter reads them only from the node's own graph)")
            folded = _fold_computed_axes(work)
            if folded:
                notes.append(f"{folded} axes/split input(s) computed from constants only folded into constants")
            sliced = _slice_shape_15_down(work, target)
            if sliced:
                notes.append(f"{sliced} Shape node(s) with start/end (opset 15) became Shape + Slice (exact)")
            _lift_constants(work)
        _strip_default_noop(work)
        for v in range(src, target, step):
            where = f"converting from opset {v} to {v + step} (on the way from {src} to {target})"
            work, n = _step(work, v, v + step, dropped)
            held += n
    except ModelportError:
        raise
    except Exception as exc:  # noqa: BLE001  (never an internal error: a one-line error naming the step)
        raise UnsupportedError(f"opset conversion failed while {where}: {type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:200]}; no automatic fix") from None
    finally:
        _INFERRED.clear()  # it holds the models it inferred
    out = work
    if held:
        notes.append(f"{held} node version change(s) onnx's converter has no adapter for kept as they are (exact: types only, or defaults)")
    if dropped:
        notes.append(f"allowzero dropped from {len(dropped)} Reshape node(s) (exact: no 0 in their shape, or "
                     f"any 0 there is the data's own dim at that position)")
    try:
        from modelport.formats.onnx_data import checkable

        onnx.checker.check_model(checkable(out))  # external data: checked without its weights
    except onnx.checker.ValidationError as exc:
        raise UnsupportedError(f"the model at opset {target} is invalid: {' '.join(str(exc).split())[:300]}") from None
    return OpsetResult(out, src, target, tuple(applied), tuple(notes))
