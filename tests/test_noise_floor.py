"""Tolerances that know the noise: an ill-conditioned ONNX reference is judged against its own noise floor.

The model: y = f(x) * 1e-5 + (f(x) - g(x)), where f is a chain of Conv -> BatchNormalization -> Relu
on large activations and g the same chain with each BatchNormalization folded into its Conv. In exact
arithmetic y = 1e-5 f (max ~1e-2); in float32, f - g is rounding noise of ~1e-3, so every correct
implementation differs from onnxruntime by far more than rtol 1e-4 / atol 1e-5 allow, and
onnxruntime differs from itself (graph optimizations on vs off) by as much.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.verify.parity import NOISE_FACTOR, compare_output

DEPTH, CHANNELS = 5, 8


def _ill_conditioned(path, *, plant: int | None = None, seed: int = 0) -> str:
    """The model above; ``plant`` multiplies the weights of g's conv number ``plant`` by 1.5."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    nodes.append(helper.make_node("Mul", ["x", const("scale", 1000.0)], ["xs"]))
    convs, norms, cin = [], [], 3
    for i in range(DEPTH + 1):
        convs.append((rng.standard_normal((CHANNELS, cin, 3, 3)) / np.sqrt(cin * 9), rng.standard_normal(CHANNELS) * 0.1))
        cin = CHANNELS
        if i < DEPTH:  # scale, bias, mean, var
            norms.append(tuple(rng.uniform(lo, hi, CHANNELS) for lo, hi in ((0.5, 2), (-1, 1), (-1, 1), (0.5, 2))))
    cur = "xs"
    for i, (w, b) in enumerate(convs):  # f: Conv -> BatchNormalization -> Relu
        nodes.append(helper.make_node("Conv", [cur, const(f"f_w{i}", w), const(f"f_b{i}", b)], [f"f_c{i}"], pads=[1] * 4))
        cur = f"f_c{i}"
        if i < DEPTH:
            names = [const(f"bn{i}_{k}", a) for k, a in zip("sbmv", norms[i])]
            nodes.append(helper.make_node("BatchNormalization", [cur, *names], [f"f_n{i}"], epsilon=1e-5))
            nodes.append(helper.make_node("Relu", [f"f_n{i}"], [f"f_r{i}"]))
            cur = f"f_r{i}"
    f, cur = cur, "xs"
    for i, (w, b) in enumerate(convs):  # g: the same with W' = W * s / sqrt(v + eps), b' = (b - m) * s / sqrt(v + eps) + beta
        if i < DEPTH:
            s, beta, m, v = norms[i]
            k = s / np.sqrt(v + 1e-5)
            w, b = w * k[:, None, None, None], (b - m) * k + beta
        w = w * 1.5 if plant == i else w
        nodes.append(helper.make_node("Conv", [cur, const(f"g_w{i}", w), const(f"g_b{i}", b)], [f"g_c{i}"], pads=[1] * 4))
        cur = f"g_c{i}"
        if i < DEPTH:
            nodes.append(helper.make_node("Relu", [cur], [f"g_r{i}"]))
            cur = f"g_r{i}"
    nodes += [helper.make_node("Sub", [f, cur], ["d"]), helper.make_node("Mul", [f, const("tiny", 1e-5)], ["fs"]),
              helper.make_node("Add", ["fs", "d"], ["y"])]
    graph = helper.make_graph(nodes, "ill_conditioned",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CHANNELS, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def ill(tmp_path_factory) -> str:
    return _ill_conditioned(tmp_path_factory.mktemp("noise") / "ill.onnx")


@pytest.fixture(scope="module")
def converted(ill, tmp_path_factory):
    """modelport convert ill.onnx --to torch --json: (exit code, report, output dir)."""
    from modelport.cli.app import main

    out = tmp_path_factory.mktemp("noise_out") / "ill_torch"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["convert", ill, "--to", "torch", "-o", str(out), "--json"])
    return rc, json.loads(buf.getvalue()), out


