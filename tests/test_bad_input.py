"""Bad input across formats: a clear one-line error, the right exit code, nothing left behind.

Pickles are never unpickled: every pickle here carries a canary whose unpickling creates a
marker file (``test_canary_is_live`` proves it would), and each refusal asserts no marker.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo
from safetensors.torch import save_file


class Canary:
    """Unpickling this creates `marker` (through __reduce__), which is how we know a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class CanaryNet(torch.nn.Module):
    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.canary = Canary(marker)

    def forward(self, x):
        return self.linear(x)


def _fails_cleanly(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


@pytest.fixture
def out_dir(tmp_path) -> Path:
    """An empty output directory; each test asserts it is still empty (hidden temp dirs included)."""
    d = tmp_path / "out"
    d.mkdir()
    return d


def _empty(d: Path) -> bool:
    return sorted(os.listdir(d)) == []


# ----------------------------------------------------------------------------- unreadable models


def test_truncated_onnx(cli, cnn_onnx, tmp_path, out_dir):
    data = Path(cnn_onnx).read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    _fails_cleanly(cli("inspect", bad), 2, "truncated.onnx", "corrupt or truncated")
    _fails_cleanly(cli("convert", bad, "--to", "torch", "-o", out_dir / "m"), 2, "truncated")
    assert _empty(out_dir)


def test_corrupt_pt2_zip(cli, cnn_pt2, tmp_path, out_dir):
    data = Path(cnn_pt2).read_bytes()
    bad = tmp_path / "corrupt.pt2"
    bad.write_bytes(data[: len(data) // 2])
    _fails_cleanly(cli("convert", bad, "--to", "onnx", "-o", out_dir / "m.onnx"), 2, "corrupt.pt2", "corrupt")
    assert _empty(out_dir)


def test_pt2_with_mangled_member(cli, cnn_pt2, tmp_path, out_dir):
    """A well-formed zip that holds an ExportedProgram whose serialized program is garbage."""
    bad = tmp_path / "mangled.pt2"
    with zipfile.ZipFile(cnn_pt2) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith(".json") and "models/" in item.filename:
                data = b"{not json"
            dst.writestr(item, data)
    _fails_cleanly(cli("convert", bad, "--to", "onnx", "-o", out_dir / "m.onnx"), 2, "mangled.pt2")
    assert _empty(out_dir)


def test_directory_that_is_no_model(cli, tmp_path, out_dir):
    d = tmp_path / "notamodel"
    d.mkdir()
    (d / "readme.txt").write_text("hello")
    _fails_cleanly(cli("convert", d, "--to", "onnx", "-o", out_dir / "m.onnx"), 2, "directory is no model")
    assert _empty(out_dir)


def test_unknown_format(cli, tmp_path, out_dir):
    bad = tmp_path / "mystery.bin"
    bad.write_bytes(b"\x00MODELPORT?" + np.random.default_rng(0).bytes(4096))
    _fails_cleanly(cli("convert", bad, "--to", "onnx", "-o", out_dir / "m.onnx"), 3, "unknown model format")
    _fails_cleanly(cli("inspect", bad), 3, "unknown model format")
    assert _empty(out_dir)


def test_empty_file(cli, tmp_path, out_dir):
    bad = tmp_path / "empty.onnx"
    bad.write_bytes(b"")
    _fails_cleanly(cli("convert", bad, "--to", "torch", "-o", out_dir / "m"), 2, "empty")
    bad2 = tmp_path / "empty.pt2"
    bad2.write_bytes(b"")
    _fails_cleanly(cli("convert", bad2, "--to", "onnx", "-o", out_dir / "m.onnx"), 2, "empty")
    assert _empty(out_dir)


def test_missing_model_path(cli, tmp_path, out_dir):
    _fails_cleanly(cli("convert", tmp_path / "nope.onnx", "--to", "torch", "-o", out_dir / "m"), 2, "no such file")
    assert _empty(out_dir)


# ----------------------------------------------------------------------------- verification inputs


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"image": np.zeros((2, 3, 32, 32), np.float32)}, "missing inputs ['x']"),
        ({"x": np.zeros((2, 3, 32, 32), np.int64)}, "dtype int64"),
        ({"x": np.zeros((2, 3, 16, 16), np.float32)}, "shape 2x3x16x16"),
    ],
    ids=["wrong-name", "wrong-dtype", "wrong-shape"],
)
def test_verify_npz_that_does_not_fit(cli, cnn, cnn_onnx, tmp_path, arrays, fragment):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, **arrays)
    before = sorted(os.listdir(tmp_path))
    res = cli("verify", cnn.spec, cnn_onnx, "--weights", cnn.safetensors, "--input", zoo.CNN_INPUT.replace("1x", "batchx"),
              "--inputs", npz)
    _fails_cleanly(res, 2, "inputs.npz", fragment)
    assert sorted(os.listdir(tmp_path)) == before


def test_convert_npz_that_does_not_fit(cli, cnn, tmp_path, out_dir):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=np.zeros((2, 3, 16, 16), np.float32))
    res = cli("convert", cnn.spec, "--to", "onnx", "-o", out_dir / "m.onnx", "--weights", cnn.safetensors,
              "--input", zoo.CNN_INPUT, "--inputs", npz)
    _fails_cleanly(res, 2, "shape 2x3x16x16")
    assert _empty(out_dir)


# ----------------------------------------------------------------------------- pickles: refused, never unpickled


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "UNPICKLED"


