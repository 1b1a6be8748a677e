"""PyTorch formats: detection from content, and runners that compute what eager PyTorch computes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo
from safetensors.torch import load_file

from modelport import formats
from modelport.errors import BadInputError
from modelport.formats import LoadOptions, open_runner


def _eager_cnn(cnn: zoo.TorchModel) -> torch.nn.Module:
    model = zoo.load_module(cnn.spec)
    model.load_state_dict(load_file(cnn.safetensors))
    return model.eval()


def _images(batch: int = 4, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def _eager(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# ----------------------------------------------------------------------------- detection


def test_detect_module_spec(cnn):
    assert formats.detect(cnn.spec) == "torch-module"


def test_detect_exported_program_from_content(cnn_pt2, tmp_path):
    assert formats.detect(cnn_pt2) == "torch-export"
    renamed = tmp_path / "model.bin"
    shutil.copy(cnn_pt2, renamed)
    assert formats.detect(renamed) == "torch-export"


@pytest.mark.parametrize("which", ["cnn_traced", "cnn_scripted"])
def test_detect_torchscript_from_content(which, request, tmp_path):
    path = request.getfixturevalue(which)
    assert formats.detect(path) == "torchscript"
    renamed = tmp_path / "model.bin"
    shutil.copy(path, renamed)
    assert formats.detect(renamed) == "torchscript"


def test_detect_onnx_from_content(cnn_onnx, tmp_path):
    assert formats.detect(cnn_onnx) == "onnx"
    renamed = tmp_path / "model.bin"
    shutil.copy(cnn_onnx, renamed)
    assert formats.detect(renamed) == "onnx"


def test_exported_program_is_not_mistaken_for_torchscript(cnn_pt2, cnn_traced):
    from modelport.formats import torch_export, torchscript

    assert not torchscript.detect(Path(cnn_pt2))
    assert not torch_export.detect(Path(cnn_traced))


# ----------------------------------------------------------------------------- runners


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_module_runner_matches_eager(cnn, kind):
    x = _images()
    expected = _eager(_eager_cnn(cnn), x)
    with open_runner(cnn.spec, options=LoadOptions(weights=cnn.weights[kind], inputs=zoo.input_specs(cnn))) as r:
        assert r.format == "torch-module"
        got = r.run({"x": x})
        assert r.signature.input_names == ["x"]
        assert r.signature.outputs[0].shape[-1] == 10
    (out,) = got.values()
    np.testing.assert_array_equal(out, expected)


def test_module_runner_without_weights_is_deterministic(cnn):
    x = _images(2)
    outs = []
    for _ in range(2):
        with open_runner(cnn.spec, options=LoadOptions(inputs=zoo.input_specs(cnn))) as r:
            outs.append(next(iter(r.run({"x": x}).values())))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_module_runner_needs_input_specs(cnn):
    with pytest.raises(BadInputError, match="--input"):
        open_runner(cnn.spec, options=LoadOptions(weights=cnn.safetensors))


def test_exported_program_runner_keeps_dynamic_batch(cnn, cnn_pt2):
    with open_runner(cnn_pt2) as r:
        assert r.format == "torch-export"
        (spec,) = r.signature.inputs
        assert spec.dtype == "float32"
        assert spec.shape == ("batch", 3, 32, 32)  # torch.export's symbol, given a readable name
        assert r.signature.outputs[0].shape == (spec.shape[0], 10)  # symbolic, from the program, before any run
        for batch in (1, 5):
            x = _images(batch)
            (out,) = r.run({spec.name: x}).values()
            np.testing.assert_allclose(out, _eager(_eager_cnn(cnn), x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["cnn_traced", "cnn_scripted"])
def test_torchscript_runner_matches_eager(which, request, cnn):
    path = request.getfixturevalue(which)
    x = _images(3)
    with open_runner(path, options=LoadOptions(inputs=zoo.input_specs(cnn))) as r:
        assert r.format == "torchscript"
        (out,) = r.run({"x": x}).values()
    np.testing.assert_allclose(out, _eager(_eager_cnn(cnn), x), rtol=1e-5, atol=1e-6)


def test_torchscript_runner_asks_for_input_shapes(cnn_scripted):
    with pytest.raises(BadInputError, match="--input for x"):
        open_runner(cnn_scripted)


def test_torch_dir_written_by_convert(cnn_onnx, tmp_path):
    """`convert --to torch` writes model.py + weights + metadata; detected and run as format `torch`."""
    from modelport.convert.run import convert

    out = tmp_path / "cnn_torch"
    report = convert(cnn_onnx, "torch", out)
    assert report.parity.ok
    assert formats.detect(out) == "torch"
    x = _images(5)
    with open_runner(str(out)) as r, open_runner(cnn_onnx) as ref:
        assert r.signature.inputs == ref.signature.inputs
        got = r.run({"x": x})
        assert r.signature.outputs == ref.signature.outputs  # names and symbolic batch, not one run's sizes
        expected = ref.run({"x": x})
    np.testing.assert_allclose(got["output_0"], expected["output_0"], rtol=1e-4, atol=1e-5)
    (out / "modelport_torch.json").unlink()
    with pytest.raises(BadInputError, match="directory is no model"):
        formats.detect(out)


def test_module_runner_reports_a_failing_forward(tmp_path):
    model = zoo.write_fixed_batch_model(tmp_path)
    specs = zoo.input_specs(model)
    with open_runner(model.spec, options=LoadOptions(inputs=specs)) as r:
        assert r.run({"x": np.ones((2, 8), np.float32)})["output_0"].shape == (2, 3)
        with pytest.raises(BadInputError, match=r"the model fails on inputs x:3x8:float32: RuntimeError"):
            r.run({"x": np.ones((3, 8), np.float32)})
