"""Keras (.keras/.h5) and TensorFlow SavedModel -> ONNX with tf2onnx.

tf2onnx's ``from_keras`` fails on Keras 3 Sequential models (``KeyError: 'keras_tensor_N'``),
so the model is wrapped in a ``tf.function`` with an explicit input signature and
converted with ``from_function``; the batch dim stays dynamic unless asked otherwise.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout

from modelport.artifact import Signature, TensorSpec
from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import ExportError
from modelport.formats.base import LoadOptions, require
from modelport.formats.keras_format import quiet_tf_env

DEFAULT_OPSET = 17
# Python loggers that chatter at INFO/WARNING during a conversion; errors still show.
_NOISY_LOGGERS = ("tf2onnx", "absl", "tensorflow")

quiet_tf_env()  # before anything imports TensorFlow, so its C++ INFO lines stay off stderr


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.ERROR))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _tf_specs(specs: tuple[TensorSpec, ...], dynamic_batch: bool):
    import tensorflow as tf

    out = []
    for s in specs:
        shape = [None if not isinstance(d, int) else d for d in (s.shape or ())]
        if shape and dynamic_batch:
            shape[0] = None
        elif shape and shape[0] is None:
            shape[0] = 1
        out.append(tf.TensorSpec(shape, s.dtype, name=s.name))
    return out


def _from_function(tf, tf2onnx, fn, input_signature, opset: int):
    """tf2onnx's from_function, but the tensors the function captures (a Normalization layer's adapted
    mean and variance, any eager constant) stay constants: from_function lists every non-resource
    input of the concrete function, captures included, as a graph input and drops its value."""
    cf = fn.get_concrete_function(*input_signature)
    own = cf.inputs[:len(cf.inputs) - len(cf.captured_inputs)]
    inputs = [t.name for t in own if t.dtype != tf.dtypes.resource]
    outputs = [t.name for t in cf.outputs if t.dtype != tf.dtypes.resource]
    renames = tf2onnx.convert.tensor_names_from_structed(cf, inputs, outputs)
    with tf.device("/cpu:0"):
        frozen = tf2onnx.tf_loader.from_function(cf, inputs, outputs)
        model_proto, _ = tf2onnx.convert.from_graph_def(frozen, name=cf.name, input_names=inputs, output_names=outputs,
                                                        opset=opset, tensors_to_rename=renames)
    return model_proto


def _convert_function(fn, input_signature, sig: Signature, out: str, opset: int, src: str) -> ConverterResult:
    import tensorflow as tf
    import tf2onnx

    sink = io.StringIO()
    try:
        with _quiet_loggers(), redirect_stdout(sink), redirect_stderr(sink):
            model_proto = _from_function(tf, tf2onnx, fn, input_signature, opset)
    except Exception as exc:
        raise ExportError(f"tf2onnx failed: {_reason(exc)}"[:300], path=src) from None
    unconverted = _unconverted_ops(model_proto)
    if unconverted:
        raise ExportError(
            f"tf2onnx cannot convert TensorFlow op(s) {', '.join(unconverted)} to ONNX opset {opset}", path=src
        )
    _rename_outputs(model_proto, sig.output_names)
    _name_batch_dims(model_proto, sig)
    import onnx

    onnx.save(model_proto, out)
    return ConverterResult(
        tool="tf2onnx (from_function)",
        versions=(("tensorflow", tf.__version__), ("tf2onnx", tf2onnx.__version__)),
        detail=f"opset {opset}",
    )


def _reason(exc: Exception) -> str:
    """One line saying why: TF's "in user code:" errors bury it under a traceback."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return type(exc).__name__
    if lines[0] == "in user code:":
        found = [i for i, ln in enumerate(lines) if re.match(r"^[A-Za-z_.]+(Error|Exception): ", ln)]
        if found:
            i = found[-1]
            tail = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("Arguments") else ""
            return f"{lines[i]} {tail}".strip()
    return f"{type(exc).__name__}: {lines[0]}"


def _unconverted_ops(model) -> list[str]:
    """TF ops tf2onnx left in the graph as they were (it logs them and carries on)."""
    import onnx

    ops = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)}
    return sorted(ops)


def _rename_outputs(model, names: list[str]) -> None:
    """Give graph outputs the source model's output names (tf2onnx writes `Identity:0`)."""
    graph = model.graph
    if len(names) != len(graph.output) or len(set(names)) != len(names):
        return
    taken = {v for n in graph.node for v in list(n.input) + list(n.output)} | {i.name for i in graph.input}
    for vi, new in zip(graph.output, names):
        old = vi.name
        if old == new or new in taken:
            continue
        for node in graph.node:
            node.output[:] = [new if o == old else o for o in node.output]
            node.input[:] = [new if i == old else i for i in node.input]
        vi.name = new


def _name_batch_dims(model, sig: Signature) -> None:
    """Call the dynamic leading dim `batch` (tf2onnx writes `unk__N`) where the source calls it so."""
    graph = model.graph
    renames: dict[str, str] = {}
    specs = {s.name: s for s in (*sig.inputs, *sig.outputs)}
    for vi in [*graph.input, *graph.output]:
        spec = specs.get(vi.name)
        if spec is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        if spec.shape and spec.shape[0] == "batch" and len(dims) and dims[0].HasField("dim_param"):
            renames[dims[0].dim_param] = "batch"
    if not renames:
        return
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in renames:
                d.dim_param = renames[d.dim_param]


@register("keras", "onnx", "tf2onnx")
def keras_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    require("tensorflow", "tf", "Keras -> ONNX")
    require("tf2onnx", "tf", "Keras -> ONNX")
    import tensorflow as tf

    from modelport.formats.keras_format import KerasRunner, call_model, flat_outputs

    runner = KerasRunner(src, LoadOptions(inputs=options.inputs))
    model = runner.model
    specs = runner.signature.inputs
    sig = _tf_specs(specs, options.dynamic_batch)

    @tf.function(input_signature=sig)
    def fn(*args):
        return flat_outputs(call_model(model, list(args)))

    return _convert_function(fn, sig, runner.signature, out, options.opset or DEFAULT_OPSET, src)


@register("savedmodel", "onnx", "tf2onnx")
def savedmodel_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    require("tf2onnx", "tf", "SavedModel -> ONNX")
    import tensorflow as tf

    from modelport.formats.savedmodel import SavedModelRunner

    runner = SavedModelRunner(src, LoadOptions(inputs=options.inputs))
    specs = runner.signature.inputs
    sig = _tf_specs(specs, options.dynamic_batch)
    names = [s.name for s in specs]
    out_names = runner.signature.output_names
    serving = runner.fn

    @tf.function(input_signature=sig)
    def fn(*args):
        result = serving(**dict(zip(names, args)))
        return [result[n] for n in out_names]

    return _convert_function(fn, sig, runner.signature, out, options.opset or DEFAULT_OPSET, src)

