"""Shared fixtures: real small models from tests/zoo.py, built once per session, and a CLI runner."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # `import zoo` from any test module

import zoo  # noqa: E402

# Framework log lines that must never reach a user's stderr without --debug (glog/absl records of
# any level, absl's pre-init banner, LiteRT's INFO lines, torch.onnx's progress lines). Broader
# than what modelport.quiet filters, so that a new kind of chatter fails a test.
FRAMEWORK_LOG = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:\d+\.\d+ |WARNING: All log messages before absl|INFO: |.*oneDNN custom operations"
    r"|\[torch\.onnx\])", re.M)

if importlib.util.find_spec("tensorflow") is not None:
    # Tests and tests/zoo_tf.py import TensorFlow directly; its load-time lines are not modelport's
    # output. (Loading through modelport is checked in fresh processes: test_quiet.py.)
    from modelport.quiet import native_output

    with native_output():
        import tensorflow  # noqa: F401


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test whose captured stderr holds a framework log line fails, naming the first lines."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when in ("setup", "call") and rep.passed:
        hits = [m.group(0)[:160] for m in re.finditer(r"^.*$", rep.capstderr or "", re.M) if FRAMEWORK_LOG.match(m.group(0))]
        if hits:
            rep.outcome = "failed"
            rep.longrepr = "framework log lines reached stderr without --debug:\n  " + "\n  ".join(hits[:5])


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
    from modelport.convert.run import convert
    from modelport.convert.registry import ConvertOptions

    out = tmp_path_factory.mktemp("cnn_onnx") / "cnn.onnx"
    convert(cnn.spec, "onnx", out, options=ConvertOptions(inputs=zoo.input_specs(cnn), weights=cnn.safetensors))
    return str(out)

