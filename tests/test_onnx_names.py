"""modelport.formats.onnx_names: one fresh-name rule for every pass that adds values to an ONNX graph
(quantize's subgraph weights, qdq_prep, the Caffe lowering, opset's local constants), checked on its own
and through passes whose first choice of name is already taken in a real graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.formats.onnx_names import NameAllocator, value_names


def test_base_first_then_the_first_free_number():
    names = NameAllocator({"w", "w_1", "w_3"})
    assert names.fresh("x") == "x"  # free: the base itself
    assert names.fresh("w") == "w_2"  # w and w_1 are taken
    assert names.fresh("w") == "w_4"  # w_3 too; w_2 was just handed out
    assert names.fresh("w") == "w_5"
    assert names.fresh("x") == "x_1"  # a name handed out is taken from then on
    assert "w_5" in names and "w_6" not in names


def test_reserve_and_separator():
    names = NameAllocator(sep="__")
    names.reserve(["a", "a__1"])
    assert names.fresh("a") == "a__2"
    taken = {"b"}
    NameAllocator(taken).fresh("b")
    assert taken == {"b"}  # the caller's set is copied, not changed


def test_counting_resumes_where_it_stopped():
    names = NameAllocator()
    got = [names.fresh("c") for _ in range(2000)]
    assert got[:3] == ["c", "c_1", "c_2"] and got[-1] == "c_1999" and len(set(got)) == 2000


def _if_model() -> onnx.ModelProto:
    """x -> If(flag): then MatMul(x, W) with W an initializer of the main graph; else Identity; opset 17."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["t"], name="mm")], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4])])
    else_g = helper.make_graph([helper.make_node("Slice", ["x", "s0", "s1", "s2"], ["e"], name="cut")], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 4])])
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([4], np.int64), "s1"), numpy_helper.from_array(np.array([1], np.int64), "s2"),
             # a value of the main graph already has the name the quantizer picks first for W's int8 copy
             numpy_helper.from_array(np.ones((2, 4), np.float32), "W_quantized")]
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y0"], name="pick", then_branch=then_g, else_branch=else_g),
         helper.make_node("Add", ["y0", "W_quantized"], ["y"], name="add", )],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
              helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_value_names_reaches_into_subgraphs():
    names = value_names(_if_model())
    assert {"x", "flag", "y", "y0", "W", "W_quantized", "t", "e", "s0"} <= names  # t, e: only inside branches
    assert "" not in names and "pick" not in names  # node names are no value names


def test_quantizer_does_not_reuse_a_taken_name():
    """quantize_subgraph_weights names W's int8 copy W_quantized_1 when W_quantized exists; the result still runs
    and computes what the float model does, to int8 rounding."""
    import onnxruntime as ort

    from modelport.compress.quantize import quantize_subgraph_weights

    model = _if_model()
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    done = quantize_subgraph_weights(model, per_channel=False)
    assert done.weights == ("W",)
    inits = {t.name for g in (model.graph, *[a.g for a in model.graph.node[0].attribute]) for t in g.initializer}
    assert {"W_quantized", "W_quantized_1", "W_scale", "W_zero_point"} <= inits
    onnx.checker.check_model(model, full_check=True)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        (a,), (b,) = ref.run(None, feeds), got.run(None, feeds)
        assert np.abs(a - b).max() < 0.05 * np.abs(a).max(), flag
        if not flag:
            assert np.array_equal(a, b)  # the branch without the weight is untouched


@pytest.mark.parametrize("taken", ["fq_clip", "fq_clip_min"])
def test_qdq_prep_names_stay_unique(taken):
    """The fake-quant -> Clip rewrite names its bounds after the QuantizeLinear (fq_clip_min, fq_clip_max); with a
    value of such a name already in the graph it takes the next free one, and the graph stays valid and computes
    what onnxruntime computes for the pair."""
    import onnx_ir as ir
    import onnxruntime as ort

    from modelport.convert import qdq_prep

    s, z = np.float32(0.05), np.int8(0)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="fq"),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dq"),
         helper.make_node("Mul", ["d", taken], ["y"], name="mul")],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        [numpy_helper.from_array(np.array(s), "s"), numpy_helper.from_array(np.array(z), "z"),
         numpy_helper.from_array(np.full((3, 5), 2.0, np.float32), taken)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    irm = ir.serde.deserialize_model(model)
    assert qdq_prep.FakeQuantToClipPass()(irm).modified
    out = ir.serde.serialize_model(irm)
    onnx.checker.check_model(out, full_check=True)
    ops = [n.op_type for n in out.graph.node]
    assert "QuantizeLinear" not in ops and "Clip" in ops
    added = sorted(t.name for t in out.graph.initializer if t.name not in {"s", "z", taken})
    assert added == (["fq_clip_1_max", "fq_clip_1_min"] if taken == "fq_clip" else ["fq_clip_max", "fq_clip_min_1"])
    assert taken in {t.name for t in out.graph.initializer}
    x = np.random.default_rng(2).uniform(-20, 20, (3, 5)).astype(np.float32)  # well past the int8 range: clipped
    (a,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (b,) = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.abs(a - b).max() <= float(s)  # the pair's rounding (s/2, times the Mul's 2)
    saturated = np.abs(x) > 7  # past int8's [-6.4, 6.35] at this scale
    assert saturated.sum() > 3 and np.array_equal(a[saturated], b[saturated])  # the saturation kept exactly


def test_caffe_lowering_keeps_clear_of_the_nets_own_blob_names(tmp_path):
    """A blob named as the lowering would name a layer's weight ("conv/w0") stays the blob; the weight takes the
    next free name, and the ONNX computes the convolution torch computes from the same weights."""
    import onnxruntime as ort
    import torch

    from modelport.convert.run import convert
    from modelport.formats import caffe_format

    (tmp_path / "net.prototxt").write_text(
        'input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv/w0" '
        'convolution_param { num_output: 2 kernel_size: 3 } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "conv/w0" top: "out" }\n')
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((2, 3, 3, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    net = caffe_format.messages()["NetParameter"](name="net")
    layer = net.layer.add(name="conv")
    layer.blobs.append(caffe_format.array_blob(w))
    layer.blobs.append(caffe_format.array_blob(b))
    (tmp_path / "net.caffemodel").write_bytes(net.SerializeToString())

    report = convert(tmp_path / "net.prototxt", "onnx", tmp_path / "net.onnx", verify=False)
    model = onnx.load(report.artifact.path)
    onnx.checker.check_model(model, full_check=True)
    assert {t.name for t in model.graph.initializer} == {"conv/w0_1", "conv/w1"}
    assert [o for n in model.graph.node for o in n.output] == ["conv/w0", "out"]
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    (got,) = ort.InferenceSession(report.artifact.path, providers=["CPUExecutionProvider"]).run(None, {"data": x})
    want = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
