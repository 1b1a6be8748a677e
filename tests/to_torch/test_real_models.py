"""Real models converted ONNX -> PyTorch and verified at two batch sizes (fp32 rel err <= 1e-4):
a tiny ViT from a transformers config, Keras MobileNetV2 through modelport's Keras -> ONNX
converter, and the round trip ONNX -> torch -> ONNX (torch.onnx dynamo export of the
generated module) for the zoo CNN and tiny BERT.

Keras ResNet50 takes over a minute through tf2onnx here, so it is measured by
benchmarks/onnx2torch_perf.py (--real-models) instead of these tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import modelport as api
from modelport import to_torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow

RTOL = 1e-4


def _ort(model: onnx.ModelProto | Path, feeds: dict) -> list[np.ndarray]:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _export(module, args, dynamic_shapes, names, path: Path) -> onnx.ModelProto:
    program = zoo.onnx_export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                input_names=names, opset_version=18)
    program.save(str(path))
    return onnx.load(str(path))


def _run(net, *arrays) -> np.ndarray:
    with torch.no_grad():
        return net(*(torch.from_numpy(a) for a in arrays)).numpy()


def test_tiny_vit(tmp_path):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=128, num_labels=10)
    vit = transformers.ViTForImageClassification(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit

        def forward(self, pixel_values):
            return self.vit(pixel_values=pixel_values, return_dict=False)[0]

    original = Logits().eval()
    batch = torch.export.Dim("batch", max=64)
    model = _export(original, (torch.randn(2, 3, 32, 32),), ({0: batch},), ["pixel_values"],
                    tmp_path / "vit.onnx")
    out = tmp_path / "vit_torch"
    out.mkdir()
    to_torch.convert(model, out)
    src = (out / "model.py").read_text()
    assert "nn.LayerNorm(64" in src and "nn.Linear(64" in src
    net = to_torch.load(out)
    rng = np.random.default_rng(0)
    for b in (2, 5):
        x = rng.standard_normal((b, 3, 32, 32)).astype(np.float32)
        got = _run(net, x)
        assert _rel_err(got, _ort(model, {"pixel_values": x})[0]) <= RTOL, b
        assert _rel_err(got, _run(original, x)) <= RTOL, b


def _he_init(model, rng: np.random.Generator) -> None:
    """He-normal kernels and non-trivial BatchNorm statistics: a randomly initialized deep
    Keras CNN otherwise collapses to an output that does not depend on its input."""
    import keras

    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            weights = layer.get_weights()
            k = weights[0]
            fan_in = k.shape[0] * k.shape[1] if isinstance(layer, keras.layers.DepthwiseConv2D) else int(np.prod(k.shape[:-1]))
            weights[0] = (rng.standard_normal(k.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            layer.set_weights(weights)
        elif isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.8, 1.2, n).astype(np.float32), rng.normal(0, 0.1, n).astype(np.float32),
                               rng.normal(0, 0.1, n).astype(np.float32), rng.uniform(0.5, 2.0, n).astype(np.float32)])


def test_keras_mobilenetv2(tmp_path):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(64, 64, 3), weights=None, classes=10,
                                           classifier_activation=None)
    rng = np.random.default_rng(0)
    _he_init(model, rng)
    model.save(tmp_path / "mobilenetv2.keras")
    out = tmp_path / "mobilenetv2_torch"
    report = api.convert(tmp_path / "mobilenetv2.keras", "torch", out)
    assert report.route == ("tf2onnx", "modelport onnx2torch")
    assert report.parity.ok and len(report.parity.runs) == 2  # the pipeline verified two batch sizes
    src = (out / "model.py").read_text()
    assert "nn.Conv2d(" in src and "groups=" in src  # depthwise convolutions stay layers
    net = to_torch.load(out)
    for b in (1, 4):
        x = rng.standard_normal((b, 64, 64, 3)).astype(np.float32)
        want = np.asarray(model(x))
        assert np.abs(want - want.mean(0)).max() > 1e-2 or b == 1  # the output depends on the input
        assert _rel_err(_run(net, x), want) <= RTOL, b


def _round_trip(model: onnx.ModelProto, out: Path, args: tuple, dynamic_shapes, names: list[str]) -> onnx.ModelProto:
    out.mkdir()
    to_torch.convert(model, out)
    net = to_torch.load(out)
    again = _export(net, args, dynamic_shapes, names, out.parent / "again.onnx")
    assert [i.name for i in again.graph.input] == names
    return again


def test_round_trip_cnn(tmp_path):
    cnn = zoo.write_cnn(tmp_path / "src")
    batch = torch.export.Dim("batch", max=64)
    example = (torch.randn(2, 3, 32, 32),)
    model = _export(zoo.cnn_eval(cnn), example, ({0: batch},), ["x"], tmp_path / "cnn.onnx")
    again = _round_trip(model, tmp_path / "cnn_torch", example, ({0: batch},), ["x"])
    rng = np.random.default_rng(1)
    for b in (1, 6):
        x = rng.standard_normal((b, 3, 32, 32)).astype(np.float32)
        assert _rel_err(_ort(again, {"x": x})[0], _ort(model, {"x": x})[0]) <= RTOL, b


def test_round_trip_bert(tmp_path):
    bert = zoo.load_module(zoo.write_bert(tmp_path / "src").spec).eval()
    b, s = torch.export.Dim("batch", max=64), torch.export.Dim("sequence", max=64)
    ids = torch.randint(0, 1000, (2, 16))
    example = (ids, torch.ones_like(ids))
    shapes = {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}}
    names = ["input_ids", "attention_mask"]
    model = _export(bert, example, shapes, names, tmp_path / "bert.onnx")
    again = _round_trip(model, tmp_path / "bert_torch", example, ({0: b, 1: s}, {0: b, 1: s}), names)
    rng = np.random.default_rng(2)
    for batch, seq in [(2, 16), (3, 9)]:
        ids = rng.integers(0, 1000, (batch, seq)).astype(np.int64)
        mask = np.ones((batch, seq), np.int64)
        mask[0, -3:] = 0
        feeds = {"input_ids": ids, "attention_mask": mask}
        want = _ort(model, feeds)[0]
        assert _rel_err(_ort(again, feeds)[0], want) <= RTOL, (batch, seq)
        with torch.no_grad():
            assert _rel_err(bert(torch.from_numpy(ids), torch.from_numpy(mask)).numpy(), want) <= RTOL
