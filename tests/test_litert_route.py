"""The TFLite edge's second route: litert-torch on modelport's generated PyTorch module (the `litert` toolchain).

Models are built here with torch and exported to ONNX on the fly: an LSTM whose state (h0, c0)
comes in as graph inputs, with a dynamic sequence dim and h0 squashed by a Tanh before the LSTM, which
onnx2tf fails on (``initial_state ... not compatible with cell.state_size``: it transposes h0 as a
feature map; a state fed to the LSTM through data movement only keeps its shape), and the zoo's small CNN, which
onnx2tf converts. Each .tflite is also run here with ai_edge_litert's interpreter against the
eager torch module, which does not pass through modelport. The toolchain is installed once into
the shared test cache (tests/zoo_toolchains.py's directory); the tests that need it skip, saying
so, only when it cannot be downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo
import zoo_toolchains

from modelport.cli.app import main

pytest.importorskip("onnx2tf")
pytestmark = pytest.mark.slow  # TensorFlow's and litert-torch's converters (seconds each)

_INSTALLED: dict[str, object] = {}


def _litert(monkeypatch):
    """The `litert` toolchain in the shared test cache (built on first use); skips only when offline."""
    from modelport import toolchains
    from modelport.toolchains import ToolchainInstallError

    zoo_toolchains.use_shared_cache(monkeypatch)
    if "litert" not in _INSTALLED:
        try:
            _INSTALLED["litert"] = toolchains.install("litert")
        except ToolchainInstallError as exc:
            if not any(h in str(exc).lower() for h in zoo_toolchains.NETWORK_HINTS):
                raise
            _INSTALLED["litert"] = exc
    if isinstance(_INSTALLED["litert"], Exception):
        pytest.skip(f"the litert toolchain cannot be installed without network here: {_INSTALLED['litert']}")
    return toolchains.require("litert")


class LSTMWithState(torch.nn.Module):
    """A one-layer LSTM whose initial state is given (streaming models export it so)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x, h0, c0):
        y, (h, c) = self.lstm(x, (torch.tanh(h0), c0))
        return self.head(y), h, c


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    torch.manual_seed(0)
    net = LSTMWithState().eval()
    path = tmp_path_factory.mktemp("lstm") / "lstm_state.onnx"
    args = (torch.randn(1, 5, 8), torch.randn(1, 1, 16), torch.randn(1, 1, 16))
    zoo.onnx_export(net, args, str(path), input_names=["x", "h0", "c0"], output_names=["y", "h", "c"],
                    dynamo=False, opset_version=17, dynamic_axes={"x": {1: "seq"}, "y": {1: "seq"}})
    return net, path


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    d = tmp_path_factory.mktemp("cnn")
    cnn = zoo.write_cnn(d)
    net = zoo.cnn_eval(cnn)
    path = d / "cnn.onnx"
    zoo.onnx_export(net, (torch.randn(1, 3, 32, 32),), str(path), input_names=["x"], output_names=["logits"],
                    dynamo=False, opset_version=17)
    return net, path


def _run_tflite(path: Path, feeds: list[np.ndarray]) -> list[np.ndarray]:
    """The .tflite run with ai_edge_litert directly (inputs in signature order, outputs by name order)."""
    from ai_edge_litert.interpreter import Interpreter

    from modelport.quiet import native_output

    with native_output():
        interp = Interpreter(model_path=str(path))
        runner = interp.get_signature_runner()
        names = list(interp.get_signature_list()["serving_default"]["inputs"])
        out = runner(**dict(zip(names, feeds)))
    return [out[k] for k in sorted(out, key=lambda k: int(k.rsplit("_", 1)[-1]) if k[-1].isdigit() else k)]


def _convert(capsys, *args) -> tuple[int, dict | None, str]:
    rc = main(["convert", *map(str, args), "--json"])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def _step(report: dict) -> dict:
    return report["artifact"]["lineage"][-1]


