"""Honest parity verdicts: non-finite values, top-1 on decided rows, exact integers; on real ONNX models too."""

from __future__ import annotations

import json

import numpy as np
import pytest

import zoo
from modelport.verify.parity import compare_output


def _add_model(path, offset: np.ndarray) -> str:
    return zoo.add_offset_model(path, offset)


def test_inf_where_the_reference_is_finite_fails_the_cli(cli, tmp_path):
    same = _add_model(tmp_path / "same.onnx", np.zeros(4))
    bad = _add_model(tmp_path / "inf.onnx", np.array([0, 0, np.inf, 0]))
    res = cli("verify", same, bad)
    assert res.exit_code == 1
    assert "inf where the reference is finite" in res.stdout + res.stderr
    ok = cli("verify", same, _add_model(tmp_path / "same2.onnx", np.zeros(4)))
    assert ok.exit_code == 0 and "parity ok" in ok.stdout


def test_non_finite_mismatches_fail_with_their_reason():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inf = compare_output("y", x, x + np.array([0, 0, np.inf, 0], np.float32), None, None)
    assert not inf.ok and inf.max_abs == float("inf") and "inf where the reference is finite at 2 position(s)" in inf.reason
    signs = compare_output("y", np.array([np.inf, 1.0]), np.array([-np.inf, 1.0]), None, None)
    assert not signs.ok and "inf of the opposite sign at 1 position(s) (first [0])" in signs.reason
    moved = compare_output("y", np.array([np.nan, 1.0]), np.array([1.0, np.nan]), None, None)
    assert not moved.ok and "NaN where the reference is not NaN" in moved.reason and "no NaN where" in moved.reason
    lost = compare_output("y", np.array([np.inf, 1.0]), np.array([3.0e38, 1.0]), None, None)
    assert not lost.ok and "finite where the reference is inf" in lost.reason


def test_matching_non_finite_values_pass_and_the_finite_part_is_measured():
    ref = np.array([np.nan, np.inf, -np.inf, 1.0, 2.0])
    got = np.array([np.nan, np.inf, -np.inf, 1.0, 2.0 + 1e-9])
    res = compare_output("y", ref, got, None, None)
    assert res.ok and res.max_abs == pytest.approx(1e-9, rel=1e-3) and res.reason == ""


def test_top1_fails_on_decided_rows_and_reports_near_ties():
    ref = np.array([[1.0, 0.99999, 0.0], [3.0, 0.0, 1.0]], np.float32)
    tie = np.array([[0.99999, 1.0, 0.0], [3.0, 0.0, 1.0]], np.float32)
    res = compare_output("scores", ref, tie, 1e-4, 1e-4)  # elementwise within tolerance, argmax flips on the tie
    assert res.ok and res.top1 == 0.5 and "1 near-tie row(s)" in res.reason
    # row 2: margin 2 > atol 1.8, every element within 1.8 of the reference, yet the argmax moved
    flipped = np.array([[1.0, 0.99999, 0.0], [1.3, 1.7, 1.0]], np.float32)
    res = compare_output("scores", ref, flipped, 0.0, 1.8)
    assert res.max_abs <= 1.8 and not res.ok and "top-1 differs on 1 of 2 row(s)" in res.reason


def test_integer_outputs_must_match_exactly_whatever_the_tolerance():
    res = compare_output("ids", np.array([1, 2, 3]), np.array([1, 2, 4]), rtol=1.0, atol=5.0)
    assert not res.ok and res.max_abs == 1.0 and "1 of 3 integer values differ" in res.reason
    assert compare_output("ids", np.array([True, False]), np.array([True, False]), None, None).ok


def test_a_plain_tolerance_failure_states_its_figures():
    res = compare_output("y", np.array([1.0, 2.0], np.float32), np.array([1.0, 2.1], np.float32), None, None)
    assert not res.ok and res.max_abs == pytest.approx(0.1, rel=1e-5) and res.max_rel == pytest.approx(0.05, rel=1e-4)


def test_a_failed_verify_keeps_its_inputs_and_prints_a_command_that_reproduces_it(cli, tmp_path):
    same = _add_model(tmp_path / "same.onnx", np.zeros(4))
    bad = _add_model(tmp_path / "inf.onnx", np.array([0, 0, np.inf, 0]))
    res = cli("verify", same, bad, "--dim", "batch=3")
    assert res.exit_code == 1
    kept = tmp_path / "inf.parity-failure.npz"
    assert kept.is_file() and f"kept in {kept}" in res.stdout
    with np.load(kept) as data:
        assert sorted(data.files) == ["candidate/y", "reference/y", "x"]
        assert np.isinf(data["candidate/y"][:, 2]).all() and np.isfinite(data["reference/y"]).all()
        assert np.array_equal(data["reference/y"], data["x"])  # y = x + 0
    command = res.stdout.split("reproduce: ", 1)[1].split()
    assert command[:2] == ["modelport", "verify"] and "--inputs" in command
    again = cli(*command[1:])  # the printed command, run as printed
    assert again.exit_code == 1 and "inf where the reference is finite" in again.stdout
    assert cli("verify", same, same, "--report-dir", tmp_path / "r").exit_code == 0
    assert not (tmp_path / "r").exists()  # nothing kept when parity holds


