"""Provenance stored with versions, on SQLite and on a real PostgreSQL server: the bundle is a blob named
by a ``provenance`` row, read back with the version, written beside ``get``'s output, counted by gc and
fsck, verified against the version's manifest digests; a statement about other bytes is refused at add.

The bundles are real DSSE envelopes over in-toto statements, signed with an ECDSA key by
``security.provenance`` (the same code ``--sign`` runs), about a real ONNX model and a generated
PyTorch directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zoo
from sqlalchemy import create_engine, inspect, text

from modelport.errors import UnsafeError
from modelport.registry import Registry
from modelport.security import provenance, signing


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    keys = signing.keygen(tmp_path_factory.mktemp("pkey") / "k.pem")
    return keys, signing.load_private_key(keys.private)


def _sign_bundle(model: Path, private, *, about: Path | None = None) -> Path:
    """A one-statement bundle beside ``model`` whose subject is ``about`` (default: ``model`` itself)."""
    statement = {"_type": provenance.STATEMENT_TYPE, "subject": provenance.describe(about or model, "output"),
                 "predicateType": provenance.SLSA_PROVENANCE,
                 "predicate": {"buildDefinition": {"buildType": "urn:modelport:step:convert:v1",
                                                   "externalParameters": {"command": "convert", "options": {}},
                                                   "resolvedDependencies": []},
                               "runDetails": {"builder": {"id": provenance.BUILDER_ID, "version": {}}}}}
    dest = provenance.bundle_path(model)
    dest.write_text(json.dumps(provenance._envelope(statement, private)) + "\n")
    return dest


@pytest.fixture
def reg(registry_url):
    with Registry.open(registry_url) as r:
        yield r


def test_a_version_keeps_its_bundle_and_gives_it_back(reg, registry_url, key, tmp_path, onnx_model, torch_dir):
    import shutil

    keys, private = key
    model = tmp_path / "cnn.onnx"
    shutil.copyfile(onnx_model, model)
    bundle = _sign_bundle(model, private)
    plain = reg.add(onnx_model, "plain")
    assert plain.provenance is None
    v = reg.add(model, "cnn")
    assert v.provenance["key_ids"] == [keys.key_id] and v.provenance["statements"] == 1
    with Registry.open(registry_url) as again:  # a new connection reads the row back
        assert again.resolve("cnn@1").provenance == v.provenance
        assert again.provenance_bytes("cnn@1") == bundle.read_bytes()
    out = reg.get("cnn@1", tmp_path / "out" / "got.onnx")
    assert provenance.bundle_path(out).read_bytes() == bundle.read_bytes()
    assert provenance.verify(out, [keys.public]).steps[0].command == "convert"
    assert provenance.verify_ref(reg, "cnn@1", [keys.public]).path == "cnn@1"
    assert not provenance.bundle_path(reg.get("plain@1", tmp_path / "out" / "plain.onnx")).exists()
    # a directory model: the statement's dirHash must be the directory's
    tdir = tmp_path / "torch"
    shutil.copytree(torch_dir, tdir)
    _sign_bundle(tdir, private)
    d = reg.add(tdir, "cnn-torch")
    assert d.provenance["statements"] == 1
    assert provenance.verify_ref(reg, "cnn-torch@1", [keys.public]).steps
    assert reg.fsck().ok
    assert reg.gc().removed == ()  # the bundles' blobs are referenced
    assert reg.fsck().ok


def test_a_statement_about_other_bytes_is_refused_and_nothing_is_added(reg, key, tmp_path, onnx_model):
    _, private = key
    model = Path(zoo.add_offset_model(tmp_path / "m.onnx", [1.0, 2.0, 3.0, 4.0]))
    _sign_bundle(model, private, about=Path(onnx_model))
    with pytest.raises(UnsafeError, match="is not an output of the signed step"):
        reg.add(model, "m")
    (tmp_path / "x").mkdir()
    other = Path(zoo.add_offset_model(tmp_path / "x" / "m.onnx", [5.0, 6.0, 7.0, 8.0]))
    _sign_bundle(model, private, about=other)  # same name, other bytes
    with pytest.raises(UnsafeError, match="does not match its signed provenance"):
        reg.add(model, "m")
    assert reg.names() == []
    v = reg.add(model, "m", provenance=False)  # explicitly without it
    assert v.provenance is None


def test_a_store_made_before_the_provenance_table_gains_it_on_open(registry_url, key, tmp_path):
    with Registry.open(registry_url) as r:
        model = Path(zoo.add_offset_model(tmp_path / "m.onnx", [1.0, 2.0, 3.0, 4.0]))
        r.add(model, "old")
        engine = create_engine(r.location.db_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE provenance"))
    assert "provenance" not in inspect(engine).get_table_names()
    _sign_bundle(model, key[1])
    with Registry.open(registry_url) as r:
        assert r.resolve("old@1").provenance is None
        assert r.add(model, "old").provenance["statements"] == 1
    assert "provenance" in inspect(engine).get_table_names()
    engine.dispose()
