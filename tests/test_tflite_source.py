"""TFLite as a source: float and int8-quantized .tflite files -> ONNX (tf2onnx's TFLite path) and on
to torch / openvino / savedmodel / tflite, each verified against LiteRT.

The files are made here with TF's own TFLiteConverter from the zoo's Keras models (the trained
digits CNN and the MLP): float32, dynamic-range int8 (int8 weights, float activations) and
full-integer int8 with a representative dataset (float I/O, and int8 I/O).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest

import zoo_tf  # first: it sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("ai_edge_litert")

import onnx  # noqa: E402

from modelport.convert.run import convert  # noqa: E402
from modelport.convert.tflite_to_onnx import DYNAMIC_RANGE_TOLERANCE, QUANTA  # noqa: E402
from modelport.formats import open_runner  # noqa: E402
from modelport.quiet import native_output  # noqa: E402
from modelport.verify import verify  # noqa: E402

KINDS = ("float", "dynamic", "int8", "int8io")


def _rows(name: str, x: np.ndarray) -> np.ndarray:
    return x if name == "cnn" else x.reshape(len(x), 64)


@functools.cache
def tflite_file(name: str, kind: str) -> Path:
    """The zoo's `cnn` or `mlp` as a .tflite of this kind, written once per session."""
    import keras
    import tensorflow as tf

    src = zoo_tf.cnn_keras() if name == "cnn" else zoo_tf.mlp_sequential()
    model = keras.saving.load_model(src)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if kind != "float":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind in ("int8", "int8io"):
        x = _rows(name, zoo_tf.digits()[0][:200])
        conv.representative_dataset = lambda: ([x[i:i + 20]] for i in range(0, len(x), 20))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if kind == "int8io":
        conv.inference_input_type = conv.inference_output_type = tf.int8
    path = zoo_tf.zoo_dir() / f"{name}_{kind}.tflite"
    with native_output(), warnings.catch_warnings():  # the converter's C++ lines ("fully_quantize: 0, ...")
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        path.write_bytes(conv.convert())
    return path


def _quantize(x: np.ndarray, src: Path) -> np.ndarray:
    """Float rows as the int8 input of a file with int8 I/O (its input scale and zero point)."""
    from ai_edge_litert.interpreter import Interpreter

    scale, zero = Interpreter(model_path=str(src)).get_input_details()[0]["quantization"]
    return np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)


