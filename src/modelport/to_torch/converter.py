"""convert / check / load: the ONNX -> PyTorch compiler's entry points."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from modelport.formats.onnx_format import iter_nodes
from modelport.formats.torch_dir import CLASS_NAME, META, MODEL_FILE, WEIGHTS_FILE, load_module as load  # noqa: F401  (modelport.to_torch.load)
from modelport.to_torch import codegen, dtypes, registry

META_FILE = META


@dataclass(frozen=True)
class Unsupported:
    """One node that cannot be converted, and why."""

    node_name: str
    op_type: str
    domain: str
    opset: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.node_name or '<unnamed>'} ({self.domain or 'ai.onnx'}::{self.op_type}, opset {self.opset}): {self.reason}"


class UnsupportedOpsError(Exception):
    """The model holds nodes that cannot be converted; ``.unsupported`` lists all of them."""

    def __init__(self, unsupported: list[Unsupported]):
        self.unsupported = list(unsupported)
        lines = "\n  ".join(str(u) for u in self.unsupported)
        super().__init__(f"{len(self.unsupported)} node(s) cannot be converted:\n  {lines}")


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert` wrote."""

    out_dir: Path
    class_name: str
    n_nodes: int
    n_params: int
    value_to_line: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


_UNSUPPORTED_TYPES = {onnx.TensorProto.STRING: "string tensors have no torch dtype"}
for _name in ("UINT4", "INT4", "FLOAT4E2M1", "FLOAT8E8M0", "UINT2", "INT2"):
    if hasattr(onnx.TensorProto, _name):
        _UNSUPPORTED_TYPES[getattr(onnx.TensorProto, _name)] = f"{_name.lower()} tensors have no torch dtype"


def _as_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    from modelport.security.loaders import read_onnx

    # external data that escapes the model's directory is refused; the rest is memory-mapped, not read
    return read_onnx(os.fspath(model), load_external_data=False)


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for imp in model.opset_import:
        out["" if imp.domain in registry.DEFAULT_DOMAINS else imp.domain] = imp.version
    return out


#: initializers with more elements than this are typed graph inputs in the copy that shape
#: inference reads: their values never matter to inference, and copying them is the cost.
_INFER_MAX_ELEMENTS = 1024


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers are typed graph inputs instead.

    Shape inference serializes the whole model; for a model of ~100 MB that dominates the
    conversion. Small initializers (shapes, axes, scalars) stay, so data propagation still
    sees them.
    """
    g = model.graph
    slim = onnx.ModelProto()
    for fld in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(slim, fld, getattr(model, fld))
    slim.opset_import.extend(model.opset_import)
    slim.functions.extend(model.functions)
    sg = slim.graph
    sg.name = g.name
    sg.node.extend(g.node)
    sg.input.extend(g.input)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    sg.sparse_initializer.extend(g.sparse_initializer)
    listed = {i.name for i in g.input}
    for init in g.initializer:
        if int(np.prod(init.dims)) <= _INFER_MAX_ELEMENTS or init.data_location == onnx.TensorProto.EXTERNAL:
            sg.initializer.append(init)
        elif init.name not in listed:
            sg.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return slim


def _value_types(model: onnx.ModelProto) -> dict[str, tuple[int, list | None]]:
    try:
        model = onnx.shape_inference.infer_shapes(_without_weights(model), data_prop=True)
    except Exception:  # noqa: BLE001  (inference is a hint; conversion works without it)
        pass
    out: dict[str, tuple[int, list | None]] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if tt is None or not tt.elem_type:
                continue
            shape = None
            if tt.HasField("shape"):
                shape = [d.dim_value if d.HasField("dim_value") else
                         (d.dim_param or None) for d in tt.shape.dim]
            out[vi.name] = (tt.elem_type, shape)
        for init in graph.initializer:
            out[init.name] = (init.data_type, list(init.dims))
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                for g in a.graphs:
                    visit(g)

    visit(model.graph)
    return out


def _outer_refs(graph: onnx.GraphProto) -> set[str]:
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used = set()
    for node in iter_nodes(graph):
        used.update(node.input)
        defined.update(node.output)
    used.update(o.name for o in graph.output)
    return used - defined


def check(model: onnx.ModelProto | str | os.PathLike) -> list[Unsupported]:
    """Lists every node (subgraphs included) that has no converter; empty means convertible."""
    return _check(_as_model(model))


def _check(model: onnx.ModelProto, types: dict | None = None) -> list[Unsupported]:
    registry._load_ops()
    opsets = _opsets(model)
    types = _value_types(model) if types is None else types
    found: list[Unsupported] = []
    for node in iter_nodes(model.graph):
        domain = "" if node.domain in registry.DEFAULT_DOMAINS else node.domain
        opset = opsets.get(domain)
        fn, reason = registry.dispatch(domain, node.op_type, opset)
        if fn is None:
            found.append(Unsupported(node.name, node.op_type, domain, opset, reason))
            continue
        for name in list(node.input) + list(node.output):
            t = types.get(name)
            if t and t[0] in _UNSUPPORTED_TYPES:
                found.append(Unsupported(node.name, node.op_type, domain, opset,
                                         f"{name!r}: {_UNSUPPORTED_TYPES[t[0]]}"))
                break
    return found


def _trainable(graph: onnx.GraphProto) -> set[str]:
    """Float initializers (rank >= 1) read by at least one differentiable op."""
    floats = {i.name for i in graph.initializer
              if i.data_type in dtypes.FLOATS and len(i.dims) >= 1 and np.prod(i.dims) > 1}
    out = set()
    for node in iter_nodes(graph):
        if node.op_type in codegen.NON_DIFFERENTIABLE:
            continue
        out.update(n for n in node.input if n in floats)
    return out


def _overridable(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that also have an initializer, in input order: from IR 4 on, the
    initializer is the input's default value and a caller may feed another (onnxruntime's
    overridable initializers). Before IR 4 every initializer had to be listed as an input,
    and such an input is a constant."""
    if model.ir_version < 4:
        return []
    init_names = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name in init_names]


