"""Target profiles and `modelport check`: real ONNX models, judged against profiles generated from the runtimes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

from modelport.errors import BadInputError, UnsupportedError
from modelport.targets import known_targets, load_profile
from modelport.adapt.check import check_model

GELU_LN_20 = """<ir_version: 10, opset_import: ["" : 20]>
g (float[N, 8, 16] x) => (float[N, 8, 16] y)
  <float[16] s = {1.0,2.0,3.0,4.0,5.0,6.0,7.0,8.0,1.0,2.0,3.0,4.0,5.0,6.0,7.0,8.0},
   float[16] b = {0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5}> {
  ln = LayerNormalization <axis = -1, epsilon = 0.00001> (x, s, b)
  g1 = Gelu (ln)
  y = Relu (g1)
}"""


def named(text: str, names: list[str]) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    for node, name in zip(model.graph.node, names):
        node.name = name
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def gelu_ln_20(tmp_path) -> str:
    path = tmp_path / "gelu_ln_20.onnx"
    onnx.save(named(GELU_LN_20, ["ln1", "gelu1", "relu1"]), path)
    return str(path)


def test_builtin_profiles_load_and_describe_themselves():
    names = known_targets()
    assert {"onnxruntime-cpu", "onnxruntime-opset13", "onnxruntime-nnapi", "onnxruntime-coreml", "tflite", "torch"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name and p.ops and p.opset_range("") is not None
    assert load_profile("tflite").reduced and load_profile("tflite").layout == "nhwc"
    assert load_profile("onnxruntime-nnapi").dynamic_dims == "none"


def test_onnxruntime_profile_matches_its_kernel_registry():
    """The packaged file is what the generator makes from the installed onnxruntime: no hand-copied list."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    from modelport.targets import generate_profiles

    assert generate_profiles.onnxruntime_cpu() == json.loads((generate_profiles.PROFILE_DIR / "onnxruntime-cpu.json").read_text())
    kernels = {(k.domain, k.op_name) for k in C.get_all_opkernel_def()
               if k.provider == "CPUExecutionProvider" and k.domain not in generate_profiles.INTERNAL_DOMAINS}
    p = load_profile("onnxruntime-cpu")
    assert kernels <= set(p.ops)
    assert p.supports("", "Gelu", 20) and not p.supports("", "Gelu", 13)
    assert p.supports("", "HardSwish", 14).via == "function"  # runs by inlining its ONNX function


def test_check_names_each_node_and_its_fix(gelu_ln_20):
    from modelport.adapt.run import check

    report = check(gelu_ln_20, "onnxruntime-opset13")
    assert not report
    by_kind = {}
    for p in report.problems:
        by_kind.setdefault(p.kind, []).append(p)
    assert [p.action for p in by_kind["opset"]] == [("opset", "13")]
    ops = {p.where: p for p in by_kind["op"]}
    assert set(ops) == {"ln1", "gelu1"}
    assert ops["ln1"].action == ("replace", "LayerNormalization=decompose")
    assert ops["gelu1"].action == ("replace", "Gelu=decompose")
    assert "tanh-approx" in ops["gelu1"].fix
    assert check(gelu_ln_20, "onnxruntime-cpu")  # onnxruntime itself runs it


def test_check_cli_exit_codes(cli, gelu_ln_20):
    bad = cli("check", gelu_ln_20, "--target", "onnxruntime-opset13")
    assert bad.exit_code == 3
    assert "ln1" in bad.stdout and "gelu1" in bad.stdout and "--opset 13" in bad.stdout
    good = cli("check", gelu_ln_20, "--target", "onnxruntime-cpu", "--json")
    assert good.exit_code == 0 and json.loads(good.stdout)["ok"] is True
    listing = cli("check", "--list-targets")
    assert listing.exit_code == 0 and "tflite" in listing.stdout


