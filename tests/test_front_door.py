"""The front door: the locked environment, usage errors, --version, and a quiet terminal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCK = [sys.executable, str(ROOT / "scripts" / "lock.py")]
MODELPORT = str(Path(sys.executable).with_name("modelport"))


def _checkout(tmp_path: Path) -> Path:
    """The files the lock check reads, copied from this checkout."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "locks", root / "locks")
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, root / name)
    return root


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LOCK + ["check", "--root", str(root)], capture_output=True, text=True, timeout=60)


def test_the_committed_lock_matches_pyproject_and_constraints():
    proc = _check(ROOT)
    assert proc.returncode == 0, proc.stderr


def test_the_lock_pins_every_distribution_with_hashes_and_the_cpu_torch():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import lock
    finally:
        sys.path.pop(0)
    pins = lock.parse_lock(ROOT / "locks" / "main.txt")
    assert pins["torch"] == "2.13.0+cpu"
    for name in ("onnx", "onnxruntime", "tensorflow-cpu", "keras", "tf2onnx", "openvino", "typer", "pytest"):
        assert name in pins, name
    assert set(lock.parse_lock(ROOT / "locks" / "nodeps.txt")) == {"onnx2tf", "tf-keras"}
    # what is installed here is what the lock says
    from importlib.metadata import version

    for name in ("onnx", "onnxruntime", "typer", "numpy", "protobuf"):
        assert version(name) == pins[name], name


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "locks" / "main.txt").unlink(), "locks/main.txt is missing: run `make lock`"),
    (lambda r: (r / "locks" / "uv.txt").write_text("uv>=0.1\n"), "corrupt lock file locks/uv.txt:1"),
    (lambda r: (r / "locks" / "main.txt").write_bytes((r / "locks" / "main.txt").read_bytes()[:5000]),
     "corrupt lock file locks/main.txt"),
    (lambda r: (r / "pyproject.toml").write_text((r / "pyproject.toml").read_text().replace(
        '"rich>=13"', '"rich>=13", "requests"')), "locks/ is out of date"),
    (lambda r: (r / "locks" / "inputs.sha256").unlink(), "locks/ is out of date"),
])
def test_a_missing_corrupt_or_stale_lock_is_one_clear_error(tmp_path, damage, message):
    root = _checkout(tmp_path)
    assert _check(root).returncode == 0
    damage(root)
    proc = _check(root)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_pip_check_is_judged_with_the_no_deps_pair_aside():
    ok = "onnx2tf 1.29.24 has requirement numpy==1.26.4, but you have numpy 2.4.6.\n" \
         "tf-keras 2.21.0 requires tensorflow, which is not installed.\n"
    assert subprocess.run(LOCK + ["pip-check"], input=ok, capture_output=True, text=True).returncode == 0
    bad = ok + "tf2onnx 1.17.0 has requirement protobuf~=3.20, but you have protobuf 7.36.2.\n"
    proc = subprocess.run(LOCK + ["pip-check"], input=bad, capture_output=True, text=True)
    assert proc.returncode == 1 and "tf2onnx" in proc.stderr and "onnx2tf" not in proc.stderr