def generate(model: onnx.ModelProto, types: dict | None = None, *,
             base_dir: str | os.PathLike | None = None) -> tuple[str, dict[str, np.ndarray], dict, codegen.ModuleState]:
    """Builds the source of model.py, its state dict and metadata, in memory.

    ``base_dir``: the model file's directory, where tensors with external data (not loaded into
    ``model``) are memory-mapped from; the state dict then holds those maps (or views of them).
    """
    registry._load_ops()
    types = _value_types(model) if types is None else types
    overridable = [vi.name for vi in _overridable(model)]
    fixed: dict[str, str] = {}  # overridable input -> the node that needs it constant
    while True:
        out = _generate(model, types, set(fixed), None if base_dir is None else os.fspath(base_dir))
        ms = out[3]
        if not ms.problems:
            break
        # An op whose converter needs a constant (axes, a shape) fails on an overridable
        # input; such an input is fixed to its default value, as before IR 4, and it says so.
        more = {}
        for node, _ in ms.problems:
            reads = set(node.input)
            for a in node.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    reads |= _outer_refs(sub)
            for name in overridable:
                if name in reads and name not in fixed:
                    more.setdefault(name, node.name or node.op_type)
        if not more:
            break
        fixed.update(more)
    for name, node in fixed.items():
        ms.warnings.append(f"graph input {name!r} has an initializer (an overridable default in ONNX), but node "
                           f"{node} needs it constant: model.py fixes it to that default")
    return out


def _generate(model: onnx.ModelProto, types: dict, fixed: set[str],
              base_dir: str | None = None) -> tuple[str, dict[str, np.ndarray], dict, codegen.ModuleState]:
    ms = codegen.ModuleState(types=types, opsets=_opsets(model),
                             trainable=_trainable(model.graph), base_dir=base_dir)
    for node in iter_nodes(model.graph):
        for i in node.input:
            ms.consumers.setdefault(i, []).append(node)
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                for outer in _outer_refs(sub):
                    ms.consumers.setdefault(outer, []).append(node)
    ms.graph_outputs = {o.name for o in model.graph.output}
    g = codegen.Graph(ms, model.graph)
    init_names = {i.name for i in model.graph.initializer}
    args: list[tuple[str, str]] = []
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        local = ms.locals.new(inp.name)
        kind = "tensor"
        if inp.type.HasField("sequence_type"):
            kind = "seq"
        g.values[inp.name] = codegen.Value(local, kind)
        args.append((inp.name, local))
    # Overridable inputs: keyword arguments after the required ones, None meaning the
    # initializer, kept as a parameter or buffer like any other.
    optional: list[dict] = []
    for inp in _overridable(model):
        if inp.name in fixed:
            continue
        local = ms.locals.new(inp.name)
        used = inp.name in ms.consumers or inp.name in ms.graph_outputs
        attr = None
        if used:
            attr = g.materialize(inp.name)  # the initializer, as self.<attr>
            g.emit(f"# graph input {inp.name!r}: its initializer unless given")
            g.emit(f"if {local} is None:")
            g.emit(f"{local} = {attr}", indent=1)
            g.values[inp.name] = codegen.Value(local, "tensor")
        optional.append({**_spec(inp, ms), "arg": local,
                         "default": attr.removeprefix("self.") if attr else None})
    g.convert_nodes()
    if ms.problems:
        return "", {}, {}, ms
    outs = [g.materialize(o.name) for o in model.graph.output]
    ret = outs[0] if len(outs) == 1 else f"({', '.join(outs)})"
    source, value_to_line = _assemble(ms, g, [a for _, a in args], ret, model, optional)
    meta = {"class_name": CLASS_NAME, "value_to_line": value_to_line,
            "inputs": [_spec(vi, ms) for vi in model.graph.input if vi.name not in init_names],
            "outputs": [_spec(vi, ms) for vi in model.graph.output],
            "input_args": {name: local for name, local in args}}
    if optional:
        # Not in "inputs": nothing needs to feed them (formats/torch_dir, verification).
        meta["overridable_inputs"] = optional
    return source, ms.state, meta, ms


