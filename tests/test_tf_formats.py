"""Keras, SavedModel and TFLite formats: detection from content, runners, signatures, bad input.

The models are real (tests/zoo_tf.py builds them once per session); TFLite files come
from TensorFlow's own converter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import zoo_tf  # first: it sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")


import modelport as api  # noqa: E402
from modelport import formats  # noqa: E402
from modelport.errors import BadInputError, ModelportError  # noqa: E402
from modelport.verify import verify  # noqa: E402


def _keras_predict(path: Path, *arrays: np.ndarray) -> list[np.ndarray]:
    import keras

    model = keras.models.load_model(path, compile=False)
    out = model(list(arrays) if len(arrays) > 1 else arrays[0], training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


# --- detection from content -------------------------------------------------------------


@pytest.mark.parametrize(
    "build, fmt",
    [
        (zoo_tf.cnn_keras, "keras"),
        (zoo_tf.cnn_h5, "keras"),
        (lambda: zoo_tf.tflite_from_keras("mlp"), "tflite"),
    ],
    ids=["keras", "h5", "tflite"],
)
def test_detect_files_from_content_not_extension(build, fmt, tmp_path):
    src = build()
    assert formats.detect(src) == fmt
    renamed = tmp_path / "model.bin"  # the suffix says nothing: detection reads the bytes
    shutil.copyfile(src, renamed)
    assert formats.detect(renamed) == fmt


@pytest.mark.parametrize("build", [zoo_tf.module_savedmodel, zoo_tf.exported_savedmodel], ids=["tf.Module", "export"])
def test_detect_savedmodel_directory(build, tmp_path):
    copy = tmp_path / "some_dir"
    shutil.copytree(build(), copy)
    assert formats.detect(copy) == "savedmodel"


def test_detect_rejects_a_directory_that_is_no_model(tmp_path):
    (tmp_path / "variables").mkdir()
    with pytest.raises(BadInputError, match="directory is no model"):
        formats.detect(tmp_path)


# --- Keras runner -----------------------------------------------------------------------


def test_keras_runner_signature_and_values_functional():
    path = zoo_tf.cnn_keras()
    with formats.open_runner(path) as runner:
        sig = runner.signature
        assert [str(s) for s in sig.inputs] == ["image:batchx8x8x1:float32"]
        assert [str(s) for s in sig.outputs] == ["logits:batchx10:float32"]
        x = zoo_tf.digits()[2][:5]
        got = runner.run({"image": x})["logits"]
    np.testing.assert_allclose(got, _keras_predict(path, x)[0], rtol=1e-6, atol=1e-6)


def test_keras_runner_sequential_output_is_named_after_its_last_layer():
    with formats.open_runner(zoo_tf.mlp_sequential()) as runner:
        assert runner.signature.output_names == ["logits"]
        (spec,) = runner.signature.inputs
        assert spec.shape == ("batch", 64)
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
        first = runner.run({spec.name: x})["logits"]
        again = runner.run({spec.name: x})["logits"]
    np.testing.assert_array_equal(first, again)  # inference mode: Dropout is off


def test_keras_runner_two_inputs_two_outputs():
    path = zoo_tf.two_io_keras()
    rng = np.random.default_rng(1)
    image = rng.standard_normal((3, 8, 8, 1)).astype(np.float32)
    meta = rng.standard_normal((3, 5)).astype(np.float32)
    with formats.open_runner(path) as runner:
        assert runner.signature.input_names == ["image", "meta"]
        assert runner.signature.output_names == ["cls", "score"]
        out = runner.run({"meta": meta, "image": image})
    ref_cls, ref_score = _keras_predict(path, image, meta)
    np.testing.assert_allclose(out["cls"], ref_cls, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["score"], ref_score, rtol=1e-6, atol=1e-6)


def test_keras_runner_maps_dict_outputs_to_the_right_names(tmp_path):
    import keras
    from keras import layers

    inp = keras.Input((4,), name="x")
    h = layers.Dense(3, name="h")(inp)
    # Keys in the opposite order of the layer names: a runner that zips values() with names mixes them up.
    model = keras.Model(inp, {"zz": layers.Dense(2, name="d_z")(h), "aa": layers.Dense(1, name="d_a")(h)})
    path = tmp_path / "dict_out.keras"
    model.save(path)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    ref = {k: np.asarray(v) for k, v in model(x, training=False).items()}
    with formats.open_runner(path) as runner:
        out = runner.run({runner.signature.input_names[0]: x})
    assert sorted(out) == ["d_a", "d_z"]
    np.testing.assert_allclose(out["d_a"], ref["aa"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["d_z"], ref["zz"], rtol=1e-6, atol=1e-6)


# --- SavedModel runner ------------------------------------------------------------------


def test_savedmodel_runner_tf_module():
    with formats.open_runner(zoo_tf.module_savedmodel()) as runner:
        sig = runner.signature
        assert [str(s) for s in sig.inputs] == ["x:batchx4:float32"]
        assert [str(s) for s in sig.outputs] == ["y:batchx3:float32", "z:batch:float32"]
        w, b = runner._loaded.w.numpy(), runner._loaded.b.numpy()
        x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
        out = runner.run({"x": x})
    np.testing.assert_allclose(out["y"], np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["z"], x.sum(axis=1), rtol=1e-5, atol=1e-6)


def test_verify_keras_against_its_exported_savedmodel():
    report = verify(zoo_tf.mlp_sequential(), zoo_tf.exported_savedmodel())
    assert report, report.summary()
    assert [tuple(r.input_shapes.values())[0][0] for r in report.runs] == [2, 3]


# --- TFLite runner ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "keras_src, tflite_src",
    [
        (zoo_tf.mlp_sequential, lambda: zoo_tf.tflite_from_keras("mlp")),
        (zoo_tf.cnn_keras, lambda: zoo_tf.tflite_from_keras("cnn")),
        (zoo_tf.two_io_keras, lambda: zoo_tf.tflite_from_keras("two_io")),
        (zoo_tf.mlp_sequential, zoo_tf.tflite_from_savedmodel),
    ],
    ids=["mlp-from_keras_model", "cnn-from_keras_model", "two_io-from_keras_model", "mlp-from_saved_model"],
)
def test_verify_keras_against_tflite_at_fp32_tolerance(keras_src, tflite_src):
    # The public modelport.verify (spelled api.verify: importing the modelport.verify package
    # rebinds the `modelport.verify` attribute to the package). Default fp32 tolerances.
    report = api.verify(keras_src(), tflite_src())
    assert report, report.summary()
    assert all(o.rtol == 1e-4 and o.atol == 1e-5 for r in report.runs for o in r.outputs)
    assert len(report.runs) == 2


def test_tflite_signature_names_are_clean_and_unique():
    with formats.open_runner(zoo_tf.tflite_from_keras("two_io")) as runner:
        sig = runner.signature
    names = sig.input_names + sig.output_names
    assert not [n for n in names if n.startswith("serving_default_") or ":" in n], names
    assert sig.input_names == ["image", "meta"]
    # TF's converter stores the outputs as output_0, output_1 in the Keras model's order.
    assert sig.output_names == ["output_0", "output_1"]
    assert [s.shape for s in sig.outputs] == [("batch", 3), ("batch", 1)]


def test_tflite_two_outputs_keep_keras_order_and_values():
    rng = np.random.default_rng(4)
    image = rng.standard_normal((3, 8, 8, 1)).astype(np.float32)
    meta = rng.standard_normal((3, 5)).astype(np.float32)
    ref_cls, ref_score = _keras_predict(zoo_tf.two_io_keras(), image, meta)
    with formats.open_runner(zoo_tf.tflite_from_keras("two_io")) as runner:
        out = runner.run({"image": image, "meta": meta})
    np.testing.assert_allclose(out["output_0"], ref_cls, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["output_1"], ref_score, rtol=1e-5, atol=1e-5)


def test_tflite_dynamic_batch_resize():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8, 8, 1)).astype(np.float32)
    (ref,) = _keras_predict(zoo_tf.cnn_keras(), x)
    with formats.open_runner(zoo_tf.tflite_from_keras("cnn")) as runner:
        (spec,) = runner.signature.inputs
        assert spec.shape == ("batch", 8, 8, 1)
        (out_name,) = runner.signature.output_names
        for n in (1, 3, 1):  # grow, then shrink back: each shape reallocates
            got = runner.run({spec.name: x[:n]})[out_name]
            assert got.shape == (n, 10)
            np.testing.assert_allclose(got, ref[:n], rtol=1e-4, atol=1e-5)


# --- bad input --------------------------------------------------------------------------


def _truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _garbage_h5(dst: Path) -> Path:
    from modelport.formats.keras_format import HDF5_MAGIC

    dst.write_bytes(HDF5_MAGIC + np.random.default_rng(6).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return dst


def _corrupt_savedmodel(dst: Path) -> Path:
    shutil.copytree(zoo_tf.module_savedmodel(), dst)
    (dst / "saved_model.pb").write_bytes(b"\x08\x01 this is not a SavedModel protobuf " * 20)
    return dst


BAD_INPUTS = {
    "truncated.keras": lambda d: _truncate(zoo_tf.cnn_keras(), d / "truncated.keras"),
    "garbage.h5": lambda d: _garbage_h5(d / "garbage.h5"),
    "corrupt_savedmodel": lambda d: _corrupt_savedmodel(d / "corrupt_savedmodel"),
    "truncated.tflite": lambda d: _truncate(zoo_tf.tflite_from_keras("mlp"), d / "truncated.tflite"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_bad_input_error_naming_the_file(name, tmp_path):
    bad = BAD_INPUTS[name](tmp_path)
    with pytest.raises(ModelportError) as info:
        with formats.open_runner(bad) as runner:
            runner.run({})
    err = info.value
    assert isinstance(err, BadInputError), repr(err)
    assert err.exit_code == 2
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"{bad}: ")
    assert len(message) < 400


def test_truncated_keras_fails_convert_with_exit_2_and_writes_nothing(tmp_path):
    from modelport.convert.run import convert

    bad = _truncate(zoo_tf.cnn_keras(), tmp_path / "truncated.keras")
    out = tmp_path / "out.onnx"
    with pytest.raises(ModelportError) as info:
        convert(bad, "onnx", out)
    assert info.value.exit_code == 2
    assert str(bad) in str(info.value)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.keras"]
