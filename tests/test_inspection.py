"""modelport.inspect.run on real models: hand-built ONNX graphs with known MACs, a torch CNN
exported with the dynamo exporter, and an ONNX model whose weights live in external data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from modelport.artifact import TensorSpec, to_jsonable
from modelport.formats import LoadOptions
from modelport.inspect.run import inspect


def _save(model: onnx.ModelProto, path: Path, **kwargs) -> str:
    onnx.checker.check_model(model)
    onnx.save(model, str(path), **kwargs)
    return str(path)


def _conv_model(batch: int | str = "batch") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 8, 8, 8])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="test")


def test_conv_macs_exact_with_symbolic_batch(tmp_path):
    path = _save(_conv_model(), tmp_path / "conv.onnx")
    report = inspect(path)
    assert report and report.format == "onnx"
    assert report.macs == 8 * 8 * 8 * 3 * 3 * 3  # out H*W*C_out * C_in*kH*kW, batch taken as 1
    assert report.macs_by_op == {"Conv": report.macs}
    assert any("batch" in n and "set to 1" in n for n in report.notes)
    assert report.params == 8 * 3 * 3 * 3 + 8
    assert report.param_bytes == report.params * 4
    assert report.file_bytes == Path(path).stat().st_size
    assert report.signature.inputs[0] == TensorSpec("x", "float32", ("batch", 3, 8, 8))
    assert report.onnx.opsets == {"ai.onnx": 18} and report.onnx.producer == "test"
    assert report.node_count == 1 and report.op_histogram == {"Conv": 1}


def test_conv_macs_use_given_input_shape(tmp_path):
    path = _save(_conv_model(), tmp_path / "conv.onnx")
    report = inspect(path, options=LoadOptions(inputs=(TensorSpec("x", "float32", (4, 3, 8, 8)),)))
    assert report.macs == 4 * 8 * 8 * 8 * 3 * 3 * 3
    assert not any("set to 1" in n for n in report.notes)


def test_gemm_matmul_broadcast_and_conv_transpose(tmp_path):
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[4, 16] a, float[2, 1, 5, 7] p, float[3, 7, 6] q, float[1, 4, 5, 5] z) => (float[4, 10] y, float[2, 3, 5, 6] m, float[1, 2, 11, 11] t) {
            y = Gemm <transB = 1> (a, w)
            m = MatMul (p, q)
            t = ConvTranspose <strides = [2, 2]> (z, k)
        }
        """
    )
    rng = np.random.default_rng(1)
    model.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "k"),
    ])
    path = _save(model, tmp_path / "mix.onnx")
    report = inspect(path)
    gemm = 4 * 10 * 16
    matmul = 2 * 3 * 5 * 6 * 7  # broadcast batch 2x3, then M*N*K
    conv_t = 1 * 4 * 5 * 5 * 2 * 3 * 3  # every input pixel scatters into C_out/group * k*k outputs
    assert report.macs_by_op == {"Gemm": gemm, "MatMul": matmul, "ConvTranspose": conv_t}
    assert report.macs == gemm + matmul + conv_t
    assert not any("set to 1" in n for n in report.notes)  # every dim was static
    # the shapes the MAC count relied on are the ones onnxruntime produces
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in sess.get_inputs()}
    y, m, t = sess.run(None, feeds)
    assert y.shape == (4, 10) and m.shape == (2, 3, 5, 6)
    assert conv_t == math.prod(feeds["z"].shape) * 2 * 3 * 3 and t.shape[1] == 2


def test_histogram_counts_subgraph_nodes_and_constants_are_params(tmp_path):
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (bool c, float[2, 3] x) => (float[2, 3] y) {
            s = Constant <value = float[2, 3] {1, 2, 3, 4, 5, 6}> ()
            shape = Constant <value = int64[2] {2, 3}> ()
            r = Reshape (x, shape)
            y = If (c) <
                then_branch = t () => (float[2, 3] a) { a = Add (r, s) },
                else_branch = e () => (float[2, 3] b) { b0 = Mul (r, s)  b = Relu (b0) }
            >
        }
        """
    )
    path = _save(model, tmp_path / "if.onnx")
    report = inspect(path)
    assert report.op_histogram == {"Constant": 2, "Add": 1, "If": 1, "Mul": 1, "Relu": 1, "Reshape": 1}
    assert report.node_count == 7
    assert report.params == 6 and report.param_bytes == 24  # the int64 shape constant is no weight
    assert report.macs == 0 and report.macs_by_op == {}  # no Conv/Gemm/MatMul anywhere
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"c": np.array(True), "x": np.ones((2, 3), np.float32)})
    np.testing.assert_allclose(y, np.arange(2, 8, dtype=np.float32).reshape(2, 3))


def test_matmul_inside_loop_body_leaves_macs_unknown(tmp_path):
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (bool c, float[2, 2] x, float[2, 2] w) => (float[2, 2] y) {
            y = If (c) <
                then_branch = t () => (float[2, 2] a) { a = MatMul (x, w) },
                else_branch = e () => (float[2, 2] b) { b = Identity (x) }
            >
        }
        """
    )
    report = inspect(_save(model, tmp_path / "nested.onnx"))
    assert report.macs is None  # never a made-up number
    assert any("subgraphs" in n for n in report.notes)


