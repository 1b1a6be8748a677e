"""ONNX files (external data too), run with onnxruntime."""

from __future__ import annotations

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
        load_model(path, load_external_data=False)
    except BadInputError:
        return False
    return True


def load_model(path: str | Path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX model, turning protobuf errors into a one-line BadInputError."""
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except FileNotFoundError as exc:
        raise BadInputError(f"missing external data file ({exc.filename})", path=path) from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise BadInputError(f"corrupt or truncated ONNX file ({type(exc).__name__})", path=path) from None
    if not model.graph.node and not model.graph.output:
        raise BadInputError("corrupt or truncated ONNX file (empty graph)", path=path)
    return model


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
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def value_spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    tt = vi.type.tensor_type
    shape = None
    if tt.HasField("shape"):
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
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
        outs = self.session.run(names, {k: np.asarray(v) for k, v in feeds.items()})
        return dict(zip(names, outs))


def open(path: str, options: LoadOptions) -> OnnxRunner:  # noqa: A001 - the format interface
    return OnnxRunner(path, options)
