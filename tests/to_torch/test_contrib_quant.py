"""onnxruntime's quantized contrib ops (com.microsoft) -> PyTorch, on models onnxruntime's own tools write.

Small real models (a bidirectional LSTM tagger, MLPs) are exported from torch, quantized by
``onnxruntime.quantization.quantize_dynamic`` (per tensor and per channel) and saved again by an
onnxruntime session with its graph optimizations (which fuses them into DynamicQuantizeMatMul and
MatMulIntegerToFloat). Each goes through the real ``modelport convert X --to torch``, which verifies
parity against onnxruntime; the reported max error is asserted. Dynamic quantization rounds: a
one-ulp difference upstream moves a value a whole quantization step, so these compute as
onnxruntime does, bit for bit on this machine.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import zoo

from modelport.cli.app import main

MS = "com.microsoft"
#: what the verified conversions may differ from onnxruntime by (they match exactly here; a
#: quantization step moved would be ~1e-3)
EXACT = 1e-6


class Tagger(torch.nn.Module):
    """A sequence tagger: bidirectional LSTM then a linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = torch.nn.LSTM(12, 24, bidirectional=True)
        self.fc = torch.nn.Linear(48, 7)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y)


class TwoHeads(torch.nn.Module):
    """An MLP whose hidden layer feeds two heads: one quantized activation, two integer matmuls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(16, 32)
        self.b = torch.nn.Linear(32, 8)
        self.c = torch.nn.Linear(32, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) * self.c(h)


def _export(module, example, path: Path, dynamic_axes) -> Path:
    zoo.onnx_export(module.eval(), (example,), str(path), input_names=["x"], output_names=["y"],
                    dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
    return path


def _quantize(src: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from modelport.quiet import quiet

    out = src.with_name(f"{src.stem}_int8_pc{int(per_channel)}.onnx")
    with quiet():
        quantize_dynamic(str(src), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
    return out


def _ort_optimized(src: Path) -> Path:
    """The model as an onnxruntime session saves it after its (extended) graph optimizations."""
    out = src.with_name(src.stem + "_ortopt.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return out


def _ops(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.domain == MS)


def _convert(capsys, src: Path, out: Path, *extra: str) -> dict:
    capsys.readouterr()
    rc = main(["convert", str(src), "--to", "torch", "-o", str(out), "--json", *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    assert report["ok"] is True and report["parity"]["ok"] is True
    return report


def _max_abs(report: dict) -> float:
    return max(o["max_abs"] for r in report["parity"]["runs"] for o in r["outputs"])


_PLAIN = """
import sys
sys.modules["modelport"] = None  # model.py must not need modelport
import numpy as np, torch
from safetensors.torch import load_file
sys.path.insert(0, sys.argv[1])
import model
net = model.Model()
net.load_state_dict(load_file(sys.argv[1] + "/weights.safetensors"), strict=True)
feeds = np.load(sys.argv[2])
with torch.no_grad():
    y = net.eval()(*[torch.from_numpy(feeds[k]) for k in feeds.files])
