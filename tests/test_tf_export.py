"""ONNX -> SavedModel / TFLite with onnx2tf, through the route planner, verified against the source."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import zoo

pytest.importorskip("onnx2tf")

from modelport.convert.run import convert  # noqa: E402
from modelport.convert.registry import ConvertOptions, plan  # noqa: E402
from modelport.errors import CheckFailedError, ExportError  # noqa: E402
from modelport.formats import detect, open_runner  # noqa: E402
from modelport.inputs import parse_input_spec  # noqa: E402

pytestmark = pytest.mark.slow  # every test here runs TensorFlow's converters (seconds each)


def _max_rel(report) -> float:
    return max(o.max_rel for run in report.parity.runs for o in run.outputs)


def test_routes_go_through_onnx():
    assert [(e.src, e.dst) for e in plan("torch-module", "tflite")] == [("torch-module", "onnx"), ("onnx", "tflite")]
    assert [(e.src, e.dst) for e in plan("keras", "tflite")] == [("keras", "onnx"), ("onnx", "tflite")]
    assert [(e.src, e.dst) for e in plan("torch-export", "savedmodel")] == [("torch-export", "onnx"), ("onnx", "savedmodel")]


@pytest.mark.parametrize("to", ["tflite", "savedmodel"])
def test_cnn_from_torch_module(tmp_path, cnn, to):
    out = tmp_path / ("cnn.tflite" if to == "tflite" else "cnn_saved_model")
    report = convert(cnn.spec, to, out, options=ConvertOptions(inputs=zoo.input_specs(cnn), weights=cnn.safetensors))
    assert report.route == ("torch.onnx export", "onnx2tf")
    assert report.parity.ok and _max_rel(report) <= 1e-4
    assert detect(out) == to
    # NCHW kept at the boundary: the converted model takes the PyTorch model's arrays as they are.
    (x,) = report.artifact.signature.inputs
    assert x.name == "x" and x.shape[1:] == (3, 32, 32)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp files left beside it


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return zoo.write_bert(tmp_path_factory.mktemp("bert"))


def test_bert_to_tflite_from_torch_module(tmp_path, bert):
    """transformers' attention-mask subgraph defeats onnx2tf with dynamic dims: frozen, then verified."""
    out = tmp_path / "bert.tflite"
    report = convert(bert.spec, "tflite", out, options=ConvertOptions(inputs=zoo.input_specs(bert)))
    assert report.route == ("torch.onnx export", "onnx2tf")
    assert report.parity.ok and _max_rel(report) <= 1e-4
    assert any("dims frozen" in w for w in report.warnings)
    shapes = {s.name: s.shape for s in report.artifact.signature.inputs}
    assert shapes == {"input_ids": (1, 16), "attention_mask": (1, 16)}


def test_bert_to_savedmodel_at_chosen_sizes(tmp_path, bert):
    onnx_path = tmp_path / "bert.onnx"
    convert(bert.spec, "onnx", onnx_path, options=ConvertOptions(inputs=zoo.input_specs(bert)))
    out = tmp_path / "bert_saved_model"
    report = convert(onnx_path, "savedmodel", out, options=ConvertOptions(extra=(("static_dims", "batch=2,sequence=12"),)))
    assert report.parity.ok and _max_rel(report) <= 1e-4
    assert detect(out) == "savedmodel"
    assert {s.shape for s in report.artifact.signature.inputs} == {(2, 12)}
    assert report.artifact.signature.outputs[0].shape == (2, 12, 64)


