"""`modelport registry ...` through the real entry point: every command with --json and as text, on
SQLite and PostgreSQL, and every bad input refused in one line with the right exit code and
nothing left half-written."""

from __future__ import annotations

import getpass
import json
import os
import socket
from pathlib import Path

import pytest


def _fails_cleanly(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


def _json(res) -> dict:
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _corrupt(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def store(cli, tmp_path, onnx_model):
    """A SQLite registry with cnn@1 (alias prod) and cnn@2 added through the CLI."""
    url = str(tmp_path / "registry")
    assert cli("registry", "add", onnx_model, "--name", "cnn", "--alias", "prod", "--registry", url).exit_code == 0
    assert cli("registry", "add", onnx_model, "--name", "cnn", "--registry", url).exit_code == 0
    return url


def test_every_command_with_json_and_text(cli, registry_url, tmp_path, onnx_model, tflite_model):
    reg = ("--registry", registry_url)
    v1 = _json(cli("registry", "add", onnx_model, "--name", "cnn", "--alias", "prod", "--tag", "stage=trained",
                   "--reason", "first", "--json", *reg))
    assert (v1["ref"], v1["format"], v1["aliases"], v1["tags"]) == ("cnn@1", "onnx", ["prod"], {"stage": "trained"})
    assert v1["size"] == Path(onnx_model).stat().st_size and v1["created_by"] == getpass.getuser()
    text = cli("registry", "add", tflite_model, "-n", "cnn", "--parent", "cnn@1", *reg)
    assert text.exit_code == 0 and "added cnn@2 (tflite" in text.stdout

    listing = _json(cli("registry", "list", "--json", *reg))
    assert [v["ref"] for v in listing["entries"]] == ["cnn@1", "cnn@2"]
    assert "cnn@2" in cli("registry", "list", "cnn", *reg).stdout

    shown = _json(cli("registry", "show", "cnn@latest", "--json", *reg))
    assert shown["number"] == 2 and shown["parents"] == ["cnn@1"] and shown["format"] == "tflite"
    text = cli("registry", "show", "cnn@prod", *reg)
    assert text.exit_code == 0 and "cnn@1" in text.stdout and "stage=trained" in text.stdout

    moved = _json(cli("registry", "alias", "set", "cnn", "prod", "2", "--reason", "promote", "--json", *reg))
    assert (moved["old"], moved["new"], moved["reason"]) == (1, 2, "promote")
    assert "cnn@prod: 2 -> 1" in cli("registry", "alias", "set", "cnn", "prod", "1", *reg).stdout
    history = _json(cli("registry", "alias", "history", "cnn", "prod", "--json", *reg))["events"]
    assert [(e["old"], e["new"], e["reason"]) for e in history] == [(None, 1, "first"), (1, 2, "promote"),
                                                                    (2, 1, "")]
    assert "promote" in cli("registry", "alias", "history", "cnn", "prod", *reg).stdout
    then = _json(cli("registry", "show", "cnn@prod", "--at", history[1]["at"], "--json", *reg))
    assert then["number"] == 2  # what prod pointed at when it was promoted, not now (1)

    got = _json(cli("registry", "get", "cnn@2", "-o", tmp_path / "out", "--json", *reg))
    assert Path(got["path"]) == tmp_path / "out" and (tmp_path / "out").read_bytes() == Path(tflite_model).read_bytes()
    (tmp_path / "into").mkdir()
    text = cli("registry", "get", "cnn@1", "-o", tmp_path / "into", *reg)
    assert text.exit_code == 0
    assert (tmp_path / "into" / Path(onnx_model).name).read_bytes() == Path(onnx_model).read_bytes()

    fsck = _json(cli("registry", "fsck", "--json", *reg))
    assert fsck["ok"] is True and fsck["versions_checked"] == 2 and fsck["problems"] == []
    assert "0 unreferenced blob(s)" in cli("registry", "fsck", *reg).stdout
    gc = _json(cli("registry", "gc", "--json", *reg))
    assert gc["removed"] == [] and gc["kept"] == fsck["blobs_checked"]


def test_the_registry_comes_from_the_environment(cli, tmp_path, onnx_model, monkeypatch):
    monkeypatch.setenv("MODELPORT_REGISTRY", str(tmp_path / "envreg"))
    assert cli("registry", "add", onnx_model, "--name", "cnn").exit_code == 0
    assert (tmp_path / "envreg" / "registry.db").is_file() and (tmp_path / "envreg" / "blobs").is_dir()
    assert _json(cli("registry", "list", "--json"))["registry"] == str(tmp_path / "envreg")


def test_unknown_names_versions_and_aliases_list_what_exists(cli, store, tmp_path):
    reg = ("--registry", store)
    _fails_cleanly(cli("registry", "show", "resnet", *reg), 2, "no model named 'resnet'", "names: cnn")
    _fails_cleanly(cli("registry", "show", "cnn@9", *reg), 2, "'cnn' has no version 9", "versions: 1..2")
    _fails_cleanly(cli("registry", "show", "cnn@staging", *reg), 2, "no alias 'staging'", "aliases: prod -> 1")
    _fails_cleanly(cli("registry", "list", "resnet", *reg), 2, "names: cnn")
    _fails_cleanly(cli("registry", "get", "cnn@3", "-o", tmp_path / "x.onnx", *reg), 2, "versions: 1..2")
    assert not (tmp_path / "x.onnx").exists()
    _fails_cleanly(cli("registry", "alias", "set", "cnn", "prod", "7", *reg), 2, "has no version 7")
    _fails_cleanly(cli("registry", "alias", "set", "cnn", "prod", "0", *reg), 2, "not a version number")
    _fails_cleanly(cli("registry", "alias", "set", "cnn", "latest", "1", *reg), 2, "reserved")
    _fails_cleanly(cli("registry", "alias", "history", "cnn", "staging", *reg), 2, "aliases: prod -> 1")
    _fails_cleanly(cli("registry", "show", "cnn@prod", "--at", "2001-01-01T00:00:00Z", *reg), 2,
                   "cnn@prod did not exist at 2001-01-01", "first set at")
    _fails_cleanly(cli("registry", "show", "cnn@prod", "--at", "yesterday", *reg), 2, "not a timestamp")
    _fails_cleanly(cli("registry", "show", "cnn@", *reg), 2, "nothing after '@'")
    history = _json(cli("registry", "alias", "history", "cnn", "prod", "--json", *reg))["events"]
    assert len(history) == 1  # the refused moves left no trace


def test_a_corrupt_blob_is_refused_by_get_and_fsck(cli, store, tmp_path):
    from modelport.registry import Registry

    with Registry.open(store) as r:
        tensors = r.tensors_of("cnn@1")
        victim = max(tensors, key=lambda t: t["nbytes"])["blob"]
        path = r.blobs.path(victim)
    _corrupt(path)
    out = tmp_path / "out"
    out.mkdir()
    _fails_cleanly(cli("registry", "get", "cnn@2", "-o", out / "m.onnx", "--registry", store), 1, victim, "cnn@2")
    assert os.listdir(out) == []  # nothing half-written, no temp left
    line = _fails_cleanly(cli("registry", "fsck", "--registry", store), 1, "corrupt-blob", victim)
    assert "cnn@1" in line and "cnn@2" in line  # the versions that use it
    res = cli("registry", "fsck", "--json", "--registry", store)
    assert res.exit_code == 1 and json.loads(res.stdout)["ok"] is False
    path.unlink()
    _fails_cleanly(cli("registry", "fsck", "--registry", store), 1, "missing-blob", victim)
    _fails_cleanly(cli("registry", "get", "cnn@1", "-o", out / "m.onnx", "--registry", store), 1, victim, "missing")
    assert os.listdir(out) == []


def test_registries_that_cannot_be_opened(cli, tmp_path, onnx_model):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    _fails_cleanly(cli("registry", "list", "--registry", a_file), 2, "cannot open registry", "is not a directory")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "registry.db").write_bytes(b"this is not a database, just bytes" * 100)
    _fails_cleanly(cli("registry", "list", "--registry", garbage), 2, "cannot open registry", "not a database")
    _fails_cleanly(cli("registry", "list", "--registry", tmp_path / "nowhere"), 2, "no registry at")
    assert not (tmp_path / "nowhere").exists()  # reading does not create a registry
    _fails_cleanly(cli("registry", "list", "--registry", "ftp://host/x"), 2, "unsupported scheme 'ftp'")
    _fails_cleanly(cli("registry", "list", "--registry", "postgresql+psycopg://u@localhost/db"), 2,
                   "MODELPORT_REGISTRY_BLOBS")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://u:secret@127.0.0.1:{port}/db?blobs={tmp_path / 'b'}"
    line = _fails_cleanly(cli("registry", "add", onnx_model, "--name", "m", "--registry", url), 2,
                          "cannot open registry", "refused")
    assert "secret" not in line  # the password is not printed


def test_adding_what_is_no_model(cli, tmp_path, onnx_model):
    url = tmp_path / "registry"
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, I am not a model\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _fails_cleanly(cli("registry", "add", notes, "--name", "m", "--registry", url), 2, "notes.txt", "no model")
    _fails_cleanly(cli("registry", "add", empty, "--name", "m", "--registry", url), 2, "empty.onnx")
    _fails_cleanly(cli("registry", "add", tmp_path / "missing.onnx", "--name", "m", "--registry", url), 2,
                   "no such file")
    _fails_cleanly(cli("registry", "add", tmp_path, "--name", "m", "--registry", url), 2, "no model")
    assert not url.exists()  # a refused add creates no registry
    _fails_cleanly(cli("registry", "add", onnx_model, "--name", "bad name", "--registry", url), 2,
                   "not a valid model name")
    _fails_cleanly(cli("registry", "add", onnx_model, "--name", "m", "--tag", "novalue", "--registry", url), 2,
                   "not key=value")
    _fails_cleanly(cli("registry", "add", onnx_model, "--name", "m", "--alias", "7", "--registry", url), 2,
                   "not a valid alias")
    assert not url.exists()
    assert cli("registry", "add", onnx_model, "--name", "m", "--registry", url).exit_code == 0
    out = tmp_path / "exists.onnx"
    out.write_bytes(b"keep me")
    _fails_cleanly(cli("registry", "get", "m@1", "-o", out, "--registry", url), 2, "already exists")
    assert out.read_bytes() == b"keep me"


def test_json_reports_lose_no_field_to_the_tool_versions(cli, tmp_path, onnx_model, torch_dir):
    """Every command's JSON gets a top-level "versions" (the tool versions, from emit_json): no
    registry report may use that key, so each keeps every field of its report beside it."""
    import dataclasses

    from modelport.artifact import to_jsonable
    from modelport.cli.registry_cmd import emit_report
    from modelport.registry.diff import DiffReport
    from modelport.registry.oci import OciExport
    from modelport.registry.store import AliasEvent, FsckReport, GcReport, Version
    from modelport.versions import tool_versions

    tools = json.loads(json.dumps(to_jsonable(tool_versions())))
    reg = ("--registry", str(tmp_path / "registry"))

    def fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    def report(*args, keys: set[str]) -> dict:
        doc = _json(cli("registry", *args, "--json", *reg))
        assert doc.pop("versions") == tools, args
        assert set(doc) == keys, args
        return doc

    version = {"ref", *fields(Version)}
    v1 = report("add", onnx_model, "-n", "cnn", "--alias", "prod", keys=version)
    v2 = report("add", torch_dir, "-n", "cnn", "--parent", "cnn@1", keys=version)
    listing = report("list", keys={"registry", "entries"})
    assert listing["entries"] == [v1, v2]  # the versions, whole, under "entries"
    assert report("show", "cnn@2", keys=version) == v2
    report("get", "cnn@1", "-o", tmp_path / "got.onnx", keys={"ref", "path", "files_sha256", "size", "provenance"})
    report("alias", "set", "cnn", "prod", "2", keys=fields(AliasEvent))
    assert len(report("alias", "history", "cnn", "prod", keys={"name", "alias", "events"})["events"]) == 2
    report("gc", keys=fields(GcReport))
    report("fsck", keys={"ok", *fields(FsckReport)})
    report("lineage", "cnn@2", keys={"focus", "ancestors", "descendants", "nodes", "edges"})
    assert [m["ref"] for m in report("search", "--derived-from", "cnn@1", keys={"query", "matches"})["matches"]] == ["cnn@2"]
    report("diff", "cnn@1", onnx_model, keys={"counts", *fields(DiffReport)})
    report("export", "cnn@1", "--oci", tmp_path / "oci", keys=fields(OciExport))

    with pytest.raises(AssertionError, match="top-level 'versions' key"):  # a report that would lose it is refused
        emit_report({"versions": ["cnn@1"]})
