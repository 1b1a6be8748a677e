"""`registry export --oci DIR` and `registry push --mlflow URI`, read back with their own rules.

The OCI layout is read as a plain directory (oci-layout, index.json, content-addressed blobs: every
digest re-hashed) and unpacked into files byte-identical to `registry get`. The MLflow push goes to
a local SQLite tracking store under tmp_path (no server) and is read back with MlflowClient.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from modelport.artifact import to_jsonable
from modelport.registry import oci
from modelport.registry.mlflow_push import MlflowPush
from modelport.registry.record import files_sha256
from modelport.registry.store import Registry
from modelport.versions import tool_versions


@pytest.fixture(autouse=True)
def _no_home_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_REGISTRY", str(tmp_path / "default-registry"))


@pytest.fixture
def registry(tmp_path, onnx_model, torch_dir) -> str:
    url = str(tmp_path / "reg")
    with Registry.open(url) as reg:
        v1 = reg.add(onnx_model, "cnn")
        reg.add(torch_dir, "cnn", alias="prod", parents=[v1.ref],
                step={"command": "convert", "verified": True,
                      "parity": {"ok": True, "rtol": 1e-4, "max_abs": 1e-7, "max_rel": 2e-7}})
    return url


def _blob(layout: Path, digest: str) -> bytes:
    data = (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def test_oci_layout_reads_back_byte_identical(cli, registry, onnx_model, torch_dir, tmp_path):
    layout = tmp_path / "oci"
    res = cli("registry", "export", "cnn@prod", "--oci", layout, "--json", "--registry", registry)
    assert res.exit_code == 0, res.stderr
    result = json.loads(res.stdout)
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["mediaType"] == oci.MEDIA_INDEX
    (desc,) = index["manifests"]
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == result["tag"] == "cnn-v2"
    manifest_bytes = _blob(layout, desc["digest"])
    assert len(manifest_bytes) == desc["size"]
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == oci.MEDIA_MANIFEST and manifest["artifactType"] == oci.ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == oci.MEDIA_CONFIG
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    assert (config["name"], config["version"], config["format"], config["kind"]) == ("cnn", 2, "torch", "dir")
    files = sorted(p.relative_to(torch_dir).as_posix() for p in torch_dir.rglob("*") if p.is_file())
    titles = [layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]]
    assert titles == files  # one layer per file
    for layer in manifest["layers"]:
        data = _blob(layout, layer["digest"])
        assert len(data) == layer["size"]
        assert data == (torch_dir / layer["annotations"]["org.opencontainers.image.title"]).read_bytes()
        assert layer["mediaType"].startswith(oci.MEDIA_FILE)
    assert {layer["mediaType"] for layer in manifest["layers"]} >= {oci.MEDIA_FILE + "+safetensors", oci.MEDIA_FILE + "+python"}
    lineage = json.loads(manifest["annotations"][oci.LINEAGE_ANNOTATION])
    assert lineage["focus"] == "cnn@2" and lineage["ancestors"] == ["cnn@1"]
    assert [(e["parent"], e["child"], e["command"]) for e in lineage["edges"]] == [("cnn@1", "cnn@2", "convert")]

    back = oci.unpack(layout, tmp_path / "unpacked")
    assert files_sha256(back) == files_sha256(torch_dir)
    with Registry.open(registry) as reg:
        assert files_sha256(back) == reg.resolve("cnn@2").files_sha256

    # a second version goes into the same layout, next to the first; shared blobs are not written twice
    res = cli("registry", "export", "cnn@1", "--oci", layout, "--json", "--registry", registry)
    assert res.exit_code == 0, res.stderr
    index = json.loads((layout / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["cnn-v2", "cnn-v1"]
    single = oci.unpack(layout, tmp_path / "cnn.onnx", tag="cnn-v1")
    assert single.is_file() and single.read_bytes() == Path(onnx_model).read_bytes()
    with Registry.open(registry) as reg:
        assert files_sha256(single) == reg.resolve("cnn@1").files_sha256


def test_oci_bad_target(cli, registry, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    res = cli("registry", "export", "cnn@1", "--oci", target, "--registry", registry)
    assert res.exit_code == 2 and "not an OCI image layout" in res.stderr and "\n" not in res.stderr.strip()
    assert os.listdir(target) == ["keep.txt"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".busy.")]  # no temp dir left beside it
    res = cli("registry", "export", "cnn@9", "--oci", tmp_path / "new", "--registry", registry)
    assert res.exit_code == 2 and "no version 9" in res.stderr and not (tmp_path / "new").exists()


def test_mlflow_push(cli, registry, torch_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    res = cli("registry", "push", "cnn@prod", "--mlflow", uri, "--json", "--registry", registry)
    assert res.exit_code == 0, res.stderr
    assert "mlflow" not in res.stderr.lower() and "alembic" not in res.stderr.lower()  # no framework log lines
    pushed = json.loads(res.stdout)
    assert pushed["reused"] is False and pushed["aliases"] == ["prod"]
    # every field of the report beside the tool versions that emit_json adds under "versions"
    assert set(pushed) == {f.name for f in dataclasses.fields(MlflowPush)} | {"versions"}
    assert pushed["versions"] == json.loads(json.dumps(to_jsonable(tool_versions())))

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version_by_alias("cnn", "prod")
    assert str(mv.version) == pushed["mlflow_version"]
    assert mv.tags["modelport.ref"] == "cnn@2" and mv.tags["modelport.parents"] == "cnn@1"
    assert mv.tags["modelport.format"] == "torch" and mv.tags["modelport.verified"] == "true"
    assert json.loads(mv.tags["modelport.lineage"])["ancestors"] == ["cnn@1"]
    with Registry.open(registry) as reg:
        assert mv.tags["modelport.files_sha256"] == reg.resolve("cnn@2").files_sha256
    # the files, as MLflow keeps them (a local artifact root beside the database), byte-identical
    art = Path(mv.source.removeprefix("file://")) / torch_dir.name
    assert art.is_dir() and str(art).startswith(str(tmp_path / "mlartifacts"))
    assert files_sha256(art) == files_sha256(torch_dir)
    run = client.get_run(mv.run_id)
    assert run.data.metrics["parity_max_rel"] == pytest.approx(2e-7)

    # pushing again reuses the model version; moving the alias in modelport and pushing mirrors it
    res = cli("registry", "push", "cnn@2", "--mlflow", uri, "--json", "--registry", registry)
    assert json.loads(res.stdout)["reused"] is True
    assert len(client.search_model_versions("name = 'cnn'")) == 1
    with Registry.open(registry) as reg:
        reg.set_alias("cnn", "prod", 1, reason="roll back")
    res = cli("registry", "push", "cnn@prod", "--mlflow", uri, "--json", "--registry", registry)
    again = json.loads(res.stdout)
    assert again["reused"] is False and again["ref"] == "cnn@1"
    assert str(client.get_model_version_by_alias("cnn", "prod").version) == again["mlflow_version"] != str(mv.version)

    bad = cli("registry", "push", "cnn@1", "--mlflow", f"sqlite:///{tmp_path}/no/such/dir/mlflow.db",
              "--registry", registry)
    assert bad.exit_code == 2 and "does not exist" in bad.stderr and "\n" not in bad.stderr.strip()
    bad = cli("registry", "push", "cnn@1", "--mlflow", "ftp://example/x", "--registry", registry)
    assert bad.exit_code == 2 and "unsupported scheme" in bad.stderr