def test_lstm_state_falls_back_to_litert_at_the_given_inputs(tmp_path, monkeypatch, capsys, lstm):
    """onnx2tf fails on LSTM state inputs; auto keeps litert-torch's .tflite, traced at the --inputs shapes."""
    _litert(monkeypatch)
    net, src = lstm
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, 7, 8), dtype=np.float32),  # seq 7: not the export's 5
             "h0": rng.standard_normal((1, 1, 16), dtype=np.float32), "c0": rng.standard_normal((1, 1, 16), dtype=np.float32)}
    np.savez(tmp_path / "feeds.npz", **feeds)
    out = tmp_path / "lstm.tflite"
    rc, report, err = _convert(capsys, src, "--to", "tflite", "-o", out, "--inputs", tmp_path / "feeds.npz")
    assert rc == 0, err
    step = _step(report)
    assert step["tool"] == "litert-torch" and report["ok"] is True
    assert "onnx2tf failed" in step["detail"] and "litert-torch verified" in step["detail"]
    assert "x:1x7x8" in step["detail"]  # the user's shapes, not the export's
    assert any(w.startswith("TFLite route onnx2tf failed") and "LSTM" in w for w in report["warnings"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feeds.npz", "lstm.tflite"]  # no temp files beside it
    # the .tflite against eager torch, outside modelport
    got = _run_tflite(out, [feeds["x"], feeds["h0"], feeds["c0"]])
    with torch.no_grad():
        want = [t.numpy() for t in net(*(torch.from_numpy(feeds[k]) for k in ("x", "h0", "c0")))]
    assert [g.shape for g in got] == [w.shape for w in want]
    assert max(float(np.abs(g - w).max()) for g, w in zip(got, want)) < 1e-4


def test_onnx2tf_kept_when_it_verifies(tmp_path, monkeypatch, capsys, cnn_onnx):
    """A CNN onnx2tf converts: it is verified and kept; litert-torch is never run."""
    _litert(monkeypatch)
    _, src = cnn_onnx
    rc, report, err = _convert(capsys, src, "--to", "tflite", "-o", tmp_path / "cnn.tflite")
    assert rc == 0, err
    step = _step(report)
    assert step["tool"] == "onnx2tf" and report["ok"] is True
    assert "tflite routes (auto): onnx2tf verified" in step["detail"] and "litert-torch" not in step["detail"]


def test_explicit_litert_on_a_cnn_module(tmp_path, monkeypatch, capsys, cnn_onnx):
    """--tflite-route litert from a PyTorch module file: litert-torch converts the user's module itself."""
    _litert(monkeypatch)
    net, src = cnn_onnx
    out = tmp_path / "cnn.tflite"
    d = src.parent
    rc, report, err = _convert(capsys, f"{d / 'cnn.py'}:SmallCNN", "--weights", d / "cnn.safetensors", "--to", "tflite",
                               "-o", out, "--tflite-route", "litert", "--input", "x:1x3x32x32:float32")
    assert rc == 0, err
    step = _step(report)
    assert step["tool"] == "litert-torch" and "onnx2tf" not in step["detail"]
    assert "the source module cnn.py:SmallCNN" in step["detail"] and "x:1x3x32x32" in step["detail"]
    assert dict(map(tuple, step["versions"]))["litert-torch"] == "0.10.0"
    assert report["ok"] is True
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32), dtype=np.float32)
    (got,) = _run_tflite(out, [x])
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and float(np.abs(got - want).max()) < 1e-4


def test_unknown_route_is_bad_usage(tmp_path, capsys, cnn_onnx):
    _, src = cnn_onnx
    rc = main(["convert", str(src), "--to", "tflite", "-o", str(tmp_path / "m.tflite"), "--tflite-route", "tflite2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "unknown TFLite route 'tflite2'" in err and "onnx2tf, litert, auto" in err
    assert list(tmp_path.iterdir()) == []


def test_litert_without_its_toolchain(tmp_path, monkeypatch, capsys, cnn_onnx):
    """Asked for by name: exit 3 naming the install command; nothing written."""
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MODELPORT_TOOLCHAIN_LOCKS", raising=False)
    _, src = cnn_onnx
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["convert", str(src), "--to", "tflite", "-o", str(out / "m.tflite"), "--tflite-route", "litert"])
    err = capsys.readouterr().err.strip()
    assert rc == 3 and len(err.splitlines()) == 1
    assert "toolchain 'litert' is not installed" in err and "modelport toolchain install litert" in err
    assert list(out.iterdir()) == []


def test_auto_without_toolchain_names_the_install(tmp_path, monkeypatch, capsys, lstm):
    """auto with no litert toolchain: onnx2tf's own failure (exit 3), with the skipped route and its install command."""
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MODELPORT_TOOLCHAIN_LOCKS", raising=False)
    _, src = lstm
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["convert", str(src), "--to", "tflite", "-o", str(out / "m.tflite"), "--input", "x:1x5x8:float32"])
    err = capsys.readouterr().err.strip()
    assert rc == 3 and len(err.splitlines()) == 1
    assert "onnx2tf failed" in err and "litert-torch skipped" in err and "modelport toolchain install litert" in err
    assert list(out.iterdir()) == []
