"""`modelport convert ckpt.pt --to safetensors`: a pickled checkpoint's tensors rebuilt without running it.

Real checkpoints: tests/zoo.py's CNN, a transformers BERT and GPT-2 (tied embeddings) built from
tiny configs, saved with torch.save in the zip and the legacy format at several pickle protocols,
Lightning-style checkpoints with optimizer states. Malicious ones come from scripts/attack_corpus.py;
each would create a canary file if it ran.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import zoo
from safetensors import safe_open
from safetensors.torch import load_file

from modelport.convert import pickle_to_safetensors as p2s
from modelport.errors import UnsafeError, UnsupportedError
from modelport.security.pickles import load_checkpoint, read_static

ROOT = Path(__file__).resolve().parents[2]
if "attack_corpus" in sys.modules:
    ac = sys.modules["attack_corpus"]
else:
    _spec = importlib.util.spec_from_file_location("attack_corpus", ROOT / "scripts" / "attack_corpus.py")
    ac = importlib.util.module_from_spec(_spec)
    sys.modules["attack_corpus"] = ac
    _spec.loader.exec_module(ac)


@pytest.fixture(scope="module")
def corpus() -> tuple[Path, list]:
    def build(d: Path):
        return d, ac.write_corpus(d, d / "_canaries", list(ac.PICKLE_FAMILIES))

    return zoo.cached("attack_corpus_pickles", build)


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def _fails_cleanly(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ----------------------------------------------------------------------------- real models


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_cnn_checkpoint_to_safetensors_runs_the_same(cli, cnn, tmp_path, out_dir, legacy):
    """zoo's CNN: the safetensors file loads into the module, which computes what the original did."""
    state = torch.load(cnn.pt, weights_only=True)
    src = tmp_path / "cnn.pt"
    torch.save({"state_dict": state, "epoch": 4}, src, _use_new_zipfile_serialization=not legacy)
    out = out_dir / "cnn.safetensors"
    res = cli("convert", src, "--to", "safetensors", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert "took key 'state_dict'" in res.stdout and "'epoch' (int)" in res.stdout
    assert "bitwise equal" in res.stdout and "torch.load(weights_only=True)" in res.stdout
    assert _leftovers(out_dir) == ["cnn.safetensors"]
    tensors = load_file(str(out))
    assert set(tensors) == set(state)
    for k, v in state.items():
        assert torch.equal(tensors[k], v), k
    model = zoo.load_module(cnn.spec).eval()
    model.load_state_dict(tensors, strict=True)
    reference = zoo.cnn_eval(cnn)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["modelport.source_key"] == "state_dict"


def test_every_benign_checkpoint_of_the_corpus(corpus, tmp_path):
    """Both formats, protocols 1-5, BERT, GPT-2, Lightning, DataParallel, every dtype: rebuilt, equal, verified."""
    out, samples = corpus
    done = 0
    for i, s in enumerate(x for x in samples if x.kind == "benign" and x.rescue == "ok"):
        src = out / s.path
        dest = tmp_path / f"{i}.safetensors"
        report = p2s.convert_checkpoint(src, dest)
        assert report.ok, (s.path, report)
        written = load_file(str(dest))
        reference = p2s.select_state_dict(torch.load(src, weights_only=False, map_location="cpu"))  # trusted here
        assert set(written) == set(reference.tensors), s.path
        for k, v in reference.tensors.items():
            assert written[k].dtype == v.dtype and written[k].shape == v.shape, (s.path, k)
            assert p2s._bytes(written[k]) == p2s._bytes(v), (s.path, k)
        done += 1
    assert done >= 20


def test_transformers_tied_weights_and_keys(corpus, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    out, _ = corpus
    dest = tmp_path / "gpt2.safetensors"
    report = p2s.convert_checkpoint(out / "torch-state-dicts/benign/gpt2_zip.bin", dest)
    assert any("tied weights" in w and "lm_head.weight" in w for w in report.warnings), report.warnings
    tensors = load_file(str(dest))
    assert torch.equal(tensors["lm_head.weight"], tensors["transformer.wte.weight"])
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and not [m for m in missing if not m.endswith("attn.bias")]


def test_lightning_and_prefixes(cli, corpus, out_dir):
    out, _ = corpus
    res = cli("convert", out / "torch-state-dicts/benign/lightning_legacy.ckpt", "--to", "safetensors",
              "-o", out_dir / "l.safetensors", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    detail = doc["artifact"]["lineage"][-1]["detail"]
    assert "took key 'state_dict'" in detail and "'optimizer_states' (a list of 1" in detail
    assert "'lr_schedulers'" in detail and "verified: all 4 tensors" in detail
    assert doc["artifact"]["lineage"][-1]["verified"] is True
    assert sorted(load_file(str(out_dir / "l.safetensors"))) == ["model.0.bias", "model.0.weight", "model.2.bias",
                                                                "model.2.weight"]
    report = p2s.convert_checkpoint(out / "torch-state-dicts/benign/data_parallel.pth", out_dir / "dp.safetensors")
    assert "prefix 'module.' removed" in report.artifact.lineage[-1].detail
    assert not any(k.startswith("module.") for k in load_file(str(out_dir / "dp.safetensors")))


def test_protocols_torch_cannot_read_are_checked_by_the_static_reader(corpus, tmp_path):
    out, _ = corpus
    for proto, reader in ((2, "torch.load(weights_only=True)"), (4, "the static reader"), (1, "the static reader")):
        report = p2s.convert_checkpoint(out / f"torch-state-dicts/benign/cnn_zip_p{proto}.pt", tmp_path / f"{proto}.st")
        assert reader in report.artifact.lineage[-1].detail, report.artifact.lineage[-1].detail
    for s in ("cnn_legacy_p5.pt", "dtypes_views_zip.pt", "dtypes_views_legacy.pt", "gpt2_legacy.bin"):
        a = load_checkpoint(out / "torch-state-dicts/benign" / s).obj
        b = read_static(out / "torch-state-dicts/benign" / s).obj
        assert set(a) == set(b)
        for k in a:
            assert p2s._bytes(a[k]) == p2s._bytes(b[k]) and a[k].stride() == b[k].stride(), (s, k)


# ----------------------------------------------------------------------------- refusals


def test_every_malicious_sample_is_refused_and_nothing_runs(corpus, tmp_path):
    out, samples = corpus
    fig = ac.evaluate(out, rescued_dir=tmp_path)
    wrong = [(o.sample.path, o.rescue_exit, o.detail[:120]) for o in fig["outcomes"]
             if o.sample.kind == "malicious" and o.rescue_exit != 4]
    assert wrong == []
    assert fig["refused_by_rescue"] == fig["malicious"] >= 100
    assert fig["rescued"] == fig["rescuable"] >= 20
    assert fig["canaries"] == [] and fig["audit_events"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.safetensors" for i, o in
                                                                enumerate(fig["outcomes"]) if o.rescue_exit == 0)


def test_the_restricted_unpickler_refuses_on_its_own(corpus):
    """Without the scan in front: load_checkpoint itself refuses every malicious torch checkpoint, running nothing."""
    out, samples = corpus
    torch_files = [s for s in samples if s.kind == "malicious" and s.family == "torch-checkpoints"]
    assert len(torch_files) >= 10
    with ac.AuditWatch() as watch:
        for s in torch_files:
            with pytest.raises(UnsafeError):
                load_checkpoint(out / s.path)
            with pytest.raises(UnsafeError):
                read_static(out / s.path)
    assert watch.events == []
    assert not any(Path(s.canary).exists() for s in torch_files if s.canary)
    assert "corpus_user_net" not in sys.modules


def test_refusals_through_the_cli(cli, corpus, out_dir):
    out, _ = corpus
    for rel, frag in (("torch-checkpoints/malicious/pickled_module.pt", "corpus_user_net.Net"),
                      ("torch-checkpoints/malicious/torchscript_as_checkpoint.pt", "TorchScript"),
                      ("torch-checkpoints/malicious/lightning_hparams_zip.ckpt", "builtins.exec"),
                      ("pickle-gadgets/malicious/os_system_p0.pkl", "posix.system")):
        _fails_cleanly(cli("convert", out / rel, "--to", "safetensors", "-o", out_dir / "x.safetensors"), 4, frag)
    assert _leftovers(out_dir) == []


def test_not_a_state_dict_is_refused_not_guessed(cli, tmp_path, out_dir):
    sd = {"w": torch.ones(2)}
    two = tmp_path / "gan.pt"
    torch.save({"generator": sd, "discriminator": {"w": torch.zeros(2)}}, two)
    _fails_cleanly(cli("convert", two, "--to", "safetensors", "-o", out_dir / "x.safetensors"), 3,
                   "2 state_dicts", "'generator'", "not guessing")
    none = tmp_path / "numbers.pt"
    torch.save({"lr": 0.1, "history": [1, 2, 3]}, none)
    _fails_cleanly(cli("convert", none, "--to", "safetensors", "-o", out_dir / "x.safetensors"), 3, "no state_dict")
    sparse = tmp_path / "sparse.pt"
    torch.save({"w": torch.eye(3).to_sparse()}, sparse)
    _fails_cleanly(cli("convert", sparse, "--to", "safetensors", "-o", out_dir / "x.safetensors"), 3, "dense")
    assert _leftovers(out_dir) == []


def test_bad_inputs(cli, corpus, tmp_path, out_dir):
    import onnx
    from onnx import TensorProto, helper

    out, _ = corpus
    ok = out / "torch-state-dicts/benign/cnn_zip_p2.pt"
    _fails_cleanly(cli("convert", tmp_path / "missing.pt", "--to", "safetensors"), 2, "no such file")
    _fails_cleanly(cli("convert", ok, "--to", "safetensors", "-o", out_dir), 2, "is a directory")
    _fails_cleanly(cli("convert", ok, "--to", "safetensors", "--from", "onnx", "-o", out_dir / "x.st"), 3, "--from")
    _fails_cleanly(cli("convert", ok, "--to", "safetensors", "--inputs", "x.npz", "-o", out_dir / "x.st"), 2,
                   "--inputs")
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
    onnx.save(model, tmp_path / "m.onnx")
    _fails_cleanly(cli("convert", tmp_path / "m.onnx", "--to", "safetensors", "-o", out_dir / "x.st"), 3,
                   "no conversion route from onnx to safetensors")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    _fails_cleanly(cli("convert", text, "--to", "safetensors", "-o", out_dir / "x.st"), 2, "not a pickle")
    _fails_cleanly(cli("convert", out / "plain-data/benign/arrays_raw.joblib", "--to", "safetensors", "-o",
                       out_dir / "x.st"), 3, "not a torch.save checkpoint")
    data = ok.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) - 200])
    _fails_cleanly(cli("convert", cut, "--to", "safetensors", "-o", out_dir / "x.st"), 2)
    legacy = (out / "torch-state-dicts/benign/cnn_legacy_p2.pt").read_bytes()
    cut.write_bytes(legacy[:-64])
    _fails_cleanly(cli("convert", cut, "--to", "safetensors", "-o", out_dir / "x.st"), 2, "storage")
    # a storage record shorter than its tensor says
    broken = tmp_path / "short.pt"
    with zipfile.ZipFile(ok) as zin, zipfile.ZipFile(broken, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info.filename)
            zout.writestr(info.filename, body[:4] if "/data/0" in info.filename else body)
    _fails_cleanly(cli("convert", broken, "--to", "safetensors", "-o", out_dir / "x.st"), 2, "storage record")
    assert _leftovers(out_dir) == []


