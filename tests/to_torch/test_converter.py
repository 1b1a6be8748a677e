"""Unit tests of the ONNX -> PyTorch converter on small graphs written in ONNX text."""

from __future__ import annotations

import ast
import json

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
import torch

import zoo

from modelport import to_torch
from modelport.to_torch import registry


def _ort(model: onnx.ModelProto, feeds: dict) -> list:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _cnn_onnx() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {
        "conv1.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.2,
        "conv1.bias": rng.normal(size=(8,)).astype(np.float32),
        "bn.weight": rng.uniform(0.5, 1.5, size=(8,)).astype(np.float32),
        "bn.bias": rng.normal(size=(8,)).astype(np.float32),
        "bn.running_mean": rng.normal(size=(8,)).astype(np.float32),
        "bn.running_var": rng.uniform(0.5, 2, size=(8,)).astype(np.float32),
        "fc.weight": rng.normal(size=(10, 8)).astype(np.float32) * 0.3,
        "fc.bias": rng.normal(size=(10,)).astype(np.float32),
    }
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        cnn (float[N, 3, H, W] image) => (float[N, 10] logits) {
            c = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (image, conv1_weight, conv1_bias)
            b = BatchNormalization <epsilon = 0.001> (c, bn_weight, bn_bias, bn_running_mean, bn_running_var)
            r = Relu (b)
            p = GlobalAveragePool (r)
            f = Flatten (p)
            logits = Gemm <transB = 1> (f, fc_weight, fc_bias)
        }
    """)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in inits.items())
    dotted = {k.replace(".", "_"): k for k in inits}
    for i, node in enumerate(model.graph.node):
        node.input[:] = [dotted.get(x, x) for x in node.input]
        node.name = f"/{node.op_type.lower()}_{i}"
    onnx.checker.check_model(model)
    return model


def test_generated_code_is_readable_torch(tmp_path):
    model = _cnn_onnx()
    result = to_torch.convert(model, tmp_path)
    src = (tmp_path / "model.py").read_text()
    assert "class Model(nn.Module):" in src
    assert "nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1)" in src
    assert "nn.BatchNorm2d(8, eps=0.001" in src
    assert "nn.Linear(8, 10)" in src
    for node in model.graph.node:
        assert f"# {node.name} ({node.op_type})" in src
    imports = {a.name.split(".")[0] for n in ast.walk(ast.parse(src))
               if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    roots = {n.module.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    assert roots <= {"torch"} and imports <= {"math", "torch", "nn", "functional"}
    assert "import modelport" not in src and "from modelport" not in src
    lines = src.splitlines()
    assert "image" in lines[result.value_to_line["c"] - 1].split("=")[1]
    meta = json.loads((tmp_path / "modelport_torch.json").read_text())
    assert meta["inputs"][0]["shape"] == ["N", 3, "H", "W"]
    assert meta["outputs"][0]["name"] == "logits" and meta["opset"] == 17
    assert len(meta["source_sha256"]) == 64
    assert result.n_params == sum(v.size for v in (onnx.numpy_helper.to_array(i)
                                                  for i in model.graph.initializer)) + 1
    net = to_torch.load(tmp_path)
    assert set(net.state_dict()) >= {"conv1.weight", "bn.running_var", "fc.bias"}


def test_matches_onnxruntime_at_other_sizes(tmp_path):
    model = _cnn_onnx()
    to_torch.convert(model, tmp_path)
    net = to_torch.load(tmp_path)
    for shape in [(1, 3, 16, 16), (5, 3, 9, 13)]:
        x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
        (ref,) = _ort(model, {"image": x})
        with torch.no_grad():
            out = net(image=torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_training_reaches_every_float_parameter(tmp_path):
    to_torch.convert(_cnn_onnx(), tmp_path)
    net = to_torch.load(tmp_path).train()
    params = [p for p in net.parameters() if p.is_floating_point()]
    assert params and all(p.requires_grad for p in params)
    loss = net(torch.randn(4, 3, 8, 8)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in params)


def test_roundtrip_through_torch_onnx_export(tmp_path):
    model = _cnn_onnx()
    to_torch.convert(model, tmp_path)
    net = to_torch.load(tmp_path)
    x = torch.randn(2, 3, 12, 12)
    batch = torch.export.Dim("batch", max=64)
    prog = zoo.onnx_export(net, (x,), dynamo=True, dynamic_shapes=({0: batch},),
                             input_names=["image"])
    back = prog.model_proto
    for n in (2, 6):
        xb = np.random.default_rng(n).normal(size=(n, 3, 12, 12)).astype(np.float32)
        np.testing.assert_allclose(_ort(back, {"image": xb})[0], _ort(model, {"image": xb})[0],
                                   rtol=1e-4, atol=1e-5)


def test_dynamic_shapes_stay_dynamic(tmp_path):
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[B, S, 8] x) => (float[B, S, 2, 4] y, int64[3] s) {
            s = Shape (x)
            b = Gather <axis = 0> (s, zero)
            q = Gather <axis = 0> (s, one)
            bb = Unsqueeze (b, zero1)
            qq = Unsqueeze (q, zero1)
            shp = Concat <axis = 0> (bb, qq, tail)
            y = Reshape (x, shp)
        }
    """)
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"),
        onnx.numpy_helper.from_array(np.array(1, np.int64), "one"),
        onnx.numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        onnx.numpy_helper.from_array(np.array([2, 4], np.int64), "tail")])
    to_torch.convert(model, tmp_path)
    src = (tmp_path / "model.py").read_text()
    assert ".reshape(" in src and "x.shape" in src
    net = to_torch.load(tmp_path)
    for shape in [(1, 3, 8), (4, 11, 8)]:
        y, s = net(torch.randn(*shape))
        assert tuple(y.shape) == shape[:2] + (2, 4)
        assert s.tolist() == list(shape)


