"""adapt's onnx_ir passes (honest ``modified``, rule domains) and adapt on the pipeline (all or nothing at the destination)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from modelport.adapt import passes as P
from modelport.adapt.rules import apply_rule, find_rule, matches, rules_for
from modelport.adapt.run import AdaptPassesStep, adapt
from modelport.errors import BadInputError, CheckFailedError
from modelport.pipeline import Step, Verdict

MODEL = """<ir_version: 10, opset_import: ["" : 20]>
g (float[N, 8, 16] x) => (float[N, 8, 16] y) {
  g1 = Gelu (x)
  y = Relu (g1)
}"""


def save_text(path: Path, text: str) -> str:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return str(path)


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def run(path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


# --------------------------------------------------------------------------- honest `modified`


@pytest.mark.parametrize("make, text", [
    (lambda: P.BatchPass(2), MODEL.replace("N, 8", "2, 8")),           # the batch it already has
    (lambda: P.DynamicBatchPass("N"), MODEL),                           # already symbolic, same name
    (lambda: P.RenamePass({"x": "x"}), MODEL),                          # a rename to the same name
    (lambda: P.OpsetPass(20), MODEL),                                   # the opset it already has
    (lambda: P.RewriteRulePass("Mish=decompose"), MODEL),               # no Mish node to rewrite
], ids=["batch", "dynamic_batch", "rename", "opset", "rule"])
def test_a_pass_that_changes_nothing_reports_unmodified(tmp_path, make, text):
    model = ir.load(save_text(tmp_path / "m.onnx", text))
    before = ir.serde.serialize_model(model).SerializeToString()
    pass_ = make()
    result = pass_(model)
    assert result.modified is False and pass_.modified is False
    assert ir.serde.serialize_model(result.model).SerializeToString() == before
    assert ir.passes.Sequential(make(), make())(result.model).modified is False


@pytest.mark.parametrize("make", [
    lambda: P.BatchPass(3), lambda: P.DynamicBatchPass(), lambda: P.RenamePass({"x": "tokens"}), lambda: P.OpsetPass(17),
    lambda: P.RewriteRulePass("Gelu=decompose"), lambda: P.IoDtypePass("float16"),
], ids=["batch", "dynamic_batch", "rename", "opset", "rule", "io_dtype"])
def test_a_pass_that_changes_the_model_reports_modified(tmp_path, make):
    model = ir.load(save_text(tmp_path / "m.onnx", MODEL))
    pass_ = make()
    assert pass_(model).modified is True and pass_.modified is True


def test_an_error_inside_composed_passes_is_raised_as_itself(tmp_path):
    """Sequential wraps a pass's error in onnx_ir's PassError; run_passes raises the error itself (its exit code)."""
    model = ir.load(save_text(tmp_path / "m.onnx", MODEL))
    with pytest.raises(BadInputError, match="no input or output named"):
        P.run_passes(ir.passes.Sequential(P.BatchPass(3), P.RenamePass({"nope": "x"})), model)


# --------------------------------------------------------------------------- rules honour their domain


def _two_gelus(path: Path) -> str:
    """A default-domain Gelu (spelled "ai.onnx") and a com.microsoft Gelu, one after the other."""
    graph = oh.make_graph(
        [oh.make_node("Gelu", ["x"], ["a"], name="gelu_default", domain="ai.onnx"),
         oh.make_node("Gelu", ["a"], ["y"], name="gelu_ms", domain="com.microsoft")],
        "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 16])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20), oh.make_opsetid("com.microsoft", 1)], ir_version=10)
    onnx.save(model, path)
    return str(path)


def _gelus(model: ir.Model) -> list[tuple[str, str]]:
    return [(n.name, n.domain) for n in model.graph if n.op_type == "Gelu"]


def test_a_rule_matches_only_nodes_of_its_own_domain(tmp_path):
    src = _two_gelus(tmp_path / "two.onnx")
    default_rule = find_rule("Gelu", "decompose")
    assert default_rule.domain == "" and find_rule("Gelu", "decompose", domain="ai.onnx") is default_rule
    assert find_rule("Gelu", "decompose", domain="com.microsoft") is None

    model = ir.load(src)  # the default-domain rule: the "ai.onnx" Gelu, not the com.microsoft one
    res = apply_rule(model, default_rule)
    assert res.nodes == ("gelu_default",) and _gelus(model) == [("gelu_ms", "com.microsoft")]
    out = tmp_path / "default_done.onnx"
    ir.save(model, out)
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(run(str(out), {"x": x})[0], run(src, {"x": x})[0], rtol=1e-5, atol=1e-6)

    ms_rule = dataclasses.replace(default_rule, domain="com.microsoft")  # the same rewrite, for com.microsoft's Gelu
    model = ir.load(src)
    res = P.RewriteRulePass(ms_rule)(model)
    assert res.modified and _gelus(model) == [("gelu_default", "")]  # (onnx_ir reads "ai.onnx" as "")
    spelled = dataclasses.replace(default_rule, domain="ai.onnx")  # the default domain spelled out matches the same nodes
    assert [n.name for n in model.graph if matches(spelled, n)] == ["gelu_default"]


def test_a_rule_of_another_domain_matches_nothing(tmp_path):
    """A com.microsoft rule against a model whose only Gelu is the default domain's: unmodified, nothing rewritten."""
    model = ir.load(save_text(tmp_path / "m.onnx", MODEL))
    ms_rule = dataclasses.replace(find_rule("Gelu", "decompose"), domain="com.microsoft")
    pass_ = P.RewriteRulePass(ms_rule)
    assert pass_(model).modified is False and pass_.application.nodes == ()
    assert [n.domain for n in model.graph if n.op_type == "Gelu"] == [""]
    assert [r.key for r in rules_for("Gelu", "com.microsoft")] == []  # no rule is registered for com.microsoft::Gelu