def test_unknown_target_lists_the_known_ones(cli, gelu_ln_20):
    res = cli("check", gelu_ln_20, "--target", "tensorrt-99")
    assert res.exit_code == 3
    assert "unknown target 'tensorrt-99'" in res.stderr and "onnxruntime-cpu" in res.stderr


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "top level must be a JSON object"),
    ('{"name": "x", "opsets": {"": [13, 7]}, "ops": {}}', "min <= max"),
    ('{"name": "x", "opsets": {"": [7, 13]}}', "missing required key"),
    ('{"name": "x", "opsets": {"": [7, 13]}, "ops": {"": {"Relu": [{"since": 0}]}}}', "since must be a positive integer"),
    ('{"name": "x", "opsets": {"": [7, 13]}, "ops": {}, "layout": "nwhc"}', "layout must be one of"),
    ('{"name": "x", "opsets": {"": [7, 13]}, "ops": {}, "dtypes": ["float33"]}', "unknown dtype 'float33'"),
])
def test_malformed_profile_names_file_and_problem(cli, tmp_path, gelu_ln_20, content, problem):
    path = tmp_path / "mine.json"
    path.write_text(content)
    with pytest.raises(BadInputError, match="malformed target profile"):
        load_profile(path)
    res = cli("check", gelu_ln_20, "--target", str(path))
    assert res.exit_code == 2
    assert str(path) in res.stderr and problem in res.stderr


def test_user_profile_by_path(tmp_path, gelu_ln_20):
    """A user's own target: opsets 7..20, only LayerNormalization and Relu, static shapes."""
    mine = {"format": "modelport-target/1", "name": "my-npu", "opsets": {"": [7, 20]}, "dtypes": ["float32"],
            "dynamic_dims": "none", "ops": {"": {"LayerNormalization": [{"since": 17}], "Relu": [{"since": 14}]}}}
    path = tmp_path / "my-npu.json"
    path.write_text(json.dumps(mine))
    report = check_model(onnx.load(gelu_ln_20), str(path))
    kinds = sorted((p.kind, p.where) for p in report.problems)
    assert kinds == [("dynamic_dim", "x"), ("op", "gelu1")]
    gelu = next(p for p in report.problems if p.kind == "op")
    assert gelu.action is None and gelu.fix.startswith("no automatic fix")  # its decomposition needs Erf, Mul, Add
    assert next(p for p in report.problems if p.kind == "dynamic_dim").action == ("batch", "1")


def test_profile_agrees_with_onnxruntime_on_dtypes():
    """Erf in float64 / bfloat16: the profile says no, and onnxruntime indeed has no such kernel; float16 runs via Casts."""
    model = named("""<ir_version: 10, opset_import: ["" : 17]>
        g (double[4] x) => (double[4] y) { y = Erf (x) }""", ["erf64"])
    report = check_model(model, "onnxruntime-cpu")
    assert [(p.kind, p.where) for p in report.problems] == [("dtype", "erf64")]
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|implementation"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    fp16 = named("""<ir_version: 10, opset_import: ["" : 17]>
        g (float16[4] x) => (float16[4] y) { y = Erf (x) }""", ["erf16"])
    report = check_model(fp16, "onnxruntime-cpu")  # no float16 Erf kernel, but onnxruntime inserts Casts
    assert report and "inserted Casts" in report.notes[0]
    assert ort.InferenceSession(fp16.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.ones(4, np.float16)})[0].dtype == np.float16
    bf16 = named("""<ir_version: 10, opset_import: ["" : 17]>
        g (bfloat16[4] x) => (bfloat16[4] y) { y = Erf (x) }""", ["erf_bf16"])
    assert [(p.kind, p.where) for p in check_model(bf16, "onnxruntime-cpu").problems] == [("dtype", "erf_bf16")]
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|implementation"):
        ort.InferenceSession(bf16.SerializeToString(), providers=["CPUExecutionProvider"])
    ok = named("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) { y = Erf (x) }""", ["erf32"])
    assert check_model(ok, "onnxruntime-cpu")
    sess = ort.InferenceSession(ok.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros(4, np.float32)})[0].shape == (4,)


def test_tflite_and_nnapi_profiles():
    model = named(GELU_LN_20, ["ln1", "gelu1", "relu1"])
    tfl = check_model(model, "tflite")
    assert [(p.where, p.action) for p in tfl.problems] == [("ln1", ("replace", "LayerNormalization=decompose"))]
    assert any("reduced" in n for n in tfl.notes)
    nnapi = check_model(model, "onnxruntime-nnapi")
    assert {p.where for p in nnapi.problems} == {"ln1", "gelu1", "x"}


def test_torch_profile_comes_from_our_converter():
    try:
        from modelport.to_torch import supported_ops
    except ImportError:
        with pytest.raises(UnsupportedError, match="unavailable"):
            load_profile("torch")
        return
    p = load_profile("torch")
    assert {(d, op) for d, op, _ in supported_ops()} == set(p.ops)
    report = check_model(named(GELU_LN_20, ["ln1", "gelu1", "relu1"]), p)
    assert report.target == "torch"
