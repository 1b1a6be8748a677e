"""ONNX LSTM / GRU become nn.LSTM / nn.GRU where the attributes allow (checked against
onnxruntime at two batch sizes and sequence lengths), and an explicit loop otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from modelport import to_torch


def _model(kind: str, *, dirs: int, layout: int, lbr: int = 1, with_state: bool = True,
           activations: list[str] | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    gates, hs, inp = (4 if kind == "LSTM" else 3), 5, 3
    w = rng.normal(0, 0.5, (dirs, gates * hs, inp)).astype(np.float32)
    r = rng.normal(0, 0.5, (dirs, gates * hs, hs)).astype(np.float32)
    b = rng.normal(0, 0.5, (dirs, 2 * gates * hs)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "rnn.W"), numpy_helper.from_array(r, "rnn.R"),
             numpy_helper.from_array(b, "rnn.B")]
    xs = ["batch", "seq", inp] if layout else ["seq", "batch", inp]
    st = ["batch", dirs, hs] if layout else [dirs, "batch", hs]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)]
    names = ["x", "rnn.W", "rnn.R", "rnn.B", ""]
    if with_state:
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, st))
        names.append("h0")
        if kind == "LSTM":
            inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, st))
            names.append("c0")
    outs = ["y", "y_h"] + (["y_c"] if kind == "LSTM" else [])
    attrs = {"hidden_size": hs, "direction": "bidirectional" if dirs == 2 else "forward", "layout": layout}
    if kind == "GRU":
        attrs["linear_before_reset"] = lbr
    if activations:
        attrs["activations"] = activations
    node = helper.make_node(kind, names, outs, name="rnn", **attrs)
    out_vis = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
    graph = helper.make_graph([node], "g", inputs, out_vis, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


CASES = [
    ("LSTM", dict(dirs=2, layout=0), True),
    ("LSTM", dict(dirs=1, layout=1), True),
    ("LSTM", dict(dirs=1, layout=0, with_state=False), True),
    ("GRU", dict(dirs=2, layout=0), True),
    ("GRU", dict(dirs=1, layout=1, with_state=False), True),
    ("GRU", dict(dirs=1, layout=0, lbr=0), False),  # torch's GRU resets after the matmul
    ("LSTM", dict(dirs=1, layout=0, activations=["Sigmoid", "Relu", "Tanh"]), False),
]


@pytest.mark.parametrize(("kind", "kw", "layer"), CASES)
def test_rnn_as_layer_or_loop(kind, kw, layer, tmp_path):
    model = _model(kind, **kw)
    to_torch.convert(model, tmp_path)
    src = (tmp_path / "model.py").read_text()
    assert (f"nn.{kind}(" in src) == layer
    net = to_torch.load(tmp_path)
    names = [i.name for i in model.graph.input]
    if kw["layout"]:  # onnxruntime has no batch-first recurrent kernels: onnx's reference runs them
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(model)
    else:
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    dirs, layout = kw["dirs"], kw["layout"]
    for batch, seq in [(2, 4), (3, 7)]:
        feeds = {"x": rng.standard_normal((batch, seq, 3) if layout else (seq, batch, 3)).astype(np.float32)}
        for s in names[1:]:
            feeds[s] = rng.standard_normal((batch, dirs, 5) if layout else (dirs, batch, 5)).astype(np.float32)
        want = ref.run(None, feeds)
        with torch.no_grad():
            got = net(*(torch.from_numpy(feeds[n]) for n in names))
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-5)
    if layer:  # the layer's weights are trainable parameters
        net.train()
        sum(o.sum() for o in net(*(torch.from_numpy(feeds[n]) for n in names))).backward()
        assert all(p.grad is not None for p in net.parameters())
