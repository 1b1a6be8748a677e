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

from modelport.security.gate import SNAPSHOT_PREFIX

_WATCHED: dict[str, list[str]] = {}  # real path -> one entry per open: "hashing", "snapshot" or the opener's file
_COPIES: list[tuple[str, str]] = []  # (path, opener) of every open of a verified copy while something is watched
_SWAPS: list = []  # callables run once, by the audit hook, at the first open of a watched file that is a parse
_IN_SWAP: list[bool] = []
_GATE = os.path.join("modelport", "security", "gate.py")


def _opener() -> str:
    frame, opener = sys._getframe(2), None
    while frame is not None:
        name = frame.f_code.co_filename
        if f"model_signing{os.sep}_hashing" in name:
            return "hashing"
        if name.endswith(_GATE) and frame.f_code.co_name == "_copy_verified":
            return "snapshot"  # the gate copying a verified file into its private snapshot
        if opener is None and "audit" not in frame.f_code.co_name and name != __file__:
            opener = name
        frame = frame.f_back
    return opener or "?"


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _WATCHED or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    from modelport.security.gate import SNAPSHOT_PREFIX

    path = os.path.realpath(os.fsdecode(args[0]))
    copy = SNAPSHOT_PREFIX in path and not os.path.isdir(path)  # (a directory: rmtree removing the copy)
    if path not in _WATCHED and not copy:
        return
    if _IN_SWAP:
        return  # the swap itself writing the user's files
    opener = _opener()
    (_COPIES.append((path, opener)) if copy else _WATCHED[path].append(opener))
    if _SWAPS and opener != "hashing" and (opener == "snapshot") == (_SWAPS[0][0] == "snapshot"):
        swap = _SWAPS.pop()[1]
        _IN_SWAP.append(True)
        try:
            swap()  # runs before this open happens: an open of the user's file reads what it wrote
        finally:
            _IN_SWAP.clear()


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
    _COPIES.clear()
    _SWAPS.clear()


def _parses(watched: dict[str, list[str]]) -> dict[str, list[str]]:
    """Opens of the user's files other than to verify them: model_signing's hashing and the gate's copy."""
    return {Path(p).name: [o for o in openers if o not in ("hashing", "snapshot")] for p, openers in watched.items()}


def _copy_parses(name: str) -> list[str]:
    """Who opened the verified copy named ``name`` (the gate writing it excepted): the parse of the copy."""
    return [o for p, o in _COPIES if Path(p).name == name and o != "snapshot"]


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
    assert _copy_parses("model.onnx"), _COPIES  # onnx's reader opened the verified copy: what a parse looks like
    assert _parses(seen) == {"model.onnx": [], "weights.bin": []}  # the user's files: only hashed and copied
    assert all("snapshot" in openers for openers in seen.values())
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
    seen[os.path.realpath(model)].clear()
    res = cli("inspect", model, "--require-signature", keys[1])
    assert res.exit_code == 0, res.stderr
    assert _copy_parses("mlp.keras") and _parses(seen) == {"mlp.keras": []}, (seen, _COPIES)


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
    assert _copy_parses(model.name) and _parses(seen) == {model.name: []}, (seen, _COPIES)
    assert "snapshot" in seen[os.path.realpath(model)]
    assert SNAPSHOT_PREFIX not in res.stdout + res.stderr  # the output names the user's file
    if command == "registry add":
        assert cli("registry", "list", "--registry", tmp_path / "reg").exit_code == 0


# --------------------------------------------------------- the gap between the check and the load is closed
# The swap is what a writer racing the command does: the audit hook runs it at the first open that is a
# parse (not model_signing's hashing, not the gate's copy), just before that open happens. A command that
# parsed the user's file would read the swapped bytes; the controls show it does, through the same hook.


