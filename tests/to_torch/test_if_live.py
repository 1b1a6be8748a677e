"""ONNX If whose condition depends on a graph input: real Python control flow in forward."""

from __future__ import annotations

import ast

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper

from modelport import to_torch

RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)
    return m


def _vi(name: str) -> onnx.ValueInfoProto:
    """A float value of unknown rank (no shape field: an empty one would mean rank 0)."""
    vi = onnx.ValueInfoProto(name=name)
    vi.type.tensor_type.elem_type = TP.FLOAT
    return vi


def _branch(name: str, nodes, out: str, inits=()) -> onnx.GraphProto:
    # Branch outputs of unknown shape: the two branches differ in shape.
    return oh.make_graph(nodes, name, [], [_vi(out)], list(inits))


def _ort(model: onnx.ModelProto, feeds: dict) -> list:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check(model: onnx.ModelProto, tmp_path, feeds_list: list[dict]) -> str:
    to_torch.convert(model, tmp_path)
    src = (tmp_path / "model.py").read_text()
    ast.parse(src)
    module = to_torch.load(tmp_path)
    for feeds in feeds_list:
        want = _ort(model, feeds)
        with torch.no_grad():
            got = module(*(torch.from_numpy(np.asarray(v)) for v in feeds.values()))
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert tuple(g.shape) == w.shape
            np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-5, atol=1e-5)
    return src


def _bool_if_model() -> onnx.ModelProto:
    then_g = _branch("then", [oh.make_node("MatMul", ["x", "W1"], ["ya"], name="mm_a")], "ya")
    else_g = _branch("else", [oh.make_node("MatMul", ["x", "W2"], ["yb"], name="mm_b")], "yb")
    node = oh.make_node("If", ["use_a"], ["y"], name="pick", then_branch=then_g, else_branch=else_g)
    return _model([node],
                  [oh.make_tensor_value_info("x", TP.FLOAT, ["n", 3]),
                   oh.make_tensor_value_info("use_a", TP.BOOL, [])],
                  [_vi("y")],
                  [_w("W1", 3, 4), _w("W2", 3, 6)])


def test_if_on_bool_input_with_different_branch_shapes(tmp_path):
    x = RNG.standard_normal((5, 3)).astype(np.float32)
    src = _check(_bool_if_model(), tmp_path,
                 [{"x": x, "use_a": np.array(True)}, {"x": x, "use_a": np.array(False)}])
    fwd = src[src.index("def forward"):]
    assert "if bool(use_a):" in fwd and "else:" in fwd
    assert "# pick (If)" in fwd and "# mm_a (MatMul)" in fwd and "# mm_b (MatMul)" in fwd
    # each branch computes its value inside its own block, one level deeper
    lines = fwd.splitlines()
    i_if = next(i for i, ln in enumerate(lines) if ln.strip() == "if bool(use_a):")
    depth = len(lines[i_if]) - len(lines[i_if].lstrip())
    i_else = next(i for i, ln in enumerate(lines) if i > i_if and ln.strip() == "else:")
    assert len(lines[i_else]) - len(lines[i_else].lstrip()) == depth
    then_block, else_block = lines[i_if + 1:i_else], lines[i_else + 1:]
    assert any("# mm_a (MatMul)" in ln for ln in then_block)
    assert all(len(ln) - len(ln.lstrip()) == depth + 4 for ln in then_block)
    assert any(ln.strip().startswith("y") and "=" in ln for ln in then_block)
    assert any("# mm_b (MatMul)" in ln for ln in else_block)


def test_if_on_bool_input_through_convert_run(tmp_path):
    from modelport.convert.run import convert

    path = tmp_path / "m.onnx"
    onnx.save(_bool_if_model(), path)
    x = RNG.standard_normal((5, 3)).astype(np.float32)
    for flag in (True, False):
        out = tmp_path / f"out_{flag}"
        report = convert(str(path), "torch", str(out), inputs={"x": x, "use_a": np.array(flag)})
        assert report.ok, report


