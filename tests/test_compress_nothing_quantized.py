"""Quantizing a model that is already quantized, or has no weights to quantize, fails (exit 3) and writes nothing."""

from __future__ import annotations

import numpy as np
import pytest


def _save(model, path) -> str:
    import onnx

    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _mlp(path) -> str:
    """x[1,16] -> MatMul(w1) -> Add(b1) -> Relu -> MatMul(w2) -> y[1,10], constant weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (16, 64)), ("b1", (64,)), ("w2", (64, 10)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["h2"], name="bias1"),
             helper.make_node("Relu", ["h2"], ["h3"], name="relu1"),
             helper.make_node("MatMul", ["h3", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _relu(path) -> str:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _written(tmp_path, *keep: str) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)


def test_dynamic_twice_fails_already_quantized(tmp_path, cli):
    from modelport.compress.run import compress

    src = _mlp(tmp_path / "mlp.onnx")
    once = tmp_path / "mlp.int8.onnx"
    report = compress(src, once, quantize="dynamic", bench_runs=0)
    assert report.after.file_bytes < report.before.file_bytes

    again = tmp_path / "mlp.int8.int8.onnx"
    res = cli("compress", once, "-o", again, "--quantize", "dynamic", "--runs", "0")
    assert res.exit_code == 3, (res.stdout, res.stderr)
    assert "already quantized" in res.stderr
    assert "DynamicQuantizeLinear" in res.stderr and "MatMulInteger" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not again.exists()
    assert _written(tmp_path) == ["mlp.int8.onnx", "mlp.onnx"]


@pytest.mark.parametrize("mode", ["static", "int4"])
def test_other_modes_on_quantized_model_fail(tmp_path, cli, mode):
    from modelport.compress.run import compress

    src = _mlp(tmp_path / "mlp.onnx")
    once = tmp_path / "mlp.int8.onnx"
    compress(src, once, quantize="dynamic", bench_runs=0)
    args = ["compress", once, "-o", tmp_path / "out.onnx", "--quantize", mode, "--runs", "0"]
    if mode == "static":
        np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32))
        args += ["--calibration", tmp_path / "calib.npz"]
    res = cli(*args)
    assert res.exit_code == 3, (res.stdout, res.stderr)
    assert "already quantized" in res.stderr
    assert _written(tmp_path, "calib.npz") == ["mlp.int8.onnx", "mlp.onnx"]


def test_static_qdq_model_requantized_fails(tmp_path, cli):
    """A QDQ (QuantizeLinear/DequantizeLinear) model: static again would only stack more QDQ pairs."""
    from modelport.compress.run import compress

    src = _mlp(tmp_path / "mlp.onnx")
    calib = {"x": np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)}
    np.savez(tmp_path / "calib.npz", **calib)
    once = tmp_path / "mlp.qdq.onnx"
    compress(src, once, quantize="static", calibration=calib, bench_runs=0)
    res = cli("compress", once, "-o", tmp_path / "out.onnx", "--quantize", "static",
              "--calibration", tmp_path / "calib.npz", "--runs", "0")
    assert res.exit_code == 3, (res.stdout, res.stderr)
    assert "already quantized" in res.stderr and "DequantizeLinear" in res.stderr
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("mode", ["dynamic", "int4"])
def test_no_weights_fails(tmp_path, cli, mode):
    src = _relu(tmp_path / "relu.onnx")
    out = tmp_path / "out.onnx"
    res = cli("compress", src, "-o", out, "--quantize", mode, "--runs", "0")
    assert res.exit_code == 3, (res.stdout, res.stderr)
    assert f"no weights that {mode} quantizes" in res.stderr
    assert "with constant weights" in res.stderr
    assert "already quantized" not in res.stderr
    assert _written(tmp_path) == ["relu.onnx"]


def test_partly_quantizable_model_is_fine(tmp_path):
    """One MatMul with a constant weight, one between two activations: the first is quantized, no error."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from modelport.compress.run import compress

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Transpose", ["h"], ["ht"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["ht", "h"], ["y"], name="gram")]
    graph = helper.make_graph(nodes, "part", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 16])], [w])
    src = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "part.onnx")
    out = tmp_path / "part.int8.onnx"
    compress(src, out, quantize="dynamic", bench_runs=0)
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(out)).graph.node}
