"""TFLite flatbuffers -> ONNX with tf2onnx's TFLite path (``tf2onnx.convert.from_tflite``).

tf2onnx reads the flatbuffer's first subgraph and names the graph's inputs and outputs after
its tensors (``serving_default_image:0``, ``StatefulPartitionedCall_1:0``); the converted model
takes the names the TFLite runner gives (the ``serving_default`` signature's keys where the file
has one), so that verification against LiteRT matches them, and a dynamic leading dim is ``batch``.

Quantized files convert as they are: a dynamic-range model's int8 weights become
``DequantizeLinear`` of int8 initializers and its activations ``DynamicQuantizeLinear``; a
full-integer model's tensors become ``QuantizeLinear``/``DequantizeLinear`` pairs carrying the
file's scales and zero points. The ONNX graph then computes what LiteRT computes, up to rounding
(measured in tests/test_tflite_source.py on the zoo's CNN and MLP, 40 batches of 1-32 rows):

- full-integer int8: onnxruntime and modelport's torch output fuse the pairs into integer kernels
  and match LiteRT exactly; OpenVINO requantizes in float and is off by one output quantum at
  most. Verified by default at ``atol`` = two quanta of the output (its DequantizeLinear scale).
- dynamic-range int8: LiteRT quantizes each batch row of an activation on its own, ONNX's
  ``DynamicQuantizeLinear`` the whole tensor at once, so the two differ by activation rounding:
  up to 1.5% of the largest output. Verified by default at ``rtol`` 3e-2 (modelport's rtol
  scales with the largest reference magnitude), which a wrong scale, zero point or layout
  exceeds by far.
- integer (int8) model inputs/outputs are compared exactly by the verifier whatever the
  tolerance: where a runtime rounds one value differently, judge on the task with ``--eval``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout

from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import ExportError
from modelport.formats.base import LoadOptions, require
from modelport.formats.keras_format import quiet_tf_env

DEFAULT_OPSET = 17

DYNAMIC_RANGE_TOLERANCE = (3e-2, 1e-3)  # (rtol, atol); see the module docstring
QUANTA = 2.0  # full-integer files: atol in quanta of the output's DequantizeLinear scale

_NOISY_LOGGERS = ("tf2onnx", "absl", "tensorflow")

quiet_tf_env()  # before anything imports TensorFlow, so its C++ INFO lines stay off stderr


@contextlib.contextmanager
def _silent_loggers() -> Iterator[None]:
    """tf2onnx logs each op it cannot convert at ERROR and carries on; we report those ourselves."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _quantized_io(interp) -> bool:
    """Does the file take or give quantized (integer) tensors?"""
    return any(d["quantization"][0] != 0 for d in [*interp.get_input_details(), *interp.get_output_details()])


def quantization(model) -> tuple[str, tuple[float, float] | None]:
    """(what quantization the converted graph carries, the (rtol, atol) to verify it at by default)."""
    from onnx import numpy_helper

    ops = {n.op_type for n in model.graph.node}
    if "DynamicQuantizeLinear" in ops:
        return "dynamic-range int8", DYNAMIC_RANGE_TOLERANCE
    if "QuantizeLinear" not in ops:
        return ("int8 weights", DYNAMIC_RANGE_TOLERANCE) if "DequantizeLinear" in ops else ("", None)
    init = {t.name: t for t in model.graph.initializer}
    outputs = {vi.name for vi in model.graph.output}
    scales = [float(numpy_helper.to_array(init[n.input[1]]).max()) for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.output[0] in outputs and n.input[1] in init]
    if not scales:  # no dequantized float output (int8 outputs are compared exactly anyway)
        return "full-integer int8", DYNAMIC_RANGE_TOLERANCE
    return "full-integer int8", (1e-3, QUANTA * max(scales))


def _rename_io(model, names: dict[str, str]) -> None:
    """Rename graph inputs/outputs (tensor name -> our name) everywhere they are used."""
    graph = model.graph
    taken = {v for n in graph.node for v in [*n.input, *n.output]} | {i.name for i in graph.input} | \
        {i.name for i in graph.initializer}
    renames = {old: new for old, new in names.items() if old != new and new not in taken}
    if not renames:
        return
    for node in graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        vi.name = renames.get(vi.name, vi.name)