def _sr_model() -> onnx.ModelProto:
    """Voice-activity-detector style: sr == 16000 picks a 16 kHz or an 8 kHz sub-network."""
    then_g = _branch("net16k", [
        oh.make_node("MatMul", ["x", "W16"], ["h16"], name="mm16"),
        oh.make_node("Add", ["h16", "b16"], ["a16"], name="add16"),
        oh.make_node("Relu", ["a16"], ["y16"], name="relu16"),
    ], "y16")
    else_g = _branch("net8k", [
        oh.make_node("MatMul", ["x", "W8"], ["h8"], name="mm8"),
        oh.make_node("Tanh", ["h8"], ["y8"], name="tanh8"),
    ], "y8")
    nodes = [
        oh.make_node("Equal", ["sr", "k16000"], ["is16k"], name="is_16k"),
        oh.make_node("If", ["is16k"], ["y"], name="by_rate", then_branch=then_g, else_branch=else_g),
    ]
    return _model(nodes,
                  [oh.make_tensor_value_info("x", TP.FLOAT, ["n", 8]),
                   oh.make_tensor_value_info("sr", TP.INT64, [])],
                  [_vi("y")],
                  [_w("W16", 8, 5), _w("b16", 5), _w("W8", 8, 2),
                   numpy_helper.from_array(np.array(16000, np.int64), "k16000")])


def test_if_on_condition_computed_from_int_input(tmp_path):
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    src = _check(_sr_model(), tmp_path,
                 [{"x": x, "sr": np.array(16000, np.int64)}, {"x": x, "sr": np.array(8000, np.int64)}])
    assert "# by_rate (If)" in src and "else:" in src


