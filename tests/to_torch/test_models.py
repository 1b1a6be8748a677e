"""Real models: exported from PyTorch with the dynamo exporter, converted back, compared
with onnxruntime at two batch sizes / sequence lengths, trained and re-exported."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import zoo

from modelport import to_torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow


def _ort(model: onnx.ModelProto, feeds: dict) -> list:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def _export(module, args, dynamic_shapes, names, path) -> onnx.ModelProto:
    prog = zoo.onnx_export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                             input_names=names, opset_version=18)
    prog.save(str(path))
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    torch.manual_seed(0)
    net = SmallCNN().eval()
    with torch.no_grad():  # non-trivial statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    batch = torch.export.Dim("batch", max=64)
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    return _export(net, (torch.randn(2, 3, 32, 32),), ({0: batch},), ["x"], path)


def test_cnn_from_torch_export(cnn_onnx, tmp_path):
    to_torch.convert(cnn_onnx, tmp_path)
    src = (tmp_path / "model.py").read_text()
    assert "nn.Conv2d(" in src and "nn.Linear(" in src
    has_bn = any(n.op_type == "BatchNormalization" for n in cnn_onnx.graph.node)
    assert ("nn.BatchNorm2d(" in src) == has_bn  # the exporter may fold BN into the conv
    net = to_torch.load(tmp_path)
    for b in (1, 7):
        x = np.random.default_rng(b).normal(size=(b, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            out = net(torch.from_numpy(x)).numpy()
        assert _rel_err(out, _ort(cnn_onnx, {"x": x})[0]) <= 1e-4
    net.train()
    loss = net(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    params = [p for p in net.parameters() if p.is_floating_point()]
    assert params and all(p.grad is not None for p in params)


def _transformer(kind: str):
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=128, vocab_size=1000)
        model = transformers.BertModel(cfg)
    else:
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=1000,
                                      n_positions=128)
        model = transformers.GPT2Model(cfg)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            extra = {"use_cache": False} if kind == "gpt2" else {}
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          return_dict=False, **extra)[0]

    return Wrapper().eval()


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_transformer_from_dynamo_export(kind, tmp_path):
    wrapper = _transformer(kind)
    b, s = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=128)
    ids = torch.randint(0, 1000, (2, 16))
    model = _export(wrapper, (ids, torch.ones_like(ids)),
                    {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}},
                    ["input_ids", "attention_mask"], tmp_path / f"{kind}.onnx")
    out_dir = tmp_path / "torch"
    out_dir.mkdir()
    result = to_torch.convert(model, out_dir)
    assert result.n_params > 100_000
    src = (out_dir / "model.py").read_text()
    assert "nn.Embedding(1000, 64)" in src and "nn.LayerNorm(64" in src and "nn.Linear(64" in src
    net = to_torch.load(out_dir)
    rng = np.random.default_rng(0)
    for batch, seq in [(2, 16), (3, 7)]:
        ids = rng.integers(0, 1000, (batch, seq)).astype(np.int64)
        mask = np.ones((batch, seq), np.int64)
        mask[0, -2:] = 0
        ref = _ort(model, {"input_ids": ids, "attention_mask": mask})[0]
        with torch.no_grad():
            out = net(torch.from_numpy(ids), torch.from_numpy(mask))
        assert _rel_err(out.numpy(), ref) <= 1e-4, (batch, seq)
    net.train()
    net(torch.from_numpy(ids), torch.from_numpy(mask)).square().mean().backward()
    params = [p for p in net.parameters() if p.is_floating_point()]
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert params and not missing, missing
