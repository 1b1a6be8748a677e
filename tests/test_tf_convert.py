"""Keras (.keras, .h5) and TF SavedModel -> ONNX through the convert pipeline, verified end to end.

Each conversion runs once per session (module-scoped fixtures); the tests then look at
the report, the ONNX file and its behaviour on real data (sklearn's digits).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import zoo_tf  # first: it sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

import onnx  # noqa: E402

from modelport import formats  # noqa: E402
from modelport.convert.run import convert  # noqa: E402
from modelport.convert.registry import ConvertOptions  # noqa: E402
from modelport.errors import ExportError, ModelportError  # noqa: E402
from modelport.verify import verify  # noqa: E402

SOURCES = {
    "cnn.keras": zoo_tf.cnn_keras,
    "cnn.h5": zoo_tf.cnn_h5,
    "mlp_sequential.keras": zoo_tf.mlp_sequential,
    "two_io.keras": zoo_tf.two_io_keras,
    "tf_module_savedmodel": zoo_tf.module_savedmodel,
    "keras_export_savedmodel": zoo_tf.exported_savedmodel,
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (source path, ConvertReport), each conversion done once, on first use."""
    out_dir = tmp_path_factory.mktemp("tf_convert")
    done: dict = {}

    def get(name: str):
        if name not in done:
            src = SOURCES[name]()
            done[name] = (src, convert(src, "onnx", out_dir / f"{name.replace('.', '_')}.onnx"))
        return done[name]

    return get


def _graph_io(path: str) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    model = onnx.load(path)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    return [(v.name, dims(v)) for v in model.graph.input], [(v.name, dims(v)) for v in model.graph.output]


@pytest.mark.parametrize("name", list(SOURCES))
def test_convert_to_onnx_verifies_at_two_batch_sizes(name, converted):
    src, report = converted(name)
    assert report.ok and report.parity, report.parity.summary()
    assert report.route == ("tf2onnx",)
    assert report.src_format == ("savedmodel" if "savedmodel" in name else "keras")
    batches = sorted({shape[0] for run in report.parity.runs for shape in run.input_shapes.values()})
    assert batches == [2, 3]  # the batch stayed dynamic and was checked at two sizes
    assert Path(report.artifact.path).is_file()
    assert report.artifact.lineage[-1].verified is True
    inputs, outputs = _graph_io(report.artifact.path)
    assert all(d[0] == "batch" for _, d in inputs + outputs), (inputs, outputs)
    # The checked file itself, reloaded on its own, still matches the source.
    again = verify(src, report.artifact.path, seed=7)
    assert again, again.summary()


def test_onnx_keeps_keras_input_and_output_names(converted):
    _, report = converted("cnn.keras")
    assert _graph_io(report.artifact.path) == ([("image", ["batch", 8, 8, 1])], [("logits", ["batch", 10])])
    _, report = converted("mlp_sequential.keras")  # the Sequential model: outputs named after the last layer
    assert [n for n, _ in _graph_io(report.artifact.path)[1]] == ["logits"]


def test_two_output_model_is_matched_by_name(converted):
    src, report = converted("two_io.keras")
    inputs, outputs = _graph_io(report.artifact.path)
    assert [n for n, _ in inputs] == ["image", "meta"]
    assert outputs == [("cls", ["batch", 3]), ("score", ["batch", 1])]
    for run in report.parity.runs:
        assert [o.name for o in run.outputs] == ["cls", "score"]
        assert [o.shape[1] for o in run.outputs] == [3, 1]
    # Same values by name, whatever the order the arrays come back in.
    rng = np.random.default_rng(11)
    feed = {"meta": rng.standard_normal((4, 5)).astype(np.float32),
            "image": rng.standard_normal((4, 8, 8, 1)).astype(np.float32)}
    with formats.open_runner(src) as keras_runner, formats.open_runner(report.artifact.path) as onnx_runner:
        ref, got = keras_runner.run(feed), onnx_runner.run(feed)
    for name in ("cls", "score"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-5)


def test_savedmodel_outputs_keep_signature_names(converted):
    _, report = converted("tf_module_savedmodel")
    inputs, outputs = _graph_io(report.artifact.path)
    assert inputs == [("x", ["batch", 4])]
    assert outputs == [("y", ["batch", 3]), ("z", ["batch"])]


@pytest.mark.parametrize("name", ["cnn.keras", "cnn.h5"])
def test_onnx_digits_accuracy_equals_keras_accuracy(name, converted):
    src, report = converted(name)
    _, _, x_test, y_test = zoo_tf.digits()
    with formats.open_runner(src) as keras_runner, formats.open_runner(report.artifact.path) as onnx_runner:
        keras_pred = np.argmax(keras_runner.run({"image": x_test})["logits"], axis=1)
        onnx_pred = np.argmax(onnx_runner.run({"image": x_test})["logits"], axis=1)
    keras_acc = float(np.mean(keras_pred == y_test))
    onnx_acc = float(np.mean(onnx_pred == y_test))
    assert keras_acc > 0.85, f"the zoo CNN did not learn the digits (accuracy {keras_acc:.3f})"
    assert onnx_acc == keras_acc
    assert np.array_equal(onnx_pred, keras_pred)