def test_check_reports_all_unsupported_and_convert_writes_nothing(tmp_path):
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18, "custom.domain" : 1]>
        g (float[N] x) => (float[N] y) {
            a = custom.domain.Frobnicate (x)
            b = Relu (a)
            y = custom.domain.Twiddle (b)
        }
    """)
    problems = to_torch.check(model)
    assert [(p.op_type, p.domain, p.opset) for p in problems] == [
        ("Frobnicate", "custom.domain", 1), ("Twiddle", "custom.domain", 1)]
    assert all(p.reason for p in problems)
    with pytest.raises(to_torch.UnsupportedOpsError) as err:
        to_torch.convert(model, tmp_path)
    assert len(err.value.unsupported) == 2
    assert list(tmp_path.iterdir()) == []


def test_registry_picks_newest_version_not_above_opset():
    fn, why = registry.dispatch("", "Softmax", 11)
    assert fn.__name__ == "softmax_1" and why == ""
    assert registry.dispatch("", "Softmax", 13)[0].__name__ == "softmax_13"
    assert registry.dispatch("", "Softmax", 21)[0].__name__ == "softmax_13"
    assert registry.dispatch("", "ReduceMean", 17)[0].__name__ == "reducemean_1"
    assert registry.dispatch("", "ReduceMean", 18)[0].__name__ == "reducemean_18"
    fn, why = registry.dispatch("", "NoSuchOp", 18)
    assert fn is None and "NoSuchOp" in why
    assert ("", "Softmax", 13) in to_torch.supported_ops()


@pytest.mark.parametrize("opset,expected", [(11, "coerced"), (13, "axis")])
def test_softmax_semantics_follow_opset(tmp_path, opset, expected):
    model = onnx.parser.parse_model(f"""
        <ir_version: 8, opset_import: ["" : {opset}]>
        g (float[2, 3, 4] x) => (float[2, 3, 4] y) {{ y = Softmax <axis = 1> (x) }}
    """)
    to_torch.convert(model, tmp_path)
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    with torch.no_grad():
        out = to_torch.load(tmp_path)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, _ort(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