@pytest.fixture
def plain_pickle(tmp_path, marker) -> Path:
    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"weight": Canary(marker)}, fh)
    return p


@pytest.fixture
def whole_module(tmp_path, marker) -> Path:
    p = tmp_path / "whole_module.pt"
    torch.save(CanaryNet(marker), p)
    return p


def test_canary_is_live(plain_pickle, whole_module, marker):
    """The marker really appears when these files are unpickled, so its absence below means something."""
    pickle.loads(plain_pickle.read_bytes())
    assert marker.exists()
    marker.unlink()
    torch.load(whole_module, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("which", ["plain_pickle", "whole_module"])
def test_pickle_as_model_is_refused_unread(which, request, cli, marker, out_dir):
    path = request.getfixturevalue(which)
    _fails_cleanly(cli("convert", path, "--to", "onnx", "-o", out_dir / "m.onnx"), 4, path.name, "unpickle")
    _fails_cleanly(cli("inspect", path), 4, "unpickle")
    assert not marker.exists()
    assert _empty(out_dir)


@pytest.mark.parametrize("which", ["plain_pickle", "whole_module"])
def test_pickle_as_weights_is_refused_unread(which, request, cli, cnn, marker, out_dir):
    path = request.getfixturevalue(which)
    res = cli("convert", cnn.spec, "--to", "onnx", "-o", out_dir / "m.onnx", "--weights", path, "--input", zoo.CNN_INPUT)
    _fails_cleanly(res, 4, path.name, "unpickle")
    assert not marker.exists()
    assert _empty(out_dir)


# ----------------------------------------------------------------------------- module specs and weights


def test_module_spec_file_missing(cli, tmp_path, out_dir):
    res = cli("convert", f"{tmp_path / 'nowhere.py'}:Net", "--to", "onnx", "-o", out_dir / "m.onnx", "--input", "x:1x4:float32")
    _fails_cleanly(res, 2, "nowhere.py", "no such module file")
    assert _empty(out_dir)


def test_module_spec_names_nothing(cli, cnn, out_dir):
    spec = cnn.spec.replace(":SmallCNN", ":BigCNN")
    res = cli("convert", spec, "--to", "onnx", "-o", out_dir / "m.onnx", "--input", zoo.CNN_INPUT)
    _fails_cleanly(res, 2, "BigCNN")
    assert _empty(out_dir)


def test_weights_that_do_not_fit(cli, cnn, tmp_path, out_dir):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}, str(wrong))
    res = cli("convert", cnn.spec, "--to", "onnx", "-o", out_dir / "m.onnx", "--weights", wrong, "--input", zoo.CNN_INPUT)
    _fails_cleanly(res, 2, "wrong.safetensors", "do not fit", "missing key(s): features.0.weight", "unexpected key(s): bias, weight")
    assert _empty(out_dir)


def test_weights_with_wrong_shapes(cli, cnn, tmp_path, out_dir):
    from safetensors.torch import load_file

    state = load_file(cnn.safetensors)
    state["head.weight"] = torch.zeros(5, 16)
    state["head.bias"] = torch.zeros(5)
    wrong = tmp_path / "five_classes.safetensors"
    save_file(state, str(wrong))
    res = cli("convert", cnn.spec, "--to", "onnx", "-o", out_dir / "m.onnx", "--weights", wrong, "--input", zoo.CNN_INPUT)
    _fails_cleanly(res, 2, "do not fit", "head.weight 5x16 vs 10x16")
    assert _empty(out_dir)


def test_corrupt_safetensors(cli, cnn, tmp_path, out_dir):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(Path(cnn.safetensors).read_bytes()[:100])
    res = cli("convert", cnn.spec, "--to", "onnx", "-o", out_dir / "m.onnx", "--weights", bad, "--input", zoo.CNN_INPUT)
    _fails_cleanly(res, 2, "cut.safetensors", "corrupt")
    assert _empty(out_dir)


# ----------------------------------------------------------------------------- missing extra, failed export


def _keras_layout_zip(path: Path) -> None:
    """The layout of a Keras 3 `.keras` archive (what detection reads); its content is never reached."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", '{"keras_version": "3.0.0"}')
        zf.writestr("config.json", '{"class_name": "Sequential", "config": {}}')
        zf.writestr("model.weights.h5", b"")


def test_missing_tf_extra_is_named(tmp_path):
    model = tmp_path / "model.keras"
    _keras_layout_zip(model)
    # A fresh interpreter where tensorflow and keras cannot be imported, as if the extra were absent.
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
        "from modelport.cli.app import main; sys.exit(main(sys.argv[1:]))"
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", code, "convert", str(model), "--to", "onnx", "-o", str(out_dir / "m.onnx")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 3, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("modelport: error: ")
    assert "modelport[tf]" in line and "tensorflow" in line
    assert _empty(out_dir)


def test_export_failure_names_each_strategy(cli, tmp_path, out_dir):
    model = zoo.write_unexportable_model(tmp_path / "m")
    res = cli("convert", model.spec, "--to", "onnx", "-o", out_dir / "m.onnx", "--input", model.inputs[0])
    _fails_cleanly(res, 3, "export failed", "dynamo exporter failed", "torchscript exporter failed")
    assert _empty(out_dir)


def test_state_dict_given_as_model(cli, cnn, out_dir):
    res = cli("convert", cnn.pt, "--to", "onnx", "-o", out_dir / "m.onnx")
    _fails_cleanly(res, 2, "cnn.pt", "state_dict, not a model", "file.py:Name")
    assert _empty(out_dir)