def _sessions(path: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(onnxruntime optimized, unoptimized, onnx.reference) outputs, computed here independently."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        outs.append(ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])
    outs.append(ReferenceEvaluator(path).run(None, {"x": x})[0])
    return tuple(outs)


def test_the_model_is_ill_conditioned(ill):
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    opt, unopt, reference = _sessions(ill, x)
    scale = np.abs(opt).max()
    # onnxruntime differs from itself by far more than the default fp32 tolerance allows
    assert np.abs(opt - unopt).max() > 1e-5 + 1e-4 * scale
    assert np.abs(opt - reference).max() > 1e-5 + 1e-4 * scale


def test_convert_passes_on_the_noise_floor_and_reports_it(converted):
    rc, report, out = converted
    assert rc == 0 and report["ok"] is True and out.is_dir()
    outputs = [o for run in report["parity"]["runs"] for o in run["outputs"]]
    assert len(outputs) == 2  # two batch sizes
    for o in outputs:
        scale = o["max_abs"] / o["max_rel"]
        assert o["max_abs"] > o["atol"] + o["rtol"] * scale  # the plain tolerance alone would fail it
        assert o["noise_judged"] is True and o["noise_factor"] == NOISE_FACTOR
        assert o["noise_floor"] > 0 and o["max_abs"] <= NOISE_FACTOR * o["noise_floor"]
        assert o["noise_floor_rel"] == pytest.approx(o["noise_floor"] / scale)
        assert "onnxruntime optimized vs unoptimized" in o["noise_source"]


def test_verify_reports_the_floor_it_measured(ill, converted, cli, tmp_path):
    _, _, out = converted
    x = np.random.default_rng(11).standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    res = cli("verify", ill, out, "--inputs", tmp_path / "x.npz", "--json")
    assert res.exit_code == 0, res.stdout[-2000:]
    (o,) = json.loads(res.stdout)["runs"][0]["outputs"]
    opt, unopt, reference = _sessions(ill, x)
    expected = max(np.abs(opt - unopt).max(), np.abs(opt - reference).max())  # both variants measured: small model
    assert o["noise_floor"] == pytest.approx(float(expected), rel=1e-6)
    assert o["noise_source"] == "onnxruntime optimized vs unoptimized, onnxruntime vs onnx.reference"
    printed = cli("verify", ill, out, "--inputs", tmp_path / "x.npz")
    assert printed.exit_code == 0
    text = " ".join(printed.stdout.split())
    assert "judged against the reference's own noise floor" in text and "onnxruntime optimized vs unoptimized" in text
    assert "'y' judged against the reference's own noise floor" in text  # the summary line says it too


def test_no_noise_floor_judges_on_the_tolerance_alone(ill, converted, cli, tmp_path):
    _, _, out = converted
    res = cli("verify", ill, out, "--no-noise-floor", "--report-dir", tmp_path, "--json")
    assert res.exit_code == 1
    outputs = [o for run in json.loads(res.stdout)["runs"] for o in run["outputs"]]
    assert all(o["ok"] is False and o["noise_floor"] is None for o in outputs)
    assert "--no-noise-floor" in json.loads(res.stdout)["reproduce"]


def test_a_planted_weight_still_fails(ill, tmp_path, cli):
    planted = _ill_conditioned(tmp_path / "planted.onnx", plant=2)
    res = cli("verify", ill, planted, "--json")
    assert res.exit_code == 1
    for run in json.loads(res.stdout)["runs"]:
        (o,) = run["outputs"]
        assert o["ok"] is False and o["noise_judged"] is False
        assert o["noise_floor"] is not None and o["max_abs"] > 100 * NOISE_FACTOR * o["noise_floor"]


def test_only_an_onnx_reference_is_judged_against_its_noise(ill, converted, cli, tmp_path):
    _, _, out = converted
    same = cli("verify", ill, ill, "--json")  # agreeing models: nothing to measure
    assert same.exit_code == 0
    assert all(o["noise_floor"] is None for run in json.loads(same.stdout)["runs"] for o in run["outputs"])
    swapped = cli("verify", out, ill, "--report-dir", tmp_path, "--json")  # the generated module is the reference
    assert swapped.exit_code == 1
    assert all(o["noise_floor"] is None for run in json.loads(swapped.stdout)["runs"] for o in run["outputs"])


def test_the_floor_never_excuses_non_finite_values_integers_or_a_failing_tolerance():
    ref = np.array([[1.0, 2.0, 3.0]], np.float32)
    near = ref + np.float32(1e-3)
    judged = compare_output("y", ref, near, None, None, (1e-3, "test"))
    assert judged.ok and judged.noise_judged and judged.noise_floor == 1e-3
    assert not compare_output("y", ref, near, None, None, (1e-5, "test")).ok  # 1e-3 > 4 x 1e-5
    assert not compare_output("y", ref, near, None, None, None).ok
    nan = near.copy()
    nan[0, 0] = np.nan
    assert not compare_output("y", ref, nan, None, None, (10.0, "test")).ok  # NaN where the reference has none
    assert not compare_output("y", ref, near, 0.0, -1.0, (10.0, "test")).ok  # a negative tolerance is meant to fail
    ints = compare_output("k", np.array([1, 2, 3]), np.array([1, 2, 4]), None, None, (10.0, "test"))
    assert not ints.ok and ints.noise_floor is None  # integers stay exact
    wrong_top1 = compare_output("p", np.array([[0.0, 1.0]], np.float32), np.array([[1.0, 0.0]], np.float32),
                                None, None, (1.0, "test"))
    assert not wrong_top1.ok and "top-1" in wrong_top1.reason


# A pre-quantized model rounds x / scale at run time (DynamicQuantizeLinear): implementations that compute the
# scale or the quotient one float32 ulp differently round near-ties the other way, a whole quantum apart.
def _fake_quant(path, n: int = 255) -> str:
    """y = DequantizeLinear(DynamicQuantizeLinear(x)) * 3: one quantum of y is 3 * scale."""
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "zp"]),
         helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"]),
         helper.make_node("Mul", ["dq", "three"], ["y"])], "fake_quant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(np.asarray(3.0, np.float32), "three")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def test_quantizer_rounding_is_part_of_the_noise_floor(tmp_path):
    from modelport import formats
    from modelport.verify.noise import NoiseJudge, NoiseProbe, rounding_variants
    from modelport.verify.parity import compare_outputs

    path = _fake_quant(tmp_path / "fq.onnx")
    scale = np.float32(2.55) / np.float32(255)
    x = ((np.arange(255, dtype=np.float32) + np.float32(0.5)) * scale)[None]  # every value a near-tie of x / scale
    x[0, -1] = np.float32(2.55)
    feed = {"x": x}
    with formats.open_runner(path) as runner:
        ref = runner.run(feed)
        floors = NoiseProbe(runner).measure(feed, ref)
        floor, how = floors["y"]
        quantum = 3 * float(scale)
        assert "DynamicQuantizeLinear rounding one ulp" in how
        assert 0.99 * quantum <= floor <= 1.01 * quantum  # one quantum, not zero (ORT opt vs unopt agree exactly)
        variants = rounding_variants(onnx.load(path))
        assert [h.rsplit(" ", 1)[-1] for h, _ in variants] == ["up", "down"]
        assert not any(n.op_type == "DynamicQuantizeLinear" for _, m in variants for n in m.graph.node)
        tie = int(np.argmax(np.abs(ref["y"][0] - np.round(ref["y"][0] / quantum) * quantum) < 1e-6))
        for moved, passes in ((1.0, True), (10.0, False)):  # a rounding flip passes; ten quanta do not
            got = {"y": ref["y"].copy()}
            got["y"][0, tie] += moved * quantum
            outputs = compare_outputs(ref, got, rtol=1e-4, atol=1e-5)
            assert not outputs[0].ok
            judged = NoiseJudge(runner, True)(feed, ref, got, outputs, rtol=1e-4, atol=1e-5)
            assert judged[0].ok is passes and judged[0].noise_floor == pytest.approx(floor)
