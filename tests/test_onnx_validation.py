"""ONNX scope validation on load (formats.onnx_format.load_model / validate_model).

Invalid files as some public packages ship them: an If branch that uses a name nothing defines
(refused by every command, exit 2, one line, nothing written), and a main graph that is merely out
of topological order (sorted on load with a warning on stderr, then converted and verified).
Every model is built here with onnx.helper and saved as a real file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.errors import BadInputError
from modelport.formats.onnx_format import load_model, validate_model

OPSET = 16


def _vi(name: str, shape=(2, 3), elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "main", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="test")


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))  # no checker: these files are invalid on purpose
    return path


def _if_model(then_input: str, *, late: bool = False) -> onnx.ModelProto:
    """y = If(sum(x) > 0) then x + <then_input> else x; with ``late`` a Neg defining 'late' comes after the If."""
    then = helper.make_graph([helper.make_node("Add", ["x", then_input], ["t"], name="Add_7")], "then", [], [_vi("t")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="Id_e")], "else", [], [_vi("e")])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="If_0"),
    ]
    outputs = [_vi("y")]
    if late:
        nodes.append(helper.make_node("Neg", ["x"], ["late"], name="neg"))
        outputs.append(_vi("late"))
    return _model(nodes, [_vi("x")], outputs, [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])


def _loop_model(*, late_in_body: bool = False) -> onnx.ModelProto:
    """A valid Loop (3 trips) whose body uses outer values ('w', 'h') and holds an If using body and outer values.

    With ``late_in_body`` the If inside the body uses 'late_b', which the body defines only after the If.
    """
    then_in = "late_b" if late_in_body else "acc_in"
    then = helper.make_graph([helper.make_node("Mul", [then_in, "w"], ["t"], name="then_mul")], "then", [], [_vi("t")])
    other = helper.make_graph([helper.make_node("Add", ["acc_in", "h"], ["e"], name="else_add")], "else", [], [_vi("e")])
    body_nodes = [
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
        helper.make_node("If", ["flag"], ["acc_out"], then_branch=then, else_branch=other, name="inner_if"),
    ]
    if late_in_body:
        body_nodes.append(helper.make_node("Neg", ["acc_in"], ["late_b"], name="late_neg"))
    body = helper.make_graph(
        body_nodes, "body",
        [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("acc_in")],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("acc_out")],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["h"], name="relu"),
        helper.make_node("Loop", ["trips", "true", "h"], ["y"], body=body, name="loop"),
    ]
    inits = [
        numpy_helper.from_array(np.full((2, 3), 0.5, np.float32), "w"),
        numpy_helper.from_array(np.array(3, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.array(True), "flag"),
    ]
    return _model(nodes, [_vi("x")], [_vi("y")], inits)


def _unsorted_model() -> onnx.ModelProto:
    """y = relu(x + b) * 2 with its nodes stored in reverse order (each uses a value a later node defines)."""
    nodes = [
        helper.make_node("Mul", ["r", "two"], ["y"], name="mul"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Add", ["x", "b"], ["a"], name="add"),
    ]
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "b"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    return _model(nodes, [_vi("x")], [_vi("y")], inits)


def _one_line(res, code: int) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    return line


UNDEFINED_IN_BRANCH = "node 'Add_7' (Add) in the then_branch of If 'If_0' uses 'val_0_2', which nothing defines before it"


# ----------------------------------------------------------------------------- refused: undefined names


@pytest.mark.parametrize("verb", ["inspect", "check", "convert", "compress", "adapt"])
def test_undefined_name_in_branch_is_refused_by_every_verb(cli, tmp_path, verb):
    src = _save(_if_model("val_0_2"), tmp_path / "m.onnx")
    out = tmp_path / "out"
    args = {
        "inspect": ("inspect", src),
        "check": ("check", src, "--target", "onnxruntime-cpu"),
        "convert": ("convert", src, "--to", "torch", "-o", out),
        "compress": ("compress", src, "--quantize", "dynamic"),  # default output, next to the input
        "adapt": ("adapt", src, "-o", tmp_path / "out.onnx", "--opset", "17"),
    }[verb]
    line = _one_line(cli(*args), 2)
    assert line == f"modelport: error: {src}: {UNDEFINED_IN_BRANCH}", line
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # nothing written, no temp left


def test_undefined_name_in_main_graph_and_in_outputs():
    m = _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")], [_vi("x")], [_vi("y")])
    with pytest.raises(BadInputError, match=r"^node 'add' \(Add\) in the main graph uses 'ghost', which nothing defines before it$"):
        validate_model(m)
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x")], [_vi("y"), _vi("nowhere")])
    with pytest.raises(BadInputError, match=r"^the main graph \(as a graph output\) uses 'nowhere'"):
        validate_model(m)


def test_unnamed_node_and_nested_scope_are_named():
    m = _if_model("val_0_2")
    then = next(a.g for a in m.graph.node[2].attribute if a.name == "then_branch")
    then.node[0].name = ""  # the then_branch's Add, unnamed
    m.graph.node[2].name = ""  # and the If too
    with pytest.raises(BadInputError, match=r"^unnamed Add node #0 in the then_branch of unnamed If node #2 uses 'val_0_2'"):
        validate_model(m)


def test_branch_using_a_value_defined_after_its_if_is_refused(tmp_path, cli):
    """Inside a Loop body (subgraphs are never reordered), an If's branch uses a value the body defines after the If."""
    src = _save(_loop_model(late_in_body=True), tmp_path / "late.onnx")
    line = _one_line(cli("inspect", src), 2)
    assert line == (f"modelport: error: {src}: node 'then_mul' (Mul) in the then_branch of If 'inner_if' in the body of "
                    "Loop 'loop' uses 'late_b', which nothing defines before it (only node 'late_neg' (Neg) in the body "
                    "of Loop 'loop' does, later or out of its scope)"), line
    _one_line(cli("convert", src, "--to", "torch", "-o", tmp_path / "out"), 2)
    assert sorted(os.listdir(tmp_path)) == ["late.onnx"]