def test_per_output_tolerances(cli, tmp_path):
    same = _add_model(tmp_path / "same.onnx", np.zeros(4))
    near = _add_model(tmp_path / "near.onnx", np.array([0, 0, 1e-3, 0]))
    assert cli("verify", same, near).exit_code == 1
    assert cli("verify", same, near, "--tol", "y=0,2e-3").exit_code == 0
    assert cli("verify", same, near, "--tol", "y=0,1e-4").exit_code == 1
    unknown = cli("verify", same, near, "--tol", "logits=0,1")
    assert unknown.exit_code == 2 and "['logits']" in unknown.stderr and "['y']" in unknown.stderr
    for bad in ("y=1e-3", "y=a,b", "=1,1", "y=-1,0"):
        res = cli("verify", same, near, "--tol", bad)
        assert res.exit_code == 2 and "--tol" in res.stderr and len(res.stderr.strip().splitlines()) == 1, bad


def test_a_failed_conversion_keeps_the_failing_inputs_beside_the_requested_output(cnn_onnx, tmp_path):
    from modelport.convert.run import convert
    from modelport.errors import CheckFailedError

    out = tmp_path / "out" / "cnn_torch"
    with pytest.raises(CheckFailedError) as info:
        convert(cnn_onnx, "torch", out, rtol=0.0, atol=-1.0)  # a tolerance no result can meet
    kept = tmp_path / "out" / "cnn_torch.parity-failure.npz"
    message = str(info.value)
    assert f"kept in {kept}" in message and "reproduce: modelport convert" in message and "--inputs" in message
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cnn_torch.parity-failure.npz"]  # no model
    with np.load(kept) as data:
        assert any(k.startswith("reference/") for k in data.files) and any(k.startswith("candidate/") for k in data.files)
    assert info.value.report.failure_file == str(kept)


