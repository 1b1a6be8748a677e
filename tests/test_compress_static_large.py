"""Static int8 (QDQ) of models above the external-data threshold (issue 11, "Large models"), proven small.

``compress --quantize static`` on a model whose weights exceed protobuf's limit calibrates with onnxruntime's own
calibrator on the model without its weights (its session reads them from their files) and runs onnxruntime's
QDQQuantizer on stand-ins holding each weight channel's min and max; the int8 weights are written a block at a time.
The claim is that this is onnxruntime's ``quantize_static`` result, bit for bit: the tests lower the threshold to
64 KiB, make every float weight above 1000 bytes a stand-in and read it in 1000-byte blocks, and compare with
onnxruntime's quantize_static run in memory on the same model and calibration data (the options modelport passes:
QDQ, int8 activations asymmetric, int8 weights symmetric).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_compress import _export, _train, digits  # noqa: F401  (digits: the session fixture)
from test_large_models import THRESHOLD, WIDTH, _mlp, _one_line, _same_model, ort_run


@pytest.fixture
def lowered(monkeypatch):
    """Large from 64 KiB; float weights above 1000 bytes are stand-ins, read and written in 1000-byte blocks."""
    from modelport.compress import large as big

    monkeypatch.setenv("MODELPORT_EXTERNAL_DATA_THRESHOLD", str(THRESHOLD))
    monkeypatch.setattr(big, "_SMALL_BYTES", 1000)
    monkeypatch.setattr(big, "_BLOCK_BYTES", 1000)


def _external(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data",
              size_threshold=64)  # shape tensors inline: onnxruntime reads a Reshape's shape only from the protobuf
    return path


def _ort_static(src: Path, dst: Path, feeds: dict[str, np.ndarray], *, method: str = "minmax", per_channel: bool = True,
                exclude=()) -> Path:
    """onnxruntime's quantize_static in memory (weights embedded), with the options modelport passes it."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from modelport.compress import quantize as quant

    dst.parent.mkdir(parents=True, exist_ok=True)
    embedded = dst.with_name("embedded.onnx")
    onnx.save(onnx.load(str(src)), str(embedded))
    with quant._quiet():
        quantize_static(str(embedded), str(dst), quant._reader(quant.batches(feeds, 32)), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=sorted(exclude),
                        calibrate_method=getattr(CalibrationMethod, quant.CALIBRATION_METHODS[method]),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return dst


def _dq_weights(path: Path) -> dict[str, int | None]:
    """Quantized weight -> the axis of its DequantizeLinear (None: per tensor)."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8:
            out[n.input[0]] = next((a.i for a in n.attribute if a.name == "axis"), None)
    return out


# --------------------------------------------------------------------------- the same model as onnxruntime's


@pytest.mark.parametrize(("method", "per_channel"), [("minmax", True), ("minmax", False), ("entropy", True),
                                                     ("percentile", True)])
def test_chunked_static_is_onnxruntimes_quantize_static(tmp_path, lowered, method, per_channel):
    from modelport.compress import large as big

    src = _mlp(tmp_path / "src" / "mlp.onnx", width=100)
    feeds = {"x": np.random.default_rng(1).standard_normal((64, 100)).astype(np.float32)}  # equal chunks: histograms need them
    from modelport.compress import quantize as quant

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ranges = big.calibrate(src, quant.batches(feeds, 32), scratch, method=method)
    assert not (scratch / "calibration.onnx").exists()  # the augmented model goes once its session is made
    out = tmp_path / "q" / "mlp.onnx"
    out.parent.mkdir()
    count, note = big.quantize_static(src, out, ranges, per_channel=per_channel)
    assert count == 5 and note is None  # three MatMul weights, and the Adds' biases as onnxruntime quantizes them
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlp.onnx", "mlp.onnx.data"]
    ref = _ort_static(src, tmp_path / "ref" / "mlp.onnx", feeds, method=method, per_channel=per_channel)
    assert _same_model(out, ref) == 27  # graph, names, scales, zero points and every int8 value
    axes = _dq_weights(out)
    assert {axes[f"w{i}_quantized"] for i in range(3)} == ({1} if per_channel else {None})
    x = np.random.default_rng(3).standard_normal((4, 100)).astype(np.float32)
    np.testing.assert_array_equal(ort_run(out, x), ort_run(ref, x))
    assert 0 < np.abs(ort_run(out, x) - ort_run(src, x)).max() < 0.2  # quantized: close, not equal


def test_embedding_table_quantized_per_tensor_as_onnxruntime_does(tmp_path, lowered):
    """A language model's shape: Gather from an embedding table (onnxruntime quantizes it as an activation:
    asymmetric, per tensor), then a MatMul; token ids as calibration data."""
    from onnx import TensorProto, helper

    from modelport.compress import large as big
    from modelport.compress import quantize as quant

    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((300, 32)).astype(np.float32), "embed")
    w = numpy_helper.from_array((rng.standard_normal((32, 64)) / 6).astype(np.float32), "proj")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embed", "ids"], ["h"], name="embedding"),
         helper.make_node("MatMul", ["h", "proj"], ["logits"], name="lm_head")], "lm",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8, 64])], [table, w])
    src = _external(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                    tmp_path / "src" / "lm.onnx")
    feeds = {"ids": rng.integers(0, 300, (64, 8), dtype=np.int64)}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "q" / "lm.onnx"
    out.parent.mkdir()
    count, _ = big.quantize_static(src, out, big.calibrate(src, quant.batches(feeds, 32), scratch))
    assert count == 2
    ref = _ort_static(src, tmp_path / "ref" / "lm.onnx", feeds)
    assert _same_model(out, ref) == 8  # every tensor bit-identical: the two weights and the activation parameters
    model = onnx.load(str(out))
    zp = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["embed_zero_point"]
    assert zp.dtype == np.int8 and zp.ndim == 0  # per tensor, asymmetric (its zero point need not be 0)
    assert _dq_weights(out) == {"embed_quantized": None, "proj_quantized": 1}


def test_conv_and_gemm_of_a_trained_cnn_through_the_cli(tmp_path, lowered, digits, cli):  # noqa: F811
    """A digits CNN (Conv, Gemm with bias: per-channel axes 0, int32 biases) exported by torch.onnx, then stored as
    external data: ``modelport compress --quantize static`` writes onnxruntime's model and keeps its accuracy."""
    import torch
    from torch import nn

    xtr, ytr, xte, yte = digits

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1 = nn.Conv2d(1, 8, 3, padding=1)
            self.fc1 = nn.Linear(8 * 8 * 8, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(torch.relu(self.c1(x)).flatten(1))))

    (tmp_path / "export").mkdir()
    exported = _export(_train(DigitsCNN(), xtr, ytr, epochs=4, lr=3e-3), torch.from_numpy(xtr[:2]),
                       tmp_path / "export" / "cnn.onnx", ["x"])
    src = _external(onnx.load(exported), tmp_path / "src" / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", x=xtr[:96])
    np.savez(tmp_path / "eval.npz", x=xte, labels=yte)
    out = tmp_path / "q" / "cnn.int8.onnx"
    res = cli("compress", src, "--quantize", "static", "--calibration", tmp_path / "calib.npz", "--eval",
              tmp_path / "eval.npz", "-o", out, "--json", "--runs", "0")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert any("pre-processing skipped" in n and "memory-mapped" in n for n in report["notes"]), report["notes"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["cnn.int8.onnx", "cnn.int8.onnx.data"]
    assert report["before"]["metric"] > 0.85 and report["after"]["metric"] >= report["before"]["metric"] - 0.02
    assert report["after"]["file_bytes"] < 0.4 * report["before"]["file_bytes"]
    ref = _ort_static(src, tmp_path / "ref" / "cnn.onnx", {"x": xtr[:96]})
    _same_model(out, ref)  # the calibration session is the calibrator's: the same activation ranges, to the bit
    axes = _dq_weights(out)
    ops = {n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node}
    assert {"Conv", "Gemm", "QuantizeLinear", "DequantizeLinear"} <= ops
    assert sorted(axes.values()) == [0, 0, 0], axes  # Conv [O, I, kh, kw] and both Gemm (transB) weights, per row
    biases = [t.name for t in onnx.load(str(out)).graph.initializer
              if t.data_type == onnx.TensorProto.INT32 and t.name.endswith("bias_quantized")]
    assert len(biases) == 3, biases  # int32, scaled by input scale x weight scale
    np.testing.assert_array_equal(ort_run(out, xte[:8]), ort_run(ref, xte[:8]))


# --------------------------------------------------------------------------- accuracy control, bad input


def test_accuracy_control_leaves_the_outlier_layer_float(tmp_path, lowered, digits, cli, monkeypatch):  # noqa: F811
    """fc1 carries a huge weight on an always-zero pixel: int8 collapses unless it stays float; the budget is met by
    keeping it, its float weight copied from the source's file."""
    import torch
    from torch import nn

    monkeypatch.setenv("MODELPORT_EXTERNAL_DATA_THRESHOLD", str(16 * 1024))  # the MLP's 28 KiB of weights are large

    xtr, ytr, xte, yte = digits
    flat_tr, flat_te = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    dead = np.flatnonzero((flat_tr.max(0) == 0) & (flat_te.max(0) == 0))
    torch.manual_seed(0)
    model = _train(nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10)), flat_tr, ytr, epochs=25, lr=3e-3)
    with torch.no_grad():
        model[0].weight[:, dead[0]] = 1000.0 * model[0].weight.abs().max()
    (tmp_path / "export").mkdir()
    exported = _export(model, torch.from_numpy(flat_tr[:2]), tmp_path / "export" / "mlp.onnx", ["x"])
    src = _external(onnx.load(exported), tmp_path / "src" / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", x=flat_tr[:128])
    np.savez(tmp_path / "eval.npz", x=flat_te, labels=yte)
    args = ("compress", src, "--quantize", "static", "--calibration", tmp_path / "calib.npz", "--eval",
            tmp_path / "eval.npz", "--json", "--runs", "0")
    plain = json.loads(cli(*args, "-o", tmp_path / "plain" / "mlp.onnx").stdout)
    assert plain["before"]["metric"] > 0.9 and plain["before"]["metric"] - plain["after"]["metric"] > 0.01
    out = tmp_path / "controlled" / "mlp.onnx"
    res = cli(*args, "--max-drop", "0.01", "-o", out)
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert any("memory-mapped" in n for n in report["notes"]), report["notes"]
    assert report["ok"] is True and report["before"]["metric"] - report["after"]["metric"] <= 0.01
    graph = onnx.load(str(src), load_external_data=False).graph
    fc1 = next(n.name for n in graph.node if n.op_type in ("Gemm", "MatMul") and "0.weight" in "".join(n.input))
    assert report["kept_float"] == [fc1]
    quantized = _dq_weights(out)
    assert not any("0.weight" in q for q in quantized) and any("2.weight" in q for q in quantized)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    source = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(src)).graph.initializer}
    w = next(k for k in source if "0.weight" in k)
    assert weights[w].tobytes() == source[w].tobytes()  # the float weight as it was, not a stand-in
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlp.onnx", "mlp.onnx.data"]