def test_a_sibling_branch_value_is_out_of_scope():
    m = _if_model("e")  # 'e' is the else_branch's own value: the then_branch cannot see it
    with pytest.raises(BadInputError, match=r"uses 'e', which nothing defines before it \(only node 'Id_e' \(Identity\) "
                                            r"in the else_branch of If 'If_0' does"):
        validate_model(m)


# ----------------------------------------------------------------------------- accepted untouched


def test_valid_control_flow_with_outer_scope_values_passes_untouched(tmp_path, cli):
    model = _loop_model()
    onnx.checker.check_model(model, full_check=True)  # valid by onnx's own rules
    src = _save(model, tmp_path / "loop.onnx")
    before = src.read_bytes()
    notes: list[str] = []
    loaded = load_model(src, notes=notes)
    assert notes == [] and loaded.SerializeToString() == before
    res = cli("inspect", src)
    assert res.exit_code == 0, res.stderr
    assert "warning" not in res.stderr
    res = cli("convert", src, "--to", "torch", "-o", tmp_path / "loop_torch")
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "modelport: warning" not in res.stderr
    assert src.read_bytes() == before


def test_optional_empty_inputs_are_not_uses():
    clip = helper.make_node("Clip", ["x", "", "hi"], ["y"], name="clip")
    m = _model([clip], [_vi("x")], [_vi("y")], [numpy_helper.from_array(np.array(1.0, np.float32), "hi")])
    assert validate_model(m) is None


# ----------------------------------------------------------------------------- sorted: out of order only


def test_out_of_order_main_graph_is_sorted_stably_with_a_note():
    m = _unsorted_model()
    note = validate_model(m)
    assert [n.name for n in m.graph.node] == ["add", "relu", "mul"]
    assert note == ("the main graph's nodes are out of topological order (node 'mul' (Mul) uses 'r' before node 'relu' "
                    "(Relu) defines it); sorted them on load, 2 of 3 node(s) moved (onnx's checker rejects such a file)")
    onnx.checker.check_model(m)
    # stable: independent nodes keep their order, only what must move does
    nodes = [helper.make_node("Neg", ["x"], ["n1"], name="n1"), helper.make_node("Relu", ["late"], ["n2"], name="n2"),
             helper.make_node("Abs", ["x"], ["n3"], name="n3"), helper.make_node("Exp", ["x"], ["late"], name="n4")]
    m = _model(nodes, [_vi("x")], [_vi("n1"), _vi("n2"), _vi("n3")])
    validate_model(m)
    assert [n.name for n in m.graph.node] == ["n1", "n3", "n4", "n2"]


