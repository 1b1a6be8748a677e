"""forward(x, sr: int): Python constants given as --input sr=8000 are baked into the export and reported.

A real module file and its TorchScript archive, converted to ONNX through the CLI; the ONNX file is
checked independently with onnxruntime against the module called with the same constant.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from modelport.artifact import TensorSpec
from modelport.errors import BadInputError
from modelport.inputs import ConstantSpec, parse_input_spec

SOURCE = '''
import torch


class Resampler(torch.nn.Module):
    """Picks its path from a Python int, as voice-activity models pick theirs from the sample rate."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 4, 5)

    def forward(self, x: torch.Tensor, sr: int, gain: float = 1.0):
        y = self.conv(x.unsqueeze(1)) * gain
        if sr == 16000:
            return y * 2.0
        return y[..., ::2]
'''


@pytest.fixture(scope="module")
def module_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("scalars") / "resampler.py"
    path.write_text(SOURCE)
    return f"{path}:Resampler"


def _module(spec: str):
    from modelport.formats.torch_module import build_module

    return build_module(spec, None)  # seeded: the same weights modelport builds


def _ort(path: str | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def converted(module_file, tmp_path_factory):
    """convert resampler.py:Resampler --to onnx --input x=1x64:float32 --input sr=8000 --json (rc, report, path)."""
    from modelport.cli.app import main

    out = tmp_path_factory.mktemp("scalars_out") / "resampler.onnx"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["convert", module_file, "--to", "onnx", "-o", str(out), "--input", "x=1x64:float32",
                   "--input", "sr=8000", "--json"])
    return rc, json.loads(buf.getvalue()), out


def test_parse_constants_and_tensor_specs():
    assert parse_input_spec("sr=16000") == ConstantSpec("sr", "int64", (), 16000)
    assert parse_input_spec("scale=0.5").value == 0.5 and parse_input_spec("scale=0.5").dtype == "float64"
    assert parse_input_spec("flag=true").value is True and parse_input_spec("flag=FALSE").value is False
    assert parse_input_spec("n=-3").value == -3 and str(parse_input_spec("e=1e-3")) == "e=0.001"
    # `name=dims:dtype` is the tensor spec `name:dims:dtype`, not a constant
    assert parse_input_spec("x=1x16000:float32") == TensorSpec("x", "float32", (1, 16000))
    assert not isinstance(parse_input_spec("x=1x16000"), ConstantSpec)
    for bad in ("x=", "1a=3", "=3"):
        with pytest.raises(BadInputError):
            parse_input_spec(bad)


def test_module_constant_baked_into_onnx_and_reported(converted, module_file):
    rc, report, out = converted
    assert rc == 0 and report["ok"] is True
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["x"]  # sr is no input: it was baked in
    assert not any(n.op_type == "If" for n in graph.node)
    step = report["artifact"]["lineage"][-1]
    assert "sr=8000 baked in as a constant" in step["detail"]
    assert any("sr=8000 baked in as a constant" in w for w in report["warnings"])
    lineage = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["modelport.lineage"])
    assert "sr=8000 baked in as a constant" in lineage[-1]["detail"]
    # the parity check ran the module with sr=8000 at two batch sizes
    assert [r["input_shapes"]["x"][0] for r in report["parity"]["runs"]] == [2, 3]
    # independently: onnxruntime at a third batch size vs eager PyTorch called with the same constant
    module = _module(module_file)
    x = np.random.default_rng(5).standard_normal((4, 64)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x), 8000).numpy()
        other = module(torch.from_numpy(x), 16000).numpy()
    got = _ort(out, x)
    assert got.shape == expected.shape == (4, 4, 30) and other.shape != got.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_verify_passes_the_constant_to_the_torch_side_only(converted, module_file, cli):
    _, _, out = converted
    same = cli("verify", module_file, out, "--input", "x:batchx64:float32", "--input", "sr=8000", "--json")
    assert same.exit_code == 0, same.stderr
    assert json.loads(same.stdout)["ok"] is True
    other = cli("verify", module_file, out, "--input", "x:batchx64:float32", "--input", "sr=16000", "--json")
    assert other.exit_code == 1  # the module's sr=16000 path differs from the exported sr=8000 one
    assert "shape" in json.loads(other.stdout)["runs"][0]["outputs"][0]["reason"]


def test_torchscript_constant_baked_in(module_file, tmp_path, cli):
    scripted = torch.jit.script(_module(module_file))
    pt = tmp_path / "resampler.pt"
    torch.jit.save(scripted, str(pt))
    out = tmp_path / "resampler_ts.onnx"
    res = cli("convert", pt, "--to", "onnx", "-o", out, "--input", "x:1x64:float32", "--input", "sr=16000",
              "--input", "gain=2", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert "sr=16000, gain=2.0 baked in as constants" in report["artifact"]["lineage"][-1]["detail"]
    assert [i.name for i in onnx.load(str(out)).graph.input] == ["x"]
    x = np.random.default_rng(7).standard_normal((3, 64)).astype(np.float32)
    with torch.no_grad():
        expected = scripted(torch.from_numpy(x), 16000, 2.0).numpy()
    got = _ort(out, x)
    assert got.shape == (3, 4, 60)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("specs, named", [
    (("x=3", "sr=8000"), "'x'"),  # a constant for a Tensor parameter
    (("x:1x64:float32", "sr:scalar:int64"), "'sr'"),  # a tensor for an int parameter
    (("x:1x64:float32",), "'sr'"),  # an int parameter without a default left without a value
    (("x:1x64:float32", "sr=0.5"), "'sr'"),  # a float for an int parameter
    (("x:1x64:float32", "sr=8000", "rate=1"), "'rate'"),  # no such parameter
])
@pytest.mark.parametrize("kind", ["module", "torchscript"])
def test_bad_constants_exit_2_naming_the_parameter(module_file, tmp_path, cli, specs, named, kind):
    src = module_file
    if kind == "torchscript":
        src = str(tmp_path / "resampler.pt")
        torch.jit.save(torch.jit.script(_module(module_file)), src)
    out = tmp_path / "bad.onnx"
    res = cli("convert", src, "--to", "onnx", "-o", out, *[w for s in specs for w in ("--input", s)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "internal error" not in lines[0]
    assert not out.exists()