@pytest.fixture(scope="module")
def to_onnx(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tflite_onnx")
    done: dict = {}

    def get(name: str, kind: str):
        if (name, kind) not in done:
            src = tflite_file(name, kind)
            done[name, kind] = (src, convert(src, "onnx", out_dir / f"{name}_{kind}.onnx"))
        return done[name, kind]

    return get


def _max_abs(report) -> float:
    return max(o.max_abs for run in report.parity.runs for o in run.outputs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_tflite_to_onnx_verified_against_litert(name, kind, to_onnx):
    src, report = to_onnx(name, kind)
    assert report.ok, report.parity.summary()
    assert report.route == ("tf2onnx (from_tflite)",) and report.src_format == "tflite"
    batches = sorted({s[0] for run in report.parity.runs for s in run.input_shapes.values()})
    assert batches == [2, 3]  # the batch stayed dynamic and was verified at two sizes
    model = onnx.load(report.artifact.path)
    io = [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in
          [*model.graph.input, *model.graph.output]]
    first = "image" if name == "cnn" else "input_layer"
    assert io[0][0].startswith(first) and io[-1][0] == "output_0" and all(d[0] == "batch" for _, d in io), io
    ops = {n.op_type for n in model.graph.node}
    tol = {(o.rtol, o.atol) for run in report.parity.runs for o in run.outputs}
    if kind == "float":
        assert not ops & {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
        assert tol == {(1e-4, 1e-5)} and _max_abs(report) < 1e-5
    elif kind == "dynamic":  # int8 weights stay int8 in the ONNX file, activations quantized at run time
        assert "DynamicQuantizeLinear" in ops
        assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
        assert tol == {DYNAMIC_RANGE_TOLERANCE}
    else:  # full integer: the file's scales and zero points as QuantizeLinear/DequantizeLinear
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert _max_abs(report) == 0.0  # onnxruntime runs them as integer kernels, as LiteRT does
        if kind == "int8":
            (rtol, atol), = tol
            assert rtol == 1e-3 and 0 < atol < 0.2  # two quanta of the output
    assert report.artifact.lineage[-1].verified is True


@pytest.mark.parametrize("kind", ["dynamic", "int8"])
def test_quantized_onnx_keeps_litert_accuracy_on_digits(kind, to_onnx):
    """On the held-out digits: the same top-1 as LiteRT's int8 kernels, within the stated tolerance."""
    src, report = to_onnx("cnn", kind)
    _, _, x, y = zoo_tf.digits()
    with open_runner(src) as lite, open_runner(report.artifact.path) as ort:
        ref, got = lite.run({"image": x})["output_0"], ort.run({"image": x})["output_0"]
    acc_lite, acc_onnx = float(np.mean(ref.argmax(1) == y)), float(np.mean(got.argmax(1) == y))
    assert acc_lite > 0.85, acc_lite
    assert abs(acc_onnx - acc_lite) <= 2 / len(y), (acc_lite, acc_onnx)
    err = float(np.abs(got - ref).max())
    assert err <= DYNAMIC_RANGE_TOLERANCE[0] * float(np.abs(ref).max()), err


@pytest.mark.parametrize(("name", "kind", "to"), [
    ("cnn", "float", "torch"), ("cnn", "float", "openvino"), ("cnn", "float", "savedmodel"),
    ("cnn", "int8", "torch"), ("cnn", "int8", "openvino"), ("mlp", "dynamic", "openvino"),
    ("mlp", "int8io", "torch"),
])
def test_tflite_to_every_target_verified_against_litert(name, kind, to, tmp_path):
    src = tflite_file(name, kind)
    report = convert(src, to, tmp_path / f"{name}_{to}")
    assert report.ok, report.parity.summary()
    assert report.route[0] == "tf2onnx (from_tflite)" and len(report.route) == 2
    assert Path(report.artifact.path).is_dir()
    # The written model, reloaded on its own, against LiteRT again on other inputs.
    again = verify(src, report.artifact.path, seed=5, **({} if kind == "float" else {"rtol": 3e-2, "atol": 0.1}))
    assert again, again.summary()


def test_float_tflite_round_trip_through_onnx(tmp_path, to_onnx):
    src, first = to_onnx("cnn", "float")
    report = convert(first.artifact.path, "tflite", tmp_path / "again.tflite")
    assert report.ok, report.parity.summary()
    again = verify(src, report.artifact.path, seed=3)  # the round-tripped file against the original, in LiteRT
    assert again, again.summary()


def test_int8_io_judged_on_the_task_where_a_runtime_rounds_differently(tmp_path):
    """Integer outputs are compared exactly; OpenVINO requantizes in float and may be one quantum off, so the
    conversion is judged on top-1 over the digits with a budget."""
    src = tflite_file("cnn", "int8io")
    _, _, x, y = zoo_tf.digits()
    data = {"image": _quantize(x, src), "labels": y}
    report = convert(src, "openvino", tmp_path / "ov", eval_data=data, max_drop=0.01)
    assert report.ok and report.metric is not None
    assert report.metric.before > 0.85 and report.metric.samples == len(y)
    assert abs(report.metric.drop) <= 0.01
    assert any("integer" in w for w in report.warnings)


def test_corrupt_tflite_is_exit_2_and_writes_nothing(cli, tmp_path):
    bad = tmp_path / "cut.tflite"
    data = tflite_file("mlp", "float").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    out.mkdir()
    res = cli("convert", bad, "--to", "onnx", "-o", out / "m.onnx")
    line = res.stderr.strip()
    assert res.exit_code == 2 and "\n" not in line, res.stderr
    assert line == f"modelport: error: {bad}: cannot load TFLite model (The model is not a valid Flatbuffer buffer)"
    assert list(out.iterdir()) == []  # no temporary file or directory left behind either


def test_tflite_op_tf2onnx_cannot_convert_is_exit_3_naming_it(cli, tmp_path):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, activation="gelu", name="ffn")])
    src = tmp_path / "gelu.tflite"
    with native_output():
        src.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())  # TFLite's builtin GELU
    res = cli("convert", src, "--to", "torch", "-o", tmp_path / "gelu_torch")
    line = res.stderr.strip()
    assert res.exit_code == 3 and "\n" not in line, res.stderr
    assert line == f"modelport: error: {src}: tf2onnx cannot convert TFLite op(s) GELU to ONNX opset 17"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gelu.tflite"]


def test_cli_converts_a_quantized_tflite_and_inspects_it(cli, tmp_path):
    import json

    src = tflite_file("mlp", "int8")
    res = cli("convert", src, "--to", "onnx", "-o", tmp_path / "m.onnx", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True and report["route"] == ["tf2onnx (from_tflite)"]
    detail = report["artifact"]["lineage"][-1]["detail"]
    assert "full-integer int8" in detail and "verified at rtol 0.001" in detail
    atol = report["parity"]["runs"][0]["outputs"][0]["atol"]
    scale = [n for n in onnx.load(tmp_path / "m.onnx").graph.node if n.op_type == "DequantizeLinear"][-1].input[1]
    init = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "m.onnx").graph.initializer}
    assert atol == pytest.approx(QUANTA * float(init[scale]))
