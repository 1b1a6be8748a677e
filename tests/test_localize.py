"""localize / reduce: where two models disagree, on real models with one planted divergence.

The reference is a small residual CNN written with onnx.helper (named nodes, batch 1). A copy
has ONE Conv's weights scaled by 1.5 in the middle of the network (``conv3``, whose output
feeds a residual Add); each backend's model is converted from that copy and localized
against the original.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.artifact import to_jsonable
from modelport.errors import BadInputError, UnsupportedError
from modelport.verify.localize import localize
from modelport.verify.reduce import reduce

PERTURBED = "conv3"
BEFORE = ("conv1", "relu1", "conv2", "relu2")  # the nodes computed before the perturbed one


def residual_cnn() -> onnx.ModelProto:
    """x 1x3x16x16 -> conv-relu-conv-relu-conv (+ skip) -> relu -> maxpool -> conv/2-relu -> GAP -> linear -> y 1x5."""
    rng = np.random.default_rng(0)

    def w(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1_out"], name="conv1", **conv),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("Conv", ["relu1_out", "w2", "b2"], ["conv2_out"], name="conv2", **conv),
        helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
        helper.make_node("Conv", ["relu2_out", "w3", "b3"], ["conv3_out"], name="conv3", **conv),
        helper.make_node("Add", ["conv3_out", "relu1_out"], ["res_out"], name="residual"),
        helper.make_node("Relu", ["res_out"], ["relu3_out"], name="relu3"),
        helper.make_node("MaxPool", ["relu3_out"], ["pool_out"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        # SAME_UPPER at stride 2: the torch compiler embeds its _same_pads function in model.py
        helper.make_node("Conv", ["pool_out", "w4", "b4"], ["conv4_out"], name="conv4", kernel_shape=[3, 3],
                         strides=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["conv4_out"], ["relu4_out"], name="relu4"),
        helper.make_node("GlobalAveragePool", ["relu4_out"], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten"),
        helper.make_node("MatMul", ["flat_out", "wfc"], ["fc_out"], name="fc"),
        helper.make_node("Add", ["fc_out", "bfc"], ["y"], name="fc_bias"),
    ]
    inits = [w("w1", 8, 3, 3, 3), w("b1", 8, scale=0.1), w("w2", 8, 8, 3, 3, scale=0.15), w("b2", 8, scale=0.1),
             w("w3", 8, 8, 3, 3, scale=0.15), w("b3", 8, scale=0.1), w("w4", 16, 8, 3, 3, scale=0.15),
             w("b4", 16, scale=0.1), w("wfc", 16, 5), w("bfc", 5, scale=0.1)]
    graph = helper.make_graph(nodes, "residual_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def scaled(model: onnx.ModelProto, initializer: str, factor: float = 1.5) -> onnx.ModelProto:
    """A copy of ``model`` with one initializer multiplied by ``factor``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == initializer:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), initializer))
            return out
    raise AssertionError(f"no initializer {initializer}")


def renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy computing the same with every node and every value but the input renamed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = {"x"} | {t.name for t in out.graph.initializer}
    new = lambda n: n if n in keep or not n else f"other_{n}"  # noqa: E731
    for node in out.graph.node:
        node.name = f"other_{node.name}"
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
    for vi in out.graph.output:
        vi.name = new(vi.name)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("localize")
    base = residual_cnn()
    paths = {
        "a": base,
        "conv3x1.5": scaled(base, "w3"),
        "fcx1.5": scaled(base, "wfc"),
        "renamed": renamed(base),
        "renamed_conv3x1.5": renamed(scaled(base, "w3")),
    }
    out = {}
    for key, model in paths.items():
        p = d / f"{key}.onnx"
        onnx.save(model, str(p))
        out[key] = str(p)
    return out


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def torch_dir(models, tmp_path_factory) -> str:
    pytest.importorskip("torch")
    from modelport.convert.run import convert

    out = tmp_path_factory.mktemp("torch") / "conv3_torch"
    convert(models["conv3x1.5"], "torch", out, verify=False)
    return str(out)


