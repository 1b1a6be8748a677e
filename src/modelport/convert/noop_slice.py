"""Slices that select their whole input, removed from an ONNX graph before onnx2tf converts it.

tf2onnx writes a Keras ``x[..., 0]`` after a Conv1D as ``Slice(starts=[0, 0, 0, 0], ends=[max, max, max, 1],
axes=[0, 1, 2, 3])`` on a ``[N, C, W, 1]`` tensor: a Slice that keeps every element (Magika). onnx2tf moves
the Conv's output to channels-last (``[N, W, 1, C]``) but applies that Slice's ``ends`` to the unpermuted
axes, so it cuts the channels to 1: ``[1, 508, 1, 1]`` for ONNX's ``[1, 512, 508, 1]``, and the model's
logits come out wrong (max abs 0.92 on Magika's 214 scores, another top-1) or the wrong shape. A Slice
that keeps everything is an Identity, so it is dropped and its readers read its input; what is left
computes exactly what the graph computed.

A Slice counts as whole when, on every axis it names, the step is 1, the start is 0 (or at or before
the first element) and the end is at or past the axis' last element: the axis' size comes from ONNX
shape inference, and an axis of unknown size only counts when the end is INT32_MAX or more (what
exporters write for "to the end").
"""

from __future__ import annotations

import numpy as np

__all__ = ["drop_noop_slices"]

_TO_THE_END = 2**31 - 1
_INFER_LIMIT = 1_800_000_000  # onnx's shape inference takes a serialized proto under 2 GiB


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _shapes(model) -> dict[str, list[int | None]]:
    """Every tensor's inferred dims (None where unknown), by name; {} when inference fails."""
    import onnx

    if model.ByteSize() > _INFER_LIMIT:
        return {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - nothing is dropped without shapes
        return {}
    g = inferred.graph
    return {vi.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                      for d in vi.type.tensor_type.shape.dim]
            for vi in [*g.input, *g.value_info, *g.output]
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}


def _slice_args(node, consts) -> tuple[list[int], list[int], list[int] | None, list[int] | None] | None:
    """(starts, ends, axes, steps) of a Slice, all constant; None otherwise."""
    if len(node.input) == 1:  # opset 1-9: attributes
        attrs = {a.name: list(a.ints) for a in node.attribute}
        if "starts" not in attrs or "ends" not in attrs:
            return None
        return attrs["starts"], attrs["ends"], attrs.get("axes"), None
    args = []
    for pos in range(1, 5):
        name = node.input[pos] if pos < len(node.input) else ""
        if not name:
            args.append(None)
            continue
        if name not in consts:
            return None
        args.append([int(v) for v in np.asarray(consts[name]).reshape(-1)])
    if args[0] is None or args[1] is None:
        return None
    return args[0], args[1], args[2], args[3]


def _keeps_everything(node, consts, shapes) -> bool:
    found = _slice_args(node, consts)
    dims = shapes.get(node.input[0])
    if found is None or dims is None:
        return False
    starts, ends, axes, steps = found
    rank = len(dims)
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps) or not rank:
        return False
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if not -rank <= axis < rank or step != 1:
            return False
        size = dims[axis % rank]
        first = start == 0 or (size is not None and start <= -size)
        last = end >= _TO_THE_END or (size is not None and end >= size)
        if not (first and last):
            return False
    return True


def drop_noop_slices(model):
    """``(model, names)``: a copy of ``model`` without its whole-input Slices, and those Slices' names
    ("" names none: node outputs name them). The model itself when there are none.
    Slices inside If/Loop bodies and Slices whose output is a graph output stay."""
    import onnx

    graph = model.graph
    candidates = [n for n in graph.node if n.op_type == "Slice" and n.domain in ("", "ai.onnx")]
    if not candidates:
        return model, []
    consts = _constants(graph)
    outputs = {o.name for o in graph.output}
    shapes = _shapes(model) if any(n.output[0] not in outputs for n in candidates) else {}
    drop = [n for n in candidates if n.output[0] not in outputs and _keeps_everything(n, consts, shapes)]
    if not drop:
        return model, []
    model = onnx.ModelProto.FromString(model.SerializeToString())  # under 2 GiB: shapes were inferred
    rename = {n.output[0]: n.input[0] for n in drop}
    names = sorted(n.name or n.output[0] for n in drop)
    keep = [n for n in model.graph.node if not (n.op_type == "Slice" and n.output[0] in rename)]

    def _rewire(g) -> None:
        for node in g.node:
            for i, name in enumerate(node.input):
                while name in rename:  # a whole Slice of a whole Slice
                    name = rename[name]
                node.input[i] = name
            for attr in node.attribute:  # bodies that read an outer tensor by name
                if attr.type == onnx.AttributeProto.GRAPH:
                    _rewire(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        _rewire(sub)

    del model.graph.node[:]
    model.graph.node.extend(keep)
    _rewire(model.graph)
    kept_vi = [vi for vi in model.graph.value_info if vi.name not in rename]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_vi)
    return model, names