def _unconverted_ops(model) -> list[str]:
    """TFLite ops tf2onnx left in the graph (it names them ``TFL_<OP>`` and carries on)."""
    import onnx

    ops = {n.op_type.removeprefix("TFL_") for n in model.graph.node
           if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)}
    return sorted(ops)


@register("tflite", "onnx", "tf2onnx (from_tflite)")
def tflite_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    require("tensorflow", "tf", "TFLite -> ONNX")
    require("tf2onnx", "tf", "TFLite -> ONNX")
    import onnx
    import tensorflow as tf
    import tf2onnx

    from modelport.convert.keras_to_onnx import _name_batch_dims, _reason
    from modelport.formats.tflite import TFLiteRunner, io_details

    runner = TFLiteRunner(src, LoadOptions(inputs=options.inputs))  # a corrupt file fails here, exit 2
    named_in, named_out = io_details(runner.interp)
    io_ints = _quantized_io(runner.interp)
    opset = options.opset or DEFAULT_OPSET
    sink = io.StringIO()
    try:
        with _silent_loggers(), redirect_stdout(sink), redirect_stderr(sink), warnings.catch_warnings():
            # tf2onnx reads shapes with tf.lite.Interpreter, which TF deprecates: not the user's concern
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            model_proto, _ = tf2onnx.convert.from_tflite(src, opset=opset)
    except Exception as exc:  # tf2onnx raises whatever its parser or a handler raises
        raise ExportError(f"tf2onnx failed on this TFLite file: {_reason(exc)}"[:300], path=src) from None
    unconverted = _unconverted_ops(model_proto)
    if unconverted:
        raise ExportError(f"tf2onnx cannot convert TFLite op(s) {', '.join(unconverted)} to ONNX opset {opset}",
                          path=src)
    graph_in = {vi.name for vi in model_proto.graph.input}
    graph_out = {vi.name for vi in model_proto.graph.output}
    if {d["name"] for _, d in named_in} != graph_in or {d["name"] for _, d in named_out} != graph_out:
        raise ExportError(f"tf2onnx's graph inputs/outputs {sorted(graph_in)} -> {sorted(graph_out)} are not the "
                          "TFLite file's (it converts the first subgraph only)", path=src)
    _rename_io(model_proto, {d["name"]: n for n, d in [*named_in, *named_out]})
    _reorder(model_proto.graph.input, [n for n, _ in named_in])
    _reorder(model_proto.graph.output, [n for n, _ in named_out])
    _name_batch_dims(model_proto, runner.signature)
    quantized, tolerance = quantization(model_proto)
    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"tf2onnx wrote an invalid ONNX model: {str(exc).splitlines()[0][:200]}", path=src) from None
    onnx.save(model_proto, out)
    notes: tuple[str, ...] = ()
    if io_ints:
        notes = ("the TFLite file has integer (quantized) inputs or outputs: those are compared exactly; "
                 "judge the conversion on the task with --eval data.npz --max-drop",)
    return ConverterResult(
        tool="tf2onnx (from_tflite)",
        versions=(("tensorflow", tf.__version__), ("tf2onnx", tf2onnx.__version__)),
        detail=f"opset {opset}" + (f"; {quantized} (verified at rtol {tolerance[0]:g}, atol {tolerance[1]:.3g})"
                                   if quantized and tolerance else ""),
        warnings=notes,
        tolerance=tolerance,
    )


def _reorder(values, order: list[str]) -> None:
    """Put graph inputs/outputs in the runner's order (tf2onnx keeps the subgraph's)."""
    by_name = {vi.name: vi for vi in values}
    if set(by_name) != set(order):
        return
    copies = [type(by_name[n])() for n in order]
    for copy, n in zip(copies, order):
        copy.CopyFrom(by_name[n])
    del values[:]
    values.extend(copies)
