"""`modelport scan`: every pickle read statically, every global checked against torch's allow-list.

The corpus comes from scripts/attack_corpus.py: real payloads (each creates its own canary file
when loaded the unsafe way; ``test_every_live_payload_really_runs`` proves it in a forked child),
and benign files (real torch state_dicts of tests/zoo.py's CNN and of transformers models built
from tiny configs, Lightning-style checkpoints, joblib and numpy files, plain pickles of every
protocol). Scans run under an audit hook watching for os.system / subprocess / exec / find_class.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import pickletools
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import zoo

from modelport.security import pickles
from modelport.security.pickles import scan_path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("attack_corpus", ROOT / "scripts" / "attack_corpus.py")
ac = importlib.util.module_from_spec(_spec)
sys.modules["attack_corpus"] = ac
_spec.loader.exec_module(ac)

MALICIOUS_FAMILIES = ["pickle-gadgets", "pickle-opcodes", "torch-checkpoints", "containers"]


@pytest.fixture(scope="module")
def corpus() -> tuple[Path, list]:
    """The whole corpus, once per process (its canaries live in its own directory)."""

    def build(d: Path):
        return d, ac.write_corpus(d, d / "_canaries", list(ac.PICKLE_FAMILIES))

    return zoo.cached("attack_corpus_pickles", build)


def _fails_cleanly(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


# ----------------------------------------------------------------------------- the allow-list


def test_allow_list_is_torchs_weights_only_table():
    from torch._weights_only_unpickler import _get_allowed_globals

    torch_table = {tuple(k.rsplit(".", 1)) for k in _get_allowed_globals()}
    assert pickles.TORCH_ALLOWED_GLOBALS == torch_table
    extras = pickles.ALLOWED_GLOBALS - pickles.TORCH_ALLOWED_GLOBALS
    assert ("builtins", "frozenset") in extras and ("numpy", "ndarray") in extras
    assert not any(m.split(".")[0] in ("os", "posix", "subprocess", "sys", "builtins") and n not in
                   ("set", "frozenset", "complex", "bytearray") for m, n in pickles.ALLOWED_GLOBALS)


@pytest.mark.parametrize("module,name,ok", [
    ("torch._utils", "_rebuild_tensor_v2", True), ("collections", "OrderedDict", True),
    ("__builtin__", "set", True),  # a Python 2 name pickle maps to builtins.set
    ("torch", "_utils._rebuild_tensor_v2", False),  # the same object by a dotted name: not the pair torch writes
    ("torch.serialization", "os.system", False), ("builtins", "eval", False), ("__builtin__", "eval", False),
    ("numpy.dtypes", "Float32DType", True), ("numpy.dtypes", "os", False), ("torch", "load", False),
])
def test_is_allowed(module, name, ok):
    assert pickles.is_allowed(module, name) is ok


# ----------------------------------------------------------------------------- the corpus


def test_corpus_is_refused_and_accepted_without_running_anything(corpus):
    out, samples = corpus
    fig = ac.evaluate(out, rescue=False)
    wrong = [(o.sample.path, o.scan, o.detail[:160]) for o in fig["outcomes"]
             if (o.scan_exit != 4 if o.sample.kind == "malicious" else o.scan_exit != 0)]
    assert wrong == []
    assert fig["malicious"] >= 100 and fig["malicious_live"] >= 100, fig["malicious"]
    assert fig["refused_by_scan"] == fig["malicious"]
    assert fig["accepted_by_scan"] == fig["benign"] >= 30
    assert fig["canaries"] == [] and fig["audit_events"] == []
    assert "corpus_user_net" not in sys.modules  # the pickled module's file was never imported
    families = {s.family for s in samples if s.kind == "malicious"}
    assert set(MALICIOUS_FAMILIES) <= families


def test_every_finding_says_where(corpus):
    out, samples = corpus
    for s in samples:
        if s.kind != "malicious":
            continue
        report = scan_path(out / s.path)
        assert report.findings, s.path
        for f in report.findings:
            assert f.where.startswith(Path(s.path).name), (s.path, f.where)
            assert f.offset is not None or f.kind == "torchscript", (s.path, f)


def test_what_each_family_is_caught_for(corpus):
    out, _ = corpus
    details = {}
    for rel in ("pickle-opcodes/malicious/p4_stack_global_from_memo.pkl",
                "pickle-opcodes/malicious/p4_dotted_name_under_torch.pkl",
                "pickle-opcodes/malicious/p2_truncated_after_reduce.pkl",
                "pickle-gadgets/malicious/getattr_import_p4.pkl",
                "pickle-gadgets/malicious/pkgutil_resolve_name_p0.pkl",
                "pickle-opcodes/malicious/p2_ext1.pkl",
                "torch-checkpoints/malicious/torchscript_as_checkpoint.pt",
                "torch-checkpoints/malicious/pickled_module.pt",
                "containers/malicious/zip_in_zip_in_tar.tar",
                "containers/malicious/joblib_xz.joblib",
                "containers/malicious/object_array.npz",
                "containers/malicious/polyglot.pkl",
                "containers/malicious/polyglot_tar.tar"):
        report = scan_path(out / rel)
        details[Path(rel).name] = {(f.kind, f.detail.split(" (")[0]) for f in report.findings}
        details[Path(rel).name + " where"] = {f.where for f in report.findings}
    assert ("global", "os.system") in details["p4_stack_global_from_memo.pkl"]  # strings fetched from the memo
    assert ("global", "torch.serialization.os.system") in details["p4_dotted_name_under_torch.pkl"]
    assert ("global", "posix.system") in details["p2_truncated_after_reduce.pkl"]
    assert {("global", "builtins.getattr"), ("global", "builtins.__import__")} <= details["getattr_import_p4.pkl"]
    assert any(k == "computed-call" for k, _ in details["getattr_import_p4.pkl"])
    assert any(k == "computed-call" for k, _ in details["pkgutil_resolve_name_p0.pkl"])
    assert {k for k, _ in details["p2_ext1.pkl"]} == {"extension"}
    assert "torchscript" in {k for k, _ in details["torchscript_as_checkpoint.pt"]}
    assert ("global", "corpus_user_net.Net") in details["pickled_module.pt"]
    assert details["zip_in_zip_in_tar.tar where"] == {"zip_in_zip_in_tar.tar!bundle/outer.zip!inner.zip!deep/model.pkl"}
    assert details["joblib_xz.joblib where"] == {"joblib_xz.joblib!(xz)"}
    assert details["object_array.npz where"] == {"object_array.npz!extra.npy (object array)"}
    assert details["polyglot.pkl where"] == {"polyglot.pkl (appended zip)!payload.pkl"}
    assert details["polyglot_tar.tar where"] == {"polyglot_tar.tar (read as a pickle)"}  # a tar, and a pickle


def test_global_listing_matches_pickletools(corpus):
    """For pickles that only use GLOBAL (protocols 0-3), the scanner's imports are exactly genops' GLOBAL arguments."""
    out, samples = corpus
    checked = 0
    for s in samples:
        p = out / s.path
        if p.suffix != ".pkl" or "truncated" in p.name:
            continue
        data = p.read_bytes()
        ops = list(pickletools.genops(data))
        if any(op.name == "STACK_GLOBAL" for op, _, _ in ops):
            continue
        listed = {a.replace(" ", ".") for op, a, _ in ops if op.name in ("GLOBAL", "INST")}
        first = scan_path(p).pickles[0]  # (a polyglot's appended zip holds more)
        assert {g.name for g in first.globals} == listed, s.path
        offsets = {pos for op, _, pos in ops if op.name in ("GLOBAL", "INST")}
        assert {g.offset for g in first.globals} <= offsets
        checked += 1
    assert checked >= 20


@pytest.mark.skipif(not hasattr(os, "fork"), reason="proves liveness in a forked child")
def test_every_live_payload_really_runs(tmp_path):
    """In a forked child, load every live malicious sample the unsafe way: each creates its canary.

    That is why a missing canary after a scan means the scan did not run it.
    """
    out = tmp_path / "corpus"
    samples = ac.write_corpus(out, tmp_path / "canaries", MALICIOUS_FAMILIES)
    live = [s for s in samples if s.kind == "malicious" and s.live]
    assert len(live) >= 100
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        try:
            import warnings

            warnings.simplefilter("ignore")
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            ac.prove_live(out)
        finally:
            os._exit(0)
    deadline = time.time() + 120
    while time.time() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("the unsafe loads did not finish")
    ran = {Path(s.canary).name for s in live if Path(s.canary).exists()}
    assert ran == {Path(s.canary).name for s in live}, sorted({Path(s.canary).name for s in live} - ran)


# ----------------------------------------------------------------------------- the command


def test_scan_clean_checkpoint(cli, corpus):
    out, _ = corpus
    res = cli("scan", out / "torch-state-dicts/benign/cnn_zip_p2.pt")
    assert res.exit_code == 0, res.stderr
    assert "clean" in res.stdout and "torch._utils._rebuild_tensor_v2" in res.stdout
    res = cli("scan", out / "torch-state-dicts/benign/cnn_legacy_p4.pt", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "clean" and doc["findings"] == [] and len(doc["pickles"]) == 5
    assert set(doc["imported"]) == {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
                                    "torch.FloatStorage", "torch.LongStorage"}


def test_scan_refuses_naming_global_and_place(cli, corpus):
    out, _ = corpus
    res = cli("scan", out / "torch-checkpoints/malicious/nested_state_dict_zip_p4.pt")
    line = _fails_cleanly(res, 4, "posix.system", "nested_state_dict_zip_p4.pt!nested_state_dict_zip_p4/data.pkl",
                          "at byte")
    offset = int(line.split("at byte ")[1].split()[0].rstrip(";"))
    with zipfile.ZipFile(out / "torch-checkpoints/malicious/nested_state_dict_zip_p4.pt") as z:
        data = z.read("nested_state_dict_zip_p4/data.pkl")
    assert data[offset] == 0x93  # the offset is the STACK_GLOBAL opcode's own
    assert [op.name for op, _, pos in pickletools.genops(data) if pos == offset] == ["STACK_GLOBAL"]
    assert "refused: outside the allow-list" in res.stdout
    res = cli("scan", out / "containers/malicious/joblib_gzip.joblib", "--json")
    assert res.exit_code == 4
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "unsafe" and doc["exit_code"] == 4
    assert [(f["kind"], f["detail"], f["where"]) for f in doc["findings"]] == [
        ("global", "posix.system", "joblib_gzip.joblib!(gzip)")]


def test_scan_directory(cli, corpus, tmp_path):
    out, _ = corpus
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "README.md").write_text("cat\nsystem\n")  # starts like a GLOBAL, but is no complete pickle
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes((out / "torch-state-dicts/benign/bert_zip.bin").read_bytes())
    assert cli("scan", d).exit_code == 0
    (d / "sub" / "extra.pkl").write_bytes((out / "pickle-gadgets/malicious/subprocess_run_p3.pkl").read_bytes())
    res = cli("scan", d)
    _fails_cleanly(res, 4, "sub/extra.pkl", "subprocess.run")
    text = tmp_path / "text"
    text.mkdir()
    (text / "notes.txt").write_text("hello")
    _fails_cleanly(cli("scan", text), 2, "no pickle")


def test_scan_bad_inputs(cli, tmp_path):
    import onnx
    from onnx import TensorProto, helper
    from safetensors.torch import save_file

    _fails_cleanly(cli("scan", tmp_path / "missing.pt"), 2, "no such file")
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    _fails_cleanly(cli("scan", empty), 2, "empty")
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
    onnx.save(model, tmp_path / "m.onnx")
    _fails_cleanly(cli("scan", tmp_path / "m.onnx"), 2, "not a pickle")
    save_file({"w": torch.ones(3)}, str(tmp_path / "w.safetensors"))
    _fails_cleanly(cli("scan", tmp_path / "w.safetensors"), 2, "not a pickle")
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    _fails_cleanly(cli("scan", text), 2, "not a pickle")


def test_truncated_and_corrupt(cli, tmp_path, corpus):
    out, _ = corpus
    good = pickle.dumps({"a": [1, 2, 3], "b": "x" * 40}, protocol=4)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(good[: len(good) // 2])
    _fails_cleanly(cli("scan", cut), 2, "truncated pickle")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04\xff\xff\xff")
    _fails_cleanly(cli("scan", bad), 2, "corrupt pickle", "no pickle opcode")
    # cut after it imported os.system: refused, not merely unreadable
    _fails_cleanly(cli("scan", out / "pickle-opcodes/malicious/p2_truncated_after_reduce.pkl"), 4, "posix.system")
    ckpt = (out / "torch-state-dicts/benign/cnn_zip_p2.pt").read_bytes()
    for n in (100, len(ckpt) // 2, len(ckpt) - 10):
        p = tmp_path / f"cut{n}.pt"
        p.write_bytes(ckpt[:n])
        _fails_cleanly(cli("scan", p), 2)
    legacy = (out / "torch-state-dicts/benign/cnn_legacy_p2.pt").read_bytes()
    p = tmp_path / "legacy_cut.pt"
    p.write_bytes(legacy[:-100])
    _fails_cleanly(cli("scan", p), 2, "legacy checkpoint", "storage")


def test_names_from_the_file_are_not_markup(cli, tmp_path):
    """Global names are attacker-chosen text: printed literally, never interpreted as rich markup."""
    p = tmp_path / "markup.pkl"
    p.write_bytes(b"\x80\x02c[bold]evil[/]\n[/nope]\n)R.")
    res = cli("scan", p)
    _fails_cleanly(res, 4, "[bold]evil[/].[/nope]")
    assert "[bold]evil[/]" in res.stdout


def test_scan_is_fast_on_large_checkpoints(tmp_path):
    """Storages are skipped, not read: a 64 MiB legacy checkpoint scans in well under a second."""
    big = {"w": torch.zeros(16 * 1024 * 1024)}
    zip_path, legacy_path = tmp_path / "big.pt", tmp_path / "big_legacy.pt"
    torch.save(big, zip_path)
    torch.save(big, legacy_path, _use_new_zipfile_serialization=False)
    for p in (zip_path, legacy_path):
        started = time.perf_counter()
        report = scan_path(p)
        assert report.ok, report.summary()
        assert time.perf_counter() - started < 2.0
