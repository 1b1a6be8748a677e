"""ONNX -> OpenVINO IR through the route planner, verified; IR detection and the f32 runner."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import zoo

pytest.importorskip("openvino")

from modelport.convert.run import convert  # noqa: E402
from modelport.convert.registry import ConvertOptions  # noqa: E402
from modelport.errors import ExportError  # noqa: E402
from modelport.formats import detect, open_runner  # noqa: E402
from modelport.inputs import parse_input_spec  # noqa: E402


def _max_rel(report) -> float:
    return max(o.max_rel for run in report.parity.runs for o in run.outputs)


def test_cnn_onnx_to_openvino(tmp_path, cnn, cnn_onnx):
    import torch

    out = tmp_path / "cnn_ir"
    report = convert(cnn_onnx, "openvino", out)
    assert report.route == ("openvino",)
    assert report.parity.ok and _max_rel(report) <= 1e-4
    assert len(report.parity.runs) == 2  # the batch dim stayed dynamic: checked at two sizes
    assert detect(out) == "openvino" and detect(out / "model.xml") == "openvino"
    x = np.random.default_rng(5).normal(size=(4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = zoo.cnn_eval(cnn)(torch.from_numpy(x)).numpy()
    with open_runner(out / "model.xml") as r:
        assert r.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
        got = r.run({"x": x})["output_0"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_xml_needs_its_bin(tmp_path, cnn_onnx):
    out = tmp_path / "ir"
    convert(cnn_onnx, "openvino", out, verify=False)
    lone = tmp_path / "lone.xml"
    shutil.copy(out / "model.xml", lone)
    assert detect(out / "model.xml") == "openvino"
    from modelport.formats import openvino_format

    assert not openvino_format.detect(lone)


@pytest.mark.slow
def test_bert_to_openvino_from_torch_module(tmp_path):
    bert = zoo.cached("bert", zoo.write_bert)
    report = convert(bert.spec, "openvino", tmp_path / "bert_ir", options=ConvertOptions(inputs=zoo.input_specs(bert)))
    assert report.route == ("torch.onnx export", "openvino")
    assert report.parity.ok and _max_rel(report) <= 1e-4


def test_unconvertible_op_named_nothing_written(tmp_path):
    import onnx

    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18, "custom.x" : 1]>
        g (float[2, 3] x) => (float[2, 3] y) {
            y = custom.x.Frobnicate(x)
        }""")
    src = tmp_path / "custom.onnx"
    onnx.save(model, src)
    with pytest.raises(ExportError, match="Frobnicate"):
        convert(src, "openvino", tmp_path / "custom_ir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pt2", "torchscript", "keras", "savedmodel"])
def test_route_matrix(tmp_path, request, kind):
    """Each source format reaches OpenVINO through ONNX, verified against the source."""
    import zoo_tf

    src = {"pt2": lambda: request.getfixturevalue("cnn_pt2"), "torchscript": lambda: request.getfixturevalue("cnn_traced"),
           "keras": lambda: str(zoo_tf.cnn_keras()), "savedmodel": lambda: str(zoo_tf.module_savedmodel())}[kind]()
    options = ConvertOptions(inputs=(parse_input_spec(zoo.CNN_INPUT),) if kind == "torchscript" else ())
    report = convert(src, "openvino", tmp_path / "ir", options=options)
    assert len(report.route) == 2 and report.route[-1] == "openvino"
    assert report.parity.ok and _max_rel(report) <= 1e-4