def test_a_wrong_write_is_caught_and_nothing_is_placed(corpus, out_dir, monkeypatch):
    """Fault injection in the writer (one element flipped): the second read disagrees, exit 1, no output."""
    out, _ = corpus
    real = p2s._writable

    def flipped(tensors, path):
        written, warns = real(tensors, path)
        name = sorted(written)[0]
        written[name] = written[name].clone()
        written[name].view(-1)[0] += 1
        return written, warns

    monkeypatch.setattr(p2s, "_writable", flipped)
    from modelport.errors import CheckFailedError

    with pytest.raises(CheckFailedError, match="different"):
        p2s.convert_checkpoint(out / "torch-state-dicts/benign/cnn_zip_p2.pt", out_dir / "x.safetensors")
    assert _leftovers(out_dir) == []


def test_replacing_an_existing_output_is_atomic(corpus, out_dir):
    out, _ = corpus
    dest = out_dir / "m.safetensors"
    dest.write_bytes(b"old")
    p2s.convert_checkpoint(out / "torch-state-dicts/benign/bert_legacy.bin", dest)
    assert len(load_file(str(dest))) > 10
    assert _leftovers(out_dir) == ["m.safetensors"]
    with pytest.raises(UnsafeError):
        p2s.convert_checkpoint(out / "torch-checkpoints/malicious/load_from_bytes.pt", dest)
    assert len(load_file(str(dest))) > 10 and _leftovers(out_dir) == ["m.safetensors"]
    with pytest.raises(UnsupportedError):
        p2s.convert_checkpoint(out / "plain-data/benign/floats.npy", dest)


def test_the_audit_watch_sees_forked_children_but_not_modelports_isolation_fork(tmp_path):
    """The evaluator's watch: a payload that forks (or runs code in a forked child) is counted, with the child's
    own events spooled back; modelport's fork that reads untrusted HDF5 in isolation is the defence, not counted."""
    import os

    from modelport.security import loaders

    with ac.AuditWatch() as watch:
        assert loaders._child_result(lambda: b"ok", 30, tmp_path) == b"ok"
    assert watch.events == []
    with ac.AuditWatch() as watch:
        pid = os.fork()
        if pid == 0:  # the child: a payload's eval
            try:
                eval("1 + 1")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    kinds = [e for e, _ in watch.events]
    assert "os.fork" in kinds and "exec (in a forked child)" in kinds, kinds