def test_cnn_tflite_matches_torch_on_a_batch(tmp_path, cnn, cnn_onnx):
    """The converted file run by hand: same arrays in, the eager PyTorch model's scores out."""
    import torch

    out = tmp_path / "cnn.tflite"
    before = hashlib.sha256(Path(cnn_onnx).read_bytes()).hexdigest()
    convert(cnn_onnx, "tflite", out)
    # onnx2tf writes names and shapes into the file it converts: it gets a copy, the source stays as it was
    assert hashlib.sha256(Path(cnn_onnx).read_bytes()).hexdigest() == before
    x = np.random.default_rng(3).normal(size=(5, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = zoo.cnn_eval(cnn)(torch.from_numpy(x)).numpy()
    with open_runner(out) as r:
        got = r.run({"x": x})["output_0"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_float16_tflite(tmp_path, cnn_onnx):
    out = tmp_path / "cnn_fp16.tflite"
    with pytest.raises(CheckFailedError):  # fp16 weights are not within an explicit fp32 tolerance
        convert(cnn_onnx, "tflite", out, options=ConvertOptions(extra=(("tflite_dtype", "float16"),)),
                rtol=1e-4, atol=1e-5)
    assert not out.exists()
    # by default the converter's own tolerance applies: fp16 weights are judged at fp16 tolerance
    report = convert(cnn_onnx, "tflite", out, options=ConvertOptions(extra=(("tflite_dtype", "float16"),)))
    assert report.parity.ok
    assert {(o.rtol, o.atol) for r in report.parity.runs for o in r.outputs} == {(1e-2, 1e-3)}
    with open_runner(out) as r:  # weights stored in half precision, dequantized at load
        dtypes = {np.dtype(t["dtype"]).name for t in r.interp.get_tensor_details()}
    assert "float16" in dtypes and r.signature.inputs[0].dtype == "float32"
    assert "tflite float16" in report.artifact.lineage[-1].detail


def test_pt2_to_tflite(tmp_path, cnn_pt2):
    out = tmp_path / "cnn.tflite"
    report = convert(cnn_pt2, "tflite", out)
    assert report.route == ("torch.onnx export", "onnx2tf")
    assert report.parity.ok and _max_rel(report) <= 1e-4


def _source(request, kind: str) -> str:
    import zoo_tf

    if kind == "pt2":
        return request.getfixturevalue("cnn_pt2")
    if kind == "torchscript":
        return request.getfixturevalue("cnn_traced")
    if kind == "keras":
        return str(zoo_tf.cnn_keras())
    return str(zoo_tf.module_savedmodel())


@pytest.mark.parametrize(("kind", "to"), [("pt2", "savedmodel"), ("torchscript", "tflite"), ("keras", "savedmodel"),
                                          ("savedmodel", "tflite")])
def test_route_matrix(tmp_path, request, kind, to):
    """Each source format reaches the TF formats through ONNX, verified against the source."""
    out = tmp_path / ("model.tflite" if to == "tflite" else "model_saved_model")
    options = ConvertOptions(inputs=(parse_input_spec(zoo.CNN_INPUT),) if kind == "torchscript" else ())
    report = convert(_source(request, kind), to, out, options=options)
    assert len(report.route) == 2 and report.route[-1] == "onnx2tf"
    assert report.parity.ok and _max_rel(report) <= 1e-4
    assert detect(out) == to


def test_keras_mobilenetv2_to_tflite(tmp_path):
    """Keras -> ONNX (tf2onnx) -> TFLite (onnx2tf): an NHWC model whose ONNX transposes to NCHW inside."""
    import keras

    import modelport as api

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=10,
                                           classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial BN statistics, so a wrongly folded BN shows
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.8, 1.2, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 2.0, n)])
    src = tmp_path / "mobilenetv2.keras"
    model.save(src)
    out = tmp_path / "mobilenetv2.tflite"
    report = api.convert(src, "tflite", out)
    assert report.route == ("tf2onnx", "onnx2tf")
    assert report.parity.ok and _max_rel(report) <= 1e-4
    (x,) = report.artifact.signature.inputs
    assert x.shape[1:] == (64, 64, 3)  # NHWC as Keras takes it
    img = rng.random((1, 64, 64, 3), dtype=np.float32)
    with open_runner(out) as r:
        got = next(iter(r.run({x.name: img}).values()))
    np.testing.assert_allclose(got, np.asarray(model(img)), rtol=1e-4, atol=1e-4)


