"""Whole-input Slices dropped before onnx2tf (modelport.convert.noop_slice).

The model here is Magika's pattern (tf2onnx's Keras Conv1D): a 2-D input reshaped, unsqueezed and
transposed to [N, C, W, 1], a Conv with a (5, 1) kernel, then ``Slice(starts=0, ends=[max, max, max, 1],
axes=[0, 1, 2, 3])``, which keeps everything, and a Squeeze. onnx2tf 1.29.24 converts that Slice on the
channels-last tensor with the ONNX axes and cuts the channels to 1: the SavedModel returned [1, 1] for
ONNX's [1, 12] before the Slice was dropped.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.convert.noop_slice import drop_noop_slices

_MAX = 2**31 - 1


def _conv_slice(batch: int | str = 1, ends: list[int] | None = None, steps: list[int] | None = None):
    """x [batch, 128] -> [batch, 16, 8] -> [.., 1] -> [batch, 8, 16, 1] -> Conv -> Slice -> Squeeze -> max -> [batch, 12]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((12, 8, 5, 1)) * 0.3).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1, 16, 8], np.int64), "shape"),
        numpy_helper.from_array(np.array([3], np.int64), "ax3"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.zeros(4, np.int64), "starts"),
        numpy_helper.from_array(np.array(ends or [_MAX, _MAX, _MAX, 1], np.int64), "ends"),
        numpy_helper.from_array(np.arange(4, dtype=np.int64), "axes"),
    ]
    slice_inputs = ["c", "starts", "ends", "axes"]
    if steps is not None:
        inits.append(numpy_helper.from_array(np.array(steps, np.int64), "steps"))
        slice_inputs.append("steps")
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "ax3"], ["u"]),
        helper.make_node("Transpose", ["u"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Conv", ["t", "w"], ["c"], kernel_shape=[5, 1]),
        helper.make_node("Slice", slice_inputs, ["s"], name="whole"),
        helper.make_node("Squeeze", ["s", "ax3"], ["q"]),
        helper.make_node("GlobalMaxPool", ["q"], ["g"]),
        helper.make_node("Squeeze", ["g", "ax2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "conv_slice", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _ort(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("batch", [1, "batch"])
def test_whole_slice_is_dropped_and_the_graph_computes_the_same(batch):
    model = _conv_slice(batch)
    dropped, names = drop_noop_slices(model)
    assert names == ["whole"]
    assert [n.op_type for n in dropped.graph.node].count("Slice") == 0
    assert [n.op_type for n in model.graph.node].count("Slice") == 1  # the caller's model is left as it was
    onnx.checker.check_model(dropped, full_check=True)
    x = np.random.default_rng(1).standard_normal((2 if batch == "batch" else 1, 128)).astype(np.float32)
    np.testing.assert_array_equal(_ort(dropped, x), _ort(model, x))


@pytest.mark.parametrize(("ends", "steps"), [
    ([_MAX, _MAX, 11, 1], None),  # cuts the width (12 -> 11)
    ([_MAX, 6, _MAX, 1], None),  # cuts the channels
    ([_MAX, _MAX, _MAX, 1], [1, 1, 2, 1]),  # every other column
    ([_MAX, _MAX, -1, 1], None),  # drops the last column
])
def test_a_slice_that_cuts_stays(ends, steps):
    model = _conv_slice(ends=ends, steps=steps)
    same, names = drop_noop_slices(model)
    assert names == [] and same is model


def test_a_slice_that_is_a_graph_output_stays():
    model = _conv_slice()
    model.graph.output.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    _, names = drop_noop_slices(model)
    assert names == []


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, "batch"])
def test_conv_then_whole_slice_converts_to_savedmodel(tmp_path, batch):
    pytest.importorskip("onnx2tf")
    from modelport.convert.run import convert
    from modelport.formats import open_runner

    src = tmp_path / "conv_slice.onnx"
    onnx.save(_conv_slice(batch), str(src))
    out = tmp_path / "sm"
    report = convert(str(src), "savedmodel", out)
    assert report.ok and report.parity.ok
    assert "1 Slice(s) keeping their whole input removed (an Identity): whole" in report.artifact.lineage[-1].detail
    x = np.random.default_rng(2).standard_normal((1, 128)).astype(np.float32)
    with open_runner(out, "savedmodel") as sm:
        (got,) = sm.run({"x": x}).values()
    assert got.shape == (1, 12)
    np.testing.assert_allclose(got, _ort(_conv_slice(batch), x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_magika_converts_to_savedmodel_on_its_inputs(cli, tmp_path):
    """Magika (corpus, issue 11): its logits matched onnxruntime at max abs 0.92 (another top-1) with the Slice."""
    import corpus

    cache = Path(os.environ.get("MODELPORT_TEST_CORPUS") or Path(tempfile.gettempdir()) / "modelport-test-corpus")
    try:
        path = corpus.fetch("magika", cache)
    except corpus.CorpusUnavailable as exc:
        pytest.skip(f"corpus unavailable: {exc}")
    npz = corpus.write_inputs("magika", tmp_path / "inputs.npz")
    specs = [a for s in corpus.BY_ID["magika"].specs() for a in ("--input", s)]
    out = tmp_path / "magika_sm"
    r = cli("convert", path, "--to", "savedmodel", "-o", out, *specs, "--inputs", npz, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["parity"]["inputs_source"].endswith("inputs.npz")
    assert "Conv_0/strided_slice_2" in report["artifact"]["lineage"][-1]["detail"]
