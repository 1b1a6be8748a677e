"""ONNX -> PyTorch through modelport's convert pipeline: Keras -> ONNX -> torch, ONNX -> torch,
ONNX -> torch -> torch.export (.pt2), each verified by the pipeline and checked again here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import modelport as api
from modelport import to_torch
from modelport.errors import UnsupportedError
from modelport.formats import detect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo  # noqa: E402

pytestmark = pytest.mark.slow


def _ort(path: str | Path, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory) -> Path:
    """The zoo CNN exported to ONNX (dynamic batch) through the pipeline."""
    d = tmp_path_factory.mktemp("cnn")
    cnn = zoo.write_cnn(d / "src")
    path = d / "cnn.onnx"
    api.convert(cnn.spec, "onnx", path, weights=cnn.safetensors, input_specs=cnn.inputs)
    return path


def test_keras_to_torch_keeps_test_accuracy(tmp_path):
    import zoo_tf

    keras_path = zoo_tf.cnn_keras()
    out = tmp_path / "digits_torch"
    report = api.convert(keras_path, "torch", out)
    assert report.ok and report.route == ("tf2onnx", "modelport onnx2torch")
    assert report.parity is not None and report.parity.ok
    assert detect(str(out)) == "torch"
    assert [s.src_format for s in report.artifact.lineage] == ["keras", "onnx"]

    import keras

    _, _, x_test, y_test = zoo_tf.digits()
    keras_pred = np.asarray(keras.models.load_model(keras_path)(x_test)).argmax(1)
    net = to_torch.load(out)
    with torch.no_grad():
        torch_pred = net(torch.from_numpy(x_test)).numpy().argmax(1)
    keras_acc, torch_acc = (keras_pred == y_test).mean(), (torch_pred == y_test).mean()
    assert keras_acc > 0.8 and torch_acc == keras_acc
    assert (torch_pred == keras_pred).all()


def test_onnx_to_torch_default_output(cnn_onnx):
    report = api.convert(cnn_onnx, "torch")
    out = cnn_onnx.parent / "cnn_torch"
    assert report.ok and report.route == ("modelport onnx2torch",) and Path(report.artifact.path) == out
    assert report.parity.ok and len(report.parity.runs) == 2  # two batch sizes
    assert max(o.max_rel for r in report.parity.runs for o in r.outputs) <= 1e-4
    assert report.artifact.signature.inputs[0].shape == ("batch", 3, 32, 32)
    x = np.random.default_rng(5).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with api.load(out) as runner:
        got = next(iter(runner.run({"x": x}).values()))
    assert _rel_err(got, _ort(cnn_onnx, {"x": x})[0]) <= 1e-4
    assert "import modelport" not in (out / "model.py").read_text()


def test_onnx_to_torch_export(cnn_onnx, tmp_path):
    out = tmp_path / "cnn.pt2"
    report = api.convert(cnn_onnx, "torch-export", out)
    assert report.ok and report.route == ("modelport onnx2torch", "torch.export")
    assert report.parity.ok and out.is_file() and detect(str(out)) == "torch-export"
    assert report.artifact.lineage[-1].verified is True
    assert "named Dims" in report.artifact.lineage[-1].detail
    program = torch.export.load(str(out))
    for batch in (1, 6):  # the batch Dim stays dynamic in the exported program
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        got = program.module()(torch.from_numpy(x)).detach().numpy()
        assert _rel_err(got, _ort(cnn_onnx, {"x": x})[0]) <= 1e-4


def test_unsupported_ops_listed_and_nothing_written(tmp_path):
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18, "com.example" : 1]>
        g (float[N, 4] x) => (float[N, 4] y) {
            a = Relu(x)
            b = com.example.Mystery(a)
            y = com.example.Riddle(b)
        }""")
    model.graph.node[1].name, model.graph.node[2].name = "first_odd_node", "second_odd_node"
    src = tmp_path / "odd.onnx"
    onnx.save(model, src)
    out = tmp_path / "odd_torch"
    with pytest.raises(UnsupportedError) as info:
        api.convert(src, "torch", out)
    message = str(info.value)
    assert "2 unsupported node(s)" in message and "first_odd_node" in message and "second_odd_node" in message
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["odd.onnx"]


def test_torch_export_takes_the_bounds_torch_export_suggests(tmp_path):
    """A position table bounds the sequence: a plain Dim("seq") is refused, Dim("seq", max=16) is not."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    nodes = [helper.make_node("Shape", ["x"], ["seq_len"], start=1, end=2),
             helper.make_node("Slice", ["table", "zero", "seq_len", "zero"], ["pos"]),
             helper.make_node("Add", ["x", "pos"], ["y"])]
    graph = helper.make_graph(
        nodes, "positions", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([0], np.int64), "zero")])
    src = tmp_path / "positions.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), src)
    report = api.convert(src, "torch-export", tmp_path / "positions.pt2")
    assert report.parity.ok and "bounds torch.export suggests seq<=16" in report.artifact.lineage[-1].detail
    module = torch.export.load(str(tmp_path / "positions.pt2")).module()
    for batch, seq in [(1, 3), (4, 16)]:
        x = np.random.default_rng(seq).standard_normal((batch, seq, 4)).astype(np.float32)
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), x + table[:seq], rtol=1e-6)
