"""What a model is: format, size on disk, IO signature, parameters, ops and MACs.

MACs (multiply-accumulates) are counted for the ops that dominate compute, from the
shapes ONNX shape inference gives (bias adds and activations are not counted):

    Conv:           MACs = prod(Y.shape) * prod(W.shape[1:])   # N*M*out_spatial * C/group*k
    ConvTranspose:  MACs = prod(X.shape) * prod(W.shape[1:])   # N*C*in_spatial * M/group*k
    Gemm:           MACs = M * N * K                           # K from A (transA aware)
    MatMul:         MACs = prod(Y.shape) * K                   # batch dims broadcast into Y

Symbolic dims are set to 1 for the count (the report says which), so MACs of a model with
a dynamic batch are per sample. Where any counted op's shapes stay unknown the total is
None, never a guess. Parameters are the elements of initializers and Constant tensors
(ONNX), of parameters and buffers (PyTorch); integer tensors of rank <= 1 (shape constants,
step counters) are not weights and are left out of both.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from modelport.artifact import Signature
from modelport.errors import BadInputError, ModelportError
from modelport.formats import LoadOptions, detect, open_runner, split_module_spec

__all__ = ["InspectReport", "OnnxDetails", "inspect", "onnx_macs"]

MAC_OPS = ("Conv", "ConvInteger", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger", "QLinearConv", "QLinearMatMul",
           "MatMulNBits")


@dataclasses.dataclass(frozen=True)
class OnnxDetails:
    """ONNX-only facts: IR version, producer, opset per domain, initializers, external data."""

    ir_version: int
    producer: str
    opsets: dict[str, int]
    initializers: int
    external_data: bool


@dataclasses.dataclass(frozen=True)
class InspectReport:
    """What `inspect` found; fields are None where the format does not tell cheaply.

    Attributes:
        file_bytes: size on disk (directories: the sum; ONNX: with its external data files).
        params, param_bytes: weight elements and their bytes.
        node_count, op_histogram: ops (ONNX: including nodes inside subgraphs; TFLite).
        macs, macs_by_op: multiply-accumulates (ONNX only), None where not computed.
        notes: how numbers were obtained, and what is missing.
    """

    path: str
    format: str
    file_bytes: int
    signature: Signature | None
    params: int | None = None
    param_bytes: int | None = None
    node_count: int | None = None
    op_histogram: dict[str, int] = dataclasses.field(default_factory=dict)
    macs: int | None = None
    macs_by_op: dict[str, int] = dataclasses.field(default_factory=dict)
    onnx: OnnxDetails | None = None
    notes: tuple[str, ...] = ()
    custom_ops: dict[str, int] = dataclasses.field(default_factory=dict)  # TFLite: custom op -> uses

    # Read-only aliases that the CLI's renderer reads (not part of the JSON).
    @property
    def file_size(self) -> int:
        return self.file_bytes

    @property
    def n_params(self) -> int | None:
        return self.params

    @property
    def n_nodes(self) -> int | None:
        return self.node_count

    @property
    def opset(self) -> dict[str, int] | None:
        return self.onnx.opsets if self.onnx else None

    @property
    def ir_version(self) -> int | None:
        return self.onnx.ir_version if self.onnx else None

    @property
    def producer(self) -> str | None:
        return (self.onnx.producer or None) if self.onnx else None


def inspect(path: str | Path, fmt: str | None = None, options: LoadOptions | None = None) -> InspectReport:
    """Describe a model without running it (PyTorch modules run once to learn their outputs).

    Args:
        path: the model (a file, a directory, or ``file.py:Name`` for a PyTorch module).
        fmt: the format, when detection should be skipped.
        options: weights and ``--input`` specs; concrete input shapes here are used for MACs.

    Raises:
        BadInputError: unreadable model.
        UnsupportedError: unknown format.
    """
    options = options or LoadOptions()
    path = str(path)
    name = detect(path, fmt)
    size = disk_bytes(path, options.weights)
    if name == "onnx":
        return _inspect_onnx(path, size, options)
    inspector = _INSPECTORS.get(name, _inspect_generic)
    return inspector(path, name, size, options)


# --------------------------------------------------------------------------- sizes


def disk_bytes(path: str, weights: str | None = None) -> int:
    """Bytes on disk: a file, the sum over a directory, a module file plus its weights."""
    parts = split_module_spec(path)
    files = [Path(parts[0])] if parts else [Path(path)]
    if weights:
        files.append(Path(weights))
    total = 0
    for p in files:
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
    return total


_SUB_BYTE = {"int4": 0.5, "uint4": 0.5, "float4e2m1": 0.5}


def _itemsize(elem_type: int) -> float:
    import onnx
    from onnx import helper

    try:
        name = onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:  # no such data type (a corrupt file): counted as no bytes
        return 0.0
    if name in _SUB_BYTE:
        return _SUB_BYTE[name]
    if name == "string":
        return 0.0
    try:
        return float(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:
        return 1.0  # the 8-bit float types


def _is_shape_like(dtype_kind: str, rank: int) -> bool:
    return dtype_kind in "iub" and rank <= 1


# --------------------------------------------------------------------------- ONNX


def _walk_graphs(graph) -> list:
    """The graph and every subgraph under it (If/Loop/Scan bodies), depth first."""
    import onnx

    out = [graph]
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out.extend(_walk_graphs(a.g))
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    out.extend(_walk_graphs(g))
    return out


def _tensor_kind(elem_type: int) -> str:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).kind
    except Exception:
        return "f"


def _onnx_params(graphs: list) -> tuple[int, int, int]:
    """(elements, bytes, shape-like tensors skipped) over initializers and Constant tensors.

    Counted from dims and dtype, so external data is never read.
    """
    count = nbytes = skipped = 0
    tensors = []
    for g in graphs:
        tensors.extend(g.initializer)
        for node in g.node:
            if node.op_type == "Constant":
                tensors.extend(a.t for a in node.attribute if a.name == "value")
    for t in tensors:
        numel = math.prod(t.dims)
        if _is_shape_like(_tensor_kind(t.data_type), len(t.dims)):
            skipped += 1
            continue
        count += numel
        nbytes += int(math.ceil(numel * _itemsize(t.data_type)))
    return count, nbytes, skipped


def _has_external_data(graphs: list) -> bool:
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for g in graphs for t in g.initializer)


def _external_files(model_path: Path, graphs: list) -> set[Path]:
    import onnx

    files = set()
    for g in graphs:
        for t in g.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                loc = next((e.value for e in t.external_data if e.key == "location"), None)
                if loc:
                    files.add((model_path.parent / loc).resolve())
    return files


def _fix_input_dims(model, options: LoadOptions) -> list[str]:
    """Set symbolic input dims to concrete sizes (given shapes, else 1); the names set to 1."""
    given = {s.name: s.shape for s in options.inputs if s.shape}
    inits = {i.name for i in model.graph.initializer}
    set_to_one: list[str] = []
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.tensor_type.HasField("shape"):
            continue
        want = given.get(vi.name)
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                continue
            size = want[i] if want and i < len(want) and isinstance(want[i], int) else None
            if size is None:
                set_to_one.append(d.dim_param or f"{vi.name}[{i}]")
                size = 1
            d.Clear()
            d.dim_value = size
    return set_to_one


def _shapes(model) -> dict[str, tuple[int, ...] | None]:
    """Static shapes of every value ONNX shape inference can reach (None: unknown)."""
    g = model.graph
    out: dict[str, tuple[int, ...] | None] = {}
    for t in g.initializer:
        out[t.name] = tuple(int(d) for d in t.dims)
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
        else:
            out.setdefault(vi.name, None)
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = tuple(int(d) for d in a.t.dims)
    return out


def _attr(node, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def node_macs(node, shapes: dict[str, tuple[int, ...] | None]) -> int | None:
    """MACs of one Conv/ConvTranspose/Gemm/MatMul-like node, None when a shape is unknown."""
    def shape(i: int, outputs: bool = False) -> tuple[int, ...] | None:
        names = node.output if outputs else node.input
        return shapes.get(names[i]) if i < len(names) and names[i] else None

    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w, y = shape(3 if op == "QLinearConv" else 1), shape(0, True)
        return None if w is None or y is None else math.prod(y) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        return None if x is None or w is None else math.prod(x) * math.prod(w[1:])
    if op == "Gemm":
        a, y = shape(0), shape(0, True)
        if a is None or y is None or len(a) != 2:
            return None
        k = a[0] if _attr(node, "transA") else a[1]
        return math.prod(y) * k
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a, y = shape(0), shape(0, True)
        return None if a is None or y is None or not a else math.prod(y) * a[-1]
    if op == "MatMulNBits":  # com.microsoft int4 weights: A [..., K] x W [K, N]; K and N are attributes
        a = shape(0)
        return None if a is None or not a else math.prod(a[:-1]) * _attr(node, "K") * _attr(node, "N")
    return None


def _weights_as_inputs(model) -> None:
    """Turn large or external initializers into graph inputs: shapes stay, data is never read."""
    import onnx
    from onnx import helper

    keep, moved = [], []
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or math.prod(t.dims) > 4096:
            moved.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            keep.append(t)
    if moved:
        names = {v.name for v in moved}
        inputs = [v for v in model.graph.input if v.name not in names]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        del model.graph.input[:]
        model.graph.input.extend(inputs + moved)


def _folded_shapes(model) -> dict[str, tuple[int, ...] | None]:
    """Shapes after folding constant subgraphs (Shape -> Concat -> Reshape chains) with onnxscript."""
    import onnx

    try:
        import onnx_ir as ir
        import onnxscript.optimizer
    except ImportError:
        return {}
    try:
        work = ir.serde.deserialize_model(model)
        onnxscript.optimizer.fold_constants(work)
        folded = onnx.shape_inference.infer_shapes(ir.serde.serialize_model(work), data_prop=True)
    except Exception:
        return {}
    return {k: v for k, v in _shapes(folded).items() if v is not None}


def _count_macs(graph, shapes) -> tuple[dict[str, int], int]:
    by_op: dict[str, int] = {}
    unknown = 0
    for node in graph.node:
        if node.op_type not in MAC_OPS:
            continue
        macs = node_macs(node, shapes)
        if macs is None:
            unknown += 1
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    return by_op, unknown


def onnx_macs(model, options: LoadOptions | None = None) -> tuple[int | None, dict[str, int], list[str]]:
    """(total MACs or None, MACs per op type, notes) of an ONNX model; weights are never read.

    Shapes come from ONNX shape inference; where it leaves a counted op's shapes unknown,
    constant shape computations are folded (onnxscript's optimizer) and inference rerun.
    """
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    notes: list[str] = []
    set_to_one = _fix_input_dims(work, options or LoadOptions())
    if set_to_one:
        notes.append(f"MACs counted with symbolic dims set to 1 ({', '.join(dict.fromkeys(set_to_one))}): per sample")
    _weights_as_inputs(work)
    try:
        inferred = onnx.shape_inference.infer_shapes(work, data_prop=True)
    except Exception as exc:
        notes.append(f"ONNX shape inference failed ({type(exc).__name__}); MACs not computed")
        return None, {}, notes
    shapes = _shapes(inferred)
    by_op, unknown = _count_macs(inferred.graph, shapes)
    if unknown:
        shapes.update(_folded_shapes(work))
        by_op, unknown = _count_macs(inferred.graph, shapes)
    nested = sum(1 for g in _walk_graphs(inferred.graph)[1:] for n in g.node if n.op_type in MAC_OPS)
    if unknown:
        notes.append(f"MACs unknown: shapes of {unknown} {'/'.join(MAC_OPS[:4])} node(s) are not inferable")
    if nested:
        notes.append(f"MACs unknown: {nested} MAC op(s) sit inside control-flow subgraphs")
    total = None if unknown or nested else sum(by_op.values())
    return total, by_op, notes


def _inspect_onnx(path: str, size: int, options: LoadOptions) -> InspectReport:
    from modelport.formats.base import fill_signature
    from modelport.formats.onnx_format import graph_signature, load_model

    model = load_model(path, load_external_data=False)
    graphs = _walk_graphs(model.graph)
    histogram: dict[str, int] = {}
    for g in graphs:
        for node in g.node:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            histogram[key] = histogram.get(key, 0) + 1
    histogram = dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0])))
    params, nbytes, skipped = _onnx_params(graphs)
    external = _has_external_data(graphs)
    notes: list[str] = []
    if external:
        files = _external_files(Path(path), graphs)
        size += sum(f.stat().st_size for f in files if f.is_file())
        notes.append(f"weights in {len(files)} external data file(s), counted from tensor metadata (not read)")
    if skipped:
        notes.append(f"{skipped} integer shape/index constant(s) not counted as parameters")
    macs, by_op, mac_notes = onnx_macs(model, options)
    notes.extend(mac_notes)
    sig = graph_signature(model)
    sig = Signature(fill_signature(sig.inputs, options.inputs, path), sig.outputs)
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
    details = OnnxDetails(int(model.ir_version), producer, opsets, sum(len(g.initializer) for g in graphs), external)
    return InspectReport(
        path, "onnx", size, sig, params, nbytes, sum(histogram.values()), histogram, macs, by_op, details, tuple(notes)
    )


# --------------------------------------------------------------------------- other formats


def _torch_params(module: Any) -> tuple[int, int, int]:
    """(elements, bytes, integer scalars skipped) over a module's parameters and buffers."""
    seen: set[int] = set()
    count = nbytes = skipped = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        if _is_shape_like("f" if t.is_floating_point() or t.is_complex() else "i", t.dim()):
            skipped += 1
            continue
        count += t.numel()
        nbytes += t.numel() * t.element_size()
    return count, nbytes, skipped


def _torch_module_of(runner: Any) -> Any:
    if hasattr(runner, "module"):
        return runner.module
    if hasattr(runner, "program"):
        return runner.program.module()
    return None


def _load_torch_without_inputs(path: str, fmt: str, options: LoadOptions) -> Any:
    """The module of a torch format that cannot open without input specs."""
    if fmt == "torch-module":
        from modelport.formats.torch_module import build_module

        return build_module(path, options.weights)
    if fmt == "torchscript":
        from modelport.formats.torch_common import torch_module

        return torch_module().jit.load(path, map_location="cpu")
    return None


def _signature_or_note(runner: Any, notes: list[str]) -> Signature | None:
    try:
        return runner.signature
    except ModelportError as exc:
        notes.append(f"signature unknown: {exc}")
    return None


def _inspect_torch(path: str, fmt: str, size: int, options: LoadOptions) -> InspectReport:
    notes: list[str] = []
    sig = None
    try:
        with open_runner(path, fmt, options) as runner:
            module = _torch_module_of(runner)
            sig = _signature_or_note(runner, notes)
    except BadInputError as exc:
        module = _load_torch_without_inputs(path, fmt, options)
        if module is None:
            raise
        notes.append(f"signature unknown: {str(exc).split(': ', 1)[-1]}")
    params = nbytes = None
    if module is not None:
        params, nbytes, skipped = _torch_params(module)
        if skipped:
            notes.append(f"{skipped} integer scalar buffer(s) (e.g. num_batches_tracked) not counted as parameters")
    notes.append("MACs not computed for PyTorch formats (convert to ONNX and inspect that)")
    return InspectReport(path, fmt, size, sig, params, nbytes, notes=tuple(notes))


def _inspect_keras(path: str, fmt: str, size: int, options: LoadOptions) -> InspectReport:
    with open_runner(path, fmt, options) as runner:
        model = runner.model
        params = int(model.count_params())
        nbytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
        sig = runner.signature
    notes = ("parameters from count_params() (trainable and non-trainable weights)", "MACs not computed for Keras")
    return InspectReport(path, fmt, size, sig, params, nbytes, notes=notes)


def _savedmodel_variables(path: str) -> list[tuple[str, tuple[int, ...], Any]]:
    """(name, shape, tf dtype) of each variable in the SavedModel's object graph, read from
    saved_model.pb alone; deduplicated by name, shape and dtype, since Keras exports keep each
    weight under two paths (``variables`` and ``_all_variables``)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    seen: dict[tuple, tuple[str, tuple[int, ...], Any]] = {}
    for graph in sm.meta_graphs[:1]:
        for node in graph.object_graph_def.nodes:
            if node.WhichOneof("kind") != "variable":
                continue
            v = node.variable
            shape = tuple(int(d.size) for d in v.shape.dim)
            dtype = tf.dtypes.as_dtype(v.dtype)
            seen.setdefault((v.name, shape, dtype.name), (v.name, shape, dtype))
    return list(seen.values())


def _inspect_savedmodel(path: str, fmt: str, size: int, options: LoadOptions) -> InspectReport:
    with open_runner(path, fmt, options) as runner:
        sig = runner.signature
    notes = ["MACs not computed for SavedModels"]
    params = nbytes = None
    try:
        variables = _savedmodel_variables(path)
    except Exception as exc:
        notes.append(f"parameters unknown: cannot read the object graph ({type(exc).__name__})")
    else:
        weights = [(shape, dtype) for _, shape, dtype in variables
                   if not _is_shape_like("f" if dtype.is_floating else "i", len(shape))]
        params = sum(math.prod(shape) for shape, _ in weights)
        nbytes = sum(math.prod(shape) * dtype.size for shape, dtype in weights)
        notes.append("parameters from the object graph's variables, deduplicated by name (optimizer slots included if saved)")
    return InspectReport(path, fmt, size, sig, params, nbytes, notes=tuple(notes))


def _inspect_tflite(path: str, fmt: str, size: int, options: LoadOptions) -> InspectReport:
    from modelport.security.loaders import tflite_custom_ops

    custom = tflite_custom_ops(path)  # from the flatbuffer: they run only where the runtime registers a kernel
    with open_runner(path, fmt, options) as runner:
        sig = runner.signature
        interp = runner.interp
        try:
            ops = interp._get_ops_details()
        except UnicodeDecodeError:  # an op name the flatbuffer stores is not UTF-8
            raise BadInputError("corrupt TFLite flatbuffer (an operator name is not UTF-8)", path=path) from None
        tensors = {t["index"]: t for t in interp.get_tensor_details()}
        produced = {i for op in ops for i in op["outputs"]}
        graph_inputs = {d["index"] for d in interp.get_input_details()}
        consumed = {i for op in ops for i in op["inputs"] if i >= 0}
    histogram: dict[str, int] = {}
    for op in ops:
        histogram[op["op_name"]] = histogram.get(op["op_name"], 0) + 1
    histogram = dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0])))
    params = nbytes = 0
    for i in consumed - produced - graph_inputs:
        t = tensors.get(i)
        if t is None:
            continue
        dtype = np.dtype(t["dtype"])
        if _is_shape_like(dtype.kind, len(t["shape"])):
            continue
        numel = int(np.prod(t["shape"]))
        params += numel
        nbytes += numel * dtype.itemsize
    notes = ("parameters are the constant tensors ops read", "MACs not computed for TFLite")
    return InspectReport(path, fmt, size, sig, params, nbytes, len(ops), histogram, notes=notes, custom_ops=custom)


def _inspect_generic(path: str, fmt: str, size: int, options: LoadOptions) -> InspectReport:
    with open_runner(path, fmt, options) as runner:
        sig = runner.signature
    return InspectReport(path, fmt, size, sig, notes=(f"no parameter count or MACs for {fmt}",))


_INSPECTORS = {
    "torch-module": _inspect_torch,
    "torch": _inspect_torch,
    "torch-export": _inspect_torch,
    "torchscript": _inspect_torch,
    "keras": _inspect_keras,
    "savedmodel": _inspect_savedmodel,
    "tflite": _inspect_tflite,
}
