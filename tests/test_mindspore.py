"""MindSpore through the `mindspore` toolchain: a ``mindspore.nn.Cell`` file + ``.ckpt`` and a MindIR
file -> ONNX with mindspore.onnx.export, verified against MindSpore itself (a PyNative forward of
the Cell, nn.GraphCell over the MindIR), then on through the hub.

The MindSpore wheel ships no model classes, and mindcv 0.3.0 (the separate model zoo) does not
work with MindSpore 2.10 (resnet18's forward raises a SystemError in pyboost's add; mobilenet_v3's
export fails: HSwish is not in the ONNX exporter's map), so the networks are LeNet-5 and a small
ResNet written from mindspore.nn layers by tests/mindspore_zoo.py, with random weights and
batch-norm statistics. Each conversion is checked twice: by convert's own verification and by
onnxruntime here against the PyNative output the builder saved, which does not pass through
modelport at all.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zoo_toolchains

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def ms_models(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        env = zoo_toolchains.mindspore_toolchain(mp)
        out = tmp_path_factory.mktemp("mindspore_models")
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        job = subprocess.run([str(env.python), "-I", str(HERE / "mindspore_zoo.py"), str(out)], cwd=out,
                             env={**clean, "GLOG_v": "3"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=300)
        assert job.returncode == 0, job.stdout[-2000:]
    return out


@pytest.fixture(autouse=True)
def _shared_toolchains(monkeypatch):
    zoo_toolchains.use_shared_cache(monkeypatch)


def _onnx_matches_pynative(onnx_path: Path, reference: Path, atol: float = 1e-4) -> float:
    import onnxruntime as ort

    ref = np.load(reference)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: ref["x"]})
    err = float(np.abs(got - ref["y"]).max())
    assert got.shape == ref["y"].shape and err < atol, (onnx_path.name, err)
    # the batch is dynamic: three rows run too, and row 0 is the same as in a batch of two
    (three,) = sess.run(None, {sess.get_inputs()[0].name: np.concatenate([ref["x"], ref["x"][:1]])})
    assert three.shape[0] == 3 and float(np.abs(three[:2] - ref["y"]).max()) < atol
    return err


def _cell(models: Path, name: str) -> list:
    cls, chw = {"lenet": ("LeNet5", "1x32x32"), "resnet": ("SmallResNet", "3x32x32")}[name]
    return [f"{models / f'{name}_cell.py'}:{cls}", "--weights", models / f"{name}.ckpt", "--input", f"x:1x{chw}:float32"]


SOURCES = {"lenet (Cell + .ckpt)": ("cell", "lenet"), "resnet (MindIR)": ("mindir", "resnet")}


@pytest.mark.parametrize("source", list(SOURCES))
def test_mindspore_to_onnx_verified_against_mindspore(cli, ms_models, tmp_path, source):
    kind, name = SOURCES[source]
    args = _cell(ms_models, name) if kind == "cell" else [ms_models / f"{name}.mindir"]
    out = tmp_path / "model.onnx"
    r = cli("convert", args[0], *args[1:], "--to", "onnx", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["src_format"] == ("mindspore-cell" if kind == "cell" else "mindspore")
    assert report["parity"]["a_format"] == report["src_format"] and len(report["parity"]["runs"]) == 2
    assert "opset 17" in report["artifact"]["lineage"][-1]["detail"]
    _onnx_matches_pynative(out, ms_models / f"{name}.io.npz")


# every model x target is in benchmarks/mindspore_routes.py; here one per exporter, to keep the suite fast
@pytest.mark.parametrize("kind, name, target", [("mindir", "resnet", "torch"), ("cell", "lenet", "openvino")])
def test_mindspore_through_the_hub(cli, ms_models, tmp_path, kind, name, target):
    args = _cell(ms_models, name) if kind == "cell" else [ms_models / f"{name}.mindir"]
    r = cli("convert", args[0], *args[1:], "--to", target, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["route"][0] == "mindspore.onnx.export" and report["ok"] is True
    assert report["parity"]["a_format"].startswith("mindspore")  # judged against MindSpore itself


def test_inspect_and_verify_mindir(cli, ms_models, tmp_path):
    r = cli("inspect", ms_models / "resnet.mindir", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "mindspore"
    assert [(s["name"], s["dtype"], s["shape"]) for s in doc["signature"]["inputs"]] == [
        ("x", "float32", ["batch", 3, 32, 32])]
    assert doc["signature"]["outputs"][0]["shape"] == ["batch", 10]
    # the Cell and the MindIR exported from it compute the same; LeNet's MindIR is another network
    r = cli("verify", *_cell(ms_models, "resnet"), ms_models / "resnet.mindir", "--json")
    assert r.exit_code == 0, r.stderr
    np.savez(tmp_path / "lenet_x.npz", x=np.load(ms_models / "lenet.io.npz")["x"])
    r = cli("verify", ms_models / "resnet.mindir", ms_models / "resnet.mindir", "--inputs", tmp_path / "lenet_x.npz")
    assert r.exit_code == 2 and "has shape 2x1x32x32, the model wants batchx3x32x32" in r.stderr


def test_a_cell_exports_twice_in_one_driver(ms_models, tmp_path):
    """MindSpore 2.10 cannot export a Cell instance twice ("i: 6 out of range"): each export builds a fresh one."""
    from modelport.convert.mindspore_to_onnx import cell_to_onnx
    from modelport.convert.registry import ConvertOptions
    from modelport.inputs import parse_input_specs

    spec, _, weights, _, inputs = _cell(ms_models, "lenet")
    options = ConvertOptions(weights=str(weights), inputs=parse_input_specs([inputs]))
    for name in ("first.onnx", "second.onnx"):
        result = cell_to_onnx(spec, str(tmp_path / name), options)
        assert result.tool.startswith("mindspore.onnx.export")
        _onnx_matches_pynative(tmp_path / name, ms_models / "lenet.io.npz")


def test_runners_match_pynative(ms_models):
    from modelport.formats import LoadOptions, open_runner
    from modelport.inputs import parse_input_specs

    ref = np.load(ms_models / "lenet.io.npz")
    with open_runner(ms_models / "lenet.mindir") as runner:
        assert runner.format == "mindspore"
        (out,) = runner.run({"x": ref["x"]}).values()
    np.testing.assert_allclose(out, ref["y"], atol=1e-6)
    spec, _, weights, _, inputs = _cell(ms_models, "lenet")
    options = LoadOptions(weights=str(weights), inputs=parse_input_specs([inputs]))
    with open_runner(spec, options=options) as runner:
        assert runner.format == "mindspore-cell"
        (out,) = runner.run({"x": ref["x"]}).values()
    np.testing.assert_allclose(out, ref["y"], atol=1e-6)


def test_a_ckpt_that_does_not_fit_the_cell_is_exit_2_naming_the_parameter(cli, ms_models, tmp_path):
    spec, _, _, flag, shape = _cell(ms_models, "lenet")
    r = cli("convert", spec, "--weights", ms_models / "resnet.ckpt", flag, shape, "--to", "onnx", "-o", tmp_path / "a.onnx")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "resnet.ckpt does not fit LeNet5: parameter 'conv1.weight' is not in the checkpoint" in r.stderr
    # same names, another shape: a LeNet for 3-channel images against the 1-channel checkpoint
    wide = tmp_path / "wide_cell.py"
    wide.write_text((ms_models / "lenet_cell.py").read_text().replace("nn.Conv2d(1, 6", "nn.Conv2d(3, 6"))
    r = cli("convert", f"{wide}:LeNet5", "--weights", ms_models / "lenet.ckpt", "--input", "x:1x3x32x32:float32",
            "--to", "onnx", "-o", tmp_path / "b.onnx")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "parameter 'conv1.weight' has shape 6x1x5x5 in the checkpoint, the Cell wants 6x3x5x5" in r.stderr
    assert not any((tmp_path / n).exists() for n in ("a.onnx", "b.onnx"))


def test_bad_cell_and_mindir_inputs(cli, ms_models, tmp_path):
    spec, _, weights, _, _ = _cell(ms_models, "lenet")
    r = cli("convert", spec, "--weights", weights, "--to", "onnx", "-o", tmp_path / "a.onnx")
    assert r.exit_code == 2 and "give its input shapes with --input" in r.stderr
    r = cli("convert", f"{ms_models / 'lenet_cell.py'}:NoSuch", "--input", "x:1x1x32x32:float32",
            "--to", "onnx", "-o", tmp_path / "b.onnx")
    assert r.exit_code == 2 and "has no 'NoSuch'" in r.stderr
    garbage = tmp_path / "garbage.mindir"
    garbage.write_bytes(b"not a MindIR at all" * 10)
    truncated = tmp_path / "truncated.mindir"
    truncated.write_bytes((ms_models / "resnet.mindir").read_bytes()[:5000])
    for path in (garbage, truncated):
        r = cli("inspect", path)
        assert r.exit_code == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "MindIR" in r.stderr
    # the driver survives a bad request: a good model still loads in the same process
    r = cli("inspect", ms_models / "lenet.mindir", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["format"] == "mindspore"
    assert not any((tmp_path / n).exists() for n in ("a.onnx", "b.onnx"))


def test_missing_toolchain_is_exit_3_naming_the_install_command(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "no-toolchains"))
    model = tmp_path / "model.mindir"
    model.write_bytes(b"\x0a\x03abc")
    r = cli("convert", model, "--to", "onnx", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 3
    assert r.stderr.strip() == ("modelport: error: toolchain 'mindspore' is not installed; "
                                "install it with: modelport toolchain install mindspore")
    assert not (tmp_path / "m.onnx").exists()
    cell = tmp_path / "net.py"
    cell.write_text("import mindspore.nn as nn\n\nclass Net(nn.Cell):\n    pass\n")
    r = cli("inspect", f"{cell}:Net", "--input", "x:1x4:float32")
    assert r.exit_code == 3 and "modelport toolchain install mindspore" in r.stderr