def test_this_environment_passes_pip_check_apart_from_the_no_deps_pair():
    report = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    proc = subprocess.run(LOCK + ["pip-check"], input=report.stdout + report.stderr, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args, expected", [
    (["--foo"], "No such option: --foo"),
    (["convert"], "Missing argument 'src'"),
    (["convert", "m.onnx", "--to", "onnx", "--opset", "abc"], "Invalid value for '--opset'"),
    (["verify", "a.onnx", "b.onnx", "--bogus-flag"], "No such option: --bogus-flag"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_usage_errors_are_one_line_exit_2(cli, args, expected):
    res = cli(*args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("modelport: error: ") and expected in lines[0]
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr


def test_version_names_modelport_and_the_frameworks_it_finds():
    proc = subprocess.run([MODELPORT, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    import modelport
    from importlib.metadata import version

    lines = proc.stdout.splitlines()
    assert lines[0] == f"modelport {modelport.__version__}"
    shown = dict(ln.split() for ln in lines[1:])
    for name in ("numpy", "onnx", "onnxruntime", "torch", "keras", "tf2onnx", "openvino"):
        assert shown[name] == version(name), name
    assert shown["tensorflow"] == version("tensorflow-cpu")


def test_json_reports_carry_the_versions(cli, cnn_onnx):
    res = cli("inspect", cnn_onnx, "--json")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    from importlib.metadata import version

    assert doc["versions"]["onnxruntime"] == version("onnxruntime")
    assert doc["versions"]["modelport"]
    targets = json.loads(cli("check", "--list-targets", "--json").stdout)
    assert {t["name"] for t in targets["targets"]} >= {"tflite", "onnxruntime-cpu"} and targets["versions"]


def _env_without_log_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MODELPORT_DEBUG")}


@pytest.mark.slow
def test_keras_to_tflite_and_back_leaves_stderr_empty(tmp_path):
    """A fresh process, as a user runs it: no framework line on stderr; --debug lets them through."""
    import zoo_tf

    src = zoo_tf.two_io_keras()
    out = tmp_path / "m.tflite"
    env = _env_without_log_settings()
    conv = subprocess.run([MODELPORT, "convert", str(src), "--to", "tflite", "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert conv.returncode == 0 and out.exists(), conv.stderr
    assert conv.stderr == "", conv.stderr
    ver = subprocess.run([MODELPORT, "verify", str(src), str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert ver.returncode == 0 and "parity ok" in ver.stdout, ver.stdout + ver.stderr
    assert ver.stderr == "", ver.stderr
    # the same with --debug: whatever the frameworks print is shown, untouched (on CPUs where TF
    # logs at all, that includes its INFO lines), and the result is the same
    dbg = subprocess.run([MODELPORT, "--debug", "verify", str(src), str(out)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert dbg.returncode == 0 and dbg.stdout.splitlines()[-1] == ver.stdout.splitlines()[-1]


def test_native_lines_are_filtered_but_errors_and_unknown_text_pass(tmp_path):
    """Descriptor-2 output of native code: INFO/WARNING records dropped, errors kept, in order."""
    script = textwrap.dedent("""
        import os
        from modelport.quiet import native_output
        with native_output():
            os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
            os.write(2, b"I0000 00:00:1796159067.472861    3908 port.cc:153] oneDNN custom operations are on.\\n")
            os.write(2, b"E0000 00:00:1796159067.5    3908 kernel.cc:12] a real error\\n")
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
            with native_output():
                os.write(2, b"W0000 00:00:1796159067.6    3908 x.cc:1] nested warning\\n")
                os.write(2, b"ERROR: tflite failed to prepare\\n")
            os.write(2, b"plain text a user must see\\n")
        os.write(2, b"after\\n")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=_env_without_log_settings())
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == ["E0000 00:00:1796159067.5    3908 kernel.cc:12] a real error",
                                        "ERROR: tflite failed to prepare", "plain text a user must see", "after"]
    dbg = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env=dict(_env_without_log_settings(), MODELPORT_DEBUG="1"))
    assert len(dbg.stderr.splitlines()) == 8


def test_native_output_is_replayed_when_the_block_raises():
    script = textwrap.dedent("""
        import os
        from modelport.quiet import native_output
        try:
            with native_output():
                os.write(2, b"I0000 00:00:1.0 1 a.cc:1] chatter\\n")
                os.write(2, b"F0000 00:00:1.0 1 a.cc:2] Check failed: shape\\n")
                raise RuntimeError("boom")
        except RuntimeError as e:
            print("caught", e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "caught boom"
    assert proc.stderr.splitlines() == ["F0000 00:00:1.0 1 a.cc:2] Check failed: shape"]