def test_adapt_replace_does_not_touch_another_domains_op(tmp_path):
    """--replace Gelu=decompose rewrites the default-domain Gelu and leaves com.microsoft's as it is."""
    src = _two_gelus(tmp_path / "two.onnx")
    out = tmp_path / "out.onnx"
    report = adapt(src, out, replace=["Gelu=decompose"])
    assert report.steps[0].detail == "Gelu=decompose on 1 node(s): gelu_default" and report.parity
    assert [(n.name, n.domain) for n in onnx.load(out).graph.node if n.op_type == "Gelu"] == [("gelu_ms", "com.microsoft")]


# --------------------------------------------------------------------------- adapt on the pipeline


def test_adapt_composes_the_passes_in_order(tmp_path):
    from modelport.adapt.run import _parse_options, _plan

    src = save_text(tmp_path / "m.onnx", MODEL)
    options = _parse_options(src, tmp_path / "out.onnx", opset=17, layout=None, batch=None, dynamic_batch=True,
                             rename=["x=tokens"], io_dtype="float16", normalize="mean=0.5,std=0.2", replace=["Gelu=decompose"])
    plan = _plan(options, None, lambda msg: None)
    assert [type(p).__name__ for p in plan.passes()] == [
        "RewriteRulePass", "OpsetPass", "NormalizePass", "IoDtypePass", "DynamicBatchPass", "RenamePass"]
    assert isinstance(AdaptPassesStep(plan), Step)


def test_approximation_is_measured_not_enforced_unless_a_tolerance_is_given(tmp_path):
    src = save_text(tmp_path / "m.onnx", MODEL)
    out = tmp_path / "tanh.onnx"
    report = adapt(src, out, replace=["Gelu=tanh-approx"])
    assert report.ok and report.approximations == ("Gelu=tanh-approx",)
    lineage = json.loads(next(p.value for p in onnx.load(out).metadata_props if p.key == "modelport.lineage"))
    # an unenforced comparison is reported, but does not mark the step verified (nor failed) in the lineage
    assert lineage[-1]["step"] == "adapt" and lineage[-1]["verified"] is None
    before = listing(tmp_path)
    with pytest.raises(CheckFailedError, match="does not match its input"):
        adapt(src, tmp_path / "strict.onnx", replace=["Gelu=tanh-approx"], rtol=1e-12, atol=0.0)
    assert listing(tmp_path) == sorted(before + ["strict.parity-failure.npz"])  # no model; its failing inputs kept


