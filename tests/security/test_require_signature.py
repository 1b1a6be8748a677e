"""--require-signature PUB / $MODELPORT_REQUIRE_SIGNATURE: the signature is verified before anything parses the model.

Proof that nothing parsed a refused model, without mocks:
- a `sys.addaudithook` watcher records every "open" of the model's files and who opened it
  (model_signing's hashing, which must read the bytes to verify them, or anything else: a parse);
- an ONNX model whose weights live in external data (a parse would open weights.bin);
- a PyTorch module file that touches a canary file when it is imported (a load would run it).
Control tests show the same watcher and canary do fire when the model is signed and loads.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zoo

_WATCHED: dict[str, list[str]] = {}  # real path -> one entry per open: "hashing" or the opener's file


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _WATCHED or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.realpath(os.fsdecode(args[0]))
    if path not in _WATCHED:
        return
    frame, opener = sys._getframe(1), None
    while frame is not None:
        name = frame.f_code.co_filename
        if f"model_signing{os.sep}_hashing" in name:
            opener = "hashing"
            break
        if opener is None and "audit" not in frame.f_code.co_name and name != __file__:
            opener = name
        frame = frame.f_back
    _WATCHED[path].append(opener or "?")


sys.addaudithook(_audit)  # process-wide and permanent; inert while nothing is watched


@pytest.fixture
def watch():
    """watch(*paths) starts recording opens of those files; returns {path: [opener, ...]}."""
    def start(*paths: Path) -> dict[str, list[str]]:
        for p in paths:
            _WATCHED[os.path.realpath(p)] = []
        return _WATCHED

    yield start
    _WATCHED.clear()


def _parses(watched: dict[str, list[str]]) -> dict[str, list[str]]:
    return {Path(p).name: [o for o in openers if o != "hashing"] for p, openers in watched.items()}


def _one_line(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stdout {res.stdout[-1500:]!r}, stderr {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from modelport.security.signing import keygen

    d = tmp_path_factory.mktemp("keys")
    a, b = keygen(d / "a.pem"), keygen(d / "b.pem")
    return Path(a.private), Path(a.public), Path(b.private), Path(b.public)


def _external_data_model(directory: Path) -> Path:
    """dir/model.onnx (y = x + offset) whose offset lives in dir/weights.bin: the sentinel a parse opens."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    plain = zoo.add_offset_model(directory / "plain.onnx", [0.5, -1.0, 2.0, 3.5])
    model = onnx.load(plain)
    Path(plain).unlink()
    onnx.save_model(model, str(directory / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return directory / "model.onnx"


COMMANDS = {
    "inspect": lambda m, out: ["inspect", m],
    "check": lambda m, out: ["check", m, "--target", "onnxruntime-cpu"],
    "verify": lambda m, out: ["verify", m, m],
    "bench": lambda m, out: ["bench", m, "--runs", "1"],
    "convert": lambda m, out: ["convert", m, "--to", "torch", "-o", out / "torch_dir"],
    "compress": lambda m, out: ["compress", m, "--quantize", "fp16", "-o", out / "m.fp16.onnx"],
    "adapt": lambda m, out: ["adapt", m, "-o", out / "m.b1.onnx", "--batch", "1"],
    "distill": lambda m, out: ["distill", "--teacher", m, "--student", m, "-o", out / "s.onnx", "--data", out / "d.npz"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_an_unsigned_model_before_opening_it(cli, keys, watch, tmp_path, command):
    model = _external_data_model(tmp_path / "m")
    out = tmp_path / "out"
    out.mkdir()
    np.savez(out / "d.npz", x=np.zeros((4, 4), np.float32))
    seen = watch(model, model.parent / "weights.bin")
    line = _one_line(cli(*COMMANDS[command](model, out), "--require-signature", keys[1]), 4,
                     "a signature is required", str(model) + ".sig", str(tmp_path / "m" / "model.sig"), str(tmp_path / "m.sig"))
    assert str(model) in line
    assert seen == {os.path.realpath(model): [], os.path.realpath(model.parent / "weights.bin"): []}  # not even opened
    assert sorted(p.name for p in out.iterdir()) == ["d.npz"]  # nothing written


def test_the_environment_variable_requires_it_too(cli, keys, watch, tmp_path, monkeypatch):
    model = _external_data_model(tmp_path / "m")
    seen = watch(model, model.parent / "weights.bin")
    monkeypatch.setenv("MODELPORT_REQUIRE_SIGNATURE", str(keys[1]))
    _one_line(cli("inspect", model), 4, "a signature is required")
    assert all(not openers for openers in seen.values())


def test_tampered_external_data_is_refused_and_only_the_hashing_read_it(cli, keys, watch, tmp_path):
    from modelport.security.signing import sign

    model = _external_data_model(tmp_path / "m")
    sign(model.parent, keys[0])  # the directory, as m.sig beside it
    data = bytearray((model.parent / "weights.bin").read_bytes())
    data[3] ^= 0x40  # one bit of the offset
    (model.parent / "weights.bin").write_bytes(bytes(data))
    seen = watch(model, model.parent / "weights.bin")
    _one_line(cli("inspect", model, "--require-signature", keys[1]), 4, "weights.bin modified or truncated", "m.sig")
    assert _parses(seen) == {"model.onnx": [], "weights.bin": []}
    assert all(openers for openers in seen.values())  # the hashing did read both: the watcher sees opens


def test_control_a_signed_model_loads_and_the_watcher_sees_the_parse(cli, keys, watch, tmp_path):
    from modelport.security.signing import sign

    model = _external_data_model(tmp_path / "m")
    sign(model.parent, keys[0])
    seen = watch(model, model.parent / "weights.bin")
    res = cli("inspect", model, "--require-signature", keys[1], "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["format"] == "onnx"
    assert _parses(seen)["model.onnx"], seen  # onnx's reader opened it: this is what a parse looks like
    # (weights.bin is read by onnxruntime's C++ side, which audit hooks do not see: the refusals above
    # rest on model.onnx, which every loader opens from Python first, and on the canary test below)
    _one_line(cli("inspect", model, "--require-signature", keys[3]), 4, "signed with another key")


def test_a_file_signature_does_not_cover_external_data(cli, keys, watch, tmp_path):
    from modelport.security.signing import sign

    model = _external_data_model(tmp_path / "m")
    sign(model, keys[0])  # model.onnx.sig: the file alone
    seen = watch(model.parent / "weights.bin")
    _one_line(cli("inspect", model, "--require-signature", keys[1]), 4,
              "weights.bin", "is not covered by its signature model.onnx.sig", "sign the directory")
    assert seen[os.path.realpath(model.parent / "weights.bin")] == []


def test_keras_file_tampered_or_unsigned_is_never_opened(cli, keys, watch, tmp_path):
    pytest.importorskip("keras")
    import zoo_tf

    from modelport.security.signing import sign

    model = tmp_path / "mlp.keras"
    shutil.copyfile(zoo_tf.mlp_sequential(), model)
    seen = watch(model)
    _one_line(cli("inspect", model, "--require-signature", keys[1]), 4, "a signature is required")
    assert seen[os.path.realpath(model)] == []
    sign(model, keys[0])
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    seen[os.path.realpath(model)].clear()
    _one_line(cli("convert", model, "--to", "onnx", "-o", tmp_path / "mlp.onnx", "--require-signature", keys[1]), 4,
              "a signature for another file, or the file was modified")
    assert _parses(seen) == {"mlp.keras": []} and seen[os.path.realpath(model)][:1] == ["hashing"]
    assert not (tmp_path / "mlp.onnx").exists()
    data[len(data) // 2] ^= 0x01  # the control: restored, it verifies, and the watcher sees Keras open it
    model.write_bytes(bytes(data))
    res = cli("inspect", model, "--require-signature", keys[1])
    assert res.exit_code == 0, res.stderr
    assert _parses(seen)["mlp.keras"], seen


CANARY_LINE = "\nimport pathlib as _p; _p.Path({canary!r}).touch()  # importing this module runs code\n"


def test_a_module_file_is_not_imported_until_it_and_its_weights_verify(cli, keys, tmp_path):
    from modelport.security.signing import sign

    cnn = zoo.write_cnn(tmp_path / "cnn")
    canary = tmp_path / "canary"
    module = Path(cnn.spec.rpartition(":")[0])
    module.write_text(module.read_text() + CANARY_LINE.format(canary=str(canary)))
    args = ["inspect", cnn.spec, "--weights", cnn.safetensors, *[w for s in cnn.inputs for w in ("--input", s)]]
    _one_line(cli(*args, "--require-signature", keys[1]), 4, "cnn.py", "a signature is required")
    sign(module, keys[0])
    _one_line(cli(*args, "--require-signature", keys[1]), 4, "cnn.safetensors", "a signature is required")
    assert not canary.exists()  # the module was never imported
    sign(cnn.safetensors, keys[0])
    res = cli(*args, "--require-signature", keys[1])
    assert res.exit_code == 0, res.stderr
    assert canary.exists()  # the control: a load does import it


def test_bad_public_key_exit_2(cli, keys, tmp_path):
    model = _external_data_model(tmp_path / "m")
    _one_line(cli("inspect", model, "--require-signature", keys[0]), 2, "this is a private key")
    _one_line(cli("inspect", model, "--require-signature", tmp_path / "nope.pub"), 2, "no such public key file")


def _pickle_checkpoint(path: Path) -> Path:
    """A real torch checkpoint (a zip of data.pkl + storages): what `scan` reads."""
    import torch

    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, str(path))
    return path


@pytest.mark.parametrize("command", ["scan", "registry add", "scrub"])
def test_scan_scrub_and_registry_add_refuse_before_reading(cli, keys, watch, tmp_path, command, monkeypatch):
    from modelport.security.signing import sign

    if command == "scan":
        model = _pickle_checkpoint(tmp_path / "ckpt.pt")
        args = ["scan", model]
    elif command == "scrub":
        model = _external_data_model(tmp_path / "m")
        args = ["scrub", model, "-o", tmp_path / "clean.onnx"]
    else:
        model = _external_data_model(tmp_path / "m")
        args = ["registry", "add", model, "--name", "m", "--registry", tmp_path / "reg"]
    seen = watch(model)
    _one_line(cli(*args, "--require-signature", keys[1]), 4, "a signature is required", str(model) + ".sig")
    assert seen[os.path.realpath(model)] == []  # nothing opened it, not even to detect its format
    assert not (tmp_path / "reg").exists() and not (tmp_path / "clean.onnx").exists()
    monkeypatch.setenv("MODELPORT_REQUIRE_SIGNATURE", str(keys[1]))  # the environment variable, too
    _one_line(cli(*args), 4, "a signature is required")
    assert seen[os.path.realpath(model)] == []
    sign(model.parent if command != "scan" else model, keys[2])  # signed by another key: refused after hashing only
    _one_line(cli(*args), 4, "signed with another key")
    assert _parses(seen) == {model.name: []}
    sign(model.parent if command != "scan" else model, keys[0])  # the control: signed, it runs and reads the model
    res = cli(*args)
    assert res.exit_code == 0, res.stderr
    assert _parses(seen)[model.name], seen
    if command == "registry add":
        assert cli("registry", "list", "--registry", tmp_path / "reg").exit_code == 0
