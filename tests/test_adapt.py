"""`modelport adapt`: real models (ONNX text, torch dynamo exports), each change verified against the original."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

import zoo
from modelport.adapt.run import adapt, check
from modelport.errors import UnsupportedError

GELU_LN_20 = """<ir_version: 10, opset_import: ["" : 20]>
g (float[N, 8, 16] x) => (float[N, 8, 16] y)
  <float[16] s = {1.0,2.0,3.0,4.0,5.0,6.0,7.0,8.0,1.0,2.0,3.0,4.0,5.0,6.0,7.0,8.0},
   float[16] b = {0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5}> {
  ln = LayerNormalization <axis = -1, epsilon = 0.00001> (x, s, b)
  g1 = Gelu (ln)
  y = Relu (g1)
}"""

ACTIVATIONS_20 = """<ir_version: 10, opset_import: ["" : 20]>
g (float[N, 8, 16] x) => (float[N, 8, 16] y) {
  a = Gelu <approximate = "tanh"> (x)
  b = HardSwish (a)
  c = HardSigmoid <alpha = 0.3, beta = 0.4> (b)
  d = Softplus (c)
  e = Mish (d)
  y = Softsign (e)
}"""


def save_text(path: Path, text: str, names: list[str] | None = None) -> str:
    model = onnx.parser.parse_model(text)
    for node, name in zip(model.graph.node, names or []):
        node.name = name
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return str(path)


def run(path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max() / np.abs(ref).max())


def opset_of(path: str) -> int:
    return next(i.version for i in onnx.load(path).opset_import if i.domain in ("", "ai.onnx"))


def ops_of(path: str) -> set[str]:
    return {n.op_type for n in onnx.load(path).graph.node}


# --------------------------------------------------------------------------- real torch models, exported once per process


def _export(module, args, path: Path, opset: int, dynamic_batch: bool) -> str:
    import logging
    import warnings

    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=64)
        shapes = ({0: batch},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = zoo.onnx_export(module.eval(), args, dynamo=True, opset_version=opset, dynamic_shapes=shapes, verbose=False)
    prog.save(str(path))
    return str(path)


def _attention(d: Path) -> str:
    """A tiny BERT-like block: LayerNorm, 2-head self-attention, LayerNorm, Gelu MLP, residuals; opset 20."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int = 32, heads: int = 2):
            super().__init__()
            torch.manual_seed(0)
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
            q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))

    return _export(Block(), (torch.randn(2, 8, 32),), d / "attention20.onnx", 20, dynamic_batch=True)