def test_lineage_is_the_inputs_plus_one_record(tmp_path):
    src = save_text(tmp_path / "m.onnx", MODEL)
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    adapt(src, first, opset=17)
    report = adapt(first, second, rename=["x=tokens"])
    stored = json.loads(next(p.value for p in onnx.load(second).metadata_props if p.key == "modelport.lineage"))
    assert [s["detail"].split(":")[0] for s in stored] == ["opset", "rename"] and all(s["verified"] for s in stored)
    assert [s.detail for s in report.artifact.lineage] == [s["detail"] for s in stored]


def _fail_in_verifier(monkeypatch, seen):
    from modelport.adapt import run as adapt_run

    def failing(step, warnings, **kwargs):
        def verify(source, result, tolerance):
            seen.append(Path(result.path))
            assert Path(result.path).is_file()  # the adapted model is written, in scratch
            raise RuntimeError("injected failure")
        return verify

    monkeypatch.setattr(adapt_run, "_verifier", failing)
    return RuntimeError


def _fail_the_verdict(monkeypatch, seen):
    from modelport.adapt import run as adapt_run

    def failing(step, warnings, **kwargs):
        def verify(source, result, tolerance):
            seen.append(Path(result.path))
            return Verdict(False, "injected: does not match", enforce=True)
        return verify

    monkeypatch.setattr(adapt_run, "_verifier", failing)
    return CheckFailedError


def _fail_in_lineage(monkeypatch, seen):
    """The very last moment: verified, about to record lineage, then place."""
    from modelport.pipeline import core

    def failing(path, fmt, lineage):
        seen.append(Path(path))
        assert Path(path).is_file()
        raise OSError("injected: disk full")

    monkeypatch.setattr(core, "write_lineage", failing)
    return OSError


