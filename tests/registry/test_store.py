"""The registry store on real models, each test on SQLite and on a real PostgreSQL server: versions
numbered per name, byte-identical get per format, tensor-level dedup, aliases with history and
`at`, tags, parents and steps, gc and fsck, and refusals that name what exists."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelport.errors import BadInputError, CheckFailedError
from modelport.pipeline.lineage import read_lineage
from modelport.registry import Registry
from modelport.registry.store import RegistryCorruptError, UnknownRefError


def _tree(path: Path) -> dict[str, bytes]:
    path = Path(path)
    if path.is_file():
        return {"": path.read_bytes()}
    return {f.relative_to(path).as_posix(): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def _sha256sum(path: Path) -> str:
    lines = "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in sorted(_tree(path).items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _changed_onnx(src: Path, out: Path, seed: int = 1) -> tuple[Path, str]:
    """``src`` with its largest initializer replaced by new random values; returns (path, its name)."""
    model = onnx.load(str(src))
    init = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    arr = numpy_helper.to_array(init)
    new = np.random.default_rng(seed).standard_normal(arr.shape).astype(arr.dtype)
    init.CopyFrom(numpy_helper.from_array(new, init.name))
    onnx.save(model, str(out))
    return out, init.name


@pytest.fixture
def reg(registry_url):
    with Registry.open(registry_url) as r:
        yield r


def test_add_and_get_are_byte_identical_for_every_format(reg, tmp_path, onnx_model, torch_dir, keras_model,
                                                         tflite_model):
    models = {"cnn-onnx": (onnx_model, "onnx"), "cnn-torch": (torch_dir, "torch"),
              "mlp-keras": (keras_model, "keras"), "mlp-tflite": (tflite_model, "tflite")}
    for name, (path, fmt) in models.items():
        v = reg.add(path, name)
        assert (v.name, v.number, v.format) == (name, 1, fmt)
        assert v.size == sum(len(b) for b in _tree(path).values())
        assert v.files_sha256 == _sha256sum(path)
        assert v.created_by == getpass.getuser()
        out = reg.get(f"{name}@1", tmp_path / "out" / name)
        assert _tree(out) == _tree(path), f"{name}: rebuilt files differ"
        assert reg.tensors_of(v), f"{name}: no tensors found"  # every format is decomposed, not stored whole
    assert reg.names() == sorted(models)
    assert [v.ref for v in reg.versions()] == [f"{n}@1" for n in sorted(models)]
    assert reg.fsck().ok


def test_versions_are_numbered_per_name_and_dedup_tensors(reg, tmp_path, onnx_model):
    v1 = reg.add(onnx_model, "cnn")
    again = reg.add(onnx_model, "cnn")
    assert (v1.number, again.number) == (1, 2)
    assert again.stored_bytes == 0 and again.manifest_blob == v1.manifest_blob  # nothing new to store
    other = reg.add(onnx_model, "other")
    assert other.number == 1

    changed, key = _changed_onnx(onnx_model, tmp_path / "changed.onnx")
    v3 = reg.add(changed, "cnn")
    assert v3.number == 3
    t1 = {t["key"]: t for t in reg.tensors_of(v1)}
    t3 = {t["key"]: t for t in reg.tensors_of(v3)}
    assert t1.keys() == t3.keys()
    differ = {k for k in t1 if t1[k]["digest"] != t3[k]["digest"]}
    assert differ == {key}  # only the one changed tensor has a new digest: the rest are shared
    assert v3.stored_bytes < v3.size - t3[next(iter(t3.keys() - {key}))]["nbytes"]
    assert v3.stored_bytes >= t3[key]["nbytes"]
    assert _tree(reg.get("cnn@3", tmp_path / "v3.onnx")) == _tree(changed)
    assert _tree(reg.get("cnn@1", tmp_path / "v1.onnx")) == _tree(onnx_model)


def test_onnx_and_the_torch_dir_converted_from_it_share_tensors(reg, onnx_model, torch_dir):
    a = reg.add(onnx_model, "cnn")
    b = reg.add(torch_dir, "cnn", parents=[a.ref])
    blobs_a = {t["blob"] for t in reg.tensors_of(a) if t.get("blob")}
    blobs_b = {t["blob"] or t["transform"]["of"] for t in reg.tensors_of(b) if t.get("blob") or t.get("transform")}
    assert blobs_a & blobs_b, "no tensor of the converted torch dir was recognized as the ONNX model's"
    weights = sum(t["nbytes"] for t in reg.tensors_of(b))
    assert b.stored_bytes < weights  # the shared weights were not stored a second time
    assert b.parents == (a.ref,)
    assert reg.fsck().ok


def test_lineage_is_read_from_the_model(reg, onnx_model):
    v = reg.add(onnx_model, "cnn")
    expected = read_lineage(onnx_model)
    assert expected, "the zoo ONNX model was made by the pipeline and records its lineage"
    assert v.lineage == expected
    assert reg.resolve("cnn").lineage == expected


def test_aliases_keep_their_history_and_answer_at(reg, onnx_model, tmp_path):
    v1 = reg.add(onnx_model, "cnn", alias="prod", reason="first release")
    reg.add(onnx_model, "cnn")
    reg.add(_changed_onnx(onnx_model, tmp_path / "c.onnx")[0], "cnn")
    e2 = reg.set_alias("cnn", "prod", 2, reason="rollout")
    e3 = reg.set_alias("cnn", "prod", 3, reason="hotfix", who="alice")
    staging = reg.set_alias("cnn", "staging", 3)
    history = reg.alias_history("cnn", "prod")
    assert [(e.old, e.new, e.reason) for e in history] == [(None, 1, "first release"), (1, 2, "rollout"),
                                                            (2, 3, "hotfix")]
    assert [e.who for e in history] == [getpass.getuser(), getpass.getuser(), "alice"]
    times = [datetime.fromisoformat(e.at.replace("Z", "+00:00")) for e in history]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert history[0].at == v1.created_at  # set by the add itself
    assert (e2.old, e2.new, e3.old, e3.new, staging.old) == (1, 2, 2, 3, None)

    assert reg.resolve("cnn@prod").number == 3
    assert set(reg.resolve("cnn@3").aliases) == {"prod", "staging"}
    for event, expected in zip(history, (1, 2, 3)):
        assert reg.resolve("cnn@prod", at=event.at).number == expected
        just_before = times[history.index(event)] - timedelta(microseconds=1)
        if expected > 1:
            assert reg.resolve("cnn@prod", at=just_before).number == expected - 1
    with pytest.raises(UnknownRefError, match=r"cnn@prod did not exist at .* \(first set at "):
        reg.resolve("cnn@prod", at=times[0] - timedelta(seconds=1))
    naive_utc = times[1].astimezone(timezone.utc).replace(tzinfo=None).isoformat()
    assert reg.resolve("cnn@prod", at=naive_utc).number == 2  # a timestamp with no zone is UTC
    assert reg.resolve("cnn", at=v1.created_at).number == 1  # the newest version then
    assert reg.resolve("cnn@latest").number == 3
    assert reg.fsck().ok


def test_tags_parents_and_step_records(reg, onnx_model, tmp_path):
    base = reg.add(onnx_model, "cnn", tags={"dataset": "cifar", "stage": "trained"})
    step = {"command": "convert", "options": {"to": "onnx"}, "versions": {"onnx": onnx.__version__}}
    child = reg.add(onnx_model, "cnn-int8", parents=[base.ref], step=step, metrics={"top1": 0.91},
                    parity={"ok": True, "max_abs": 1.5e-6})
    assert base.tags == {"dataset": "cifar", "stage": "trained"}
    assert child.parents == ("cnn@1",)
    assert child.step["command"] == "convert" and child.step["metrics"] == {"top1": 0.91}
    assert child.step["parity"]["ok"] is True
    assert child.step["output"]["files_sha256"] == child.files_sha256
    tagged = reg.set_tag("cnn@1", "stage", "released")
    assert tagged.tags["stage"] == "released" and reg.resolve("cnn").tags["stage"] == "released"
    assert json.loads(json.dumps(child.to_dict()))["ref"] == "cnn-int8@1"


def test_unknown_references_list_what_exists(reg, onnx_model):
    with pytest.raises(UnknownRefError, match="the registry is empty"):
        reg.resolve("cnn")
    reg.add(onnx_model, "cnn", alias="prod")
    reg.add(onnx_model, "cnn")
    with pytest.raises(UnknownRefError, match=r"no model named 'resnet' .*\(names: cnn\)"):
        reg.resolve("resnet@1")
    with pytest.raises(UnknownRefError, match=r"'cnn' has no version 7 \(versions: 1\.\.2\)"):
        reg.resolve("cnn@7")
    with pytest.raises(UnknownRefError, match=r"'cnn' has no alias 'staging' \(aliases: prod -> 1\)"):
        reg.resolve("cnn@staging")
    with pytest.raises(UnknownRefError, match=r"has no version 9"):
        reg.set_alias("cnn", "prod", 9)
    with pytest.raises(UnknownRefError, match="has no version 5"):
        reg.add(onnx_model, "cnn", parents=["cnn@5"])
    assert [v.number for v in reg.versions("cnn")] == [1, 2]  # the refused add stored no version
    for bad in ("cnn@", "@1", "cnn@0", "a b", "cnn@prod@x"):
        with pytest.raises(BadInputError):
            reg.resolve(bad)


def test_corrupt_and_missing_blobs_are_named_and_nothing_is_half_written(reg, onnx_model, tmp_path):
    v = reg.add(onnx_model, "cnn")
    victim = max(reg.tensors_of(v), key=lambda t: t["nbytes"])["blob"]
    path = reg.blobs.path(victim)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    report = reg.fsck()
    assert not report.ok
    assert [(p.kind, p.what) for p in report.problems] == [("corrupt-blob", victim)]
    assert "cnn@1" in report.problems[0].detail
    dest = tmp_path / "out.onnx"
    with pytest.raises(RegistryCorruptError, match=f"cnn@1 .*{victim}") as info:
        reg.get("cnn@1", dest)
    assert isinstance(info.value, CheckFailedError) and info.value.exit_code == 1
    assert not any(p.startswith((".out.onnx", "out.onnx")) for p in os.listdir(tmp_path))  # no temp left either

    path.unlink()
    report = reg.fsck()
    assert [(p.kind, p.what) for p in report.problems] == [("missing-blob", victim)]
    with pytest.raises(RegistryCorruptError, match=victim):
        reg.get("cnn@1", dest)
    assert not dest.exists()


def test_gc_removes_only_unreferenced_blobs(reg, onnx_model, tmp_path):
    v = reg.add(onnx_model, "cnn")
    stray = reg.blobs.put(os.urandom(4096))
    report = reg.fsck()
    assert report.ok and report.unreferenced == (stray,)
    gc = reg.gc()
    assert gc.removed == (stray,) and gc.bytes_freed == 4096 and gc.kept == report.blobs_checked
    assert not reg.blobs.has(stray)
    after = reg.fsck()
    assert after.ok and after.unreferenced == () and after.blobs_checked == report.blobs_checked
    assert _tree(reg.get(v.ref, tmp_path / "m.onnx")) == _tree(onnx_model)
    assert reg.gc().removed == ()


def test_adding_what_is_no_model_is_refused(reg, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    with pytest.raises(BadInputError, match="no model"):
        reg.add(text, "notes")
    with pytest.raises(BadInputError, match="no such file"):
        reg.add(tmp_path / "missing.onnx", "m")
    with pytest.raises(BadInputError, match="not a valid model name"):
        reg.add(text, "bad@name")
    assert reg.names() == [] and list(reg.blobs.digests()) == []


def test_reopening_keeps_everything(registry_url, onnx_model):
    with Registry.open(registry_url) as r:
        r.add(onnx_model, "cnn", alias="prod", tags={"k": "v"})
    with Registry.open(registry_url, create=False) as r:
        v = r.resolve("cnn@prod")
        assert (v.number, v.tags, v.aliases) == (1, {"k": "v"}, ("prod",))
        assert r.add(onnx_model, "cnn").number == 2


def test_a_transposed_tensor_is_stored_as_a_transform_of_the_stored_one(reg, onnx_model, tmp_path):
    """The CNN's head as Gemm(transB=0) with the weight transposed: the same model, another layout.
    The store's tensor index offers the stored weight to decompose, which keeps the new one as a
    transpose of it instead of its bytes."""
    import onnxruntime as ort

    model = onnx.load(str(onnx_model))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    weight = next(i for i in model.graph.initializer if i.name == gemm.input[1])
    w = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T), weight.name))
    next(a for a in gemm.attribute if a.name == "transB").i = 0
    flipped = tmp_path / "flipped.onnx"
    onnx.save(model, str(flipped))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            for p in (onnx_model, flipped)]
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5, atol=1e-6)  # the same model

    a = reg.add(onnx_model, "cnn")
    b = reg.add(flipped, "cnn")
    ta = {t["key"]: t for t in reg.tensors_of(a)}
    tb = {t["key"]: t for t in reg.tensors_of(b)}
    key = next(k for k in tb if ta[k]["shape"] == list(w.shape) and tb[k]["shape"] == list(w.T.shape))
    assert tb[key]["blob"] is None and tb[key]["transform"]["of"] == ta[key]["blob"]
    assert sorted(tb[key]["transform"]["perm"]) == [0, 1] and tb[key]["transform"]["perm"] != [0, 1]
    from modelport.registry.tensors import manifest_blobs

    ma, mb = reg.manifest(a), reg.manifest(b)
    new = (manifest_blobs(mb) | {b.manifest_blob}) - (manifest_blobs(ma) | {a.manifest_blob})
    assert new == {mb["files"][0]["skeleton"], b.manifest_blob}  # no tensor bytes: the weight is a transform
    assert b.stored_bytes == sum(reg.blobs.size(d) for d in new)
    assert _tree(reg.get(b, tmp_path / "b.onnx")) == _tree(flipped)
    assert reg.fsck().ok


def test_find_by_digest_and_find_or_add(reg, onnx_model, tmp_path):
    from modelport.registry.record import files_sha256, find_by_digest, input_version

    digest = files_sha256(onnx_model)
    assert reg.find_by_digest(digest) is None
    first, added = reg.find_or_add(onnx_model, "a", digest=digest)
    assert added and first.ref == "a@1" and first.files_sha256 == digest
    again, added = input_version(reg, onnx_model, "b")  # found under any name when its own has none
    assert not added and again.ref == "a@1"
    assert reg.find_or_add(onnx_model, "b")[1] is False  # (no digest given: checked under the lock, after storing)
    reg.add(onnx_model, "b")
    reg.add(onnx_model, "a")
    assert find_by_digest(reg, digest).ref == "a@2"  # the newest of any name
    assert find_by_digest(reg, digest, prefer="b").ref == "b@1"  # the preferred name first
    other, _ = _changed_onnx(onnx_model, tmp_path / "other.onnx")
    assert reg.find_by_digest(files_sha256(other)) is None
    made, added = input_version(reg, other, "b")
    assert added and made.ref == "b@2"
    assert [v.ref for v in reg.versions()] == ["a@1", "a@2", "b@1", "b@2"]
    assert reg.fsck().ok


def test_digest_lookup_is_one_indexed_query_and_old_stores_get_the_index(tmp_path, onnx_model):
    import sqlite3

    from sqlalchemy import event, inspect

    url = tmp_path / "registry"
    with Registry.open(url) as r:
        v = r.add(onnx_model, "m")
        seen: list[tuple[str, tuple]] = []
        event.listen(r._engine, "before_cursor_execute",
                     lambda conn, cursor, stmt, params, context, many: seen.append((stmt, params)))
        assert r.find_by_digest(v.files_sha256, prefer="m").ref == "m@1"
        lookups = [(s, p) for s, p in seen if "files_sha256 = " in s]
        assert len(lookups) == 1 and "LIMIT" in lookups[0][0]  # one query, not every version read
        with r._engine.connect() as conn:
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + lookups[0][0], lookups[0][1]))
        assert "ix_versions_files_sha256" in plan, plan

    db = sqlite3.connect(url / "registry.db")
    db.execute("DROP INDEX ix_versions_files_sha256")  # a store made before the index existed
    db.commit()
    db.close()
    with Registry.open(url) as r:
        assert "ix_versions_files_sha256" in {i["name"] for i in inspect(r._engine).get_indexes("versions")}
        assert r.find_by_digest(v.files_sha256).ref == "m@1" and r.fsck().ok