def test_external_data_counted_from_metadata(tmp_path):
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((256, 128)).astype(np.float32), "w")
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[batch, 256] x) => (float[batch, 128] y) { y = MatMul (x, w) }
        """
    )
    model.graph.initializer.append(w)
    inline = inspect(_save(model, tmp_path / "inline.onnx"))
    ext_dir = tmp_path / "ext"
    ext_dir.mkdir()
    path = _save(model, ext_dir / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                 location="weights.bin", size_threshold=0)
    report = inspect(path)
    assert report.onnx.external_data and not inline.onnx.external_data
    assert report.params == inline.params == 256 * 128
    assert report.param_bytes == 256 * 128 * 4
    assert report.macs == inline.macs == 256 * 128  # per sample
    data_size = (ext_dir / "weights.bin").stat().st_size
    assert data_size >= 256 * 128 * 4
    assert report.file_bytes == Path(path).stat().st_size + data_size
    assert any("external data" in n for n in report.notes)
    # the external file is never read: a same-size file of zeros gives the same report
    (ext_dir / "weights.bin").write_bytes(b"\0" * data_size)
    again = inspect(path)
    assert (again.params, again.param_bytes, again.macs) == (report.params, report.param_bytes, report.macs)


def test_report_is_jsonable(tmp_path):
    report = inspect(_save(_conv_model(), tmp_path / "conv.onnx"))
    data = json.loads(json.dumps(to_jsonable(report)))
    assert data["macs"] == report.macs and data["op_histogram"] == {"Conv": 1}
    assert data["signature"]["inputs"][0]["shape"] == ["batch", 3, 8, 8]


@pytest.fixture(scope="module")
def exported_cnn(tmp_path_factory, cnn):
    """The zoo CNN and its dynamo export (optimized: BN folded into Conv; and unoptimized)."""
    import torch
    import zoo

    d = tmp_path_factory.mktemp("cnn_export")
    module = zoo._cnn_eval(cnn)
    x = torch.randn(2, 3, 32, 32)
    paths = {}
    for optimize in (True, False):
        program = zoo.onnx_export(module, (x,), dynamo=True, optimize=optimize, input_names=["x"],
                                    dynamic_shapes={"x": {0: "batch"}}, verbose=False)
        paths[optimize] = str(d / f"cnn_opt{int(optimize)}.onnx")
        program.save(paths[optimize])
    return cnn, module, paths


def _conv_and_linear_macs(module, x) -> int:
    """MACs of the torch module's Conv2d and Linear layers, measured with forward hooks."""
    import torch

    total = []

    def hook(mod, inputs, out):
        if isinstance(mod, torch.nn.Conv2d):
            total.append(out.numel() * mod.weight[0].numel())
        else:
            total.append(out.numel() * mod.in_features)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        module(x)
    for h in handles:
        h.remove()
    return sum(total)