np.save(sys.argv[3], (y[0] if isinstance(y, (tuple, list)) else y).numpy())
"""


def _plain_torch(out: Path, feeds: dict[str, np.ndarray], tmp_path: Path) -> np.ndarray:
    """Runs the generated model.py + weights in a fresh python with only torch (modelport blocked),
    the inputs in the graph's order."""
    np.savez(tmp_path / "feeds.npz", **feeds)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    r = subprocess.run([sys.executable, "-c", _PLAIN, str(out), str(tmp_path / "feeds.npz"), str(tmp_path / "y.npy")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    return np.load(tmp_path / "y.npy")


def _ort_run(path: Path, feeds: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantized_lstm_tagger(tmp_path, capsys, per_channel):
    """quantize_dynamic's DynamicQuantizeLSTM (+ the head's DynamicQuantizeMatMul after onnxruntime's
    fusion), verified at two batch sizes (batch 2 is split across onnxruntime's threads)."""
    src = _export(Tagger(), torch.randn(9, 2, 12), tmp_path / "tagger.onnx", {"x": {0: "seq", 1: "batch"}})
    quant = _ort_optimized(_quantize(src, per_channel))
    assert _ops(quant) == {"DynamicQuantizeLSTM": 1, "DynamicQuantizeMatMul": 1}
    report = _convert(capsys, quant, tmp_path / "torch")
    assert len(report["parity"]["runs"]) == 2 and _max_abs(report) <= EXACT
    src_py = (tmp_path / "torch" / "model.py").read_text()
    assert "_qlstm(" in src_py and "_dq_matmul(" in src_py
    if per_channel:  # the generated code alone, in plain torch, on a batch of 3 the check did not use
        x = np.random.default_rng(7).normal(size=(11, 3, 12)).astype(np.float32)
        got = _plain_torch(tmp_path / "torch", {"x": x}, tmp_path)
        np.testing.assert_allclose(got, _ort_run(quant, {"x": x}), rtol=0, atol=EXACT)


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantized_mlp_fused_matmuls(tmp_path, capsys, per_channel):
    """quantize_dynamic on an MLP with two heads, as onnxruntime's optimizer saves it: one shared
    DynamicQuantizeLinear feeding MatMulIntegerToFloat twice, and a DynamicQuantizeMatMul."""
    src = _export(TwoHeads(), torch.randn(4, 16), tmp_path / "heads.onnx", {"x": {0: "batch"}})
    plain = _quantize(src, per_channel)
    fused = _ort_optimized(plain)
    assert _ops(fused) == {"MatMulIntegerToFloat": 2, "DynamicQuantizeMatMul": 1}
    report = _convert(capsys, fused, tmp_path / "torch")
    assert _max_abs(report) <= EXACT
    # the unfused file (ONNX DynamicQuantizeLinear + MatMulInteger) agrees with the fused one
    report = _convert(capsys, plain, tmp_path / "torch_plain")
    assert _max_abs(report) <= EXACT


def _qlstm_node_model(activations=None, w_scale_shape=(1,)) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    hs, inp = 4, 3
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (1, inp, 4 * hs)).astype(np.int8), "w"),
             numpy_helper.from_array(rng.integers(-127, 128, (1, hs, 4 * hs)).astype(np.int8), "r"),
             numpy_helper.from_array(np.full(w_scale_shape, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(w_scale_shape, np.int8), "wz"),
             numpy_helper.from_array(np.full((1,), 0.01, np.float32), "rs"),
             numpy_helper.from_array(np.zeros((1,), np.int8), "rz")]
    kw = {"hidden_size": hs}
    if activations:
        kw["activations"] = activations
    node = helper.make_node("DynamicQuantizeLSTM", ["x", "w", "r", "", "", "", "", "", "ws", "wz", "rs", "rz"],
                            ["y"], name="lstm_q", domain=MS, **kw)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, inp])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return model


def test_single_output_quantized_lstm_matches(tmp_path, capsys):
    """A hand-built DynamicQuantizeLSTM with only Y requested (onnxruntime's own schema)."""
    path = tmp_path / "q.onnx"
    onnx.save(_qlstm_node_model(), str(path))
    report = _convert(capsys, path, tmp_path / "torch")
    assert _max_abs(report) <= EXACT


