"""Shared fixtures: real small models from tests/zoo.py, built once per session, and a CLI runner."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # `import zoo` from any test module

import zoo  # noqa: E402


@dataclasses.dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run `modelport ARGS...` in-process through the real entry point; returns exit code and output."""
    from modelport.cli.app import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(rc, out, err)

    return run


@pytest.fixture(scope="session")
def cnn(tmp_path_factory) -> zoo.TorchModel:
    return zoo.write_cnn(tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="session")
def cnn_pt2(tmp_path_factory, cnn) -> str:
    return zoo.write_cnn_pt2(tmp_path_factory.mktemp("cnn_pt2"), cnn)


@pytest.fixture(scope="session")
def cnn_traced(tmp_path_factory, cnn) -> str:
    return zoo.write_cnn_torchscript(tmp_path_factory.mktemp("cnn_ts"), cnn)


@pytest.fixture(scope="session")
def cnn_scripted(tmp_path_factory, cnn) -> str:
    return zoo.write_cnn_torchscript(tmp_path_factory.mktemp("cnn_ts_script"), cnn, script=True)


@pytest.fixture(scope="session")
def cnn_onnx(tmp_path_factory, cnn) -> str:
    """The CNN converted to ONNX (through the pipeline, verified)."""
    from modelport.convert.pipeline import convert
    from modelport.convert.registry import ConvertOptions

    out = tmp_path_factory.mktemp("cnn_onnx") / "cnn.onnx"
    convert(cnn.spec, "onnx", out, options=ConvertOptions(inputs=zoo.input_specs(cnn), weights=cnn.safetensors))
    return str(out)