def _spec(vi: onnx.ValueInfoProto, ms: codegen.ModuleState) -> dict:
    t = ms.types.get(vi.name)
    dtype = None
    if t:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t[0]).name if t[0] else None
    return {"name": vi.name, "dtype": dtype, "shape": t[1] if t else None}


def _assemble(ms, g, args, ret, model, optional=()) -> tuple[str, dict[str, int]]:
    src = model.graph.name or "graph"
    head = [f'"""{CLASS_NAME}: generated by modelport from ONNX graph {src!r} '
            f'(opset {ms.opsets.get("", "?")}).', "", "Each statement in forward is preceded "
            "by a comment naming the ONNX node (name and op_type) it came from."]
    if optional:
        head += ["", "Optional keyword arguments of forward: ONNX graph inputs with an initializer, which is",
                 "their default value. None (the default) uses the stored value; a tensor overrides it."]
        for o in optional:
            t = f"{o['dtype']}[{', '.join(str(d) for d in o['shape'])}]" if o["shape"] is not None else (o["dtype"] or "tensor")
            use = f"default self.{o['default']}" if o["default"] else "not read by the graph"
            head.append(f"    {o['arg']}: ONNX input {o['name']!r}, {t}, {use}")
    head += ['"""', "",
             "import math", "", "import torch", "from torch import nn",
             "from torch.nn import functional as F", ""]
    from modelport.to_torch.runtime import HELPERS

    for h in ms.helpers:
        head += ["", *HELPERS[h].strip("\n").splitlines(), ""]  # one entry per line: value_to_line counts entries
    head += ["", f"class {CLASS_NAME}(nn.Module):", "    def __init__(self):",
             "        super().__init__()"]
    head += [f"        {ln}" for ln in ms.init_lines]
    params = [*args]
    if optional:
        params += ["*", *(f"{o['arg']}: torch.Tensor | None = None" for o in optional)]
    head += ["", f"    def forward(self{''.join(', ' + a for a in params)}):"]
    lines = list(head)
    value_to_line: dict[str, int] = {}
    for ln in g.lines:
        lines.append("        " + "    " * ln.indent + ln.text)
        for d in ln.defines:
            value_to_line[d] = len(lines)
    lines.append(f"        return {ret}")
    return "\n".join(lines) + "\n", value_to_line


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(model: onnx.ModelProto | str | os.PathLike, out_dir: str | os.PathLike, *,
            base_dir: str | os.PathLike | None = None, source_path: str | os.PathLike | None = None) -> ConversionResult:
    """Compiles an ONNX model into ``model.py`` + ``weights.safetensors`` in ``out_dir``.

    Weights above the external-data threshold (``modelport.formats.onnx_data.threshold``) are written as
    safetensors shards with an index (``modelport.formats.safetensors_io``), streamed one tensor at a
    time from memory-mapped external data.

    Args:
        model: a ModelProto or a path to an .onnx file (read without its external data, which is mapped).
        out_dir: an existing directory; receives model.py, weights.safetensors and
            modelport_torch.json.
        base_dir: for a ModelProto read without its external data: the directory its locations are in.
        source_path: the .onnx file ``model`` was read from (its sha256 goes into the metadata).

    Raises:
        UnsupportedOpsError: listing every node that cannot be converted; nothing is written.
    """
    path_sha = None
    if not isinstance(model, onnx.ModelProto):
        source_path = model
        base_dir = os.path.dirname(os.path.abspath(os.fspath(model)))
    if source_path is not None:
        path_sha = _file_sha256(Path(source_path))
    model = _as_model(model)
    types = _value_types(model)
    problems = _check(model, types)
    if problems:
        raise UnsupportedOpsError(problems)
    source, state, meta, ms = generate(model, types, base_dir=base_dir)
    if ms.problems:
        opsets = ms.opsets
        raise UnsupportedOpsError([Unsupported(n.name, n.op_type, n.domain, opsets.get(
            "" if n.domain in registry.DEFAULT_DOMAINS else n.domain), r) for n, r in ms.problems])
    from modelport.to_torch import weights

    out = Path(out_dir)
    weights.save(state, out / WEIGHTS_FILE)  # one tensor at a time; shards above the threshold
    (out / MODEL_FILE).write_text(source)
    meta.update({
        "source_sha256": path_sha or hashlib.sha256(model.SerializeToString()).hexdigest(),
        "opset": ms.opsets.get(""), "opsets": ms.opsets,
        "n_nodes": ms.n_nodes, "n_params": int(sum(v.size for v in state.values())),
    })
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return ConversionResult(out, CLASS_NAME, ms.n_nodes, meta["n_params"],
                            dict(meta["value_to_line"]), tuple(ms.warnings))