def test_an_if_before_the_value_its_branch_uses_in_the_main_graph_is_sorted():
    """The main graph is the one graph modelport reorders: an If whose branch uses a main-graph value defined after it
    is out of order (onnx's checker says so), not undefined; onnxruntime runs it too, it sorts the same way."""
    m = _if_model("late", late=True)
    note = validate_model(m)
    assert "node 'If_0' (If) in its then_branch uses 'late' before node 'neg' (Neg) defines it" in note
    assert [n.name for n in m.graph.node] == ["sum", "gt", "neg", "If_0"]
    onnx.checker.check_model(m)


def test_cycle_and_ambiguous_order_are_refused():
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="ra"), helper.make_node("Relu", ["a"], ["b"], name="rb")]
    with pytest.raises(BadInputError, match="the main graph has a cycle: node 'ra' \\(Relu\\)"):
        validate_model(_model(nodes, [_vi("x")], [_vi("a")]))
    nodes = [helper.make_node("Relu", ["a"], ["y"], name="r"), helper.make_node("Neg", ["x"], ["a"], name="n1"),
             helper.make_node("Abs", ["x"], ["a"], name="n2")]
    with pytest.raises(BadInputError, match="'a' is defined twice"):
        validate_model(_model(nodes, [_vi("x")], [_vi("y")]))


def test_out_of_order_model_converts_and_verifies_with_the_warning_on_stderr(tmp_path, cli):
    src = _save(_unsorted_model(), tmp_path / "unsorted.onnx")
    before = src.read_bytes()
    res = cli("convert", src, "--to", "torch", "-o", tmp_path / "torch_out")
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "parity" in res.stdout.lower() or "max" in res.stdout.lower(), res.stdout  # verified against onnxruntime
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("modelport: warning: ")]
    assert warnings == [f"modelport: warning: {src}: the main graph's nodes are out of topological order (node 'mul' "
                        "(Mul) uses 'r' before node 'relu' (Relu) defines it); sorted them on load, 2 of 3 node(s) "
                        "moved (onnx's checker rejects such a file)"], res.stderr  # once, though loaded several times
    assert src.read_bytes() == before  # the input file is never rewritten


@pytest.mark.parametrize("verb", ["inspect", "check"])
def test_out_of_order_model_inspects_and_checks(tmp_path, cli, verb):
    src = _save(_unsorted_model(), tmp_path / f"{verb}.onnx")
    args = ("inspect", src) if verb == "inspect" else ("check", src, "--target", "onnxruntime-cpu")
    res = cli(*args)
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "out of topological order" in res.stderr


def test_out_of_order_model_adapts_to_a_valid_file(tmp_path, cli):
    src = _save(_unsorted_model(), tmp_path / "adapt.onnx")
    out = tmp_path / "adapted.onnx"
    res = cli("adapt", src, "-o", out, "--opset", "17")
    assert res.exit_code == 0, res.stdout + res.stderr
    onnx.checker.check_model(onnx.load(str(out)))  # written in order


def test_notes_list_takes_the_note_instead_of_stderr(tmp_path, capsys):
    src = _save(_unsorted_model(), tmp_path / "n.onnx")
    notes: list[str] = []
    model = load_model(src, notes=notes)
    assert len(notes) == 1 and "out of topological order" in notes[0]
    assert capsys.readouterr().err == ""
    assert [n.name for n in model.graph.node] == ["add", "relu", "mul"]


# ----------------------------------------------------------------------------- cost


def _chain(n: int, *, reverse: bool = False) -> onnx.ModelProto:
    nodes = [helper.make_node("Add" if k % 2 else "Relu", [f"v{k}", "b"] if k % 2 else [f"v{k}"], [f"v{k + 1}"],
                              name=f"n{k}") for k in range(n)]
    if reverse:
        nodes.reverse()
    return _model(nodes, [_vi("v0")], [_vi(f"v{n}")], [numpy_helper.from_array(np.ones((2, 3), np.float32), "b")])


def test_check_is_one_linear_walk_on_10k_nodes():
    m = _chain(10_000)
    t = time.perf_counter()
    assert validate_model(m) is None
    sorted_walk = time.perf_counter() - t
    r = _chain(10_000, reverse=True)
    t = time.perf_counter()
    assert validate_model(r) is not None
    sort_walk = time.perf_counter() - t
    assert [n.name for n in r.graph.node] == [n.name for n in m.graph.node]
    assert sorted_walk < 1.0 and sort_walk < 2.0, (sorted_walk, sort_walk)  # ~0.02 s and ~0.1 s on a laptop core