def test_static_batch_option_freezes_the_batch_dim(tmp_path):
    src = zoo_tf.cnn_keras()
    x = zoo_tf.digits()[2][:1]
    report = convert(src, "onnx", tmp_path / "static.onnx", options=ConvertOptions(dynamic_batch=False),
                     inputs={"image": x})
    assert report, report.parity.summary()
    inputs, outputs = _graph_io(report.artifact.path)
    assert inputs == [("image", [1, 8, 8, 1])]
    assert outputs[0][1][0] == 1


def test_unconvertible_tf_op_is_an_export_error_naming_it(tmp_path):
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="modelport_tests", name="LogGamma")
    class LogGamma(keras.layers.Layer):  # tf2onnx has no converter for TF's Lgamma
        def call(self, x):
            return tf.math.lgamma(x)

    inp = keras.Input((4,), name="x")
    src = tmp_path / "lgamma.keras"
    keras.Model(inp, LogGamma(name="lgamma")(inp)).save(src)
    out = tmp_path / "lgamma.onnx"
    with pytest.raises(ExportError) as info:
        convert(src, "onnx", out)
    assert info.value.exit_code == 3
    assert str(info.value) == f"{src}: tf2onnx cannot convert TensorFlow op(s) Lgamma to ONNX opset 17"
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lgamma.keras"]


def _run_quietly(script: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_conversion_keeps_stderr_quiet_but_errors_reach_the_caller(tmp_path):
    src = zoo_tf.two_io_keras()
    bad = tmp_path / "garbage.h5"
    from modelport.formats.keras_format import HDF5_MAGIC

    bad.write_bytes(HDF5_MAGIC + b"\0" * 512)
    proc = _run_quietly(f"""
        from modelport.convert.run import convert
        from modelport.errors import ModelportError
        report = convert({str(src)!r}, "onnx", {str(tmp_path / 'quiet.onnx')!r})
        print("OK", report.parity.summary())
        try:
            convert({str(bad)!r}, "onnx", {str(tmp_path / 'bad.onnx')!r})
        except ModelportError as exc:
            print("ERROR", exc.exit_code, exc)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK parity ok" in proc.stdout
    assert f"ERROR 2 {bad}: cannot load Keras model" in proc.stdout
    noisy = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert not noisy, "stderr should be quiet:\n" + "\n".join(noisy[:20])


def test_bad_savedmodel_fails_convert_naming_the_directory(tmp_path):
    import shutil

    bad = tmp_path / "corrupt_sm"
    shutil.copytree(zoo_tf.module_savedmodel(), bad)
    (bad / "saved_model.pb").write_bytes(b"\x08\x01 not a protobuf " * 10)
    with pytest.raises(ModelportError) as info:
        convert(bad, "onnx", tmp_path / "out.onnx")
    assert info.value.exit_code == 2
    assert str(info.value).startswith(f"{bad}: cannot load SavedModel")
    assert not (tmp_path / "out.onnx").exists()


def test_dict_input_model_is_fed_by_name(tmp_path):
    import keras

    # Keys deliberately out of sorted order: Keras flattens dict inputs by sorted key.
    b_in, a_in = keras.Input((3,), name="b_in"), keras.Input((2,), name="a_in")
    joined = keras.layers.Concatenate(name="concat")([b_in, a_in])
    src = tmp_path / "dict_inputs.keras"
    keras.Model({"b_in": b_in, "a_in": a_in}, keras.layers.Dense(2, name="out")(joined)).save(src)
    report = convert(src, "onnx", tmp_path / "dict_inputs.onnx")
    assert report, report.parity.summary()
    inputs, outputs = _graph_io(report.artifact.path)
    assert inputs == [("a_in", ["batch", 2]), ("b_in", ["batch", 3])]
    assert outputs == [("out", ["batch", 2])]


def test_cli_verify_keras_against_tflite_and_refuse_a_truncated_keras(cli, tmp_path):
    result = cli("verify", zoo_tf.two_io_keras(), zoo_tf.tflite_from_keras("two_io"), "--json")
    assert result.exit_code == 0, result.stderr
    bad = tmp_path / "truncated.keras"
    data = zoo_tf.cnn_keras().read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    result = cli("convert", bad, "--to", "onnx")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"modelport: error: {bad}: corrupt or truncated archive (File is not a zip file)"]
    assert list(tmp_path.iterdir()) == [bad]