def _names_the_perturbed_node(loc, *, method: str) -> None:
    """The first divergence is the perturbed Conv itself; everything compared before it is within tolerance."""
    assert loc.method == method, loc.note
    first = loc.first_divergent
    assert first is not None, loc.summary()
    assert (first.node, first.op_type, first.output) == (PERTURBED, "Conv", "conv3_out"), loc.summary()
    assert first.fused == ()  # B exposes the perturbed Conv's own output
    assert first.max_rel > 0.05 and not first.ok
    before = loc.compared[: loc.compared.index(first)]
    assert before and all(c.ok for c in before), [(c.node, c.max_rel) for c in before]
    assert first.inputs_max_rel <= 1e-4  # the error appears here; it is not carried in
    assert {c.node for c in before} <= set(BEFORE)
    assert loc.summary().startswith(f"first divergence at node '{PERTURBED}' (Conv), output 'conv3_out': max rel err ")
    # downstream nodes inherit the error: their inputs carry it
    after = loc.compared[loc.compared.index(first) + 1:]
    assert after and all(c.inputs_max_rel > 0.05 for c in after)
    growth = dict(loc.growth)
    assert growth["conv3_out"] == first.max_rel and max(v for k, v in loc.growth[: list(growth).index("conv3_out")]) <= 1e-4


def test_onnx_vs_onnx_names_the_perturbed_conv(models, feeds):
    loc = localize(models["a"], models["conv3x1.5"], feeds)
    _names_the_perturbed_node(loc, method="names")
    assert [c.node for c in loc.compared[:5]] == [*BEFORE, PERTURBED]  # every node exposed, in A's order
    assert len(loc.compared) == 14 and loc.note == ""
    # the path through the divergence: conv2's branch and the skip from relu1, then on to y
    assert [k for k, _ in loc.growth][-1] == "y" and "relu1_out" in dict(loc.growth)
    doc = json.loads(json.dumps(to_jsonable(loc)))
    assert doc["first_divergent"]["node"] == PERTURBED and doc["method"] == "names" and len(doc["compared"]) == 14


def test_two_unperturbed_models_have_no_divergence(models, feeds, tmp_path):
    copy = tmp_path / "copy.onnx"
    model = onnx.load(models["a"])
    model.producer_name = "a copy"
    onnx.save(model, str(copy))
    loc = localize(models["a"], copy, feeds)
    assert loc.first_divergent is None and bool(loc)
    assert len(loc.compared) == 14 and all(c.ok for c in loc.compared)
    assert loc.summary().startswith("no divergence: 14 tensor(s) within tolerance")
    # and the perturbed model against itself
    assert localize(models["conv3x1.5"], models["conv3x1.5"], feeds).first_divergent is None


def test_graphs_sharing_no_names_compare_the_outputs_only(models, feeds):
    same = localize(models["a"], models["renamed"], feeds)
    assert same.method == "outputs-only" and "share no names" in same.note
    assert [(c.output, c.b_name) for c in same.compared] == [("y", "other_y")]  # paired by position
    assert same.first_divergent is None
    differs = localize(models["a"], models["renamed_conv3x1.5"], feeds)
    assert differs.method == "outputs-only"
    assert differs.first_divergent is not None and differs.first_divergent.output == "y"
    assert differs.summary().startswith("output 'y' (node 'fc_bias', Add) diverges: max rel err ")
    assert "no intermediate tensors to compare (A and B share no names" in differs.summary()


def test_onnx_vs_torch_directory_names_the_perturbed_conv(models, feeds, torch_dir):
    loc = localize(models["a"], torch_dir, feeds)
    _names_the_perturbed_node(loc, method="torch-locals")
    local = loc.first_divergent.b_name  # the local of the generated forward that holds conv3's output
    source = (Path(torch_dir) / "model.py").read_text()
    assert f"        {local} = self." in source
    assert "def _same_pads(" in source  # an embedded function, which value_to_line's numbers do not count
    # the generated forward against the ONNX it was generated from: nothing diverges
    own = localize(models["conv3x1.5"], torch_dir, feeds)
    assert own.first_divergent is None and len(own.compared) >= 12, own.summary()


def test_torch_fused_linear_names_the_unexposed_matmul_as_suspect(models, feeds, tmp_path):
    """The compiler emits MatMul+Add as one nn.Linear: MatMul's own output never exists in B."""
    pytest.importorskip("torch")
    from modelport.convert.run import convert

    out = tmp_path / "fc_torch"
    convert(models["fcx1.5"], "torch", out, verify=False)
    loc = localize(models["a"], out, feeds)
    first = loc.first_divergent
    assert first is not None and (first.node, first.op_type, first.output) == ("fc_bias", "Add", "y")
    assert first.fused == ("fc",) and first.suspects == ("fc", "fc_bias")
    assert first.inputs_max_rel <= 1e-4 and all(c.ok for c in loc.compared[:-1])
    assert "fc_out" not in {c.output for c in loc.compared} and "no counterpart in B" in loc.note
    assert "B does not expose 'fc' before it" in loc.summary()
    # onnx vs onnx names the MatMul itself
    assert localize(models["a"], models["fcx1.5"], feeds).first_divergent.node == "fc"


