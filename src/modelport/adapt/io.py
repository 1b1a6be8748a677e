"""Boundary passes: change how a model is fed and what it returns, never what it computes inside.

Each pass edits an ``onnx_ir`` model in place and returns a :class:`Boundary` record of
what it did to which input/output, which adapt's verification inverts to feed the
original model:

- ``to_layout``:     x_nhwc -> Transpose(perm 0,3,1,2) -> the model's NCHW input (or NCHW data into an NHWC model)
- ``normalize``:     x_raw  -> (x_raw / scale - mean) / std, per channel (axis 1 of a rank-4 input, axis 3 when
                     that is the one with len(mean) channels, else the last)
- ``set_io_dtype``:  x_fp16 -> Cast(float32) -> the model; float32 outputs -> Cast(float16)
- ``set_batch`` / ``dynamic_batch``: dim 0 of every input (and of outputs that share it)
- ``rename``:        inputs and outputs renamed, ``old=new``
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from modelport.errors import BadInputError

__all__ = ["Boundary", "to_layout", "to_nhwc", "normalize", "set_io_dtype", "set_batch", "dynamic_batch", "rename", "parse_normalize"]


@dataclasses.dataclass(frozen=True)
class Boundary:
    """One boundary change: its kind, the tensors it touched, and its parameters."""

    kind: str
    names: tuple[str, ...]
    params: dict = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items() if k not in ("mean", "std") or v)
        return f"{self.kind} on {', '.join(self.names) or '-'}" + (f" ({extra})" if extra else "")


def _node(op: str, inputs: list[ir.Value], name: str, **attrs) -> ir.Node:
    attributes = [ir.convenience.convert_attribute(k, v) for k, v in attrs.items()]
    node = ir.Node("", op, inputs, attributes, name=name)
    node.outputs[0].name = f"{name}:0"
    return node


def _const(name: str, value: np.ndarray) -> ir.Node:
    return _node("Constant", [], name, value=ir.tensor(value, name=f"{name}.value"))


def _prepend(graph: ir.Graph, nodes: list[ir.Node]) -> None:
    first = next(iter(graph), None)
    if first is None:
        graph.extend(nodes)
    else:
        graph.insert_before(first, nodes)


def _swap_input(graph: ir.Graph, old: ir.Value, new: ir.Value, nodes: list[ir.Node], out: ir.Value) -> None:
    """Make ``new`` the graph input in place of ``old``; ``nodes`` compute ``out`` (what ``old`` was) from it."""
    name = old.name
    old.replace_all_uses_with(out, replace_graph_outputs=True)
    idx = list(graph.inputs).index(old)
    graph.inputs[idx] = new
    old.name = f"{name}.orig"
    new.name = name
    _prepend(graph, nodes)


def _floats(model: ir.Model, names: list[str] | None, rank: int | None = None) -> list[ir.Value]:
    known = {v.name: v for v in model.graph.inputs}
    if names:
        missing = [n for n in names if n not in known]
        if missing:
            raise BadInputError(f"no input named {missing}; the model's inputs: {sorted(known)}")
        chosen = [known[n] for n in names]
    else:
        chosen = [v for v in model.graph.inputs if v.dtype is not None and v.dtype.is_floating_point()
                  and (rank is None or (v.shape is not None and len(v.shape) == rank))]
    return chosen


_PERMS = {"nhwc": ([0, 3, 1, 2], "to_nchw"), "nchw": ([0, 2, 3, 1], "to_nhwc")}


def to_layout(model: ir.Model, layout: str, names: list[str] | None = None) -> Boundary:
    """Rank-4 inputs take data in ``layout``: one Transpose at the boundary, nothing else changes.

    ``nhwc``: an NCHW model takes NHWC data (Transpose perm 0,3,1,2 inside);
    ``nchw``: an NHWC model (e.g. from Keras) takes NCHW data (perm 0,2,3,1 inside).
    """
    if layout not in _PERMS:
        raise BadInputError(f"--layout {layout!r}: choose nhwc or nchw")
    perm, label = _PERMS[layout]
    chosen = _floats(model, names, rank=4)
    if not chosen:
        raise BadInputError(f"--layout {layout}: the model has no rank-4 float input to transpose")
    taken = tuple(v.name for v in chosen)
    inverse = [perm.index(i) for i in range(4)]
    for v in chosen:
        if v.shape is None or len(v.shape) != 4:
            raise BadInputError(f"--layout {layout}: input {v.name!r} is not rank 4")
        dims = v.shape.dims
        new = ir.Value(name=v.name + f".{layout}", type=v.type, shape=ir.Shape([dims[i] for i in inverse]))
        node = _node("Transpose", [new], f"{v.name}/{label}", perm=perm)
        node.outputs[0].shape, node.outputs[0].dtype = v.shape, v.dtype
        _swap_input(model.graph, v, new, [node], node.outputs[0])
    return Boundary("layout", taken, {"layout": layout, "perm": perm})


def to_nhwc(model: ir.Model, names: list[str] | None = None) -> Boundary:
    """NCHW rank-4 inputs take NHWC data."""
    return to_layout(model, "nhwc", names)


def parse_normalize(text: str) -> dict[str, list[float] | float | str]:
    """``mean=0.5,0.5,0.5;std=0.2,0.2,0.2[;scale=255][;input=x]`` (``;``, ``:`` or ``,`` before a key)."""
    import re

    parts = re.split(r"[;:,]?\s*(?=\b(?:mean|std|scale|input)=)", text.strip())
    out: dict[str, list[float] | float | str] = {}
    for part in filter(None, (p.strip(" ;:,") for p in parts)):
        key, sep, value = part.partition("=")
        if not sep or key not in ("mean", "std", "scale", "input"):
            raise BadInputError(f"--normalize {text!r}: expected mean=..,std=..[,scale=N][,input=NAME], got {part!r}")
        try:
            if key == "input":
                out[key] = value
            elif key == "scale":
                out[key] = float(value)
            else:
                out[key] = [float(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise BadInputError(f"--normalize {text!r}: {key} must be numbers, got {value!r}") from None
    if "mean" not in out or "std" not in out:
        raise BadInputError(f"--normalize {text!r}: both mean= and std= are required")
    if any(s == 0 for s in out["std"]):  # type: ignore[union-attr]
        raise BadInputError(f"--normalize {text!r}: std must not be 0")
    return out


def normalize(model: ir.Model, mean: list[float], std: list[float], scale: float | None = None, name: str | None = None) -> Boundary:
    """Bake ``(x / scale - mean) / std`` into the graph: the model then takes raw data."""
    chosen = _floats(model, [name] if name else None)
    if len(chosen) != 1:
        raise BadInputError(f"--normalize: say which input with input=NAME (float inputs: {[v.name for v in chosen]})")
    v = chosen[0]
    name = v.name
    if len(mean) != len(std):
        raise BadInputError(f"--normalize: mean has {len(mean)} values, std has {len(std)}")
    rank = len(v.shape) if v.shape is not None else None
    axis = 1 if rank == 4 else -1
    if rank == 4 and v.shape[1] != len(mean) and v.shape[3] == len(mean) and len(mean) > 1:
        axis = 3  # an NHWC input (e.g. a Keras model): channels last
    channels = v.shape[axis] if v.shape is not None and rank else None
    if isinstance(channels, int) and len(mean) not in (1, channels):
        raise BadInputError(f"--normalize: input {v.name!r} has {channels} channels, mean/std have {len(mean)} values")
    dt = v.dtype.numpy()
    shape = (1, -1, 1, 1) if axis == 1 and rank == 4 else (-1,)
    m = np.asarray(mean, dtype=dt).reshape(shape)
    s = np.asarray(std, dtype=dt).reshape(shape)
    nodes = []
    new = ir.Value(name=v.name + ".raw", type=v.type, shape=v.shape)
    x: ir.Value = new
    if scale:
        nodes.append(_const(f"{v.name}/scale", np.asarray(1.0 / scale, dtype=dt)))
        nodes.append(_node("Mul", [x, nodes[-1].outputs[0]], f"{v.name}/rescale"))
        x = nodes[-1].outputs[0]
    nodes.append(_const(f"{v.name}/mean", m))
    nodes.append(_node("Sub", [x, nodes[-1].outputs[0]], f"{v.name}/sub_mean"))
    x = nodes[-1].outputs[0]
    nodes.append(_const(f"{v.name}/std", s))
    nodes.append(_node("Div", [x, nodes[-1].outputs[0]], f"{v.name}/div_std"))
    out = nodes[-1].outputs[0]
    out.shape, out.dtype = v.shape, v.dtype
    _swap_input(model.graph, v, new, nodes, out)
    return Boundary("normalize", (name,), {"mean": list(mean), "std": list(std), "scale": scale, "axis": axis})


_DTYPES = {"float16": ir.DataType.FLOAT16, "float32": ir.DataType.FLOAT, "bfloat16": ir.DataType.BFLOAT16}


def set_io_dtype(model: ir.Model, dtype: str) -> Boundary:
    """Float inputs and outputs take/give ``dtype``; Casts at the boundary, the inside is unchanged."""
    if dtype not in _DTYPES:
        raise BadInputError(f"--io-dtype {dtype!r}: choose one of {sorted(_DTYPES)}")
    want = _DTYPES[dtype]
    graph = model.graph
    touched = []
    for v in list(graph.inputs):
        if v.dtype is None or not v.dtype.is_floating_point() or v.dtype == want:
            continue
        touched.append(v.name)
        new = ir.Value(name=v.name + ".cast", type=ir.TensorType(want), shape=v.shape)
        node = _node("Cast", [new], f"{v.name}/cast_in", to=v.dtype)
        node.outputs[0].shape, node.outputs[0].dtype = v.shape, v.dtype
        _swap_input(graph, v, new, [node], node.outputs[0])
    for i, v in enumerate(list(graph.outputs)):
        if v.dtype is None or not v.dtype.is_floating_point() or v.dtype == want:
            continue
        name = v.name
        node = _node("Cast", [v], f"{name}/cast_out", to=want)
        out = node.outputs[0]
        out.shape, out.dtype = v.shape, want
        graph.append(node)
        graph.outputs[i] = out
        v.name = f"{name}.orig"
        out.name = name
        touched.append(name)
    if not touched:
        raise BadInputError(f"--io-dtype {dtype}: no float input or output of another dtype to change")
    return Boundary("io_dtype", tuple(touched), {"dtype": dtype})


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    for node in ir.traversal.RecursiveGraphIterator(graph):
        yield from node.outputs


def set_batch(model: ir.Model, size: int) -> Boundary:
    """A static batch: dim 0 of every input becomes ``size`` (and of every tensor that shared its name)."""
    if size < 1:
        raise BadInputError(f"--batch {size}: must be >= 1")
    graph = model.graph
    symbols = {v.shape[0] for v in graph.inputs if v.shape is not None and len(v.shape) and not isinstance(v.shape[0], int)}
    symbols = {str(s) for s in symbols if s is not None and str(s)}
    for v in graph.inputs:
        if v.shape is not None and len(v.shape):
            v.shape = ir.Shape([size, *v.shape.dims[1:]])
    for v in list(_all_values(graph)) + list(graph.outputs):
        if v.shape is not None and any(str(d) in symbols for d in v.shape.dims if not isinstance(d, int)):
            v.shape = ir.Shape([size if (not isinstance(d, int) and str(d) in symbols) else d for d in v.shape.dims])
    return Boundary("batch", tuple(v.name for v in graph.inputs), {"batch": size})


def dynamic_batch(model: ir.Model, name: str = "batch") -> Boundary:
    """Dim 0 of every input becomes symbolic; outputs with the same static dim 0 follow."""
    graph = model.graph
    statics = {v.shape[0] for v in graph.inputs if v.shape is not None and len(v.shape) and isinstance(v.shape[0], int)}
    for v in graph.inputs:
        if v.shape is not None and len(v.shape):
            v.shape = ir.Shape([name, *v.shape.dims[1:]])
    for v in graph.outputs:
        if v.shape is not None and len(v.shape) and v.shape[0] in statics:
            v.shape = ir.Shape([name, *v.shape.dims[1:]])
    relaxed = _relax_reshapes(graph, statics) if len(statics) == 1 else []
    outputs = set(id(v) for v in graph.outputs)
    for v in _all_values(graph):  # inner shapes recorded at the old size would contradict the new one
        if id(v) not in outputs and v not in graph.inputs and v.shape is not None and len(v.shape) and v.shape[0] in statics:
            v.shape = None
    params = {"dim": name, **({"reshapes_relaxed": relaxed} if relaxed else {})}
    return Boundary("dynamic_batch", tuple(v.name for v in graph.inputs), params)


def _relax_reshapes(graph: ir.Graph, statics: set) -> list[str]:
    """Reshape to a constant shape that starts with the old static batch (a flatten): that entry becomes -1."""
    (size,) = statics
    relaxed = []
    for node in list(graph):
        if node.op_type != "Reshape" or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        tensor = ir.convenience.get_const_tensor(node.inputs[1])
        if tensor is None:
            continue
        shape = tensor.numpy().astype(np.int64)
        if shape.ndim != 1 or not len(shape) or shape[0] != size or (shape == -1).any():
            continue
        shape = shape.copy()
        shape[0] = -1
        const = _const(f"{node.name or 'reshape'}/batch_free_shape", shape)
        graph.insert_before(node, [const])
        node.replace_input_with(1, const.outputs[0])
        relaxed.append(node.name or "Reshape")
    return relaxed


def rename(model: ir.Model, mapping: dict[str, str]) -> Boundary:
    """Rename inputs and outputs, ``{old: new}``."""
    graph = model.graph
    boundary = {v.name: v for v in [*graph.inputs, *graph.outputs]}
    missing = [k for k in mapping if k not in boundary]
    if missing:
        raise BadInputError(f"--rename: no input or output named {missing}; the model's: inputs {[v.name for v in graph.inputs]}, "
                            f"outputs {[v.name for v in graph.outputs]}")
    taken = {v.name for v in _all_values(graph)} | {i for i in graph.initializers} | set(boundary)
    for old, new in mapping.items():
        if not new or (new in taken and new not in mapping and new != old):
            raise BadInputError(f"--rename {old}={new}: the name {new!r} is empty or already used in the graph")
    for old, new in mapping.items():
        boundary[old].name = f"{new}"
    return Boundary("rename", tuple(mapping), {"mapping": dict(mapping)})
