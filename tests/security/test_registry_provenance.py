"""Signed provenance lives with registry versions: `--sign --register` stores the step's OUT.intoto.jsonl
with the version, `registry add` picks up PATH.intoto.jsonl, `registry get` writes it back beside what it
fetched, `provenance verify NAME@V` verifies what the registry holds (walking ancestors' statements), and a
statement about other bytes is refused at add (exit 4) with nothing added.

The chain is real: an ONNX model (tests/zoo.py's y = x + offset), `compress --quantize fp16 --sign
--register`, then `adapt --batch 1 --sign --register`, through the CLI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import zoo

from modelport.cli.app import main


def _one_line(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stdout {res.stdout[-1500:]!r}, stderr {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


def _json(res) -> dict:
    assert res.exit_code == 0, (res.stdout[-1500:], res.stderr)
    return json.loads(res.stdout)


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """m.onnx -> (compress fp16, signed, registered) m@2 -> (adapt batch 1, signed, registered) m@3; m@1 is the input."""
    from modelport.security.signing import keygen

    d = tmp_path_factory.mktemp("regprov")
    keys, other = keygen(d / "key.pem"), keygen(d / "other.pem")
    model = Path(zoo.add_offset_model(d / "m.onnx", [0.5, -1.0, 2.0, 3.5]))
    reg = d / "registry"
    for args in (["compress", model, "--quantize", "fp16", "-o", d / "m16.onnx"],
                 ["adapt", d / "m16.onnx", "--batch", "1", "-o", d / "m16b1.onnx"]):
        rc = main([str(a) for a in args] + ["--sign", keys.private, "--register", "m", "--registry", str(reg)])
        assert rc == 0, args
    return {"dir": d, "reg": str(reg), "key": Path(keys.private), "pub": Path(keys.public),
            "key_id": keys.key_id, "other_pub": Path(other.public), "other_key": Path(other.private)}


def test_signed_registered_steps_keep_their_statements(cli, chain):
    d, reg = chain["dir"], chain["reg"]
    v1, v2, v3 = (_json(cli("registry", "show", f"m@{n}", "--registry", reg, "--json")) for n in (1, 2, 3))
    assert v1["provenance"] is None  # the original input came without provenance
    assert v2["provenance"]["key_ids"] == [chain["key_id"]] and v2["provenance"]["statements"] == 1
    assert v2["provenance"]["command"] == "compress"
    assert v3["provenance"]["key_ids"] == [chain["key_id"]] and v3["provenance"]["statements"] == 2
    assert v3["provenance"]["command"] == "adapt"
    assert v3["parents"] == ["m@2"] and v2["parents"] == ["m@1"]
    # the stored bundle is the one the step wrote, byte for byte
    from modelport.registry import Registry

    with Registry.open(reg) as r:
        assert r.provenance_bytes("m@3") == (d / "m16b1.onnx.intoto.jsonl").read_bytes()
        assert r.provenance_bytes("m@1") is None
    text = cli("registry", "show", "m@3", "--registry", reg)
    assert text.exit_code == 0
    assert "signed: adapt step by key id " + chain["key_id"][:16] in text.stdout
    assert "unsigned" in cli("registry", "show", "m@1", "--registry", reg).stdout
    assert cli("registry", "fsck", "--registry", reg).exit_code == 0
    gc = _json(cli("registry", "gc", "--registry", reg, "--json"))
    assert gc["removed"] == []  # the bundles' blobs are referenced


def test_get_writes_the_bundle_beside_and_the_fetched_file_verifies(cli, chain, tmp_path):
    reg = chain["reg"]
    got = _json(cli("registry", "get", "m@3", "-o", tmp_path / "got.onnx", "--registry", reg, "--json"))
    assert got["provenance"] == str(tmp_path / "got.onnx.intoto.jsonl")
    assert _sha(tmp_path / "got.onnx") == _sha(chain["dir"] / "m16b1.onnx")
    assert (tmp_path / "got.onnx.intoto.jsonl").read_bytes() == (chain["dir"] / "m16b1.onnx.intoto.jsonl").read_bytes()
    report = _json(cli("provenance", "verify", tmp_path / "got.onnx", "--pub", chain["pub"], "--json"))
    assert [s["command"] for s in report["steps"]] == ["compress", "adapt"]
    assert [o["name"] for o in report["originals"]] == ["m.onnx"]
    # an unsigned version is fetched alone
    cli("registry", "get", "m@1", "-o", tmp_path / "one.onnx", "--registry", reg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got.onnx", "got.onnx.intoto.jsonl", "one.onnx"]


def test_get_refuses_when_the_bundle_path_is_taken_and_writes_nothing(cli, chain, tmp_path):
    (tmp_path / "got.onnx.intoto.jsonl").write_text("mine\n")
    _one_line(cli("registry", "get", "m@3", "-o", tmp_path / "got.onnx", "--registry", chain["reg"]), 2,
              "got.onnx.intoto.jsonl already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got.onnx.intoto.jsonl"]
    assert (tmp_path / "got.onnx.intoto.jsonl").read_text() == "mine\n"


def test_verify_a_registry_reference_directly(cli, chain):
    reg = chain["reg"]
    report = _json(cli("provenance", "verify", "m@3", "--pub", chain["pub"], "--registry", reg, "--json"))
    assert report["path"] == "m@3"
    assert [s["command"] for s in report["steps"]] == ["compress", "adapt"]
    assert report["steps"][-1]["outputs"][0]["digest"] == "sha256:" + _sha(chain["dir"] / "m16b1.onnx")
    text = cli("provenance", "verify", "m@latest", "--pub", chain["pub"], "--registry", reg)
    assert text.exit_code == 0 and "2 signed step(s) from the original input to m@3" in text.stdout  # the resolved version
    _one_line(cli("provenance", "verify", "m@3", "--pub", chain["other_pub"], "--registry", reg), 4,
              "does not verify with the given key(s)")
    _one_line(cli("provenance", "verify", "m@1", "--pub", chain["pub"], "--registry", reg), 4,
              "no provenance is stored with m@1")
    _one_line(cli("provenance", "verify", "m@9", "--pub", chain["pub"], "--registry", reg), 2, "has no version 9")
    _one_line(cli("provenance", "verify", "m@3", "--pub", chain["pub"], "--registry", reg, "--provenance", "x.jsonl"),
              2, "--provenance is for a model file")
    _one_line(cli("provenance", "verify", "m@3", "--pub", chain["pub"], "--registry", chain["dir"] / "nowhere"), 2,
              "no registry at")


def test_the_registry_walk_reaches_statements_the_files_bundle_lacks(cli, chain, tmp_path):
    """A step run on a copy without its bundle records an input with no chain: the file's own provenance stops
    there, the registry's walk continues into the parent version's stored statement."""
    reg = chain["reg"]
    shutil.copyfile(chain["dir"] / "m16.onnx", tmp_path / "m16.onnx")  # no m16.onnx.intoto.jsonl beside it
    assert main(["adapt", str(tmp_path / "m16.onnx"), "--batch", "2", "-o", str(tmp_path / "b2.onnx"),
                 "--sign", str(chain["key"]), "--register", "m", "--registry", reg]) == 0
    alone = _json(cli("provenance", "verify", tmp_path / "b2.onnx", "--pub", chain["pub"], "--json"))
    assert [s["command"] for s in alone["steps"]] == ["adapt"] and alone["originals"][0]["name"] == "m16.onnx"
    ref = _json(cli("registry", "list", "m", "--registry", reg, "--json"))["entries"][-1]["ref"]
    walked = _json(cli("provenance", "verify", ref, "--pub", chain["pub"], "--registry", reg, "--json"))
    assert [s["command"] for s in walked["steps"]] == ["compress", "adapt"]
    assert walked["originals"][0]["name"] == "m.onnx"
    assert any("followed through the registry" in n and "m@2" in n for n in walked["notes"])


def test_registry_add_picks_up_the_bundle_beside_and_refuses_a_foreign_one(cli, chain, tmp_path):
    d = chain["dir"]
    reg = str(tmp_path / "reg")
    shutil.copyfile(d / "m16.onnx", tmp_path / "a.onnx")
    shutil.copyfile(d / "m16.onnx.intoto.jsonl", tmp_path / "a.onnx.intoto.jsonl")
    added = _json(cli("registry", "add", tmp_path / "a.onnx", "--name", "a", "--registry", reg, "--json"))
    assert added["provenance"]["statements"] == 1 and added["provenance"]["key_ids"] == [chain["key_id"]]
    assert _json(cli("provenance", "verify", "a@1", "--pub", chain["pub"], "--registry", reg, "--json"))["steps"]
    # the same statement beside other bytes: refused at add, nothing added
    zoo.add_offset_model(tmp_path / "b.onnx", [9.0, 9.0, 9.0, 9.0])
    shutil.copyfile(d / "m16.onnx.intoto.jsonl", tmp_path / "b.onnx.intoto.jsonl")
    _one_line(cli("registry", "add", tmp_path / "b.onnx", "--name", "b", "--registry", reg), 4,
              "b.onnx is not an output of the signed step", "m16.onnx")
    shutil.copyfile(tmp_path / "b.onnx", tmp_path / "m16.onnx")  # same name, other bytes
    _one_line(cli("registry", "add", tmp_path / "b.onnx", "--name", "b", "--registry", reg,
                  "--provenance", d / "m16.onnx.intoto.jsonl"), 4, "b.onnx is not an output")
    shutil.copyfile(d / "m16.onnx.intoto.jsonl", tmp_path / "m16.onnx.intoto.jsonl")
    _one_line(cli("registry", "add", tmp_path / "m16.onnx", "--name", "b", "--registry", reg), 4,
              "does not match its signed provenance", "sha256")
    (tmp_path / "junk.jsonl").write_text("not json\n")
    _one_line(cli("registry", "add", tmp_path / "a.onnx", "--name", "b", "--registry", reg,
                  "--provenance", tmp_path / "junk.jsonl"), 4, "line 1 of the provenance is not JSON")
    _one_line(cli("registry", "add", tmp_path / "a.onnx", "--name", "b", "--registry", reg,
                  "--provenance", tmp_path / "missing.jsonl"), 2, "no such provenance file")
    listing = _json(cli("registry", "list", "--registry", reg, "--json"))
    assert [e["ref"] for e in listing["entries"]] == ["a@1"]
    assert cli("registry", "fsck", "--registry", reg).exit_code == 0


def test_a_tampered_stored_bundle_is_refused_by_verify_and_named_by_fsck(cli, chain, tmp_path):
    shutil.copytree(chain["reg"], tmp_path / "reg")
    reg = str(tmp_path / "reg")
    from modelport.registry import Registry

    with Registry.open(reg) as r:
        blob = r.resolve("m@2").provenance["blob"]
        path = r.blobs.path(blob)
    env = json.loads(Path(path).read_text().splitlines()[0])
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"]["buildDefinition"]["externalParameters"]["options"]["quantize"] = "int8"
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    Path(path).chmod(0o644)
    Path(path).write_text(json.dumps(env) + "\n")
    _one_line(cli("provenance", "verify", "m@2", "--pub", chain["pub"], "--registry", reg), 1, "m@2", blob)
    fsck = cli("registry", "fsck", "--registry", reg)
    assert fsck.exit_code == 1 and blob in fsck.stderr