def test_onnx_vs_openvino_names_the_perturbed_conv(models, feeds, tmp_path):
    pytest.importorskip("openvino")
    from modelport.convert.run import convert

    out = tmp_path / "conv3_ir"
    convert(models["conv3x1.5"], "openvino", out, verify=False)
    loc = localize(models["a"], out, feeds)
    _names_the_perturbed_node(loc, method="openvino-names")
    assert len(loc.compared) >= 12
    assert localize(models["conv3x1.5"], out / "model.xml", feeds).first_divergent is None


def test_onnx_vs_tflite_names_the_perturbed_conv(models, feeds, tmp_path):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("onnx2tf")
    from modelport.convert.run import convert

    out = tmp_path / "conv3.tflite"
    convert(models["conv3x1.5"], "tflite", out, verify=False)
    loc = localize(models["a"], out, feeds)
    _names_the_perturbed_node(loc, method="tflite-dataflow")
    by_node = {c.node: c for c in loc.compared}
    # TFLite fuses Conv+Relu: the Relu's tensor is compared, after moving channels-last back first
    assert by_node["relu1"].fused == ("conv1",) and by_node["relu1"].layout == "channels-last"
    assert "conv1" not in by_node and by_node["conv3"].layout == "channels-last"
    assert by_node["fc_bias"].b_name != "y"  # TFLite's own tensor name: paired along the dataflow
    own = localize(models["conv3x1.5"], out, feeds)
    assert own.first_divergent is None and len(own.compared) >= 8, own.summary()


def test_reduce_cuts_out_the_perturbed_conv(models, feeds, tmp_path):
    from modelport.verify import verify

    red = reduce(models["a"], models["conv3x1.5"], feeds, tmp_path / "piece.onnx")
    assert PERTURBED in red.nodes and len(red.nodes) <= 3, red.summary()
    assert red.ok and not all(red.parity)
    assert red.path == str(tmp_path / "piece.onnx") and red.b_path == str(tmp_path / "piece.b.onnx")
    assert red.inputs_path == str(tmp_path / "piece.inputs.npz")
    assert "x" not in red.inputs  # it starts inside the network, fed the values A computed there
    assert red.window[0] >= len(BEFORE) - 1
    for path in (red.path, red.b_path):
        piece = onnx.load(path)
        onnx.checker.check_model(piece, full_check=True)
        assert len(piece.graph.node) == len(red.nodes)
    # the written pieces, on the written inputs, fail as `modelport verify` compares them
    report = verify(red.path, red.b_path, inputs=red.inputs_path)
    assert not report.ok and report.failures[0].name == "conv3_out"
    assert set(np.load(red.inputs_path).files) == set(red.inputs)
    doc = json.loads(json.dumps(to_jsonable(red)))
    assert doc["nodes"] == list(red.nodes) and doc["parity"][0]["ok"] is False


def test_reduce_refuses_models_that_agree_and_non_onnx_models(models, feeds, tmp_path):
    with pytest.raises(BadInputError, match="agree within tolerance"):
        reduce(models["a"], models["a"], feeds, tmp_path / "piece.onnx")
    with pytest.raises(BadInputError, match="share no tensor names"):
        reduce(models["a"], models["renamed_conv3x1.5"], feeds, tmp_path / "piece.onnx")
    with pytest.raises(BadInputError, match="no such directory"):
        reduce(models["a"], models["conv3x1.5"], feeds, tmp_path / "missing" / "piece.onnx")
    assert not (tmp_path / "piece.onnx").exists()


def test_bad_and_unsupported_inputs_are_one_line_errors(models, feeds, tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(BadInputError, match="no such file"):
        localize(models["a"], tmp_path / "missing.onnx", feeds)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(BadInputError, match="corrupt"):
        localize(models["a"], corrupt, feeds)
    with pytest.raises(BadInputError, match="missing inputs"):
        localize(models["a"], models["a"], {"image": feeds["x"]})
    ts = tmp_path / "linear.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(3, 2).eval(), torch.zeros(1, 3)), str(ts))
    with pytest.raises(UnsupportedError, match="cannot look inside torchscript") as err:
        localize(models["a"], ts, feeds)
    assert "\n" not in str(err.value)
    with pytest.raises(UnsupportedError, match="reference A, not torchscript"):
        localize(ts, models["a"], feeds)
    with pytest.raises(UnsupportedError, match="B is torchscript"):
        reduce(models["a"], ts, feeds, tmp_path / "piece.onnx")


def test_importing_them_imports_no_framework():
    code = ("import sys, modelport, modelport.verify.localize, modelport.verify.reduce; "
            "print([m for m in ('torch', 'tensorflow', 'openvino', 'ai_edge_litert', 'onnxruntime') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