def test_nested_if(tmp_path):
    inner_then = _branch("inner_then", [oh.make_node("Mul", ["x", "two"], ["it"], name="dbl")], "it")
    inner_else = _branch("inner_else", [oh.make_node("Neg", ["x"], ["ie"], name="neg")], "ie")
    outer_then = _branch("outer_then", [
        oh.make_node("If", ["b"], ["inner"], name="inner_if", then_branch=inner_then,
                     else_branch=inner_else),
        oh.make_node("Add", ["inner", "one"], ["ot"], name="plus1"),
    ], "ot")
    outer_else = _branch("outer_else", [
        oh.make_node("ReduceSum", ["x"], ["oe"], name="total", keepdims=0),
    ], "oe")
    node = oh.make_node("If", ["a"], ["y"], name="outer_if", then_branch=outer_then,
                        else_branch=outer_else)
    model = _model([node],
                   [oh.make_tensor_value_info("x", TP.FLOAT, [2, 3]),
                    oh.make_tensor_value_info("a", TP.BOOL, []),
                    oh.make_tensor_value_info("b", TP.BOOL, [])],
                   [_vi("y")],
                   [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                    numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    feeds = [{"x": x, "a": np.array(a), "b": np.array(b)} for a in (True, False) for b in (True, False)]
    src = _check(model, tmp_path, feeds)
    fwd = src[src.index("def forward"):]
    inner = next(ln for ln in fwd.splitlines() if ln.strip() == "if bool(b):")
    outer = next(ln for ln in fwd.splitlines() if ln.strip() == "if bool(a):")
    assert len(inner) - len(inner.lstrip()) == len(outer) - len(outer.lstrip()) + 4


def test_branch_reads_outer_value_computed_before_the_if(tmp_path):
    then_g = _branch("then", [oh.make_node("Mul", ["h", "h"], ["sq"], name="square")], "sq")
    else_g = _branch("else", [oh.make_node("Sub", ["h", "x"], ["d"], name="diff")], "d")
    nodes = [
        oh.make_node("Relu", ["x"], ["h"], name="relu"),
        oh.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        oh.make_node("Greater", ["s", "zero"], ["pos"], name="is_pos"),
        oh.make_node("If", ["pos"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
        oh.make_node("Add", ["y", "h"], ["z"], name="after"),
    ]
    model = _model(nodes, [oh.make_tensor_value_info("x", TP.FLOAT, ["n", 3])],
                   [_vi("z")],
                   [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    _check(model, tmp_path, [{"x": np.abs(x)}, {"x": -np.abs(x)}])


def test_if_with_several_outputs_passing_outer_values_through(tmp_path):
    # (onnxruntime refuses a subgraph output that is an outer value itself: Identity in between)
    then_g = oh.make_graph([oh.make_node("Add", ["x", "x"], ["t0"], name="twice"),
                            oh.make_node("Identity", ["x"], ["t1"], name="keep_x")], "then", [],
                           [_vi("t0"), _vi("t1")])
    else_g = oh.make_graph([oh.make_node("Identity", ["W"], ["e0"], name="weight"),
                            oh.make_node("Identity", ["x"], ["e1"], name="same")], "else", [],
                           [_vi("e0"), _vi("e1")])
    node = oh.make_node("If", ["c"], ["y0", "y1"], name="two_out", then_branch=then_g,
                        else_branch=else_g)
    model = _model([node],
                   [oh.make_tensor_value_info("x", TP.FLOAT, [2]),
                    oh.make_tensor_value_info("c", TP.BOOL, [1])],
                   [_vi("y0"),
                    _vi("y1")],
                   [_w("W", 2)])
    x = RNG.standard_normal(2).astype(np.float32)
    _check(model, tmp_path, [{"x": x, "c": np.array([True])}, {"x": x, "c": np.array([False])}])


def test_constant_condition_still_selects_branch_at_codegen(tmp_path):
    then_g = _branch("then", [oh.make_node("Neg", ["x"], ["n1"], name="neg")], "n1")
    else_g = _branch("else", [oh.make_node("Abs", ["x"], ["a1"], name="abs")], "a1")
    nodes = [oh.make_node("If", ["k"], ["y"], name="fixed", then_branch=then_g, else_branch=else_g)]
    model = _model(nodes, [oh.make_tensor_value_info("x", TP.FLOAT, [3])],
                   [_vi("y")],
                   [numpy_helper.from_array(np.array(True), "k")])
    src = _check(model, tmp_path, [{"x": RNG.standard_normal(3).astype(np.float32)}])
    fwd = src[src.index("def forward"):]
    assert "if bool(" not in fwd and "torch.abs" not in fwd


def test_if_on_shape_derived_condition_and_sequence_outputs(tmp_path):
    # cond = (x.shape[0] == 2); each branch returns a sequence, read after the If
    seq_t = oh.make_value_info("s", oh.make_sequence_type_proto(oh.make_tensor_type_proto(TP.FLOAT, None)))
    then_g = oh.make_graph([oh.make_node("SequenceConstruct", ["x", "x"], ["s"], name="pair")],
                           "then", [], [seq_t])
    seq_e = oh.make_value_info("s1", oh.make_sequence_type_proto(oh.make_tensor_type_proto(TP.FLOAT, None)))
    else_g = oh.make_graph([oh.make_node("Neg", ["x"], ["nx"], name="neg"),
                            oh.make_node("SequenceConstruct", ["nx"], ["s1"], name="single")],
                           "else", [], [seq_e])
    nodes = [
        oh.make_node("Shape", ["x"], ["shp"], name="shape"),
        oh.make_node("Gather", ["shp", "i0"], ["rows"], name="rows", axis=0),
        oh.make_node("Equal", ["rows", "two"], ["is2"], name="is_two"),
        oh.make_node("If", ["is2"], ["seq"], name="choose", then_branch=then_g, else_branch=else_g),
        oh.make_node("SequenceAt", ["seq", "i0"], ["y"], name="first"),
        oh.make_node("SequenceLength", ["seq"], ["n"], name="count"),
    ]
    model = _model(nodes, [oh.make_tensor_value_info("x", TP.FLOAT, ["r", 3])],
                   [_vi("y"), oh.make_tensor_value_info("n", TP.INT64, [])],
                   [numpy_helper.from_array(np.array(0, np.int64), "i0"),
                    numpy_helper.from_array(np.array(2, np.int64), "two")])
    _check(model, tmp_path, [{"x": RNG.standard_normal((2, 3)).astype(np.float32)},
                             {"x": RNG.standard_normal((4, 3)).astype(np.float32)}])