@pytest.mark.parametrize("inject", [_fail_in_verifier, _fail_the_verdict, _fail_in_lineage],
                         ids=["verifier-raises", "verdict-fails", "lineage-write-fails"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-destination", "existing-destination"])
def test_a_late_failure_leaves_the_destination_as_it_was(monkeypatch, tmp_path, inject, existing):
    src = save_text(tmp_path / "m.onnx", MODEL)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "adapted.onnx"
    if existing:
        out.write_bytes(b"the previous adapted model")
    before = listing(out_dir)
    seen: list[Path] = []
    error = inject(monkeypatch, seen)
    with pytest.raises(error, match="injected"):
        adapt(src, out, opset=17, rename=["x=tokens"])
    assert seen and seen[0].parent.parent == out_dir  # it failed after writing the adapted model in scratch beside out
    assert listing(out_dir) == before  # nothing placed, no temp file or scratch dir left
    if existing:
        assert out.read_bytes() == b"the previous adapted model"
    assert listing(tmp_path) == ["m.onnx", "out"]
    monkeypatch.undo()  # and the same run without the failure succeeds
    assert adapt(src, out, opset=17, rename=["x=tokens"]).ok and listing(out_dir) == ["adapted.onnx"]


def test_a_failed_adapt_keeps_the_failing_inputs_and_honours_per_output_tolerances(tmp_path, cli):
    """The same verification contract as verify and convert: --tol per output, failing inputs kept."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"])], "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    src = tmp_path / "gelu.onnx"
    onnx.save(model, str(src))
    out = tmp_path / "out" / "approx.onnx"
    # an approximation judged at a tolerance it cannot meet fails, keeping its inputs beside the output
    res = cli("adapt", src, "-o", out, "--replace", "Gelu=tanh-approx", "--tol", "y=0,1e-9")
    assert res.exit_code == 1 and not out.exists()
    kept = tmp_path / "out" / "approx.parity-failure.npz"
    assert kept.is_file() and f"kept in {kept}" in res.stderr
    with np.load(kept) as data:
        assert sorted(data.files) == ["candidate/y", "reference/y", "x"]
        assert np.abs(data["candidate/y"] - data["reference/y"]).max() > 1e-9
    # the kept inputs rerun the comparison; a per-output tolerance the approximation meets passes
    again = cli("adapt", src, "-o", out, "--replace", "Gelu=tanh-approx", "--tol", "y=0,1e-2", "--inputs", kept)
    assert again.exit_code == 0 and out.is_file(), again.stderr
    unknown = cli("adapt", src, "-o", tmp_path / "u.onnx", "--replace", "Gelu=tanh-approx", "--tol", "z=0,1")
    assert unknown.exit_code == 2 and "['z']" in unknown.stderr and not (tmp_path / "u.onnx").exists()


def test_adapt_judges_an_approximation_with_a_metric_of_your_own(tmp_path, cli):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["h"], name="gelu"), helper.make_node("MatMul", ["h", "w"], ["y"], name="fc")],
        "clf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [numpy_helper.from_array(w, "w")])
    src = tmp_path / "clf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(src))
    x = rng.standard_normal((64, 8)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, labels=np.zeros(64, dtype=np.int64))
    (tmp_path / "m.py").write_text("import numpy as np\n"
                                   "def mean_score(outputs, labels):\n"
                                   "    return float(np.mean(outputs['y'][:, 0]))\n")
    res = cli("adapt", src, "-o", tmp_path / "t.onnx", "--replace", "Gelu=tanh-approx", "--eval", tmp_path / "eval.npz",
              "--metric", f"{tmp_path / 'm.py'}:mean_score", "--json")
    assert res.exit_code == 0, res.stderr
    metric = json.loads(res.stdout)["metric"]
    want = float(np.mean((0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))) @ w[:, 0]))
    assert metric["metric"] == "mean_score" and abs(metric["before"] - want) < 1e-4 and abs(metric["after"] - want) < 1e-2
    bad = cli("adapt", src, "-o", tmp_path / "u.onnx", "--replace", "Gelu=tanh-approx", "--eval", tmp_path / "eval.npz",
              "--metric", f"{tmp_path / 'm.py'}:missing")
    assert bad.exit_code == 2 and "no function 'missing'" in bad.stderr and not (tmp_path / "u.onnx").exists()


def test_adapt_judged_on_the_task_with_max_drop(tmp_path, cli):
    """--max-drop judges the adapted model on the eval metric (parity reported); a missed budget is exit 1."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"], name="gelu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])])
    src = tmp_path / "gelu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(src))
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32) * 3
    exact = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.savez(tmp_path / "eval.npz", x=x, labels=exact)  # the metric's "labels": the exact outputs
    (tmp_path / "m.py").write_text("import numpy as np\n"
                                   "def closeness(outputs, labels):\n"
                                   "    return -float(np.abs(outputs['y'] - labels).max())\n")
    common = ["--replace", "Gelu=tanh-approx", "--eval", tmp_path / "eval.npz", "--metric", f"{tmp_path / 'm.py'}:closeness"]
    ok = cli("adapt", src, "-o", tmp_path / "ok.onnx", *common, "--max-drop", "0.1", "--json")
    assert ok.exit_code == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["ok"] is True and doc["metric"]["before"] == 0.0 and 0 < -doc["metric"]["after"] < 0.1
    missed = cli("adapt", src, "-o", tmp_path / "missed.onnx", *common, "--max-drop", "1e-9")
    assert missed.exit_code == 1 and "misses the task budget" in missed.stderr and not (tmp_path / "missed.onnx").exists()
    alone = cli("adapt", src, "-o", tmp_path / "x.onnx", "--replace", "Gelu=tanh-approx", "--max-drop", "0.1")
    assert alone.exit_code == 2 and "--eval" in alone.stderr


def test_a_failed_exact_adapt_names_the_first_divergent_node(tmp_path):
    """With the same inputs on both sides (no boundary change), a parity failure is localized in the error."""
    import onnx
    from onnx import TensorProto, helper

    from modelport.adapt.run import adapt
    from modelport.errors import CheckFailedError

    graph = helper.make_graph([helper.make_node("Gelu", ["x"], ["h"], name="gelu"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])])
    src = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(src))
    with pytest.raises(CheckFailedError) as info:
        adapt(src, tmp_path / "t.onnx", replace=["Gelu=tanh-approx"], rtol=0.0, atol=1e-12)
    message = str(info.value)
    # the rewrite renames Gelu's output, so the localization compares outputs and says so
    assert "output 'y' (node 'relu', Relu) diverges" in message and "share no names" in message and "kept in" in message