@pytest.mark.parametrize("case,words", [
    ("activations", ["lstm_q", "DynamicQuantizeLSTM", "Elu"]),
    ("layout", ["lstm_q", "DynamicQuantizeLSTM", "layout"]),
])
def test_unsupported_quantized_lstm_is_a_clean_exit_3(tmp_path, capsys, case, words):
    model = _qlstm_node_model(activations=["Sigmoid", "Elu", "Tanh"] if case == "activations" else None)
    if case == "layout":
        model.graph.node[0].attribute.append(helper.make_attribute("layout", 1))
    path = tmp_path / "q.onnx"
    onnx.save(model, str(path))
    capsys.readouterr()
    rc = main(["convert", str(path), "--to", "torch", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 3, err
    line = err.strip().splitlines()[-1]
    assert all(w in line for w in words), line
    assert not (tmp_path / "out").exists()


def test_per_row_b_scale_is_a_clean_exit_3(tmp_path, capsys):
    """DynamicQuantizeMatMul's B scale must be per tensor or per column: a per-row one is refused."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (6, 4)).astype(np.int8), "b"),
             numpy_helper.from_array(np.full((6,), 0.02, np.float32), "bs")]
    node = helper.make_node("DynamicQuantizeMatMul", ["a", "b", "bs"], ["y"], name="dqmm", domain=MS)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    capsys.readouterr()
    rc = main(["convert", str(path), "--to", "torch", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 3 and "dqmm" in err and "b_scale" in err, err


def test_ddddocr_quantized_crnn_verifies(tmp_path, capsys):
    """ddddocr's common_old.onnx (real-model corpus): ConvInteger CNN, DynamicQuantizeLSTM, MatMulInteger;
    verified on its realistic input with the float Sigmoids computed as onnxruntime's."""
    import corpus

    cache = Path(os.environ.get("MODELPORT_TEST_CORPUS") or "/tmp/modelport-test-corpus")
    try:
        path = corpus.fetch("ddddocr-old", cache)
    except corpus.CorpusUnavailable as exc:
        pytest.skip(f"corpus unavailable: {exc}")
    npz = corpus.write_inputs("ddddocr-old", tmp_path / "inputs.npz")
    specs = [w for s in corpus.BY_ID["ddddocr-old"].specs() for w in ("--input", s)]
    report = _convert(capsys, path, tmp_path / "torch", *specs, "--inputs", str(npz))
    assert _max_abs(report) <= EXACT
    assert "_ort_sigmoid(" in (tmp_path / "torch" / "model.py").read_text()


class SmallNet(torch.nn.Module):
    """A CNN whose static QOperator quantization uses each QLinear* op onnxruntime has: LeakyRelu,
    a residual Add, x * sigmoid(x), AveragePool, Concat (one side requantized), GlobalAveragePool, Gemm."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = torch.nn.Conv2d(8, 4, 1)
        self.pool = torch.nn.AvgPool2d(2)
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x):
        a = torch.nn.functional.leaky_relu(self.c1(x), 0.1)
        s = a + self.c2(a)
        g = self.pool(torch.sigmoid(s) * s)
        c = torch.cat([g[:, :4], self.c3(g)], 1)
        v = torch.nn.functional.adaptive_avg_pool2d(c, 1).flatten(1)
        return self.fc(torch.cat([v, v[:, :4]], 1))


_QLINEAR_OPS = {"QLinearLeakyRelu", "QLinearAdd", "QLinearSigmoid", "QLinearMul", "QLinearAveragePool",
                "QLinearConcat", "QLinearGlobalAveragePool", "QGemm"}


@pytest.mark.parametrize("activations", ["QUInt8", "QInt8"])
def test_static_qoperator_cnn(tmp_path, capsys, activations):
    """quantize_static, QOperator format, calibrated on images: every QLinear* op and QGemm, bit-exact."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from modelport.quiet import quiet

    src = _export(SmallNet(), torch.randn(2, 3, 16, 16), tmp_path / "net.onnx", {"x": {0: "batch"}})
    rng = np.random.default_rng(0)
    images = [{"x": rng.random((1, 3, 16, 16), dtype=np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(images)

        def get_next(self):
            return next(self.it, None)

    quant = tmp_path / f"net_{activations}.onnx"
    with quiet():
        quantize_static(str(src), str(quant), Reader(), quant_format=QuantFormat.QOperator,
                        activation_type=getattr(QuantType, activations), weight_type=QuantType.QInt8,
                        per_channel=True)
    assert set(_ops(quant)) == _QLINEAR_OPS
    np.savez(tmp_path / "images.npz", x=rng.random((3, 3, 16, 16), dtype=np.float32))
    report = _convert(capsys, quant, tmp_path / "torch", "--inputs", str(tmp_path / "images.npz"))
    assert _max_abs(report) <= EXACT
    report = _convert(capsys, quant, tmp_path / "torch_random")  # the verifier's own random inputs too
    assert _max_abs(report) <= EXACT


@pytest.mark.slow
def test_bert_attention_from_the_transformer_optimizer(tmp_path, capsys):
    """transformers' BertModel (tiny config) -> torch exporter -> onnxruntime.transformers.optimizer:
    EmbedLayerNormalization, Attention with its 1-D mask_index, SkipLayerNormalization, BiasGelu;
    verified with a padded batch, and the generated code rerun in plain torch; then quantize_dynamic of
    that (QEmbedLayerNormalization, QAttention) verified too."""
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import BertConfig, BertModel

    from modelport.quiet import quiet

    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(0)
    bert = BertModel(config).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(0, 100, (2, 8))
    src = tmp_path / "bert.onnx"
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    zoo.onnx_export(Encoder().eval(), (ids, torch.ones_like(ids)), str(src), input_names=["input_ids", "attention_mask"],
                    output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)
    with quiet():
        opt = optimize_model(str(src), model_type="bert", num_heads=2, hidden_size=32)
    fused = tmp_path / "bert_opt.onnx"
    opt.save_model_to_file(str(fused))
    assert {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu"} <= set(_ops(fused))
    rng = np.random.default_rng(1)
    feeds = {"input_ids": rng.integers(0, 100, (3, 10)).astype(np.int64),
             "attention_mask": np.array([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7], dtype=np.int64)}
    np.savez(tmp_path / "feeds.npz", **feeds)
    report = _convert(capsys, fused, tmp_path / "torch", "--inputs", str(tmp_path / "feeds.npz"))
    assert _max_abs(report) <= 1e-5
    src_py = (tmp_path / "torch" / "model.py").read_text()
    assert "_ms_attention(" in src_py and "_embed_layer_norm(" in src_py
    got = _plain_torch(tmp_path / "torch", feeds, tmp_path)
    np.testing.assert_allclose(got, _ort_run(fused, feeds), rtol=0, atol=1e-5)
    # quantize_dynamic on the fused model: QEmbedLayerNormalization, QAttention, MatMulInteger
    from onnxruntime.quantization import quantize_dynamic

    quant = tmp_path / "bert_opt_int8.onnx"
    with quiet():
        quantize_dynamic(str(fused), str(quant), extra_options={"DefaultTensorType": TensorProto.FLOAT})
    assert {"QAttention", "QEmbedLayerNormalization"} <= set(_ops(quant))
    report = _convert(capsys, quant, tmp_path / "torch_int8", "--inputs", str(tmp_path / "feeds.npz"))
    assert _max_abs(report) <= 1e-5


def test_int4_matmulnbits_from_compress(tmp_path, capsys):
    """compress's int4 quantization (onnxruntime's MatMulNBits quantizer, block 32; one weight's K of 40
    is not a whole number of blocks) -> torch, verified."""
    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b, self.c = torch.nn.Linear(64, 96), torch.nn.Linear(96, 40), torch.nn.Linear(40, 5)

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))

    from modelport.compress.quantize import quantize_int4

    src = _export(MLP(), torch.randn(2, 4, 64), tmp_path / "mlp.onnx", {"x": {0: "batch", 1: "seq"}})
    quant = tmp_path / "mlp_int4.onnx"
    assert quantize_int4(src, quant) == 3  # what `compress --quantize int4` runs, without its benchmarks
    assert _ops(quant) == {"MatMulNBits": 3}
    report = _convert(capsys, quant, tmp_path / "torch")
    assert _max_abs(report) <= 1e-5
    x = np.random.default_rng(3).normal(size=(1, 5, 64)).astype(np.float32)
    got = _plain_torch(tmp_path / "torch", {"x": x}, tmp_path)
    np.testing.assert_allclose(got, _ort_run(quant, {"x": x}), rtol=0, atol=1e-5)


def _one_node(node: onnx.NodeProto, inputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, t, s) for k, t, s in inputs],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output if o],
                              [numpy_helper.from_array(v, k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return model


_U8 = TensorProto.UINT8
_REFUSED = {
    "MatMulNBits bits=2": (
        helper.make_node("MatMulNBits", ["a", "b", "s"], ["y"], name="mnb", domain=MS, K=32, N=4, bits=2, block_size=32),
        [("a", TensorProto.FLOAT, [1, 32])],
        [("b", np.zeros((4, 1, 8), np.uint8)), ("s", np.ones(4, np.float32))], ["mnb", "MatMulNBits", "bits=2"]),
    "Attention with past": (
        helper.make_node("Attention", ["x", "w", "bias", "", "past"], ["y"], name="att", domain=MS, num_heads=2),
        [("x", TensorProto.FLOAT, [1, 3, 4]), ("past", TensorProto.FLOAT, [2, 1, 2, 0, 2])],
        [("w", np.ones((4, 12), np.float32)), ("bias", np.zeros(12, np.float32))], ["att", "Attention", "past"]),
    "QLinearAdd per-channel": (
        helper.make_node("QLinearAdd", ["a", "as", "az", "b", "bs", "bz", "cs", "cz"], ["y"], name="qadd", domain=MS),
        [("a", _U8, [1, 3]), ("b", _U8, [1, 3])],
        [("as", np.ones(3, np.float32)), ("az", np.zeros(3, np.uint8)), ("bs", np.ones((), np.float32)),
         ("bz", np.zeros((), np.uint8)), ("cs", np.ones((), np.float32)), ("cz", np.zeros((), np.uint8))],
        ["qadd", "QLinearAdd", "per-tensor"]),
    "QLinearAveragePool ceil_mode": (
        helper.make_node("QLinearAveragePool", ["x", "s", "z", "s", "z"], ["y"], name="qpool", domain=MS,
                         kernel_shape=[2, 2], ceil_mode=1),
        [("x", _U8, [1, 1, 5, 5])], [("s", np.ones((), np.float32)), ("z", np.zeros((), np.uint8))],
        ["qpool", "QLinearAveragePool", "ceil_mode"]),
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_contrib_ops_it_cannot_compute_faithfully_exit_3(tmp_path, capsys, case):
    node, inputs, inits, words = _REFUSED[case]
    path = tmp_path / "m.onnx"
    onnx.save(_one_node(node, inputs, inits), str(path))
    capsys.readouterr()
    rc = main(["convert", str(path), "--to", "torch", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 3, err
    line = err.strip().splitlines()[-1]
    assert all(w in line for w in words), line
    assert not (tmp_path / "out").exists()


def _ort_vs_module(model: onnx.ModelProto, feeds: dict, tmp_path: Path, atol: float) -> float:
    """The node run by onnxruntime and by the compiled module; returns the max abs difference."""
    from modelport import to_torch

    so = ort.SessionOptions()
    so.log_severity_level = 3
    want = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    (tmp_path / "m").mkdir()
    to_torch.convert(model, tmp_path / "m")
    net = to_torch.load(tmp_path / "m")
    with torch.no_grad():
        got = net(*[torch.from_numpy(v) for v in feeds.values()])
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(want)
    worst = 0.0
    for g, w in zip(got, want):
        assert g.shape == w.shape
        worst = max(worst, float(np.abs(g.numpy().astype(np.float64) - w).max(initial=0.0)))
    assert worst <= atol, worst
    return worst


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_quantized_lstm_sequence_lens_states_peepholes(tmp_path, direction):
    """DynamicQuantizeLSTM with sequence_lens, initial h/c, peepholes, per-channel uint8 weights and all
    three outputs, against onnxruntime (batch 3: split across its threads as torch's default pool is)."""
    rng = np.random.default_rng(4)
    dirs, hs, inp, seq, batch = (2 if direction == "bidirectional" else 1), 5, 3, 6, 3
    w = rng.integers(0, 256, (dirs, inp, 4 * hs)).astype(np.uint8)
    r = rng.integers(0, 256, (dirs, hs, 4 * hs)).astype(np.uint8)
    inits = [("w", w), ("r", r), ("b", rng.normal(size=(dirs, 8 * hs)).astype(np.float32) * 0.1),
             ("lens", np.array([6, 2, 4], np.int32)), ("p", rng.normal(size=(dirs, 3 * hs)).astype(np.float32) * 0.1),
             ("ws", (rng.random((dirs, 4 * hs)) * 0.02 + 0.005).astype(np.float32)),
             ("wz", np.full((dirs, 4 * hs), 128, np.uint8)),
             ("rs", (rng.random((dirs, 4 * hs)) * 0.02 + 0.005).astype(np.float32)),
             ("rz", np.full((dirs, 4 * hs), 127, np.uint8))]
    node = helper.make_node("DynamicQuantizeLSTM", ["x", "w", "r", "b", "lens", "h0", "c0", "p", "ws", "wz", "rs", "rz"],
                            ["y", "yh", "yc"], name="qlstm", domain=MS, hidden_size=hs, direction=direction)
    inputs = [("x", TensorProto.FLOAT, [seq, batch, inp]), ("h0", TensorProto.FLOAT, [dirs, batch, hs]),
              ("c0", TensorProto.FLOAT, [dirs, batch, hs])]
    model = _one_node(node, inputs, inits)
    feeds = {"x": rng.normal(size=(seq, batch, inp)).astype(np.float32),
             "h0": rng.normal(size=(dirs, batch, hs)).astype(np.float32) * 0.5,
             "c0": rng.normal(size=(dirs, batch, hs)).astype(np.float32) * 0.5}
    _ort_vs_module(model, feeds, tmp_path, EXACT)


@pytest.mark.parametrize("mask", ["none", "end", "end_start", "raw2d", "raw3d", "causal"])
def test_attention_mask_index_variants(tmp_path, mask):
    """com.microsoft Attention with each mask_index form its schema defines (and unidirectional)."""
    rng = np.random.default_rng(5)
    b, s, hidden, heads = 2, 5, 8, 2
    inits = [("w", rng.normal(size=(hidden, 3 * hidden)).astype(np.float32) * 0.5),
             ("bias", rng.normal(size=(3 * hidden,)).astype(np.float32) * 0.1)]
    ins, kw = ["x", "w", "bias"], {"num_heads": heads}
    if mask == "end":
        inits.append(("mask", np.array([5, 3], np.int32)))
    elif mask == "end_start":
        inits.append(("mask", np.array([5, 4, 0, 1], np.int32)))
    elif mask == "raw2d":
        inits.append(("mask", np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0]], np.int32)))
    elif mask == "raw3d":
        inits.append(("mask", (rng.random((b, s, s)) > 0.3).astype(np.int32)))
    elif mask == "causal":
        kw["unidirectional"] = 1
    if mask not in ("none", "causal"):
        ins.append("mask")
    node = helper.make_node("Attention", ins, ["y"], name="att", domain=MS, **kw)
    model = _one_node(node, [("x", TensorProto.FLOAT, [b, s, hidden])], inits)
    _ort_vs_module(model, {"x": rng.normal(size=(b, s, hidden)).astype(np.float32)}, tmp_path, 1e-5)


@pytest.mark.parametrize("requantize", [False, True])
def test_qgemm_transposes_alpha_bias(tmp_path, requantize):
    """QGemm with transA, transB, alpha, an int32 C and per-column B scales; float or uint8 output."""
    rng = np.random.default_rng(6)
    m, k, n = 3, 7, 5
    inits = [("as", np.array(0.03, np.float32)), ("az", np.array(120, np.uint8)),
             ("b", rng.integers(-127, 128, (n, k)).astype(np.int8)),
             ("bs", (rng.random(n) * 0.01 + 0.002).astype(np.float32)), ("bz", np.zeros(n, np.int8)),
             ("c", rng.integers(-500, 500, (n,)).astype(np.int32))]
    ins = ["a", "as", "az", "b", "bs", "bz", "c"]
    if requantize:
        inits += [("ys", np.array(0.004, np.float32)), ("yz", np.array(100, np.uint8))]
        ins += ["ys", "yz"]
    node = helper.make_node("QGemm", ins, ["y"], name="qgemm", domain=MS, transA=1, transB=1, alpha=0.5)
    model = _one_node(node, [("a", _U8, [k, m])], inits)
    model.graph.output[0].type.tensor_type.elem_type = _U8 if requantize else TensorProto.FLOAT
    _ort_vs_module(model, {"a": rng.integers(0, 256, (k, m)).astype(np.uint8)}, tmp_path, 0 if requantize else EXACT)