def _cnn(d: Path, static: bool = False) -> str:
    """conv-bn-hardswish x2, global pooling, linear: 3x32x32 -> 10 scores; opset 18."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    for m in body:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    name = "cnn18_static.onnx" if static else "cnn18.onnx"
    return _export(Net(body), (torch.randn(2, 3, 32, 32),), d / name, 18, dynamic_batch=not static)


@pytest.fixture(scope="module")
def attention20() -> str:
    return zoo.cached("adapt_attention20", _attention)


@pytest.fixture(scope="module")
def cnn18() -> str:
    return zoo.cached("adapt_cnn18", _cnn)


@pytest.fixture(scope="module")
def cnn18_static() -> str:
    return zoo.cached("adapt_cnn18_static", lambda d: _cnn(d, static=True))


def verify_exact(a: str, b: str) -> float:
    import modelport as api  # modelport.verify is shadowed by the modelport.verify package once imported

    report = api.verify(a, b, rtol=1e-5, atol=0.0)
    assert report, report.summary()
    return max(o.max_rel for r in report.runs for o in r.outputs)


# --------------------------------------------------------------------------- target-driven adapt


def test_gelu_layernorm_opset20_to_opset13_target(cli, tmp_path):
    src = save_text(tmp_path / "m20.onnx", GELU_LN_20, ["ln1", "gelu1", "relu1"])
    out = tmp_path / "m13.onnx"
    before = cli("check", src, "--target", "onnxruntime-opset13")
    assert before.exit_code == 3 and "ln1" in before.stdout and "gelu1" in before.stdout
    res = cli("adapt", src, "-o", out, "--target", "onnxruntime-opset13", "--dim", "N=4", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert [r["input_shapes"]["x"][0] for r in report["parity"]["runs"]] == [4, 5]  # the dynamic batch at 4, then 5
    assert report["check"]["ok"] and report["parity"]["ok"] and report["approximations"] == []
    assert cli("check", out, "--target", "onnxruntime-opset13").exit_code == 0
    assert opset_of(str(out)) == 13 and not ops_of(str(out)) & {"Gelu", "LayerNormalization"}
    assert verify_exact(src, str(out)) <= 1e-5
    lineage = json.loads(next(p.value for p in onnx.load(out).metadata_props if p.key == "modelport.lineage"))
    assert lineage[-1]["step"] == "adapt" and lineage[-1]["verified"] is True


@pytest.mark.slow
def test_torch_attention_block_opset20_to_opset13(attention20, tmp_path):
    model = onnx.load(attention20)
    named = {n.name for n in model.graph.node if n.op_type in ("Gelu", "LayerNormalization")}
    assert len(named) == 3  # 2 LayerNorms, 1 Gelu, as torch's dynamo exporter wrote them at opset 20
    report = check(attention20, "onnxruntime-opset13")
    assert {p.where for p in report.problems if p.kind == "op"} == named
    out = tmp_path / "attention13.onnx"
    res = adapt(attention20, out, target="onnxruntime-opset13")
    assert res.check and res.parity and len(res.parity.runs) == 2  # dynamic batch: two sizes
    assert max(o.max_rel for r in res.parity.runs for o in r.outputs) <= 1e-5
    assert check(out, "onnxruntime-opset13")
    assert verify_exact(attention20, str(out)) <= 1e-5


# --------------------------------------------------------------------------- explicit changes


@pytest.mark.slow
def test_opset_down_to_13_and_back_up_to_20(cli, cnn18, tmp_path):
    down, up = tmp_path / "cnn13.onnx", tmp_path / "cnn20.onnx"
    assert cli("adapt", cnn18, "-o", down, "--opset", "13").exit_code == 0
    assert cli("adapt", down, "-o", up, "--opset", "20").exit_code == 0
    assert (opset_of(str(down)), opset_of(str(up))) == (13, 20)
    assert "HardSwish" in ops_of(cnn18) and "HardSwish" not in ops_of(str(down))  # HardSwish-14 has no opset-13 form
    assert verify_exact(cnn18, str(down)) <= 1e-5
    assert verify_exact(cnn18, str(up)) <= 1e-5


def test_opset_adapters_where_the_version_converter_fails(tmp_path):
    """Reshape-14 allowzero=1 and ReduceMean-18 with axes from a Constant node: onnx's converter fails on both."""
    text = """<ir_version: 10, opset_import: ["" : 18]>
    g (float[2, 8, 16] x) => (float[32, 8] y) <int64[2] sh = {32, 8}> {
      ax = Constant <value_ints = [-1]> ()
      m = ReduceMean <keepdims = 1> (x, ax)
      c = Sub (x, m)
      r = Reshape <allowzero = 1> (c, sh)
      y = Mul (r, r)
    }"""
    src = save_text(tmp_path / "m18.onnx", text, ["ax", "mean", "sub", "reshape", "mul"])
    with pytest.raises(Exception):
        onnx.version_converter.convert_version(onnx.load(src), 13)
    out = tmp_path / "m13.onnx"
    report = adapt(src, out, opset=13)
    assert report.parity and opset_of(str(out)) == 13
    assert verify_exact(src, str(out)) <= 1e-5


