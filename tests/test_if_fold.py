"""An If whose condition the user's input values decide is folded to its taken branch, and reported
(modelport.convert.if_fold; used by ONNX -> OpenVINO, which cannot convert silero-vad's If on sr).
Also: a model that fails at run time in onnxruntime or TensorFlow is a one-line error, not an internal one."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.convert.if_fold import fold_ifs, given_values


def _switch_model(path) -> str:
    """y = relu(x) + If(sr == 16000) then x * W16 + 0.5 else x * W8 - 1."""
    rng = np.random.default_rng(0)
    w16, w8 = (numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float32), n) for n in ("w16", "w8"))
    then = helper.make_graph(
        [helper.make_node("Mul", ["x", "w16"], ["t_mul"]), helper.make_node("Add", ["t_mul", "bias"], ["t_out"])],
        "then", [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [1, 4])], [w16])
    other = helper.make_graph(
        [helper.make_node("Mul", ["x", "w8"], ["e_mul"]), helper.make_node("Sub", ["e_mul", "one"], ["e_out"])],
        "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [1, 4])], [w8])
    nodes = [
        helper.make_node("Constant", [], ["rate"], value=numpy_helper.from_array(np.asarray(16000, np.int64))),
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["branch_out"], name="pick_rate", then_branch=then, else_branch=other),
        helper.make_node("Relu", ["x"], ["relu_x"]),
        helper.make_node("Add", ["branch_out", "relu_x"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.asarray(0.5, np.float32), "bias"), numpy_helper.from_array(np.asarray(1.0, np.float32), "one")]
    graph = helper.make_graph(nodes, "switch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                                helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _ort(model, feeds):
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("rate,branch", [(16000, "then"), (8000, "else")])
def test_fold_takes_the_branch_the_value_picks_and_matches_onnxruntime(tmp_path, rate, branch):
    path = _switch_model(tmp_path / "switch.onnx")
    model = onnx.load(path)
    folded, folds = fold_ifs(model, {"sr": np.asarray(rate, np.int64)})
    assert [f.describe() for f in folds] == [f"input 'sr' frozen at {rate}: If 'pick_rate' folded to its {branch} branch"]
    assert not any(n.op_type == "If" for n in folded.graph.node)
    assert not any(n.op_type == "Equal" for n in folded.graph.node)  # the decided condition is gone
    assert [i.name for i in folded.graph.input] == ["x", "sr"]  # the signature is kept
    onnx.checker.check_model(folded, full_check=True)
    x = np.random.default_rng(1).standard_normal((1, 4)).astype(np.float32)
    feeds = {"x": x, "sr": np.asarray(rate, np.int64)}
    np.testing.assert_array_equal(_ort(folded, feeds), _ort(path, feeds))
    # it holds only for that value: at the other rate the source differs from the folded model
    other = {"x": x, "sr": np.asarray(24000 - rate, np.int64)}
    assert not np.allclose(_ort(folded, other), _ort(path, other))
    assert any(n.op_type == "If" for n in model.graph.node)  # the model given is not changed


def test_no_fold_without_the_value_or_on_a_data_input(tmp_path):
    model = onnx.load(_switch_model(tmp_path / "switch.onnx"))
    assert fold_ifs(model, {}) == (model, [])
    # a condition that reads a data tensor (more than a handful of values) is never folded
    graph = model.graph
    graph.node[1].input[0] = "xsum"
    graph.node.insert(1, helper.make_node("ReduceSum", ["x"], ["xs"], keepdims=0))
    graph.node.insert(2, helper.make_node("Cast", ["xs"], ["xsum"], to=TensorProto.INT64))
    big = {"x": np.ones((1, 4), np.float32) * 4000, "sr": np.asarray(16000, np.int64)}
    assert given_values(["x", "sr"], values={**big, "x": np.ones((1, 64), np.float32)}).keys() == {"sr"}
    assert fold_ifs(model, {"sr": big["sr"]})[1] == []  # its condition reads x, not sr


def test_given_values_from_constants_and_npz(tmp_path):
    from modelport.inputs import parse_input_spec

    np.savez(tmp_path / "in.npz", sr=np.asarray(8000, np.int64), x=np.zeros((1, 512), np.float32))
    got = given_values(["x", "sr"], (parse_input_spec("x:1x512"),), tmp_path / "in.npz")
    assert set(got) == {"sr"} and int(got["sr"]) == 8000
    got = given_values(["x", "sr"], (parse_input_spec("sr=16000"),), tmp_path / "in.npz")  # the spec wins
    assert int(got["sr"]) == 16000 and got["sr"].dtype == np.int64


# silero-vad v6: If(sr == 16000) picks the 16 kHz or 8 kHz net; OpenVINO fails on it as it is and at static shapes.
def _silero(tmp_path):
    import corpus
    from test_real_model_corpus import _fetch

    path = _fetch("silero-vad")
    return path, [a for s in corpus.BY_ID["silero-vad"].specs() if not s.startswith("sr") for a in ("--input", s)]


def test_openvino_folds_silero_vads_if_on_the_given_sr(cli, tmp_path):
    pytest.importorskip("openvino")
    path, specs = _silero(tmp_path)
    r = cli("convert", path, "--to", "openvino", "-o", tmp_path / "vad.xml", *specs, "--input", "sr=16000", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and (tmp_path / "vad.bin").is_file()
    fold = "input 'sr' frozen at 16000: If 'If_0' folded to its then branch"
    assert any(w.startswith(fold) for w in report["warnings"])
    assert fold in json.dumps(report["artifact"])  # in the step's detail (lineage) too
    # the random inputs of the check were fed sr=16000, the value the model was folded at
    assert all(run["input_shapes"]["sr"] == [] for run in report["parity"]["runs"])


def test_openvino_without_a_value_for_sr_is_a_clean_exit_3(cli, tmp_path):
    pytest.importorskip("openvino")
    path, specs = _silero(tmp_path)
    r = cli("convert", path, "--to", "openvino", "-o", tmp_path / "vad.xml", *specs, "--input", "sr::int64")
    assert r.exit_code == 3
    line = r.stderr.strip().splitlines()[-1]
    assert "If-16" in line and "--input NAME=VALUE" in line and "internal error" not in line
    assert not (tmp_path / "vad.xml").exists() and not (tmp_path / "vad.bin").exists()


def test_onnxruntime_failing_at_run_time_is_one_line(tmp_path, cli):
    """A Reshape that cannot take the given input: onnxruntime's RuntimeException becomes a one-line BadInputError."""
    from modelport import formats
    from modelport.errors import BadInputError

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "bad_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, None])],
        [numpy_helper.from_array(np.asarray([3, -1], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "bad_reshape.onnx"
    onnx.save(model, str(path))
    with formats.open_runner(path) as runner:
        np.testing.assert_array_equal(runner.run({"x": np.ones((3, 4), np.float32)})["y"], np.ones((3, 4), np.float32))
        with pytest.raises(BadInputError) as err:
            runner.run({"x": np.ones((2, 4), np.float32)})
    msg = str(err.value)
    assert "\n" not in msg and "x:2x4:float32" in msg and "Reshape" in msg
    np.savez(tmp_path / "bad.npz", x=np.ones((2, 4), np.float32))
    r = cli("convert", path, "--to", "torch", "-o", tmp_path / "torch", "--inputs", tmp_path / "bad.npz")
    assert r.exit_code == 2 and "internal error" not in r.stderr
    assert not (tmp_path / "torch").exists()


def test_savedmodel_failing_at_run_time_is_one_line():
    import zoo_tf  # first: it sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads

    pytest.importorskip("tensorflow")
    from modelport import formats
    from modelport.errors import UnsupportedError

    with formats.open_runner(zoo_tf.module_savedmodel()) as runner:
        assert runner.run({"x": np.ones((2, 4), np.float32)})["z"].tolist() == [4.0, 4.0]
        with pytest.raises(UnsupportedError) as err:
            runner.run({"x": np.ones((2, 5), np.float32)})
    msg = str(err.value)
    assert err.value.exit_code == 3 and "\n" not in msg and "x=(2, 5)" in msg and "{{" not in msg


# --- shapes decide an If too (onnx2tf freezes the user's shapes), and the one cone evaluator ------------------

def _shape_switch_model() -> onnx.ModelProto:
    """y = If(Shape(relu(x))[1] == 4) then x * 2 else x - 1, with x of dims [n, d] (both symbolic)."""
    then = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t_out"])], "then", [],
                             [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Sub", ["x", "one"], ["e_out"])], "else", [],
                              [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["r"], ["shape"]),
        helper.make_node("Gather", ["shape", "axis1"], ["d"], axis=0),
        helper.make_node("Equal", ["d", "four"], ["is4"]),
        helper.make_node("If", ["is4"], ["y"], name="by_width", then_branch=then, else_branch=other),
    ]
    inits = [numpy_helper.from_array(np.asarray(v, dt), n) for n, v, dt in
             (("two", 2.0, np.float32), ("one", 1.0, np.float32), ("axis1", 1, np.int64), ("four", 4, np.int64))]
    graph = helper.make_graph(nodes, "shape_switch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "d"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "d"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("width,branch,expect", [(4, "then", lambda x: x * 2), (3, "else", lambda x: x - 1)])
def test_fold_on_the_given_shapes_of_an_intermediate_value(width, branch, expect):
    model = _shape_switch_model()
    assert fold_ifs(model, {}) == (model, [])  # dims unknown: nothing decided
    folded, folds = fold_ifs(model, {}, {"x": (2, width)})
    assert [f.describe() for f in folds] == [f"at input shapes x=2x{width}: If 'by_width' folded to its {branch} branch"]
    assert not any(n.op_type in ("If", "Shape") for n in folded.graph.node)
    assert [d.dim_value for d in folded.graph.input[0].type.tensor_type.shape.dim] == [2, width]  # frozen there
    onnx.checker.check_model(folded, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, width)).astype(np.float32)
    np.testing.assert_array_equal(_ort(folded, {"x": x}), expect(x))
    np.testing.assert_array_equal(_ort(folded, {"x": x}), _ort(model, {"x": x}))


def test_cone_evaluator_stops_at_subgraphs_unknown_values_and_limits():
    from modelport.formats.onnx_fold import cone_value, find_cone

    model = _shape_switch_model()
    graph, opsets = model.graph, model.opset_import
    inits = {t.name: t for t in graph.initializer}
    cone = find_cone(graph, "is4")
    assert [n.op_type for n in cone.nodes] == ["Relu", "Shape", "Gather", "Equal"] and cone.leaves == {"x", "axis1", "four"}
    # from a known x (an array) and the initializers: the exact value; x unknown: None
    assert bool(cone_value(graph, "is4", {**inits, "x": np.zeros((1, 4), np.float32)}, opsets)) is True
    assert bool(cone_value(graph, "is4", {**inits, "x": np.zeros((1, 5), np.float32)}, opsets)) is False
    assert cone_value(graph, "is4", inits, opsets) is None
    # stopping at a known Shape output; op filter and node limit; a node with a subgraph has no cone
    assert find_cone(graph, "is4", stop={"shape"}).leaves == {"shape", "axis1", "four"}
    assert find_cone(graph, "is4", ops={"Gather", "Equal", "Shape"}) is None
    assert find_cone(graph, "is4", limit=3) is None and find_cone(graph, "is4", limit=4) is not None
    assert find_cone(graph, "y") is None


def test_fitting_permutation_is_taken_only_when_one_order_is_best():
    from modelport.convert.onnx_to_tf import _fitting_permutation

    a = np.random.default_rng(0).standard_normal((2, 1, 128)).astype(np.float32)
    assert _fitting_permutation(a, np.transpose(a, (1, 0, 2))) == [1, 0, 2]  # onnx2tf's LSTM state stack
    b = np.random.default_rng(1).standard_normal((3, 3)).astype(np.float32)
    assert _fitting_permutation(b + b.T, b + b.T) is None  # symmetric: both orders fit equally
    assert _fitting_permutation(a, np.zeros((2, 3, 128), np.float32)) is None


def test_state_inputs_are_the_recurrent_ones():
    from modelport.convert.onnx_to_tf import _state_inputs

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
              (("x", [5, 1, 8]), ("state", [2, 1, 16]), ("img", [1, 3, 4, 4]))]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("W", (1, 64, 8)), ("R", (1, 64, 16)), ("k", (3, 3, 1, 1)))]
    inits.append(numpy_helper.from_array(np.asarray(0, np.int64), "i0"))
    nodes = [helper.make_node("Gather", ["state", "i0"], ["h0"], axis=0),
             helper.make_node("Unsqueeze", ["h0", "ax0"], ["h"]),
             helper.make_node("LSTM", ["x", "W", "R", "", "", "h"], ["yy"], hidden_size=16),
             helper.make_node("Conv", ["img", "k"], ["z"])]
    inits.append(numpy_helper.from_array(np.asarray([0], np.int64), "ax0"))
    graph = helper.make_graph(nodes, "rnn", inputs, [helper.make_tensor_value_info("yy", TensorProto.FLOAT, None),
                                                     helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert _state_inputs(model) == ["state"]  # x is the LSTM's sequence, img a feature map


def _silero_specs(model_id: str) -> tuple[str, list[str]]:
    import corpus
    from test_real_model_corpus import _fetch

    path = _fetch(model_id)
    return path, [a for s in corpus.BY_ID[model_id].specs() if not s.startswith("sr") for a in ("--input", s)]


@pytest.mark.slow
def test_tflite_folds_silero_vads_ifs_on_the_given_sr_and_shapes(cli, tmp_path):
    pytest.importorskip("onnx2tf")
    path, specs = _silero_specs("silero-vad")
    out = tmp_path / "vad.tflite"
    r = cli("convert", path, "--to", "tflite", "-o", out, *specs, "--input", "sr=16000", "--tflite-route", "onnx2tf",
            "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and out.is_file()
    fold = "input 'sr' frozen at 16000: If 'If_0' folded to its then branch"
    assert any(w.startswith(fold) and w.endswith("holds only for these values") for w in report["warnings"])
    # the inner Ifs on the state's batch and the encoder's length, at the shapes given
    assert any(w.startswith("at input shapes input=1x512, state=2x1x128: If ") for w in report["warnings"])
    assert fold in json.dumps(report["artifact"])  # in the step's detail (lineage) too
    assert all(o["ok"] and o["max_abs"] < 1e-4 for run in report["parity"]["runs"] for o in run["outputs"])
    assert {o["name"] for run in report["parity"]["runs"] for o in run["outputs"]} == {"output", "stateN"}


@pytest.mark.slow
def test_savedmodel_without_a_value_for_sr_is_a_clean_exit_3_with_the_hint(cli, tmp_path):
    pytest.importorskip("onnx2tf")
    path, specs = _silero_specs("silero-vad")
    r = cli("convert", path, "--to", "savedmodel", "-o", tmp_path / "vad", *specs, "--input", "sr::int64")
    assert r.exit_code == 3
    line = r.stderr.strip().splitlines()[-1]
    assert "If 'If_0' reads input 'sr'" in line and "--input sr=VALUE" in line and "internal error" not in line
    assert not (tmp_path / "vad").exists()