def test_bad_calibration_is_one_line_and_writes_nothing(tmp_path, lowered, cli):
    src = _mlp(tmp_path / "src" / "mlp.onnx")
    rng = np.random.default_rng(0)
    cases = {"names.npz": ({"input": rng.standard_normal((8, WIDTH)).astype(np.float32)}, "missing inputs ['x']"),
             "shape.npz": ({"x": rng.standard_normal((8, WIDTH - 1)).astype(np.float32)}, f"the model wants batchx{WIDTH}"),
             "dtype.npz": ({"x": (rng.standard_normal((8, WIDTH)) > 0)}, "dtype bool")}
    calib = tmp_path / "calib"
    calib.mkdir()
    for name, (arrays, says) in cases.items():
        np.savez(calib / name, **arrays)
        res = cli("compress", src, "--quantize", "static", "--calibration", calib / name, "-o", tmp_path / "out" / "q.onnx")
        assert res.exit_code == 2, (name, res.stderr)
        _one_line(res.stderr, says)
    data = src.with_name("mlp.onnx.data")
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    np.savez(calib / "good.npz", x=rng.standard_normal((8, WIDTH)).astype(np.float32))
    res = cli("compress", src, "--quantize", "static", "--calibration", calib / "good.npz", "-o", tmp_path / "out" / "q.onnx")
    assert res.exit_code == 2, res.stderr
    _one_line(res.stderr, "mlp.onnx.data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "src"]  # nothing half-written, no scratch left


def test_a_model_below_opset_10_is_refused_naming_the_fix(tmp_path, lowered, cli):
    model = onnx.load(str(_mlp(tmp_path / "build" / "mlp.onnx")))
    model.opset_import[0].version = 9
    src = _external(model, tmp_path / "src" / "mlp.onnx")
    shutil.rmtree(tmp_path / "build")
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, WIDTH), np.float32))
    res = cli("compress", src, "--quantize", "static", "--calibration", tmp_path / "calib.npz", "-o", tmp_path / "q.onnx")
    assert res.exit_code == 3, res.stderr
    _one_line(res.stderr, "opset >= 10", "adapt --opset 13")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "src"]