def test_opset_down_drops_new_attributes_only_at_their_defaults(tmp_path):
    """GatherND-12 added batch_dims: batch_dims=0 goes down to opset 11 exactly; batch_dims=1 cannot."""
    text = """<ir_version: 8, opset_import: ["" : 12]>
    g (float[2, 3, 4] x) => (float[2, SHAPE] y) <int64[2, 1] i = {1, 0}> { y = GatherND <batch_dims = BD> (x, i) }"""
    src = save_text(tmp_path / "gnd.onnx", text.replace("BD", "0").replace("SHAPE", "3, 4"), ["gather_nd"])
    with pytest.raises(Exception):
        onnx.version_converter.convert_version(onnx.load(src), 11)
    out = tmp_path / "gnd11.onnx"
    assert adapt(src, out, opset=11).parity and opset_of(str(out)) == 11
    assert verify_exact(src, str(out)) == 0.0
    bad = save_text(tmp_path / "gnd_b1.onnx", text.replace("BD", "1").replace("SHAPE", "4"), ["gather_nd_b1"])
    with pytest.raises(UnsupportedError, match="GatherND"):
        adapt(bad, tmp_path / "never.onnx", opset=11)
    assert not (tmp_path / "never.onnx").exists()


def test_softmax_on_a_middle_axis_down_to_opset_11(tmp_path):
    """onnx's converter relabels Softmax-13 as Softmax-11, which flattens from the axis: a wrong result. Ours is exact."""
    text = """<ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 3, 4] x) => (float[N, 3, 4] y) { y = Softmax <axis = 1> (x) }"""
    src = save_text(tmp_path / "sm13.onnx", text, ["softmax"])
    x = np.random.default_rng(11).standard_normal((2, 3, 4)).astype(np.float32)
    naive = onnx.version_converter.convert_version(onnx.load(src), 11)
    naive_out = ort.InferenceSession(naive.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert rel_err(run(src, {"x": x})[0], naive_out) > 0.1
    out = tmp_path / "sm11.onnx"
    assert adapt(src, out, opset=11).parity
    assert rel_err(run(src, {"x": x})[0], run(str(out), {"x": x})[0]) <= 1e-6


def test_activation_decompositions_are_exact(tmp_path):
    src = save_text(tmp_path / "act.onnx", ACTIVATIONS_20)
    out = tmp_path / "act_prim.onnx"
    ops = ["Gelu", "HardSwish", "HardSigmoid", "Softplus", "Mish", "Softsign"]
    report = adapt(src, out, replace=[f"{op}=decompose" for op in ops])
    assert [s.name for s in report.steps] == ["replace"] * 6 and report.parity
    assert not ops_of(str(out)) & set(ops)
    x = (np.random.default_rng(1).standard_normal((3, 8, 16)) * 4).astype(np.float32)
    assert rel_err(run(src, {"x": x})[0], run(str(out), {"x": x})[0]) <= 1e-5


def test_layout_nhwc(cli, cnn18, tmp_path):
    out = tmp_path / "nhwc.onnx"
    res = cli("adapt", cnn18, "-o", out, "--layout", "nhwc")
    assert res.exit_code == 0, res.stderr
    inp = onnx.load(out).graph.input[0]
    assert [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim][1:] == [32, 32, 3]
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    ref = run(cnn18, {"x": x})[0]
    got = run(str(out), {"x": np.ascontiguousarray(x.transpose(0, 2, 3, 1))})[0]
    assert rel_err(ref, got) <= 1e-5
    assert sum(n.op_type == "Transpose" for n in onnx.load(out).graph.node) == 1 + sum(
        n.op_type == "Transpose" for n in onnx.load(cnn18).graph.node)


def test_normalize_baked_in(cli, cnn18, tmp_path):
    out = tmp_path / "norm.onnx"
    spec = "mean=0.485,0.456,0.406,std=0.229,0.224,0.225,scale=255"
    assert cli("adapt", cnn18, "-o", out, "--normalize", spec).exit_code == 0
    raw = np.random.default_rng(3).integers(0, 256, (2, 3, 32, 32)).astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    ref = run(cnn18, {"x": (raw / np.float32(255) - mean) / std})[0]
    assert rel_err(ref, run(str(out), {"x": raw})[0]) <= 1e-5


def test_normalize_and_nhwc_together(cnn18, tmp_path):
    out = tmp_path / "norm_nhwc.onnx"
    report = adapt(cnn18, out, normalize={"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}, layout="nhwc")
    assert [s.name for s in report.steps] == ["normalize", "layout"] and report.parity
    raw = np.random.default_rng(4).random((2, 32, 32, 3)).astype(np.float32)
    ref = run(cnn18, {"x": (raw.transpose(0, 3, 1, 2) - np.float32(0.5)) / np.float32(0.2)})[0]
    assert rel_err(ref, run(str(out), {"x": raw})[0]) <= 1e-5


def test_static_batch(cli, cnn18, tmp_path):
    out = tmp_path / "b1.onnx"
    assert cli("adapt", cnn18, "-o", out, "--batch", "1").exit_code == 0
    sig = onnx.load(out).graph
    assert sig.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert sig.output[0].type.tensor_type.shape.dim[0].dim_value == 1
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert rel_err(run(cnn18, {"x": x})[0], run(str(out), {"x": x})[0]) <= 1e-5
    assert check(out, "onnxruntime-nnapi").problems == () or all(p.kind != "dynamic_dim" for p in check(out, "onnxruntime-nnapi").problems)


def test_dynamic_batch(cnn18_static, tmp_path):
    """A CNN exported with a static batch of 2: its flatten Reshape is relaxed to -1, checked at two batch sizes."""
    out = tmp_path / "dyn.onnx"
    report = adapt(cnn18_static, out, dynamic_batch=True)
    assert report.parity and len(report.parity.runs) == 2
    assert "reshapes_relaxed" in report.steps[-1].detail
    assert onnx.load(out).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(6).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = np.concatenate([run(cnn18_static, {"x": x[i:i + 2]})[0] for i in (0, 2)])
    assert rel_err(ref, run(str(out), {"x": x})[0]) <= 1e-5


def test_dynamic_batch_refused_when_the_graph_fixes_it(cli, tmp_path):
    """A batch baked into a computed shape cannot be freed: verification at another size fails, nothing is written."""
    text = """<ir_version: 10, opset_import: ["" : 18]>
    g (float[2, 4] x) => (float[2, 4] y) <int64[2] sh = {2, 4}> {
      e = Expand (x, sh)
      y = Relu (e)
    }"""
    src = save_text(tmp_path / "fixed.onnx", text, ["expand", "relu"])
    before = _listing(tmp_path)
    res = cli("adapt", src, "-o", tmp_path / "dyn.onnx", "--dynamic-batch")
    assert res.exit_code == 1 and "fails on inputs x=3x4" in res.stderr
    assert _listing(tmp_path) == before


def test_rename_and_io_float16(cli, cnn18, tmp_path):
    out = tmp_path / "fp16io.onnx"
    out_name = onnx.load(cnn18).graph.output[0].name
    res = cli("adapt", cnn18, "-o", out, "--rename", "x=image", "--rename", f"{out_name}=logits", "--io-dtype", "float16", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert all(o["rtol"] == 1e-2 for r in report["parity"]["runs"] for o in r["outputs"])  # fp16 tolerance
    g = onnx.load(out).graph
    assert [(v.name, v.type.tensor_type.elem_type) for v in (*g.input, *g.output)] == [
        ("image", onnx.TensorProto.FLOAT16), ("logits", onnx.TensorProto.FLOAT16)]
    x = np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float16)
    ref = run(cnn18, {"x": x.astype(np.float32)})[0]
    got = run(str(out), {"image": x})[0]
    assert got.dtype == np.float16 and rel_err(ref, got) <= 1e-2


def test_approximation_reports_error_and_task_metric(tmp_path):
    rng = np.random.default_rng(8)
    w1 = ",".join(f"{v:.4f}" for v in rng.standard_normal(16 * 32))
    w2 = ",".join(f"{v:.4f}" for v in rng.standard_normal(32 * 4))
    text = f"""<ir_version: 10, opset_import: ["" : 20]>
    g (float[N, 16] x) => (float[N, 4] y) <float[16, 32] w1 = {{{w1}}}, float[32, 4] w2 = {{{w2}}}> {{
      h = MatMul (x, w1)
      a = Gelu (h)
      y = MatMul (a, w2)
    }}"""
    src = save_text(tmp_path / "clf.onnx", text, ["fc1", "gelu", "fc2"])
    x = rng.standard_normal((200, 16)).astype(np.float32)
    labels = np.argmax(run(src, {"x": x})[0], axis=-1)
    np.savez(tmp_path / "eval.npz", x=x, labels=labels)
    out = tmp_path / "clf_tanh.onnx"
    report = adapt(src, out, replace=["Gelu=tanh-approx"], eval_data=str(tmp_path / "eval.npz"))
    assert report.approximations == ("Gelu=tanh-approx",) and not report.steps[0].exact
    worst = max(o.max_rel for r in report.parity.runs for o in r.outputs)
    assert 0 < worst < 1e-2 and "max rel err" in report.warnings[0]
    assert report.metric["before"] == 1.0 and report.metric["after"] >= 0.95 and report.metric["samples"] == 200


def test_already_compatible_is_written_unchanged(cli, tmp_path):
    src = save_text(tmp_path / "m20.onnx", GELU_LN_20)
    out = tmp_path / "same.onnx"
    res = cli("adapt", src, "-o", out, "--target", "onnxruntime-cpu")
    assert res.exit_code == 0 and "already compatible with onnxruntime-cpu" in res.stdout
    assert out.read_bytes() == Path(src).read_bytes()


def test_device_cuda_falls_back_to_cpu(tmp_path):
    src = save_text(tmp_path / "m20.onnx", GELU_LN_20)
    report = adapt(src, tmp_path / "out.onnx", opset=17, device="cuda")
    assert report.parity
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert has_cuda or any("verified on CPU" in w for w in report.warnings)


# --------------------------------------------------------------------------- bad input: clear errors, nothing written


def _listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


@pytest.mark.parametrize("args, code, message", [
    (["--target", "tensorrt-99"], 3, "unknown target 'tensorrt-99'; known targets: onnxruntime-coreml"),
    (["--replace", "Mish=decompose"], 2, "--replace Mish=decompose matched no node"),
    (["--replace", "Gelu=magic"], 2, "no such rewrite rule; known: Gelu=decompose"),
    (["--opset", "3"], 2, "opset 3 is impossible"),
    (["--opset", "99"], 2, "opset 99 is impossible"),
    (["--normalize", "mean=0.5"], 2, "both mean= and std= are required"),
    (["--rename", "nope=x"], 2, "no input or output named ['nope']"),
    ([], 2, "nothing to adapt"),
])
def test_bad_input_writes_nothing(cli, tmp_path, args, code, message):
    src = save_text(tmp_path / "m20.onnx", GELU_LN_20, ["ln1", "gelu1", "relu1"])
    before = _listing(tmp_path)
    res = cli("adapt", src, "-o", tmp_path / "out.onnx", *args)
    assert res.exit_code == code, res.stderr
    assert message in res.stderr
    assert _listing(tmp_path) == before


def test_malformed_profile_writes_nothing(cli, tmp_path):
    src = save_text(tmp_path / "m20.onnx", GELU_LN_20)
    profile = tmp_path / "broken.json"
    profile.write_text('{"name": "broken", "opsets": {"": "7..13"}, "ops": {}}')
    before = _listing(tmp_path)
    res = cli("adapt", src, "-o", tmp_path / "out.onnx", "--target", profile)
    assert res.exit_code == 2 and str(profile) in res.stderr and "opsets[''] must be [min, max]" in res.stderr
    assert _listing(tmp_path) == before


def test_unfixable_problem_writes_nothing(cli, tmp_path):
    """Reshape allowzero=1 with a runtime shape has no opset-13 form: exit 3, naming the node."""
    text = """<ir_version: 10, opset_import: ["" : 18]>
    g (float[2, 8] x, int64[2] s) => (float[8, 2] y) { y = Reshape <allowzero = 1> (x, s) }"""
    src = save_text(tmp_path / "rz.onnx", text, ["reshape_az"])
    before = _listing(tmp_path)
    res = cli("adapt", src, "-o", tmp_path / "out.onnx", "--opset", "13")
    assert res.exit_code == 3 and "reshape_az" in res.stderr and "no automatic fix" in res.stderr
    assert _listing(tmp_path) == before


def test_target_with_a_chosen_approximation(cli, tmp_path):
    """NNAPI has no Erf, so Gelu has no exact fix there: adapt refuses (exit 3) until the user picks an approximation."""
    text = GELU_LN_20.replace("float[N, 8, 16]", "float[2, 8, 16]")
    src = save_text(tmp_path / "static.onnx", text, ["ln1", "gelu1", "relu1"])
    out = tmp_path / "nnapi.onnx"
    refused = cli("adapt", src, "-o", out, "--target", "onnxruntime-nnapi")
    assert refused.exit_code == 3 and "gelu1" in refused.stderr and "Gelu=tanh-approx" in refused.stderr
    assert not out.exists()
    report = adapt(src, out, target="onnxruntime-nnapi", replace=["Gelu=tanh-approx"])
    assert report.check and report.approximations == ("Gelu=tanh-approx",)
    assert [s.detail.split(" ")[0] for s in report.steps] == ["LayerNormalization=decompose", "Gelu=tanh-approx"]
    assert check(out, "onnxruntime-nnapi")


@pytest.mark.slow
def test_approximation_matches_gelu_written_out_as_erf(attention20, tmp_path):
    """Below opset 20 exporters write Gelu as its erf formula: Gelu=tanh-approx matches that subgraph too."""
    decomposed = tmp_path / "attention13.onnx"
    adapt(attention20, decomposed, opset=13)
    assert "Erf" in ops_of(str(decomposed)) and "Gelu" not in ops_of(str(decomposed))
    out = tmp_path / "attention13_tanh.onnx"
    report = adapt(decomposed, out, replace=["Gelu=tanh-approx"])
    assert report.steps[0].detail.startswith("Gelu=tanh-approx on 1 node(s): Gelu subgraph 1")
    assert "Erf" not in ops_of(str(out)) and "Tanh" in ops_of(str(out))
    worst = max(o.max_rel for r in report.parity.runs for o in r.outputs)
    assert 0 < worst < 1e-3


def test_nhwc_model_takes_nchw_and_normalizes_channels_last(tmp_path):
    """A channels-last model (as Keras writes them): --layout nchw, and normalize finds the channel axis itself."""
    w = ",".join(str(v) for v in np.random.default_rng(9).standard_normal(3 * 4).round(3))
    text = f"""<ir_version: 10, opset_import: ["" : 17]>
    g (float[N, 8, 8, 3] x) => (float[N, 8, 8, 4] y) <float[3, 4] w = {{{w}}}> {{ y = MatMul (x, w) }}"""
    src = save_text(tmp_path / "nhwc_model.onnx", text, ["dense"])
    norm = tmp_path / "norm.onnx"
    report = adapt(src, norm, normalize="mean=1,2,3,std=2,4,8")
    assert report.steps[0].detail.endswith("axis=3)") and report.parity
    x = np.random.default_rng(10).standard_normal((2, 8, 8, 3)).astype(np.float32)
    mean, std = np.array([1, 2, 3], np.float32), np.array([2, 4, 8], np.float32)
    assert rel_err(run(src, {"x": (x - mean) / std})[0], run(str(norm), {"x": x})[0]) <= 1e-5
    nchw = tmp_path / "nchw.onnx"
    assert adapt(src, nchw, layout="nchw").parity
    got = run(str(nchw), {"x": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    assert rel_err(run(src, {"x": x})[0], got) <= 1e-5


def test_passes_compose_with_onnx_ir_sequential(tmp_path):
    import onnx_ir as ir

    from modelport.adapt.passes import OpsetPass, RenamePass, RewriteRulePass

    src = save_text(tmp_path / "m20.onnx", GELU_LN_20)
    model = ir.load(src)
    rewrite = RewriteRulePass("Gelu=decompose")
    result = ir.passes.Sequential(rewrite, RewriteRulePass("LayerNormalization=decompose"), OpsetPass(13),
                                  RenamePass({"x": "tokens"}))(model)
    assert result.modified and len(rewrite.application.nodes) == 1
    out = tmp_path / "seq.onnx"
    ir.save(result.model, out)
    assert opset_of(str(out)) == 13 and not ops_of(str(out)) & {"Gelu", "LayerNormalization"}
    x = np.random.default_rng(12).standard_normal((2, 8, 16)).astype(np.float32)
    assert rel_err(run(src, {"x": x})[0], run(str(out), {"tokens": x})[0]) <= 1e-5