def test_the_reference_evaluator_arbitrates_which_model_is_off(cli, tmp_path):
    same = _add_model(tmp_path / "same.onnx", np.zeros(4))
    bad = _add_model(tmp_path / "inf.onnx", np.array([0, 0, np.inf, 0]))
    res = cli("verify", same, bad, "--arbiter", "reference", "--json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    judged = doc["arbiter"]
    assert judged["onnx_side"] == "a" and judged["a_ok"] is True and judged["b_ok"] is False
    assert judged["verdict"].startswith("B is off") and judged["a_worst_rel"] < 1e-6
    agree = cli("verify", same, _add_model(tmp_path / "same2.onnx", np.zeros(4)), "--arbiter", "reference")
    assert agree.exit_code == 0 and "both agree with the ONNX reference evaluator" in agree.stdout
    wrong = cli("verify", same, bad, "--arbiter", "ort")
    assert wrong.exit_code == 2 and "'reference'" in wrong.stderr


def test_the_arbiter_needs_an_onnx_side(cli, cnn, tmp_path):
    import zoo

    res = cli("verify", cnn.spec, cnn.spec, "--weights", cnn.safetensors, "--b-weights", cnn.safetensors,
              "--input", zoo.CNN_INPUT, "--arbiter", "reference")
    assert res.exit_code == 2 and "needs an ONNX model on one side" in res.stderr


def _labelled(cnn_onnx: str, path, n: int = 32) -> str:
    """Random inputs for the zoo CNN labelled with its own top-1 (the source scores 1.0)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(cnn_onnx, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((n, 3, 32, 32)).astype(np.float32)
    labels = sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(-1)
    np.savez(path, **{sess.get_inputs()[0].name: x, "labels": labels})
    return str(path)


def test_convert_measures_the_task_metric_and_can_be_judged_on_it(cli, cnn_onnx, tmp_path):
    data = _labelled(cnn_onnx, tmp_path / "eval.npz")
    res = cli("convert", cnn_onnx, "--to", "torch", "-o", tmp_path / "t1", "--eval", data, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["metric"]["metric"] == "top-1" and doc["metric"]["before"] == 1.0 and doc["metric"]["after"] == 1.0
    assert doc["metric"]["samples"] == 32 and doc["ok"] is True
    # elementwise parity cannot pass (a negative atol), the task budget decides: judged on the task, it passes
    judged = cli("convert", cnn_onnx, "--to", "torch", "-o", tmp_path / "t2", "--eval", data, "--max-drop", "0.01",
                 "--atol", "-1", "--rtol", "0", "--json")
    assert judged.exit_code == 0, judged.stderr
    doc = json.loads(judged.stdout)
    assert doc["parity"]["ok"] is False and doc["ok"] is True and doc["metric"]["max_drop"] == 0.01
    plain = cli("convert", cnn_onnx, "--to", "torch", "-o", tmp_path / "t3", "--atol", "-1", "--rtol", "0")
    assert plain.exit_code == 1 and not (tmp_path / "t3").exists()


def test_a_metric_of_your_own(cli, cnn_onnx, tmp_path):
    data = _labelled(cnn_onnx, tmp_path / "eval.npz")
    (tmp_path / "m.py").write_text(
        "import numpy as np\n"
        "def top2(outputs, labels):\n"
        "    scores = next(iter(outputs.values()))\n"
        "    best2 = np.argsort(scores, axis=-1)[:, -2:]\n"
        "    return float(np.mean([l in row for l, row in zip(labels, best2)]))\n"
        "def broken(outputs, labels):\n"
        "    raise ValueError('no')\n")
    res = cli("convert", cnn_onnx, "--to", "torch", "-o", tmp_path / "t", "--eval", data, "--metric", f"{tmp_path / 'm.py'}:top2", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["metric"]["metric"] == "top2" and json.loads(res.stdout)["metric"]["after"] == 1.0
    for spec, why in ((f"{tmp_path / 'm.py'}:nope", "no function 'nope'"), (f"{tmp_path / 'missing.py'}:f", "no such metric file"),
                      ("m.txt", "expected path/file.py:function"), (f"{tmp_path / 'm.py'}:broken", "failed: ValueError")):
        bad = cli("convert", cnn_onnx, "--to", "torch", "-o", tmp_path / "x", "--eval", data, "--metric", spec)
        assert bad.exit_code == 2 and why in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, (spec, bad.stderr)
        assert not (tmp_path / "x").exists()
    no_data = cli("convert", cnn_onnx, "--to", "torch", "-o", tmp_path / "y", "--max-drop", "0.01")
    assert no_data.exit_code == 2 and "--eval" in no_data.stderr


def _mlp(path, scale: float = 1.0) -> str:
    """x[batch, 4] -> MatMul(W1) 'fc1' -> Relu 'act' -> MatMul(W2 * scale) 'fc2' -> y; fixed weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="act"),
         helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2 * np.float32(scale), "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return str(path)


def test_verify_localizes_and_reduces_a_divergence_from_the_cli(cli, tmp_path):
    a, b = _mlp(tmp_path / "a.onnx"), _mlp(tmp_path / "b.onnx", scale=1.5)
    res = cli("verify", a, b, "--localize", "--reduce", tmp_path / "small.onnx", "--report", tmp_path / "r.html", "--json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["localization"]["first_divergent"]["node"] == "fc2"
    assert [c["node"] for c in doc["localization"]["compared"] if c["ok"]][:2] == ["fc1", "act"]
    assert doc["reduced"]["nodes"] == ["fc2"] and (tmp_path / "small.onnx").is_file()
    rerun = cli("verify", tmp_path / "small.onnx", doc["reduced"]["b_path"], "--inputs", doc["reduced"]["inputs_path"])
    assert rerun.exit_code == 1  # the written piece still fails on its written inputs
    page = (tmp_path / "r.html").read_text()
    assert "fc2" in page and "FAIL" in page
    text = cli("verify", a, b, "--localize")
    assert "first divergence at node 'fc2' (MatMul)" in text.stdout
    agree = cli("verify", a, _mlp(tmp_path / "c.onnx"), "--localize")
    assert agree.exit_code == 0 and "nothing to localize" in agree.stdout


def test_a_failed_conversion_from_onnx_names_where_it_diverges(tmp_path):
    """convert's error says which node diverges first, found on the kept failing inputs."""
    from modelport.convert.run import convert
    from modelport.errors import CheckFailedError

    src = _mlp(tmp_path / "mlp.onnx")
    with pytest.raises(CheckFailedError) as info:
        convert(src, "torch", tmp_path / "mlp_torch", rtol=0.0, atol=-1.0)  # no output can pass: every node diverges
    assert "first divergence at node 'fc1' (MatMul)" in str(info.value)
