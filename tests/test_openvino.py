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


# --- the output's form: `-o NAME.xml` is the IR pair NAME.xml + NAME.bin, any other path a directory ---


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _assert_runs_like(xml, cnn) -> None:
    import torch

    x = np.random.default_rng(7).normal(size=(3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = zoo.cnn_eval(cnn)(torch.from_numpy(x)).numpy()
    with open_runner(xml) as r:
        got = r.run({"x": x})["output_0"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["model.xml", "Net.XML"])
def test_xml_output_is_the_ir_pair(tmp_path, cnn, cnn_onnx, name):
    out = tmp_path / "out"
    xml = out / name
    report = convert(cnn_onnx, "openvino", xml)
    bin_name = xml.with_suffix(".bin").name
    assert _names(out) == sorted([name, bin_name])  # two files beside each other, no directory, no leftovers
    assert xml.is_file() and (out / bin_name).is_file()
    assert report.artifact.path == str(xml) and report.parity.b == str(xml)
    assert report.parity.ok and len(report.parity.runs) == 2  # verified (at two batch sizes) on the IR written
    assert detect(xml) == "openvino"
    _assert_runs_like(xml, cnn)


def test_cli_convert_to_xml_then_verify(tmp_path, cnn_onnx, cli):
    xml = tmp_path / "out" / "model.xml"
    res = cli("convert", cnn_onnx, "--to", "openvino", "-o", xml)
    assert res.exit_code == 0, res.stderr
    assert _names(xml.parent) == ["model.bin", "model.xml"]
    res = cli("verify", cnn_onnx, xml)
    assert res.exit_code == 0, res.stdout + res.stderr


def test_directory_forms(tmp_path, cnn, cnn_onnx):
    """A path without the .xml suffix, or an existing directory (even one named *.xml), is a directory IR."""
    out = tmp_path / "out"
    report = convert(cnn_onnx, "openvino", out / "ir_dir")
    assert report.parity.ok and report.artifact.path == str(out / "ir_dir")
    assert _names(out) == ["ir_dir"]
    assert {"model.xml", "model.bin"} <= set(_names(out / "ir_dir"))
    assert detect(out / "ir_dir") == "openvino"
    _assert_runs_like(out / "ir_dir", cnn)

    legacy = tmp_path / "legacy" / "old.xml"
    legacy.mkdir(parents=True)
    convert(cnn_onnx, "openvino", legacy, verify=False)
    assert _names(legacy.parent) == ["old.xml"] and {"model.xml", "model.bin"} <= set(_names(legacy))


def test_default_output_stays_a_directory(tmp_path, cnn_onnx):
    from modelport.convert.run import default_output

    src = tmp_path / "cnn.onnx"
    shutil.copy(cnn_onnx, src)
    assert default_output(str(src), "openvino") == str(tmp_path / "cnn_openvino")
    report = convert(src, "openvino", verify=False)
    assert report.artifact.path == str(tmp_path / "cnn_openvino")
    assert _names(tmp_path) == ["cnn.onnx", "cnn_openvino"]
    assert {"model.xml", "model.bin"} <= set(_names(tmp_path / "cnn_openvino"))


def test_existing_pair_is_replaced(tmp_path, cnn, cnn_onnx):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.xml").write_bytes(b"old xml")
    (out / "model.bin").write_bytes(b"old bin")
    report = convert(cnn_onnx, "openvino", out / "model.xml")
    assert report.parity.ok
    assert _names(out) == ["model.bin", "model.xml"]  # both replaced; nothing moved aside is left
    assert (out / "model.xml").read_bytes() != b"old xml" and (out / "model.bin").read_bytes() != b"old bin"
    _assert_runs_like(out / "model.xml", cnn)


def test_pair_placed_all_or_nothing(tmp_path, cnn_onnx, monkeypatch):
    """If the .bin cannot be placed, the new .xml is taken back and the old pair restored."""
    import os

    from modelport.pipeline import staging

    out = tmp_path / "out"
    out.mkdir()
    (out / "model.xml").write_bytes(b"old xml")
    (out / "model.bin").write_bytes(b"old bin")
    real = os.replace

    def replace(src, dst):
        if str(dst) == str(out / "model.bin") and ".step0-" in str(src):
            raise OSError("injected: cannot place the .bin")
        return real(src, dst)

    monkeypatch.setattr(staging.os, "replace", replace)
    with pytest.raises(OSError, match="injected"):
        convert(cnn_onnx, "openvino", out / "model.xml", verify=False)
    assert _names(out) == ["model.bin", "model.xml"]
    assert (out / "model.xml").read_bytes() == b"old xml" and (out / "model.bin").read_bytes() == b"old bin"


def test_failed_verification_leaves_no_ir(tmp_path, cnn_onnx):
    from modelport.errors import CheckFailedError

    out = tmp_path / "out"
    with pytest.raises(CheckFailedError):
        convert(cnn_onnx, "openvino", out / "model.xml", rtol=0.0, atol=-1.0)  # no result can meet atol < 0
    assert _names(out) == ["model.parity-failure.npz"]  # no .xml, no .bin, no scratch

    # an existing pair survives a failed conversion untouched
    convert(cnn_onnx, "openvino", tmp_path / "prev" / "model.xml", verify=False)
    before = {n: (tmp_path / "prev" / n).read_bytes() for n in ("model.xml", "model.bin")}
    with pytest.raises(CheckFailedError):
        convert(cnn_onnx, "openvino", tmp_path / "prev" / "model.xml", rtol=0.0, atol=-1.0)
    assert _names(tmp_path / "prev") == ["model.bin", "model.parity-failure.npz", "model.xml"]
    assert {n: (tmp_path / "prev" / n).read_bytes() for n in before} == before


def test_bin_destination_that_is_a_directory_refused(tmp_path, cnn_onnx):
    from modelport.errors import BadInputError

    (tmp_path / "model.bin").mkdir()
    with pytest.raises(BadInputError, match="directory"):
        convert(cnn_onnx, "openvino", tmp_path / "model.xml")
    assert _names(tmp_path) == ["model.bin"] and not any((tmp_path / "model.bin").iterdir())
