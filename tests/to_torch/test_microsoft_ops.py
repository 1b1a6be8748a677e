"""ONNX Runtime contrib ops (com.microsoft) against onnxruntime itself."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import zoo

from modelport import to_torch

MS = "com.microsoft"
F32 = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, F32, s) for k, s in inputs],
        [helper.make_tensor_value_info(k, F32, None) for k in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                     helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return model


def _check(model, feeds, tmp_path, rtol=1e-5, atol=1e-5):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    to_torch.convert(model, tmp_path)
    module = to_torch.load(tmp_path)
    with torch.no_grad():
        got = module(*(torch.from_numpy(v) for v in feeds.values()))
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=rtol, atol=atol)
    return (tmp_path / "model.py").read_text()


def _rand(*shape, seed=0, scale=2.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def test_gelu(tmp_path):
    m = _model([helper.make_node("Gelu", ["x"], ["y"], domain=MS)], [("x", [2, 5, 8])], ["y"])
    _check(m, {"x": _rand(2, 5, 8)}, tmp_path)


def test_bias_gelu(tmp_path):
    m = _model([helper.make_node("BiasGelu", ["x", "b"], ["y"], domain=MS)], [("x", [2, 5, 8])], ["y"],
               [("b", _rand(8, seed=1))])
    _check(m, {"x": _rand(2, 5, 8)}, tmp_path)


@pytest.mark.parametrize("bias", [False, True])
def test_fast_gelu(tmp_path, bias):
    ins = ["x", "b"] if bias else ["x"]
    m = _model([helper.make_node("FastGelu", ins, ["y"], domain=MS)], [("x", [2, 5, 8])], ["y"],
               [("b", _rand(8, seed=1))] if bias else ())
    _check(m, {"x": _rand(2, 5, 8)}, tmp_path, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("beta,bias,sum_out", [(False, False, False), (True, False, False),
                                               (True, True, False), (True, True, True),
                                               (False, True, True)])
def test_skip_layer_norm(tmp_path, beta, bias, sum_out):
    inits = [("gamma", _rand(16, seed=2, scale=1.0))]
    ins = ["x", "skip", "gamma"]
    if beta or bias:
        ins.append("beta" if beta else "")
        if beta:
            inits.append(("beta", _rand(16, seed=3, scale=1.0)))
    if bias:
        ins.append("bias")
        inits.append(("bias", _rand(16, seed=4, scale=1.0)))
    outs = ["y", "", "", "s"] if sum_out else ["y"]
    node = helper.make_node("SkipLayerNormalization", ins, outs, domain=MS, epsilon=1e-6)
    m = _model([node], [("x", [2, 3, 16]), ("skip", [2, 3, 16])], [o for o in outs if o], inits)
    src = _check(m, {"x": _rand(2, 3, 16), "skip": _rand(2, 3, 16, seed=5)}, tmp_path)
    assert "F.layer_norm(" in src


def test_skip_layer_norm_refuses_statistics(tmp_path):
    node = helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma"], ["y", "mean"], domain=MS)
    m = _model([node], [("x", [2, 3, 16]), ("skip", [2, 3, 16])], ["y", "mean"],
               [("gamma", _rand(16, seed=2))])
    with pytest.raises(to_torch.UnsupportedOpsError, match="mean"):
        to_torch.convert(m, tmp_path)


@pytest.mark.parametrize("act,params", [("Relu", None), ("Tanh", None), ("Sigmoid", None),
                                        ("LeakyRelu", [0.2]), ("Clip", [-0.5, 0.7]),
                                        ("HardSigmoid", [0.3, 0.4]), (None, None)])
@pytest.mark.parametrize("z", [False, True])
def test_fused_conv(tmp_path, act, params, z):
    kw = {"pads": [1, 1, 1, 1], "strides": [1, 1], "kernel_shape": [3, 3]}
    if act:
        kw["activation"] = act
    if params:
        kw["activation_params"] = params
    ins = ["x", "w", "b"] + (["z"] if z else [])
    node = helper.make_node("FusedConv", ins, ["y"], domain=MS, **kw)
    inputs = [("x", [1, 3, 6, 6])] + ([("z", [1, 4, 6, 6])] if z else [])
    m = _model([node], inputs, ["y"], [("w", _rand(4, 3, 3, 3, seed=1, scale=0.3)),
                                       ("b", _rand(4, seed=2, scale=0.3))])
    feeds = {"x": _rand(1, 3, 6, 6)}
    if z:
        feeds["z"] = _rand(1, 4, 6, 6, seed=3)
    src = _check(m, feeds, tmp_path)
    assert "nn.Conv2d(3, 4, kernel_size=3, padding=1)" in src


def test_fused_conv_refuses_unknown_activation(tmp_path):
    node = helper.make_node("FusedConv", ["x", "w"], ["y"], domain=MS, activation="Softplus")
    m = _model([node], [("x", [1, 3, 6, 6])], ["y"], [("w", _rand(4, 3, 3, 3))])
    with pytest.raises(to_torch.UnsupportedOpsError, match="Softplus"):
        to_torch.convert(m, tmp_path)


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 32)
        self.ln = torch.nn.LayerNorm(32)

    def forward(self, x):
        return self.ln(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))


def test_ort_optimized_block_converts_and_verifies(tmp_path):
    from onnxruntime.transformers.optimizer import optimize_model

    from modelport.convert.run import convert

    src = tmp_path / "block.onnx"
    zoo.onnx_export(_Block().eval(), (torch.randn(2, 5, 32),), str(src), input_names=["x"],
                    output_names=["y"], dynamic_axes={"x": {0: "b", 1: "s"}}, opset_version=17,
                    dynamo=False)
    opt = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    opt_path = tmp_path / "block_opt.onnx"
    opt.save_model_to_file(str(opt_path))
    ms_ops = {n.op_type for n in onnx.load(str(opt_path)).graph.node if n.domain == MS}
    assert ms_ops & {"Gelu", "BiasGelu", "FastGelu"} and "SkipLayerNormalization" in ms_ops, ms_ops
    report = convert(str(opt_path), "torch", tmp_path / "out")
    assert report.ok
