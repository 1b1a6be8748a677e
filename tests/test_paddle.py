"""PaddlePaddle through the `paddle` toolchain: inference models (Paddle 3 ``.json`` and legacy
``.pdmodel``) and a ``paddle.nn.Layer`` file -> ONNX with paddle2onnx, verified against
paddle.inference, then on through the hub.

The models are Paddle's own (paddle.vision.models ResNet-18, MobileNetV3-small) and an
OCR-style CRNN head (conv + bidirectional LSTM), random weights, built inside the toolchain by
tests/paddle_zoo.py. Each is checked twice: by convert's own verification (against Paddle's
runner) and by onnxruntime here against the dygraph output the builder saved, which does not
pass through modelport at all. The toolchain is installed once into the shared test cache
(tests/zoo_toolchains.py); the tests skip, saying so, only when it cannot be downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zoo_toolchains

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def paddle_models(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        env = zoo_toolchains.paddle_toolchain(mp)
        out = tmp_path_factory.mktemp("paddle_models")
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        jobs = [subprocess.Popen([str(env.python), "-I", str(HERE / "paddle_zoo.py"), str(out), kind],
                                 env={**clean, **extra, "GLOG_minloglevel": "2"},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for kind, extra in (("pir", {}), ("legacy", {"FLAGS_enable_pir_api": "0"}))]
        for job in jobs:
            log, _ = job.communicate(timeout=300)
            assert job.returncode == 0, log[-2000:]
    return out


@pytest.fixture(autouse=True)
def _shared_toolchains(monkeypatch):
    zoo_toolchains.use_shared_cache(monkeypatch)


def _onnx_matches_dygraph(onnx_path: Path, reference: Path, atol: float = 1e-4) -> float:
    import onnxruntime as ort

    ref = np.load(reference)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: ref["x"]})
    err = float(np.abs(got - ref["y"]).max())
    assert got.shape == ref["y"].shape and err < atol, (onnx_path.name, err)
    return err


def _paddle_dir(models: Path, tmp_path: Path) -> Path:
    """A PaddleOCR-style inference directory: inference.json + inference.pdiparams."""
    d = tmp_path / "inference"
    d.mkdir()
    shutil.copy(models / "ocr.json", d / "inference.json")
    shutil.copy(models / "ocr.pdiparams", d / "inference.pdiparams")
    return d


SOURCES = {
    "resnet18 (.json)": (lambda m, t: [m / "resnet18.json"], "resnet18"),
    "mobilenet_v3_small (.pdmodel)": (lambda m, t: [m / "mobilenet_v3_small.pdmodel"], "mobilenet_v3_small"),
    "ocr crnn (.json)": (lambda m, t: [m / "ocr.json"], "ocr"),
    "ocr crnn (inference dir)": (lambda m, t: [_paddle_dir(m, t)], "ocr"),
    "ocr crnn (nn.Layer file)": (lambda m, t: [f"{m / 'ocr_head.py'}:CRNNHead", "--weights", m / "ocr.pdparams",
                                                "--input", "x:1x3x32x128:float32"], "ocr"),
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_paddle_to_onnx_verified_against_paddle(cli, paddle_models, tmp_path, source):
    build, name = SOURCES[source]
    args = build(paddle_models, tmp_path)
    out = tmp_path / "model.onnx"
    r = cli("convert", args[0], *args[1:], "--to", "onnx", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["src_format"] in ("paddle", "paddle-layer")
    assert report["parity"]["b_format"] == "onnx" and len(report["parity"]["runs"]) == 2  # two batch sizes
    _onnx_matches_dygraph(out, paddle_models / f"{name}.io.npz")
    import onnx

    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


# (every model x target is in benchmarks/paddle_routes.py; here one per exporter, to keep the suite fast)
@pytest.mark.parametrize("source, target", [("ocr.json", "openvino"), ("mobilenet_v3_small.pdmodel", "torch")])
def test_paddle_through_the_hub(cli, paddle_models, tmp_path, source, target):
    r = cli("convert", paddle_models / source, "--to", target, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["route"][0].startswith("paddle") and report["ok"] is True
    assert report["parity"]["a_format"] == "paddle"  # the result is judged against Paddle itself


def test_inspect_and_verify_paddle(cli, paddle_models, tmp_path):
    r = cli("inspect", paddle_models / "mobilenet_v3_small.pdmodel", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "paddle"
    assert [(s["name"], s["dtype"], s["shape"]) for s in doc["signature"]["inputs"]] == [
        ("x", "float32", ["batch", 3, 64, 64])]
    assert doc["signature"]["outputs"][0]["shape"] == ["batch", 10]
    # verify: the same program as .json against the legacy .pdmodel of another network differs
    r = cli("verify", paddle_models / "resnet18.json", paddle_models / "resnet18.json", "--json")
    assert r.exit_code == 0, r.stderr
    r = cli("verify", paddle_models / "resnet18.json", paddle_models / "mobilenet_v3_small.pdmodel", "--json")
    assert r.exit_code == 1


def test_runner_matches_dygraph(paddle_models):
    from modelport.formats import open_runner

    ref = np.load(paddle_models / "ocr.io.npz")
    with open_runner(paddle_models / "ocr.json") as runner:
        assert runner.format == "paddle"
        (out,) = runner.run({"x": ref["x"]}).values()
    np.testing.assert_allclose(out, ref["y"], atol=1e-6)


def test_pdmodel_without_its_pdiparams_is_exit_2(cli, paddle_models, tmp_path):
    lone = tmp_path / "mobilenet_v3_small.pdmodel"
    shutil.copy(paddle_models / "mobilenet_v3_small.pdmodel", lone)
    r = cli("convert", lone, "--to", "onnx", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 2
    assert r.stderr.strip().count("\n") == 0
    assert "mobilenet_v3_small.pdiparams are missing" in r.stderr and "--weights" in r.stderr
    assert not (tmp_path / "m.onnx").exists()
    r = cli("inspect", lone, "--weights", tmp_path / "nope.pdiparams")
    assert r.exit_code == 2 and "no such weights file" in r.stderr


def test_bad_paddle_layer_inputs(cli, paddle_models, tmp_path):
    spec = f"{paddle_models / 'ocr_head.py'}:CRNNHead"
    r = cli("convert", spec, "--weights", paddle_models / "ocr.pdparams", "--to", "onnx", "-o", tmp_path / "a.onnx")
    assert r.exit_code == 2 and "give its input shapes with --input" in r.stderr
    r = cli("convert", f"{paddle_models / 'ocr_head.py'}:NoSuch", "--input", "x:1x3x32x128:float32",
            "--to", "onnx", "-o", tmp_path / "b.onnx")
    assert r.exit_code == 2 and "has no 'NoSuch'" in r.stderr
    # weights of another network: named, not silently half-loaded
    other = tmp_path / "other.pdparams"
    shutil.copy(paddle_models / "mobilenet_v3_small.pdiparams", other)
    r = cli("convert", spec, "--weights", other, "--input", "x:1x3x32x128:float32", "--to", "onnx",
            "-o", tmp_path / "c.onnx")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / n).exists() for n in ("a.onnx", "b.onnx", "c.onnx"))


def test_missing_toolchain_is_exit_3_naming_the_install_command(cli, paddle_models, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "no-toolchains"))
    r = cli("convert", paddle_models / "resnet18.json", "--to", "onnx", "-o", tmp_path / "r.onnx")
    assert r.exit_code == 3
    assert r.stderr.strip() == ("modelport: error: toolchain 'paddle' is not installed; "
                                "install it with: modelport toolchain install paddle")
    assert not (tmp_path / "r.onnx").exists()


def test_a_json_that_is_no_paddle_program_is_not_taken_for_one(cli, tmp_path):
    other = tmp_path / "config.json"
    other.write_text('{"model_type": "bert"}')
    r = cli("inspect", other)
    assert r.exit_code == 3 and "unknown model format" in r.stderr


def test_corrupt_programs_are_exit_2_in_one_line(cli, paddle_models, tmp_path):
    garbage = tmp_path / "garbage.pdmodel"
    garbage.write_bytes(b"not a program")
    shutil.copy(paddle_models / "resnet18.pdiparams", tmp_path / "garbage.pdiparams")
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes((paddle_models / "resnet18.json").read_bytes()[:3000])
    shutil.copy(paddle_models / "resnet18.pdiparams", tmp_path / "truncated.pdiparams")
    for path, words in ((garbage, "not a Paddle program"), (truncated, "paddle.inference cannot load the model")):
        r = cli("inspect", path)
        assert r.exit_code == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr
    # the driver survives a bad request: a good model still runs in the same process
    r = cli("inspect", paddle_models / "resnet18.json", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["format"] == "paddle"