def test_unsupported_op_is_named_and_nothing_written(tmp_path):
    import onnx

    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2, 3] x, int64[2, 3] like) => (int64[2, 3] y) {
            y = CastLike(x, like)
        }""")
    src = tmp_path / "castlike.onnx"
    onnx.save(model, src)
    out = tmp_path / "castlike.tflite"
    with pytest.raises(ExportError, match="CastLike"):
        convert(src, "tflite", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["castlike.onnx"]


def test_no_calibration_download(tmp_path, monkeypatch):
    """A static-batch 3-channel NHWC image model is the case where onnx2tf fetches calibration
    images; with every proxy pointing at a closed port, any fetch would fail the conversion."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("ReduceMean", ["c", "axes"], ["y"], keepdims=0)],
        "nhwc", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16, 16, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [w, numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    src = tmp_path / "nhwc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), src)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    cwd = os.getcwd()
    report = convert(src, "tflite", tmp_path / "nhwc.tflite")
    assert report.parity.ok
    assert os.getcwd() == cwd
    assert not (Path(cwd) / "calibration_image_sample_data_20x128x128x3_float32.npy").exists()


def _feature_map_onnx(directory: Path, channels: int, height: int, width: int) -> str:
    """conv -> relu -> conv, exported with dynamic batch: output N x channels x height x width."""
    import warnings

    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(6, channels, 3, padding=1)).eval()
    path = directory / f"fmap_{channels}x{height}x{width}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = zoo.onnx_export(module, (torch.randn(2, 3, height, width),), dynamo=True, input_names=["x"],
                                    output_names=["y"], dynamic_shapes=({0: "batch"},), verbose=False)
    program.save(str(path))
    return str(path)


@pytest.mark.parametrize("to", ["tflite", "savedmodel"])
@pytest.mark.parametrize("chw", [(4, 6, 7), (8, 8, 8)], ids=["distinct-dims", "equal-dims"])
def test_feature_map_output_keeps_onnx_layout(tmp_path, to, chw):
    """onnx2tf returns a 4-D output channels-last; it comes back N x C x H x W, as ONNX has it.

    With C == H == W both layouts have the same shape: the values must have decided, and
    the converted model's output equals onnxruntime's as it is, not merely after a transpose.
    """
    import modelport as api

    src = _feature_map_onnx(tmp_path, *chw)
    out = tmp_path / ("fmap.tflite" if to == "tflite" else "fmap_saved_model")
    report = api.convert(src, to, out)
    assert report.parity.ok and _max_rel(report) <= 1e-4
    assert "outputs transposed back to ONNX layout: output_0" in report.artifact.lineage[-1].detail
    x = np.random.default_rng(5).normal(size=(3, 3, chw[1], chw[2])).astype(np.float32)
    with open_runner(src) as ref, open_runner(out) as conv:
        assert [o.name for o in conv.signature.outputs] == ["output_0"]  # onnx2tf's name, as before
        assert conv.signature.outputs[0].shape[1:] == chw
        want, got = ref.run({"x": x})["y"], conv.run({"x": x})["output_0"]
    assert got.shape == want.shape == (3, *chw)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_feature_map_output_float16_tflite(tmp_path):
    """The .tflite made again from the layout-restored SavedModel keeps float16 weights when asked."""
    import modelport as api

    src = _feature_map_onnx(tmp_path, 4, 6, 7)
    out = tmp_path / "fmap_fp16.tflite"
    report = api.convert(src, "tflite", out, tflite_dtype="float16")
    assert report.parity.ok
    assert report.artifact.signature.outputs[0].shape[1:] == (4, 6, 7)
    with open_runner(out) as r:
        dtypes = {np.dtype(t["dtype"]).name for t in r.interp.get_tensor_details()}
    assert "float16" in dtypes and r.signature.outputs[0].dtype == "float32"


@pytest.mark.slow
def test_onnx_to_tflite_from_a_relative_path(cnn_onnx, tmp_path, monkeypatch):
    """onnx2tf runs in a scratch cwd: a source given relative to the user's cwd must still be found."""
    import shutil

    from modelport.convert.run import convert

    shutil.copy(cnn_onnx, tmp_path / "net.onnx")
    monkeypatch.chdir(tmp_path)
    report = convert("net.onnx", "tflite", "net.tflite")
    assert report.ok and (tmp_path / "net.tflite").is_file()