def _swapped_onnx(directory: Path) -> Path:
    """dir/model.onnx, y = x * scale, whose scale lives in dir/sentinel.bin (what replaces the signed model); dir."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])], "mul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.full(4, 9.0, np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save_model(model, str(directory / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="sentinel.bin", size_threshold=0)
    return directory


def _onnx_swap(model: Path, evil: Path):
    def swap() -> None:
        os.replace(evil / "model.onnx", model)  # replaced by rename
        os.replace(evil / "sentinel.bin", model.parent / "sentinel.bin")
        with open(model.parent / "weights.bin", "r+b") as fh:  # and rewritten in place
            fh.write(b"\0" * 16)
    return swap


def test_an_onnx_model_swapped_after_the_check_never_reaches_the_parser(cli, keys, watch, tmp_path):
    import onnx

    from modelport.security.signing import sign

    model = _external_data_model(tmp_path / "m")
    sign(model.parent, keys[0])
    sentinel = model.parent / "sentinel.bin"
    seen = watch(model, model.parent / "weights.bin", sentinel)
    _SWAPS.append(("parse", _onnx_swap(model, _swapped_onnx(tmp_path / "evil"))))
    res = cli("inspect", model, "--require-signature", keys[1], "--json")
    parses, copies = _parses(seen), list(_COPIES)  # (before this test reads the files itself)
    assert res.exit_code == 0, res.stderr
    assert not _SWAPS and sentinel.exists()  # the swap ran, at the parse's first open
    assert [n.op_type for n in onnx.load(str(model), load_external_data=False).graph.node] == ["Mul"]  # on disk now
    report = json.loads(res.stdout)
    assert report["op_histogram"] == {"Add": 1}  # the parse saw the signed graph ...
    assert parses == {"model.onnx": [], "weights.bin": [], "sentinel.bin": []}  # ... nor the swapped one's data
    assert [o for p, o in copies if Path(p).name == "model.onnx" and o != "snapshot"]  # the copy was parsed
    assert report["path"] == str(model) and SNAPSHOT_PREFIX not in res.stdout  # it names the user's file
    assert copies and not any(Path(p).exists() for p, _ in copies)  # the verified copy is gone when the command ends


def test_control_without_the_snapshot_the_same_swap_reaches_the_parser(keys, watch, tmp_path):
    import modelport as api
    from modelport.security.gate import require_signature
    from modelport.security.signing import sign

    model = _external_data_model(tmp_path / "m")
    sign(model.parent, keys[0])
    sentinel = model.parent / "sentinel.bin"
    evil = _swapped_onnx(tmp_path / "evil")
    watch(model, model.parent / "weights.bin", sentinel)
    assert require_signature([model], keys[1])  # verifies: the files were the signed ones at the check
    _SWAPS.append(("parse", _onnx_swap(model, evil)))
    report = api.inspect(str(model))  # then the user's path is opened: the swap lands in between
    assert not _SWAPS
    assert report.op_histogram == {"Mul": 1}  # the parse read the swapped model: the gap the snapshot closes


def test_a_file_changed_between_the_check_and_the_copy_is_refused(cli, keys, watch, tmp_path):
    from modelport.security.signing import sign

    model = _external_data_model(tmp_path / "m")
    sign(model.parent, keys[0])
    seen = watch(model, model.parent / "weights.bin")

    def flip() -> None:  # at the gate's first copy (model.onnx): weights.bin, verified, is not copied yet
        data = bytearray((model.parent / "weights.bin").read_bytes())
        data[3] ^= 0x40
        (model.parent / "weights.bin").write_bytes(bytes(data))

    _SWAPS.append(("snapshot", flip))
    out = tmp_path / "m.fp16.onnx"
    line = _one_line(cli("compress", model, "--quantize", "fp16", "-o", out, "--require-signature", keys[1]), 4,
                     "weights.bin changed after its signature was verified", "nothing was loaded")
    assert str(model.parent) in line and SNAPSHOT_PREFIX not in line
    assert not _SWAPS and _parses(seen) == {"model.onnx": [], "weights.bin": []}
    assert _COPIES and not [p for p, o in _COPIES if o != "snapshot"]  # no parser opened any copy
    assert not any(Path(p).exists() for p, _ in _COPIES)  # and the partial snapshot is gone
    assert not out.exists()


def _cnn_with_swap(tmp_path: Path, keys):
    """A signed directory: cnn.py, cnn.safetensors and a copy cnn2.safetensors; the swap (module that touches a
    canary, cnn.safetensors all zeros) and the verify arguments comparing (cnn.py, cnn.safetensors) to cnn2."""
    import torch
    from safetensors.torch import load_file, save_file

    from modelport.security.signing import sign

    cnn = zoo.write_cnn(tmp_path / "cnn")
    module, weights = Path(cnn.spec.rpartition(":")[0]), Path(cnn.safetensors)
    shutil.copyfile(weights, weights.with_name("cnn2.safetensors"))
    sign(Path(cnn.directory), keys[0])  # the directory: module and both weights
    canary, evil = tmp_path / "canary", tmp_path / "evil"
    evil.mkdir()
    (evil / "cnn.py").write_text(module.read_text() + CANARY_LINE.format(canary=str(canary)))
    save_file({k: torch.zeros_like(v) for k, v in load_file(str(weights)).items()}, str(evil / "cnn.safetensors"))

    def swap() -> None:
        os.replace(evil / "cnn.py", module)
        os.replace(evil / "cnn.safetensors", weights)

    args = [cnn.spec, cnn.spec, "--weights", weights, "--b-weights", weights.with_name("cnn2.safetensors"),
            "--input", cnn.inputs[0]]
    return module, weights, canary, swap, args


def test_a_module_and_its_safetensors_swapped_after_the_check_never_reach_the_parser(cli, keys, watch, tmp_path):
    module, weights, canary, swap, args = _cnn_with_swap(tmp_path, keys)
    seen = watch(module, weights)
    _SWAPS.append(("parse", swap))
    res = cli("verify", *args, "--require-signature", keys[1], "--json")
    parses = _parses(seen)  # (before this test reads the files itself)
    assert res.exit_code == 0, res.stdout[-2000:] + res.stderr  # the weights verified equal: the signed ones
    assert json.loads(res.stdout)["ok"] is True
    assert parses == {"cnn.py": [], "cnn.safetensors": []} and _copy_parses("cnn.py")
    assert not _SWAPS and "_p.Path(" in module.read_text()  # the swap ran: the module on disk touches the canary
    assert not canary.exists()  # the swapped module was never imported
    assert SNAPSHOT_PREFIX not in res.stdout + res.stderr


def test_control_without_the_snapshot_the_swapped_module_and_weights_are_loaded(keys, watch, tmp_path):
    import modelport as api
    from modelport.security.gate import require_signature

    module, weights, canary, swap, args = _cnn_with_swap(tmp_path, keys)
    watch(module, weights)
    assert require_signature([args[0], args[3], args[5]], keys[1])  # all three verify at the check
    _SWAPS.append(("parse", swap))
    report = api.verify(args[0], args[1], weights=str(args[3]), b_weights=str(args[5]), input_specs=[args[7]])
    assert not _SWAPS and canary.exists()  # the swapped module ran ...
    assert not report.ok  # ... and the zeroed weights were loaded: the outputs differ


def test_verified_snapshot_copies_what_the_signature_covers_and_removes_it(keys, tmp_path, monkeypatch):
    from modelport.security.gate import verified_snapshot
    from modelport.security.signing import sign

    model = _external_data_model(tmp_path / "m")
    (model.parent / "notes.txt").write_text("signed too")
    sign(model.parent, keys[0])
    monkeypatch.delenv("MODELPORT_REQUIRE_SIGNATURE", raising=False)
    plain = verified_snapshot([str(model), None], None)  # no key: nothing verified, nothing copied
    assert plain.args == [str(model), None] and plain.root is None
    with verified_snapshot([str(model), [str(model)], None], keys[1]) as snap:
        copy, listed, none = snap.args
        root = snap.root
        assert none is None and listed == [copy] and Path(copy).name == "model.onnx" and Path(copy).parent != model.parent
        assert oct(root.stat().st_mode & 0o777) == "0o700"
        names = sorted(p.name for p in Path(copy).parent.iterdir())
        assert names == ["model.onnx", "notes.txt", "weights.bin"]  # the signed files, and only those
        assert snap.files_copied == 3
        assert snap.bytes_copied == sum((model.parent / n).stat().st_size for n in names)
        for n in names:
            assert (Path(copy).parent / n).read_bytes() == (model.parent / n).read_bytes()
        assert snap.user_text(f"{copy}: bad") == f"{model}: bad"
        assert snap.restore({"path": Path(copy), "rows": (copy,)}) == {"path": model, "rows": (str(model),)}
    assert not root.exists()


@pytest.mark.parametrize("change, message", [
    ("removed", "weights.bin disappeared after its signature was verified"),
    ("symlink", "weights.bin cannot be opened as a regular file after its signature was verified"),
])
def test_a_file_removed_or_made_a_link_between_the_check_and_the_copy_is_refused(cli, keys, watch, tmp_path,
                                                                                 change, message):
    from modelport.security.signing import sign

    model = _external_data_model(tmp_path / "m")
    sign(model.parent, keys[0])
    weights = model.parent / "weights.bin"
    elsewhere = tmp_path / "elsewhere.bin"
    shutil.copyfile(weights, elsewhere)  # the same bytes: only the kind of file changes
    seen = watch(model, weights)

    def act() -> None:
        weights.unlink()
        if change == "symlink":
            weights.symlink_to(elsewhere)

    _SWAPS.append(("snapshot", act))
    line = _one_line(cli("inspect", model, "--require-signature", keys[1]), 4, message)
    assert str(model.parent) in line and SNAPSHOT_PREFIX not in line
    assert not _SWAPS and _parses(seen) == {"model.onnx": [], "weights.bin": []}
    assert _COPIES and not [p for p, o in _COPIES if o != "snapshot"]
    assert not any(Path(p).exists() for p, _ in _COPIES)


def test_an_error_while_loading_the_copy_names_the_users_file(cli, keys, tmp_path):
    from modelport.security.signing import sign

    model = _external_data_model(tmp_path / "m")
    sign(model.parent, keys[0])
    line = _one_line(cli("inspect", model, "--format", "tflite", "--require-signature", keys[1]), 2, "TFLite")
    assert line.startswith(f"modelport: error: {model}: ") and SNAPSHOT_PREFIX not in line


SIGNED_RUNS = {  # a signed model through each command: the default output lands beside the user's file
    "check": (["check", "{m}", "--target", "onnxruntime-cpu"], None),
    "bench": (["bench", "{m}", "--runs", "1"], None),
    "compress": (["compress", "{m}", "--quantize", "fp16"], "model.fp16.onnx"),
    "convert": (["convert", "{m}", "--to", "torch", "--no-verify"], "model_torch"),
    "scrub": (["scrub", "{m}"], "model.scrubbed.onnx"),
}


@pytest.mark.parametrize("command", list(SIGNED_RUNS))
def test_a_signed_model_runs_from_its_copy_and_the_output_is_the_users(cli, keys, tmp_path, command):
    from modelport.security.signing import sign

    model = _external_data_model(tmp_path / "m")
    sign(model.parent, keys[0])
    words, output = SIGNED_RUNS[command]
    before = set(os.listdir(model.parent))
    res = cli(*[w.format(m=model) for w in words], "--require-signature", keys[1])
    assert res.exit_code == 0, res.stdout[-2000:] + res.stderr
    assert SNAPSHOT_PREFIX not in res.stdout + res.stderr  # (rich wraps long paths: the copy's would still show)
    assert str(tmp_path.name) in res.stdout  # the user's path
    assert set(os.listdir(model.parent)) - before == ({output} if output else set())
