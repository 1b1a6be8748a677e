"""Fold an ONNX ``If`` whose condition the user's input values decide into the branch it takes.

A VAD model that picks its 8 kHz or 16 kHz network from an ``sr`` input (``If(Equal(sr, 16000))``)
cannot be converted by a target that has no ``If`` with data-dependent branches (OpenVINO's ONNX
frontend: ``Conversion is failed for: If-16``). When the user fixes ``sr`` (``--input sr=16000`` or
``sr`` in ``--inputs``), the condition is a constant of those values: the ``If`` is replaced by the
nodes of its taken branch. The result is then a model specialised to those values, so every fold is
reported ("input 'sr' frozen at 16000: If 'If_0' folded to its then branch"); the input stays in the
signature (its value no longer matters).

Only conditions computed from small inputs (at most ``_MAX_ELEMENTS`` values: rates, flags, modes)
with given values, initializers and constants are folded, never ones that read a data tensor.

Where a converter freezes the input shapes (onnx2tf retries a dynamic graph at the user's shapes), a
condition may also read shapes: silero-vad's inner ``If(Cast(Shape(state)[1]))`` and
``If(Shape(encoder output)[2] == 1)``. ``fold_ifs(..., shapes=...)`` sets the inputs to those shapes and
takes the output of each ``Shape``/``Size`` whose input then has a static inferred shape as a constant
(``modelport.formats.onnx_fold.shape_values``); such a fold is reported with the shapes ("at input
shapes input=1x512, state=2x1x128: If ... folded"). The condition's cone is evaluated with the one
constant evaluator of ``modelport.formats.onnx_fold``.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import onnx

__all__ = ["Fold", "fold_ifs", "given_values"]

_MAX_ELEMENTS = 16  # an input with more values is data, not a switch: a condition on it is never folded


@dataclasses.dataclass(frozen=True)
class Fold:
    """One If replaced by a branch: which, and the input values that decided it."""

    node: str
    branch: str  # "then" or "else"
    frozen: tuple[tuple[str, str], ...]  # (input name, its value as text)
    shapes: tuple[tuple[str, str], ...] = ()  # (input name, its shape as text) when shapes decided it too

    def describe(self) -> str:
        parts = [f"input '{n}' frozen at {v}" for n, v in self.frozen]
        if self.shapes:
            parts.append("at input shapes " + ", ".join(f"{n}={v}" for n, v in self.shapes))
        return f"{', '.join(parts)}: If '{self.node}' folded to its {self.branch} branch"


def given_values(names: list[str], specs=(), values=None) -> dict[str, np.ndarray]:
    """The values the user fixed for the graph inputs ``names``: ``--input sr=16000`` constants and
    the arrays of ``--inputs`` (a path to an .npz or a dict) that are small enough to be a switch."""
    from modelport.inputs import ConstantSpec, load_npz

    out: dict[str, np.ndarray] = {}
    if values is not None:
        data = load_npz(values) if not isinstance(values, dict) else values
        out.update({k: np.asarray(v) for k, v in data.items() if k in names and np.asarray(v).size <= _MAX_ELEMENTS})
    for s in specs:
        if isinstance(s, ConstantSpec) and s.name in names:
            out[s.name] = np.asarray(s.value, dtype=s.dtype)
    return out


def _show(a: np.ndarray) -> str:
    return str(a.item()) if a.size == 1 else np.array2string(a.reshape(-1), separator=",")


def _names_in(graph: onnx.GraphProto) -> set[str]:
    """Every value name a graph and its subgraphs define or read."""
    names = {v.name for v in itertools.chain(graph.input, graph.output, graph.initializer)}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= _names_in(g)
    return names


def _rename_reads(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for node in graph.node:
        for k, v in enumerate(node.input):
            if v in mapping:
                node.input[k] = mapping[v]
        for k, v in enumerate(node.output):
            if v in mapping:
                node.output[k] = mapping[v]
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _rename_reads(g, mapping)
    for v in itertools.chain(graph.output, graph.initializer):
        if v.name in mapping:
            v.name = mapping[v.name]


def _inline(graph: onnx.GraphProto, index: int, branch: onnx.GraphProto) -> None:
    """Replace node ``index`` (an If) by ``branch``'s nodes and initializers, its outputs by Identity."""
    node = graph.node[index]
    branch = onnx.GraphProto.FromString(branch.SerializeToString())
    defined = {o for n in branch.node for o in n.output} | {t.name for t in branch.initializer}
    outer = {v.name for v in itertools.chain(graph.input, graph.initializer)}
    for i, n in enumerate(graph.node):
        if i != index:
            outer.update(n.output)
            for a in n.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    outer |= _names_in(g)
    clash = sorted(defined & (outer | set(node.output)))
    if clash:
        taken = outer | _names_in(branch) | set(node.output)
        mapping = {}
        for name in clash:
            k = 1
            while f"{name}__fold{k}" in taken:
                k += 1
            mapping[name] = f"{name}__fold{k}"
            taken.add(mapping[name])
        _rename_reads(branch, mapping)
    tail = [onnx.helper.make_node("Identity", [b.name], [o], name=f"{node.name or 'If'}__fold_out{k}")
            for k, (b, o) in enumerate(zip(branch.output, node.output)) if o]
    new = list(graph.node[:index]) + list(branch.node) + tail + list(graph.node[index + 1:])
    del graph.node[:]
    graph.node.extend(new)
    graph.initializer.extend(branch.initializer)


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is read (the folded condition's Equal and Constant)."""
    while True:
        used = {o.name for o in graph.output}
        for n in graph.node:
            used.update(n.input)
            for a in n.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    used |= _names_in(g)
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            inputs = {v.name for v in graph.input}
            inits = [t for t in graph.initializer if t.name in used or t.name in inputs]
            if len(inits) != len(graph.initializer):
                del graph.initializer[:]
                graph.initializer.extend(inits)
            return
        del graph.node[:]
        graph.node.extend(keep)


def _with_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Set the graph inputs named in ``shapes`` (of the same rank) to those static shapes, in place."""
    for vi in model.graph.input:
        shape = shapes.get(vi.name)
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else None
        if shape is None or dims is None or not vi.type.tensor_type.HasField("shape") or len(dims) != len(shape):
            continue
        for d, n in zip(dims, shape):
            d.Clear()
            d.dim_value = int(n)


def fold_ifs(model: onnx.ModelProto, values: dict[str, np.ndarray],
             shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[onnx.ModelProto, list[Fold]]:
    """``model`` with each top-level If whose condition ``values`` decide replaced by its taken branch
    (repeated: an If of an inlined branch may be decided too), and the folds made. With ``shapes``
    (input name -> static shape; the model is then specialised to them), the inputs get those shapes
    and a condition may also read the ``Shape``/``Size`` of values whose inferred shape is static.
    ``model`` is not changed; with nothing to fold it is returned as is."""
    from modelport.formats.onnx_fold import evaluate_cone, find_cone, shape_values

    graph_inputs = {v.name for v in model.graph.input} - {t.name for t in model.graph.initializer}
    values = {k: v for k, v in values.items() if k in graph_inputs and v.size <= _MAX_ELEMENTS}
    shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items() if k in graph_inputs}
    if not (values or shapes) or not any(n.op_type == "If" for n in model.graph.node):
        return model, []
    out = onnx.ModelProto.FromString(model.SerializeToString())
    if shapes:
        _with_shapes(out, shapes)
    shown = tuple((n, "x".join(map(str, s))) for n, s in shapes.items() if s)  # scalars (sr) have no shape to tell
    graph, folds, refused = out.graph, [], set()
    inits = {t.name: t for t in graph.initializer}
    sized: dict[str, np.ndarray] | None = None  # Shape/Size outputs known from static shapes (after each fold)
    while True:
        producer = {o: n for n in graph.node for o in n.output if o}
        for index, node in enumerate(graph.node):
            key = (node.name, *node.output)
            if node.op_type != "If" or node.domain not in ("", "ai.onnx") or key in refused:
                continue
            cone = find_cone(graph, node.input[0], stop=values.keys(), producer=producer)
            if cone is not None and shapes and not cone.leaves - inits.keys() <= values.keys():
                if sized is None:
                    sized = shape_values(out)
                cone = find_cone(graph, node.input[0], stop=values.keys() | sized.keys(), producer=producer)
            known = {**inits, **values, **(sized or {})}
            read = cone.leaves - inits.keys() if cone else set()
            if cone is None or not read or not read <= known.keys():
                refused.add(key)
                continue
            cond = evaluate_cone(cone, known, out.opset_import, out.ir_version)
            if cond is None or cond.size != 1:
                refused.add(key)
                continue
            taken = "then" if bool(cond.reshape(-1)[0]) else "else"
            branch = next(a.g for a in node.attribute if a.name == f"{taken}_branch")
            frozen = tuple((n, _show(values[n])) for n in sorted(read & values.keys()))
            folds.append(Fold(node.name or f"If@{index}", taken, frozen, shown if read - values.keys() else ()))
            _inline(graph, index, branch)
            inits = {t.name: t for t in graph.initializer}
            sized, refused = None, set()  # the inlined nodes may make more shapes static
            break
        else:
            break
    if not folds:
        return model, []
    _drop_dead(graph)
    return out, folds
