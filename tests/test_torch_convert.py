"""PyTorch -> ONNX end to end: real models through the convert pipeline, verified by parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zoo

from modelport.convert.run import convert
from modelport.convert.registry import ConvertOptions
from modelport.errors import ExportError
from modelport.formats import LoadOptions, open_runner
from modelport.verify import feeds_for, verify


def _convert(model: zoo.TorchModel, out: Path, **kw):
    weights = kw.pop("weights", None)
    dynamic_batch = kw.pop("dynamic_batch", True)
    options = ConvertOptions(inputs=zoo.input_specs(model), weights=weights, dynamic_batch=dynamic_batch)
    return convert(model.spec, "onnx", out, options=options, **kw)


def _batch_sizes(report) -> list[int]:
    return [next(iter(run.input_shapes.values()))[0] for run in report.parity.runs]


def _onnx_input_dims(path: str | Path) -> list[list[int | str]]:
    model = onnx.load(str(path))
    return [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]


# ----------------------------------------------------------------------------- CNN


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_cnn_module_to_onnx_verified_at_two_batch_sizes(cnn, kind, tmp_path):
    out = tmp_path / "cnn.onnx"
    report = _convert(cnn, out, weights=cnn.weights[kind])
    assert report and report.parity and report.parity.ok
    assert sorted(_batch_sizes(report)) == [2, 3]
    assert out.is_file() and report.artifact.path == str(out)
    assert report.artifact.signature.inputs[0].shape == ("batch", 3, 32, 32)
    assert report.artifact.lineage[0].verified is True
    assert "dynamo" in report.artifact.lineage[0].tool
    # Independent check: onnxruntime on the written file at a third batch size vs eager PyTorch.
    import onnxruntime as ort
    from safetensors.torch import load_file

    model = zoo.load_module(cnn.spec)
    model.load_state_dict(load_file(cnn.safetensors))
    x = np.random.default_rng(3).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    lineage = {p.key: p.value for p in onnx.load(str(out)).metadata_props}["modelport.lineage"]
    assert json.loads(lineage)[0]["src_format"] == "torch-module"


def test_cnn_static_batch(cnn, tmp_path):
    out = tmp_path / "cnn_static.onnx"
    report = _convert(cnn, out, weights=cnn.safetensors, dynamic_batch=False)
    assert report.parity.ok and len(report.parity.runs) == 1
    assert _onnx_input_dims(out) == [[1, 3, 32, 32]]


def test_cnn_exported_program_to_onnx(cnn_pt2, tmp_path):
    out = tmp_path / "from_pt2.onnx"
    report = convert(cnn_pt2, "onnx", out)
    assert report.src_format == "torch-export"
    assert report.parity.ok and sorted(_batch_sizes(report)) == [2, 3]
    assert isinstance(_onnx_input_dims(out)[0][0], str)  # the batch Dim survived


@pytest.mark.parametrize("which", ["cnn_traced", "cnn_scripted"])
def test_cnn_torchscript_to_onnx(which, request, cnn, tmp_path):
    out = tmp_path / f"{which}.onnx"
    path = request.getfixturevalue(which)
    report = convert(path, "onnx", out, options=ConvertOptions(inputs=zoo.input_specs(cnn)))
    assert report.src_format == "torchscript"
    assert report.parity.ok and sorted(_batch_sizes(report)) == [2, 3]
    assert report.artifact.lineage[0].tool == "torch.onnx (torchscript exporter)"
    assert not report.warnings  # the TorchScript exporter is the natural route here, not a fallback


# ----------------------------------------------------------------------------- transformers


def _seq_lengths(report) -> set[int]:
    return {run.input_shapes["input_ids"][1] for run in report.runs}


@pytest.mark.slow
def test_tiny_bert_dynamic_batch_and_sequence(tmp_path):
    bert = zoo.write_bert(tmp_path / "bert")
    out = tmp_path / "bert.onnx"
    report = _convert(bert, out)
    assert report.parity.ok
    assert len(report.parity.runs) == 2 and len(_seq_lengths(report.parity)) == 2
    assert _onnx_input_dims(out) == [["batch", "sequence"], ["batch", "sequence"]]
    # Token ids were drawn below the vocabulary size found in the exported graph, and used its range.
    with open_runner(bert.spec, options=LoadOptions(inputs=zoo.input_specs(bert))) as a, open_runner(str(out)) as b:
        assert b.index_bounds() == {"input_ids": 1000}
        feeds, _ = feeds_for(a, bounds=b.index_bounds())
    ids = np.concatenate([f["input_ids"].ravel() for f in feeds])
    assert ids.min() >= 0 and 10 < ids.max() < 1000


def _text_feed(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids below the vocab, and right-padded attention masks (every row attends to >= 1 token)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, seq + 1, batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(0, 1000, (batch, seq)).astype(np.int64), "attention_mask": mask}


@pytest.mark.slow
def test_tiny_gpt2_dynamic_batch_and_sequence(tmp_path):
    gpt2 = zoo.write_gpt2(tmp_path / "gpt2")
    out = tmp_path / "gpt2.onnx"
    report = _convert(gpt2, out, inputs=_text_feed(2, 8, seed=0))
    assert report.parity.ok
    assert _onnx_input_dims(out) == [["batch", "sequence"], ["batch", "sequence"]]
    assert report.artifact.signature.outputs[0].shape[-1] == 1000  # logits over the vocabulary
    # The same ONNX file at a second batch size and sequence length.
    second = verify(gpt2.spec, out, a_options=LoadOptions(inputs=zoo.input_specs(gpt2)), inputs=_text_feed(3, 13, seed=1))
    assert second.ok
    assert _seq_lengths(report.parity) | _seq_lengths(second) == {8, 13}


@pytest.mark.slow
def test_tiny_gpt2_verified_on_random_inputs_at_two_shapes(tmp_path):
    gpt2 = zoo.write_gpt2(tmp_path / "gpt2")
    report = _convert(gpt2, tmp_path / "gpt2.onnx")
    assert report.parity.ok and len(_seq_lengths(report.parity)) == 2


# ----------------------------------------------------------------------------- export strategies


@pytest.mark.slow
def test_torchscript_fallback_is_used_and_reported(tmp_path):
    model = zoo.write_fallback_model(tmp_path / "m")
    report = _convert(model, tmp_path / "fallback.onnx")
    assert report.parity.ok and len(report.parity.runs) == 2
    assert report.artifact.lineage[0].tool == "torch.onnx (torchscript exporter)"
    (warning,) = report.warnings
    assert "fallback" in warning and "dynamo" in warning and "data-dependent" in warning
    assert "dynamo exporter failed" in report.artifact.lineage[0].detail


def test_export_fails_with_both_strategies_named(tmp_path):
    model = zoo.write_unexportable_model(tmp_path / "m")
    out_dir = tmp_path / "out"
    with pytest.raises(ExportError) as info:
        _convert(model, out_dir / "never.onnx")
    msg = str(info.value)
    assert info.value.exit_code == 3
    assert "dynamo exporter failed" in msg and "aten.sort" in msg
    assert "torchscript exporter failed" in msg and "lost input" in msg
    assert "\n" not in msg and "\x1b" not in msg
    assert list(out_dir.iterdir()) == []


# ----------------------------------------------------------------------------- CLI


def test_cli_convert_json(cli, cnn, tmp_path):
    out = tmp_path / "cli.onnx"
    res = cli("convert", cnn.spec, "--to", "onnx", "-o", out, "--weights", cnn.safetensors, "--input", zoo.CNN_INPUT, "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True and report["dst_format"] == "onnx"
    assert report["artifact"]["path"] == str(out) and out.is_file()
    assert [r["input_shapes"]["x"][0] for r in report["parity"]["runs"]] == [2, 3]
    assert all(o["ok"] for r in report["parity"]["runs"] for o in r["outputs"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.onnx"]


def test_cli_verify_and_inspect_json(cli, cnn, cnn_onnx):
    res = cli("verify", cnn.spec, cnn_onnx, "--weights", cnn.pt, "--input", "x:batchx3x32x32:float32", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True and len(report["runs"]) == 2
    res = cli("inspect", cnn_onnx, "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["format"] == "onnx"
    assert info["signature"]["inputs"][0]["shape"] == ["batch", 3, 32, 32]


def test_cli_verify_exit_1_when_models_differ(cli, cnn, cnn_onnx):
    # Without --weights the module gets a fresh random init: a different model.
    res = cli("verify", cnn.spec, cnn_onnx, "--input", zoo.CNN_INPUT, "--json")
    assert res.exit_code == 1
    assert json.loads(res.stdout)["ok"] is False


def test_cli_convert_static_batch_no_verify(cli, cnn, tmp_path):
    out = tmp_path / "static.onnx"
    res = cli("convert", cnn.spec, "--to", "onnx", "-o", out, "--weights", cnn.safetensors, "--input", zoo.CNN_INPUT,
              "--static-batch", "--no-verify", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["parity"] is None and doc["ok"] is None  # not verified: no verdict, not a pass
    assert _onnx_input_dims(out) == [[1, 3, 32, 32]]


def test_model_that_fixes_the_batch_exports_with_the_batch_frozen(cli, tmp_path):
    model = zoo.write_fixed_batch_model(tmp_path / "m")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = cli("convert", model.spec, "--to", "onnx", "-o", out_dir / "m.onnx", "--input", model.inputs[0], "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["parity"]["ok"] is True and len(doc["parity"]["runs"]) == 1
    (warning,) = doc["warnings"]
    assert "dynamic dims frozen (batch=2)" in warning and "fixes" in warning and "shape[0]" in warning
    assert doc["artifact"]["lineage"][0]["tool"] == "torch.onnx (dynamo exporter)"
    assert _onnx_input_dims(out_dir / "m.onnx") == [[2, 8]]
    res = cli("convert", model.spec, "--to", "onnx", "-o", out_dir / "m2.onnx", "--input", model.inputs[0], "--static-batch", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["parity"]["ok"] is True and not doc["warnings"]
    assert _onnx_input_dims(out_dir / "m2.onnx") == [[2, 8]]


SHAPE_KEYED_SOURCE = '''
import torch
from torch import nn


class ShapeKeyedCache(nn.Module):
    """Caches a mask per input shape: a dict keyed by sizes, which symbolic sizes cannot be."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 3)
        self._masks = {}

    def forward(self, x):
        key = tuple(x.shape)
        if key not in self._masks:
            self._masks[key] = torch.ones(x.shape[0], 3)
        return self.linear(x) * self._masks[key]
'''


def test_model_failing_under_dynamic_shapes_is_exported_static_by_dynamo(tmp_path):
    model = zoo._write_source(tmp_path / "m", "shape_keyed.py", SHAPE_KEYED_SOURCE, "ShapeKeyedCache", ("x:2x8:float32",))
    out = tmp_path / "keyed.onnx"
    report = _convert(model, out)
    assert report.parity.ok and len(report.parity.runs) == 1
    lineage = report.artifact.lineage[0]
    assert lineage.tool == "torch.onnx (dynamo exporter)"  # not the TorchScript fallback
    assert "dynamo exporter failed" in lineage.detail and "SymInt" in lineage.detail
    assert "every dim static" not in lineage.detail  # the static retry did not fail
    (warning,) = report.warnings
    assert "dynamic dims frozen (batch=2)" in warning and "SymInt" in warning and "fallback" not in warning
    assert _onnx_input_dims(out) == [[2, 8]]