@pytest.mark.slow
def test_torch_cnn_export_params_histogram_and_macs(exported_cnn):
    import torch

    cnn, module, paths = exported_cnn
    n_params = sum(p.numel() for p in module.parameters())
    bn = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    running_stats = sum(m.running_mean.numel() + m.running_var.numel() for m in bn)

    raw = inspect(paths[False])  # BatchNormalization kept: every parameter and running stat is there
    assert raw.params == n_params + running_stats
    assert raw.param_bytes == 4 * raw.params
    assert raw.op_histogram["Conv"] == 2 and raw.op_histogram["BatchNormalization"] == 2
    assert raw.op_histogram["Gemm"] == 1 and raw.op_histogram["Relu"] == 2
    assert raw.node_count == sum(raw.op_histogram.values())
    expected_macs = _conv_and_linear_macs(module, torch.randn(1, 3, 32, 32))
    assert raw.macs == expected_macs  # needs the Shape->Concat->Reshape chain folded to reach Gemm

    folded = inspect(paths[True])  # the exporter's optimizer folds BN into the convolutions
    assert "BatchNormalization" not in folded.op_histogram
    assert folded.params == n_params - sum(m.weight.numel() + m.bias.numel() for m in bn)
    assert folded.macs == expected_macs
    assert folded.onnx.producer.startswith("pytorch")

    # the same model as a torch module file: parameters plus running stats, from the module itself
    specs = (TensorSpec("x", "float32", (1, 3, 32, 32)),)
    source = inspect(cnn.spec, options=LoadOptions(weights=cnn.safetensors, inputs=specs))
    assert source.format == "torch-module"
    assert source.params == raw.params and source.macs is None
    assert source.signature.outputs[0].shape == (1, 10)
    assert source.file_bytes == Path(cnn.spec.split(":")[0]).stat().st_size + Path(cnn.safetensors).stat().st_size


def test_torch_module_without_input_specs_still_counts_params(tmp_path):
    src = tmp_path / "lin.py"
    src.write_text("import torch\nclass Lin(torch.nn.Module):\n"
                   "    def __init__(self):\n        super().__init__()\n        self.fc = torch.nn.Linear(5, 3)\n"
                   "    def forward(self, x):\n        return self.fc(x)\n")
    report = inspect(f"{src}:Lin")
    assert report.params == 5 * 3 + 3 and report.signature is None
    assert any("signature unknown" in n for n in report.notes)


@pytest.mark.slow
def test_keras_count_params(tmp_path):
    keras = pytest.importorskip("keras")
    inputs = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(hidden)))
    path = str(tmp_path / "m.keras")
    model.save(path)
    report = inspect(path)
    assert report.format == "keras"
    assert report.params == model.count_params() == (6 * 4 + 4) + 4 * 4 + (4 * 2 + 2)
    assert report.param_bytes == report.params * 4
    assert report.signature.inputs[0].shape == ("batch", 6)
    assert report.macs is None


@pytest.mark.slow
def test_savedmodel_and_tflite_params_match_the_keras_source():
    pytest.importorskip("tensorflow")
    import zoo_tf

    keras_report = inspect(zoo_tf.mlp_sequential())
    assert keras_report.params == 64 * 32 + 32 + 32 * 10 + 10
    exported = inspect(zoo_tf.exported_savedmodel())  # Keras tracks each weight twice in the export
    assert exported.format == "savedmodel" and exported.params == keras_report.params
    assert exported.param_bytes == keras_report.param_bytes
    module = inspect(zoo_tf.module_savedmodel())
    assert module.params == 4 * 3 + 3
    assert [s.name for s in module.signature.outputs] == ["y", "z"]
    lite = inspect(zoo_tf.tflite_from_keras("mlp"))
    # the MLP is untrained: its biases are zeros, which TF's converter drops (FULLY_CONNECTED without bias)
    assert all(not np.any(layer.bias.numpy()) for layer in zoo_tf._mlp().layers if hasattr(layer, "bias"))
    assert lite.format == "tflite" and lite.params == 64 * 32 + 32 * 10
    assert lite.op_histogram.get("FULLY_CONNECTED") == 2 and lite.node_count == sum(lite.op_histogram.values())
    assert lite.file_bytes == Path(zoo_tf.tflite_from_keras("mlp")).stat().st_size


def test_quantized_ops_keep_the_float_model_macs(tmp_path):
    """ConvInteger (int8 dynamic) and MatMulNBits (int4) do the same multiply-accumulates as their float ops."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    conv = _save(_conv_model(batch=1), tmp_path / "conv.onnx")
    quantize_dynamic(conv, tmp_path / "conv.int8.onnx", weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    assert "ConvInteger" in inspect(str(tmp_path / "conv.int8.onnx")).op_histogram
    assert inspect(str(tmp_path / "conv.int8.onnx")).macs == inspect(conv).macs

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 32])], [w])
    mm = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    quantizer = MatMulNBitsQuantizer(mm, block_size=32, is_symmetric=True)
    quantizer.process()
    int4 = _save(quantizer.model.model, tmp_path / "mm.int4.onnx")
    assert "com.microsoft::MatMulNBits" in inspect(int4).op_histogram
    assert inspect(int4).macs == 4 * 64 * 32
