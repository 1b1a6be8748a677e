"""Apache MXNet through the `mxnet` toolchain: symbol.json + .params (a ``HybridBlock.export`` pair,
and a symbol-API ``Module`` checkpoint) -> ONNX with mx.onnx, verified against MXNet itself, then
on through the hub.

The models are MXNet's own (``gluon.model_zoo.vision`` ResNet-18 v1 and MobileNetV2 0.25, random
weights and batch-norm statistics, no download), a bidirectional-LSTM tagger and a LeNet that
ends in ``SoftmaxOutput`` (its training label left in the graph), built inside the toolchain by
tests/mxnet_zoo.py. Each conversion is checked twice: by convert's own verification (against the
MXNet runner) and by onnxruntime here against the output the builder saved, which does not pass
through modelport at all. The toolchain is installed once into the shared test cache
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

SHAPES = {"resnet18_v1": "1x3x64x64", "mobilenetv2_0.25": "1x3x64x64", "textrnn": "1x6x5", "lenet": "1x1x28x28",
          "erfnet": "1x3x8x8"}


def _input(name: str) -> list[str]:
    return ["--input", f"data:{SHAPES[name]}:float32"]


@pytest.fixture(scope="session")
def mxnet_models(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        env = zoo_toolchains.mxnet_toolchain(mp)
        out = tmp_path_factory.mktemp("mxnet_models")
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        job = subprocess.run([str(env.python), "-I", str(HERE / "mxnet_zoo.py"), str(out)], env=clean,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        assert job.returncode == 0, job.stdout[-2000:]
    return out


@pytest.fixture(autouse=True)
def _shared_toolchains(monkeypatch):
    zoo_toolchains.use_shared_cache(monkeypatch)


def _onnx_matches_mxnet(onnx_path: Path, reference: Path, atol: float = 1e-5) -> float:
    import onnxruntime as ort

    ref = np.load(reference)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: ref["x"]})
    err = float(np.abs(got - ref["y"]).max())
    assert got.shape == ref["y"].shape and err < atol, (onnx_path.name, err)
    return err


def _pair_dir(models: Path, tmp_path: Path, name: str) -> Path:
    """A directory holding one symbol + params pair."""
    d = tmp_path / "model_dir"
    d.mkdir()
    shutil.copy(models / f"{name}-symbol.json", d)
    shutil.copy(models / f"{name}-0000.params", d)
    return d


SOURCES = {
    "resnet18_v1 (HybridBlock.export)": (lambda m, t: m / "resnet18_v1-symbol.json", "resnet18_v1"),
    "mobilenetv2_0.25 (directory)": (lambda m, t: _pair_dir(m, t, "mobilenetv2_0.25"), "mobilenetv2_0.25"),
    "bidirectional LSTM tagger": (lambda m, t: m / "textrnn-symbol.json", "textrnn"),
    "lenet (Module checkpoint, epoch 3, SoftmaxOutput)": (lambda m, t: m / "lenet-symbol.json", "lenet"),
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_mxnet_to_onnx_verified_against_mxnet(cli, mxnet_models, tmp_path, source):
    build, name = SOURCES[source]
    out = tmp_path / "model.onnx"
    r = cli("convert", build(mxnet_models, tmp_path), *_input(name), "--to", "onnx", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["src_format"] == "mxnet"
    assert report["parity"]["a_format"] == "mxnet" and report["parity"]["b_format"] == "onnx"
    assert len(report["parity"]["runs"]) == 2  # two batch sizes: the batch stays dynamic
    _onnx_matches_mxnet(out, mxnet_models / f"{name}.io.npz")
    import onnx

    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [i.name for i in model.graph.input] == ["data"]  # weights are initializers, the label is gone
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13


def test_opset_and_static_batch_options(cli, mxnet_models, tmp_path):
    import onnx

    out = tmp_path / "lenet18.onnx"
    r = cli("convert", mxnet_models / "lenet-symbol.json", *_input("lenet"), "--opset", "18", "--to", "onnx",
            "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    assert max(o.version for o in onnx.load(out).opset_import if o.domain in ("", "ai.onnx")) == 18
    _onnx_matches_mxnet(out, mxnet_models / "lenet.io.npz")
    # --static-batch freezes the batch given with --input
    out = tmp_path / "lenet_static.onnx"
    r = cli("convert", mxnet_models / "lenet-symbol.json", "--input", "data:2x1x28x28:float32", "--static-batch",
            "--to", "onnx", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    assert onnx.load(out).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    _onnx_matches_mxnet(out, mxnet_models / "lenet.io.npz")  # the reference batch is 2


# (every model x target is in benchmarks/mxnet_routes.py; here one per exporter, to keep the suite fast)
@pytest.mark.parametrize("name, target", [("mobilenetv2_0.25", "openvino"), ("textrnn", "torch"),
                                          pytest.param("lenet", "tflite", marks=pytest.mark.slow)])
def test_mxnet_through_the_hub(cli, mxnet_models, tmp_path, name, target):
    r = cli("convert", mxnet_models / f"{name}-symbol.json", *_input(name), "--to", target,
            "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["route"][0] == "mx.onnx.export_model" and report["ok"] is True
    assert report["parity"]["a_format"] == "mxnet"  # the result is judged against MXNet itself
    assert report["parity"]["b_format"] == target


def test_runner_matches_mxnet_gluon(mxnet_models):
    from modelport.formats import LoadOptions, open_runner
    from modelport.inputs import parse_input_spec

    ref = np.load(mxnet_models / "resnet18_v1.io.npz")
    options = LoadOptions(inputs=(parse_input_spec("data:1x3x64x64:float32"),))
    with open_runner(mxnet_models / "resnet18_v1-symbol.json", options=options) as runner:
        assert runner.format == "mxnet"
        assert runner.signature.inputs[0].shape == ("batch", 3, 64, 64)
        assert runner.signature.outputs[0].shape == ("batch", 10)
        (out,) = runner.run({"data": ref["x"]}).values()
    np.testing.assert_allclose(out, ref["y"], rtol=1e-5, atol=1e-6)  # the symbol bound vs the gluon block


def test_inspect_and_verify_mxnet(cli, mxnet_models):
    sym = mxnet_models / "lenet-symbol.json"
    r = cli("inspect", sym, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "mxnet"
    assert [(s["name"], s["shape"]) for s in doc["signature"]["inputs"]] == [("data", None)]  # a symbol keeps none
    assert [s["name"] for s in doc["signature"]["outputs"]] == ["softmax"]
    r = cli("inspect", sym, *_input("lenet"), "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["signature"]["outputs"][0]["shape"] == ["batch", 10]
    r = cli("verify", sym, sym, *_input("lenet"), "--json")
    assert r.exit_code == 0, r.stderr
    # same architecture, other weights: verify tells them apart
    r = cli("verify", mxnet_models / "resnet18_v1-symbol.json", mxnet_models / "mobilenetv2_0.25-symbol.json",
            *_input("resnet18_v1"), "--json")
    assert r.exit_code == 1


def test_symbol_without_its_params_is_exit_2(cli, mxnet_models, tmp_path):
    lone = tmp_path / "resnet18_v1-symbol.json"
    shutil.copy(mxnet_models / "resnet18_v1-symbol.json", lone)
    r = cli("convert", lone, *_input("resnet18_v1"), "--to", "onnx", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "resnet18_v1-0000.params are missing" in r.stderr and "--weights" in r.stderr
    assert not (tmp_path / "m.onnx").exists()
    r = cli("inspect", lone, "--weights", tmp_path / "nope.params")
    assert r.exit_code == 2 and "no such parameters file" in r.stderr
    # with --weights it is whole again
    r = cli("inspect", lone, "--weights", mxnet_models / "resnet18_v1-0000.params", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["format"] == "mxnet"
    # the .params named instead of the symbol: the symbol beside it is the graph; a lone one is exit 2
    r = cli("inspect", mxnet_models / "lenet-0003.params", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["signature"]["outputs"][0]["name"] == "softmax"
    shutil.copy(mxnet_models / "lenet-0003.params", tmp_path)
    r = cli("convert", tmp_path / "lenet-0003.params", *_input("lenet"), "--to", "onnx", "-o", tmp_path / "l.onnx")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "their graph lenet-symbol.json is not beside them" in r.stderr
    assert not (tmp_path / "l.onnx").exists()


def test_op_the_exporter_cannot_convert_is_exit_3_naming_it(cli, mxnet_models, tmp_path):
    out = tmp_path / "erf.onnx"
    r = cli("convert", mxnet_models / "erfnet-symbol.json", *_input("erfnet"), "--to", "onnx", "-o", out)
    assert r.exit_code == 3
    assert len(r.stderr.strip().splitlines()) == 1
    assert "mx.onnx cannot convert the MXNet op erf" in r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # MXNet itself runs it: inspect and the runner are fine
    r = cli("inspect", mxnet_models / "erfnet-symbol.json", *_input("erfnet"), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["signature"]["outputs"][0]["shape"] == ["batch", 4, 6, 6]


def test_missing_toolchain_is_exit_3_naming_the_install_command(cli, mxnet_models, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "no-toolchains"))
    r = cli("convert", mxnet_models / "lenet-symbol.json", *_input("lenet"), "--to", "onnx", "-o", tmp_path / "l.onnx")
    assert r.exit_code == 3
    assert r.stderr.strip() == ("modelport: error: toolchain 'mxnet' is not installed; "
                                "install it with: modelport toolchain install mxnet")
    assert not (tmp_path / "l.onnx").exists()


def test_bad_mxnet_inputs_are_one_line_errors(cli, mxnet_models, tmp_path):
    sym = mxnet_models / "lenet-symbol.json"
    # no input shapes: a symbol keeps none
    r = cli("convert", sym, "--to", "onnx", "-o", tmp_path / "a.onnx")
    assert r.exit_code == 2 and "give them with --input data:" in r.stderr
    # shapes that do not fit the graph
    r = cli("convert", sym, "--input", "data:1x3x28x28:float32", "--to", "onnx", "-o", tmp_path / "b.onnx")
    assert r.exit_code == 2 and "do not fit the model" in r.stderr, r.stderr
    # parameters of another network
    r = cli("inspect", sym, "--weights", mxnet_models / "resnet18_v1-0000.params")
    assert r.exit_code == 2 and "does not fit lenet-symbol.json" in r.stderr
    # a truncated symbol, a corrupt params file
    cut = tmp_path / "cut-symbol.json"
    cut.write_bytes(sym.read_bytes()[:400])
    shutil.copy(mxnet_models / "lenet-0003.params", tmp_path / "cut-0000.params")
    bad = tmp_path / "bad-symbol.json"
    shutil.copy(sym, bad)
    (tmp_path / "bad-0000.params").write_bytes(b"\x00" * 64)
    for path, words in ((cut, "MXNet cannot load the symbol"), (bad, "MXNet cannot load the parameters")):
        r = cli("inspect", path)
        assert r.exit_code == 2, r.stderr
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / n).exists() for n in ("a.onnx", "b.onnx"))
    # the driver survives bad requests: a good model still runs in the same process
    r = cli("inspect", sym, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["format"] == "mxnet"


def test_a_json_that_is_no_mxnet_symbol_is_not_taken_for_one(cli, tmp_path):
    other = tmp_path / "model-symbol.json"
    other.write_text('{"model_type": "bert", "nodes": []}')
    r = cli("inspect", other)
    assert r.exit_code == 3 and "unknown model format" in r.stderr
