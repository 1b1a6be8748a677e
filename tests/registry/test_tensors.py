"""A model as skeleton + tensors: every format rebuilds byte-identical, versions share what did not
change, an ONNX model and the torch directory converted from it share their tensors, a Keras
kernel is stored as a transpose of the ONNX one, and damage is refused naming the blob."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import modelport
import zoo_tf
from modelport.errors import BadInputError, CheckFailedError
from modelport.quiet import native_output
from modelport.registry import tensors
from modelport.registry.blobs import BlobCorruptError, BlobMissingError, BlobStore


def _sha_tree(path: Path) -> dict[str, str]:
    """sha256 of every file (and the set of directories) under path, or of the file itself."""
    path = Path(path)
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {p.relative_to(path).as_posix(): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(path.rglob("*"))}


def _index(manifest: dict) -> dict[tuple[str, int], list[tuple[str, tuple[int, ...]]]]:
    """What the store's tensors table answers to ``known(dtype, numel)``, built from manifests."""
    index: dict[tuple[str, int], list[tuple[str, tuple[int, ...]]]] = {}
    for t in tensors.manifest_tensors(manifest):
        if t["blob"] and t["shape"] is not None:
            index.setdefault((t["dtype"], math.prod(t["shape"])), []).append((t["blob"], tuple(t["shape"])))
    return index


def _flip_byte(path: Path, at: int = 0) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _no_partials(directory: Path) -> None:
    assert [p.name for p in directory.iterdir() if p.name.endswith(".partial")] == []


# ------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def models(tmp_path_factory, cnn, cnn_onnx, cnn_pt2, cnn_traced) -> dict[str, tuple[Path, str, str]]:
    """name -> (path, format, the method the model file is decomposed with), each converted or built for real."""
    d = tmp_path_factory.mktemp("registry_models")
    torch_dir = d / "cnn_torch"
    modelport.convert(cnn_onnx, "torch", torch_dir)
    two_io = zoo_tf.two_io_keras()
    two_io_onnx = d / "two_io.onnx"
    modelport.convert(two_io, "onnx", two_io_onnx)
    ov_dir = d / "two_io_ov"
    modelport.convert(two_io_onnx, "openvino", ov_dir)
    weights_h5 = d / "two_io.weights.h5"
    with native_output():
        import keras

        keras.saving.load_model(two_io).save_weights(weights_h5)
    return {
        "onnx": (Path(cnn_onnx), "onnx", "onnx"),
        "torch-dir": (torch_dir, "torch", "safetensors"),
        "safetensors": (Path(cnn.safetensors), "safetensors", "safetensors"),
        "keras-zip": (two_io, "keras", "keras-zip"),
        "weights-h5": (weights_h5, "keras", "hdf5"),
        "legacy-h5": (zoo_tf.cnn_h5(), "keras", "hdf5"),
        "tflite": (zoo_tf.tflite_from_keras("two_io"), "tflite", "tflite"),
        "openvino-dir": (ov_dir, "openvino", "companion"),
        "openvino-xml": (ov_dir / "model.xml", "openvino", "companion"),
        "two-io-onnx": (two_io_onnx, "onnx", "onnx"),
        "savedmodel": (zoo_tf.module_savedmodel(), "savedmodel", "whole"),
        "pt2": (Path(cnn_pt2), "torch-export", "torch-zip"),
        "torchscript": (Path(cnn_traced), "torchscript", "torch-zip"),
    }


def _weights_entry(manifest: dict) -> dict:
    """The file entry holding the tensors: the one with the most segments."""
    return max(manifest["files"], key=lambda e: len(e["segments"]))


@pytest.mark.parametrize("name", ["onnx", "torch-dir", "safetensors", "keras-zip", "weights-h5", "legacy-h5", "tflite",
                                  "openvino-dir", "openvino-xml", "savedmodel", "pt2", "torchscript"])
def test_rebuild_is_byte_identical(models, tmp_path, name):
    path, fmt, method = models[name]
    store = BlobStore(tmp_path / "blobs")
    manifest = tensors.decompose(path, fmt, store)
    entry = _weights_entry(manifest)
    assert entry["method"] == method
    if method != "whole":
        assert len(entry["segments"]) >= 4, "the weights were found"
    out = tmp_path / "rebuilt" / path.name
    tensors.rebuild(manifest, store, out)
    assert _sha_tree(out) == _sha_tree(path)
    if name == "openvino-xml":  # a file manifest carries the .bin beside the .xml
        assert _sha_tree(out.with_suffix(".bin")) == _sha_tree(path.with_suffix(".bin"))
    for f in manifest["files"]:
        src = path / f["path"] if path.is_dir() else path.parent / f["path"] if f["path"] else path
        assert f["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() and f["size"] == src.stat().st_size


def test_onnx_segments_are_the_initializers(models, tmp_path):
    import onnx
    from onnx import numpy_helper

    path = models["onnx"][0]
    store = BlobStore(tmp_path / "blobs")
    manifest = tensors.decompose(path, "onnx", store)
    got = {t["key"]: t for t in tensors.manifest_tensors(manifest)}
    inits = onnx.load(str(path)).graph.initializer
    assert set(got) == {i.name for i in inits}
    for init in inits:
        arr = numpy_helper.to_array(init)
        t = got[init.name]
        assert tuple(t["shape"]) == arr.shape and t["dtype"] == arr.dtype.name
        assert tensors.tensor_bytes(t, store) == arr.tobytes()
        assert ("inline" in t) == (arr.nbytes < tensors.INLINE_MAX)


def test_keras_and_safetensors_segments_are_the_datasets(models, tmp_path):
    import h5py
    from safetensors.numpy import load_file

    store = BlobStore(tmp_path / "blobs")
    h5 = models["weights-h5"][0]
    rows = tensors.manifest_tensors(tensors.decompose(h5, "keras", store))
    with h5py.File(h5, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.size else None)
        assert {t["key"] for t in rows} == set(names)
        for t in rows:
            assert tensors.tensor_bytes(t, store) == np.ascontiguousarray(f[t["key"]][()]).tobytes()
    st = models["safetensors"][0]
    rows = tensors.manifest_tensors(tensors.decompose(st, "safetensors", store))
    arrays = load_file(str(st))
    assert {t["key"] for t in rows} == set(arrays)
    assert all(tensors.tensor_bytes(t, store) == arrays[t["key"]].tobytes() for t in rows)


def test_onnx_versions_differing_in_one_layer_share_every_other_tensor(models, tmp_path):
    import onnx
    from onnx import numpy_helper

    v1 = models["onnx"][0]
    model = onnx.load(str(v1))
    head = next(i for i in model.graph.initializer if i.name == "head.weight")
    head.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head) * np.float32(1.01), "head.weight"))
    v2 = tmp_path / "v2.onnx"
    onnx.save(model, str(v2))

    store = BlobStore(tmp_path / "blobs")
    m1 = tensors.decompose(v1, "onnx", store)
    before = set(store.digests())
    m2 = tensors.decompose(v2, "onnx", store)
    new = set(store.digests()) - before
    rows1 = {t["key"]: t for t in tensors.manifest_tensors(m1)}
    rows2 = {t["key"]: t for t in tensors.manifest_tensors(m2)}
    changed = {k for k in rows2 if rows2[k]["digest"] != rows1[k]["digest"]}
    assert changed == {"head.weight"}
    assert new == {rows2["head.weight"]["blob"]}  # one new blob: the skeleton and every other tensor are shared
    assert m2["files"][0]["skeleton"] == m1["files"][0]["skeleton"]
    tensors.rebuild(m2, store, tmp_path / "out.onnx")
    assert _sha_tree(tmp_path / "out.onnx") == _sha_tree(v2)


def test_onnx_and_its_torch_directory_share_every_unchanged_tensor(models, tmp_path):
    from safetensors.numpy import load_file

    store = BlobStore(tmp_path / "blobs")
    onnx_rows = tensors.manifest_tensors(tensors.decompose(models["onnx"][0], "onnx", store))
    torch_dir = models["torch-dir"][0]
    before = set(store.digests())
    torch_rows = tensors.manifest_tensors(tensors.decompose(torch_dir, "torch", store))
    new = set(store.digests()) - before
    stored_torch = [t for t in torch_rows if t["blob"]]
    # Every conv/linear weight the torch directory holds as a blob (>= INLINE_MAX bytes) is the ONNX one.
    weights = load_file(str(torch_dir / "weights.safetensors"))
    assert len(stored_torch) == sum(a.nbytes >= tensors.INLINE_MAX for a in weights.values()) >= 3
    onnx_blobs = {t["blob"] for t in onnx_rows}
    shared = [t for t in stored_torch if t["blob"] in onnx_blobs]
    assert len(shared) / len(stored_torch) == 1.0
    # What the torch directory added: its skeleton and small files, none of its tensors.
    assert not new & {t["blob"] for t in stored_torch}
    added = sum(store.size(d) for d in new)
    assert added < (torch_dir / "weights.safetensors").stat().st_size - sum(t["nbytes"] for t in shared) + 4096


def test_keras_kernel_is_stored_as_transform_of_the_onnx_tensor(models, tmp_path):
    import h5py

    store = BlobStore(tmp_path / "blobs")
    onnx_manifest = tensors.decompose(models["two-io-onnx"][0], "onnx", store)
    index = _index(onnx_manifest)
    asked: list[tuple[str, int]] = []

    def known(dtype: str, numel: int):
        asked.append((dtype, numel))
        return index.get((dtype, numel), [])

    keras_path = models["keras-zip"][0]
    manifest = tensors.decompose(keras_path, "keras", store, known)
    rows = {t["key"].split(":", 1)[1]: t for t in tensors.manifest_tensors(manifest)}
    kernel = rows["layers/conv2d/vars/0"]
    onnx_conv = next(t for t in tensors.manifest_tensors(onnx_manifest) if len(t["shape"]) == 4)
    assert kernel["shape"] == [3, 3, 1, 4] and onnx_conv["shape"] == [4, 1, 3, 3]  # HWIO vs OIHW
    assert kernel["blob"] is None
    assert kernel["transform"] == {"of": onnx_conv["blob"], "shape": [4, 1, 3, 3], "perm": [2, 3, 1, 0]}
    assert ("float32", 36) in asked
    kernel_bytes = tensors.tensor_bytes(kernel, store)
    assert not store.has(hashlib.sha256(kernel_bytes).hexdigest())  # the HWIO bytes are not stored again
    import zipfile

    with zipfile.ZipFile(keras_path) as zf:
        (tmp_path / "w.h5").write_bytes(zf.read("model.weights.h5"))
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert kernel_bytes == f["layers/conv2d/vars/0"][()].tobytes()
    # Dense kernels keep their (in, out) layout in ONNX's MatMul: the same blob, no transform.
    assert rows["layers/dense/vars/0"]["blob"] in {t["blob"] for t in tensors.manifest_tensors(onnx_manifest)}
    assert tensors.manifest_blobs(manifest) >= {onnx_conv["blob"]}
    out = tmp_path / "out.keras"
    tensors.rebuild(manifest, store, out)
    assert _sha_tree(out) == _sha_tree(keras_path)


def test_tflite_dense_kernels_are_transposes_and_equal_bytes_share_a_blob(models, tmp_path):
    store = BlobStore(tmp_path / "blobs")
    onnx_manifest = tensors.decompose(models["two-io-onnx"][0], "onnx", store)
    index = _index(onnx_manifest)
    manifest = tensors.decompose(models["tflite"][0], "tflite", store, lambda d, n: index.get((d, n), []))
    rows = tensors.manifest_tensors(manifest)
    transposed = [t for t in rows if "transform" in t]
    assert transposed and all(t["transform"]["perm"] == [1, 0] for t in transposed)  # FullyConnected (out, in)
    conv = next(t for t in rows if t["shape"] and len(t["shape"]) == 4)
    onnx_conv = next(t for t in tensors.manifest_tensors(onnx_manifest) if len(t["shape"]) == 4)
    # OHWI [4,3,3,1] and OIHW [4,1,3,3] hold the same bytes when I == 1: one blob, two tensor digests.
    assert conv["blob"] == onnx_conv["blob"] and conv["digest"] != onnx_conv["digest"]
    tensors.rebuild(manifest, store, tmp_path / "out.tflite")
    assert _sha_tree(tmp_path / "out.tflite") == _sha_tree(models["tflite"][0])


def test_onnx_with_external_data(models, tmp_path):
    import onnx

    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(models["onnx"][0])
    onnx.save(model, str(src / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    store = BlobStore(tmp_path / "blobs")
    embedded = tensors.manifest_tensors(tensors.decompose(models["onnx"][0], "onnx", store))
    before = set(store.digests())
    manifest = tensors.decompose(src / "m.onnx", "onnx", store)
    assert [f["path"] for f in manifest["files"]] == ["", "m.onnx.data"]
    rows = tensors.manifest_tensors(manifest)
    assert {t["file"] for t in rows} == {"m.onnx.data"}
    assert {t["key"]: t["digest"] for t in rows} == {t["key"]: t["digest"] for t in embedded}
    assert not (set(store.digests()) - before) & {t["blob"] for t in rows}  # the same tensors as embedded
    out = tmp_path / "out" / "m.onnx"
    tensors.rebuild(manifest, store, out)
    assert _sha_tree(out.parent) == _sha_tree(src)

    (src / "m.onnx.data").unlink()
    with pytest.raises(BadInputError, match=r"missing external data file \(m.onnx.data\)") as e:
        tensors.decompose(src / "m.onnx", "onnx", store)
    assert e.value.exit_code == 2
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    onnx.save(model, str(src / "escape.onnx"))
    with pytest.raises(BadInputError, match="not a path inside the model's directory"):
        tensors.decompose(src / "escape.onnx", "onnx", store)


def test_corrupt_tensor_blob_fails_rebuild_naming_it_and_writes_nothing(models, tmp_path):
    store = BlobStore(tmp_path / "blobs")
    manifest = tensors.decompose(models["torch-dir"][0], "torch", store)
    victim = next(t for t in tensors.manifest_tensors(manifest) if t["blob"] and t["nbytes"] > 1000)
    _flip_byte(store.path(victim["blob"]), 10)
    out = tmp_path / "out" / "cnn_torch"
    out.parent.mkdir()
    with pytest.raises(BlobCorruptError, match=f"blob {victim['blob']} \\(tensor '{victim['key']}'") as e:
        tensors.rebuild(manifest, store, out)
    assert e.value.exit_code == 1 and e.value.digest == victim["blob"]
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_corrupt_skeleton_missing_blob_and_corrupt_transform_source(models, tmp_path):
    store = BlobStore(tmp_path / "blobs")
    onnx_manifest = tensors.decompose(models["two-io-onnx"][0], "onnx", store)
    index = _index(onnx_manifest)
    manifest = tensors.decompose(models["keras-zip"][0], "keras", store, lambda d, n: index.get((d, n), []))
    out = tmp_path / "m.keras"
    skeleton = manifest["files"][0]["skeleton"]
    _flip_byte(store.path(skeleton), 5)
    with pytest.raises(BlobCorruptError, match=f"blob {skeleton} \\(skeleton of the model file\\) is corrupt"):
        tensors.rebuild(manifest, store, out)
    assert not out.exists()
    _no_partials(tmp_path)
    _flip_byte(store.path(skeleton), 5)  # repaired
    source = next(t["transform"]["of"] for t in tensors.manifest_tensors(manifest) if "transform" in t)
    _flip_byte(store.path(source), 0)
    with pytest.raises(BlobCorruptError, match=f"blob {source} .* is corrupt.*needed by tensor"):
        tensors.rebuild(manifest, store, out)
    store.remove(source)
    with pytest.raises(BlobMissingError, match=f"blob {source} is missing"):
        tensors.rebuild(manifest, store, out)
    assert not out.exists()
    _no_partials(tmp_path)


def test_companion_file_rebuild_is_all_or_nothing(models, tmp_path):
    store = BlobStore(tmp_path / "blobs")
    xml = models["openvino-xml"][0]
    manifest = tensors.decompose(xml, "openvino", store)
    bin_entry = next(f for f in manifest["files"] if f["path"] == "model.bin")
    victim = next(s["blob"] for s in bin_entry["segments"] if s["blob"])
    _flip_byte(store.path(victim), 1)
    out = tmp_path / "out" / "model.xml"
    with pytest.raises(BlobCorruptError, match=victim):
        tensors.rebuild(manifest, store, out)
    assert list(out.parent.iterdir()) == []  # neither the .xml nor the .bin, and no temp file


def test_rebuild_refuses_existing_destination_and_malformed_manifests(models, tmp_path):
    store = BlobStore(tmp_path / "blobs")
    path = models["safetensors"][0]
    manifest = tensors.decompose(path, "safetensors", store)
    out = tmp_path / "w.safetensors"
    shutil.copy(path, out)
    with pytest.raises(BadInputError, match="already exists") as e:
        tensors.rebuild(manifest, store, out)
    assert e.value.exit_code == 2
    bad = {**manifest, "files": [{**manifest["files"][0], "segments": manifest["files"][0]["segments"][::-1]}]}
    with pytest.raises(tensors.ManifestError, match="overlap"):
        tensors.rebuild(bad, store, tmp_path / "x.safetensors")
    with pytest.raises(tensors.ManifestError, match="not a version 1 manifest"):
        tensors.rebuild({"manifest": 99}, store, tmp_path / "x.safetensors")
    escaping = {**manifest, "kind": "dir", "files": [{**manifest["files"][0], "path": "../evil"}]}
    with pytest.raises(tensors.ManifestError, match="not a path inside"):
        tensors.rebuild(escaping, store, tmp_path / "d")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "evil").exists()


def test_decompose_bad_paths(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(BadInputError, match="no such file or directory"):
        tensors.decompose(tmp_path / "nope.onnx", "onnx", store)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07" + os.urandom(300))
    manifest = tensors.decompose(garbage, "onnx", store)  # not parseable: stored whole, still exact
    assert manifest["files"][0]["method"] == "whole" and manifest["files"][0]["notes"]
    tensors.rebuild(manifest, store, tmp_path / "back.onnx")
    assert (tmp_path / "back.onnx").read_bytes() == garbage.read_bytes()


def test_savedmodel_directory_keeps_empty_directories(models, tmp_path):
    path = models["savedmodel"][0]
    store = BlobStore(tmp_path / "blobs")
    manifest = tensors.decompose(path, "savedmodel", store)
    assert manifest["kind"] == "dir" and set(manifest["dirs"]) == {p.relative_to(path).as_posix()
                                                                 for p in path.rglob("*") if p.is_dir()}
    again = tensors.decompose(path, "savedmodel", store)
    assert again == manifest  # deterministic: adding twice stores nothing new and names the same blobs
    assert tensors.manifest_blobs(manifest) == set(store.digests())


def test_onnx_constants_subgraphs_and_typed_fields_are_found(tmp_path):
    """Tensors outside graph.initializer: a Constant's value, If-branch initializers, float_data."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    const = rng.standard_normal((4, 16)).astype(np.float32)
    then_w, else_w = (rng.standard_normal((4, 16)).astype(np.float32) for _ in range(2))
    typed = rng.standard_normal((4, 16)).astype(np.float32)

    def branch(name: str, w: np.ndarray) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Add", ["c", f"{name}_w"], [f"{name}_out"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [4, 16])],
                                 [numpy_helper.from_array(w, f"{name}_w")])

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(const, "const_value")),
         helper.make_node("If", ["cond"], ["branch"], then_branch=branch("then", then_w), else_branch=branch("else", else_w)),
         helper.make_node("Mul", ["branch", "typed"], ["y"])],
        "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor("typed", TensorProto.FLOAT, [4, 16], typed.reshape(-1).tolist())])  # float_data, not raw
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # a model onnxruntime loads

    store = BlobStore(tmp_path / "blobs")
    manifest = tensors.decompose(path, "onnx", store)
    rows = {t["key"]: t for t in tensors.manifest_tensors(manifest)}
    expected = {"const_value": const, "then_w": then_w, "else_w": else_w, "typed": typed}
    assert set(rows) == set(expected)
    for key, arr in expected.items():
        assert rows[key]["shape"] == [4, 16] and tensors.tensor_bytes(rows[key], store) == arr.tobytes()
    tensors.rebuild(manifest, store, tmp_path / "back.onnx")
    assert (tmp_path / "back.onnx").read_bytes() == path.read_bytes()


# ------------------------------------------------------------------------- checksums of rebuilds


def test_rebuild_checks_the_recorded_blake3_and_old_manifests_by_sha256(models, tmp_path, monkeypatch):
    """Each file's BLAKE3 is recorded at decompose and checked by rebuild (in the hashing thread, on
    slices written from maps of the blobs); a manifest without it (written before it was recorded)
    is checked by SHA-256; either way a damaged blob is named and nothing is left behind."""
    import copy

    import blake3

    monkeypatch.setattr(tensors._Out, "STEP", 4096)  # the model is > 4 steps: the thread hashes it
    monkeypatch.setattr(tensors._Out, "SMALL", 1024)  # every tensor blob over 1 KiB is mapped
    store = BlobStore(tmp_path / "blobs")
    path = Path(models["onnx"][0])
    manifest = tensors.decompose(path, "onnx", store)
    entry = manifest["files"][0]
    data = path.read_bytes()
    assert entry["size"] >= 4 * 4096 and max(s["length"] for s in entry["segments"]) > 1024
    assert entry["blake3"] == blake3.blake3(data).hexdigest()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    old = copy.deepcopy(manifest)
    del old["files"][0]["blake3"]
    for m, name in ((manifest, "new.onnx"), (old, "old.onnx")):
        tensors.rebuild(m, store, tmp_path / name)
        assert (tmp_path / name).read_bytes() == data

    # the recorded BLAKE3 is what is compared: a wrong one fails although every blob is intact
    lying = copy.deepcopy(manifest)
    lying["files"][0]["blake3"] = blake3.blake3(data + b"x").hexdigest()
    with pytest.raises(CheckFailedError, match="does not match its recorded blake3 .* the manifest is wrong"):
        tensors.rebuild(lying, store, tmp_path / "lying.onnx")
    not_hex = copy.deepcopy(manifest)
    not_hex["files"][0]["blake3"] = "xyz"
    with pytest.raises(tensors.ManifestError, match="blake3 .* not 64 hex digits"):
        tensors.rebuild(not_hex, store, tmp_path / "nothex.onnx")

    victim = max(entry["segments"], key=lambda s: s["length"])
    _flip_byte(store.path(victim["blob"]), victim["length"] // 2)
    for m, name in ((manifest, "bad-new.onnx"), (old, "bad-old.onnx")):
        with pytest.raises(BlobCorruptError, match=f"blob {victim['blob']} \\(tensor {victim['key']!r}"):
            tensors.rebuild(m, store, tmp_path / name)
        assert not (tmp_path / name).exists()
    _no_partials(tmp_path)


def test_rebuild_of_a_short_blob_names_it(models, tmp_path, monkeypatch):
    """A blob cut short (a truncated file) is caught before the checksum: the copy ends early."""
    monkeypatch.setattr(tensors._Out, "STEP", 4096)
    monkeypatch.setattr(tensors._Out, "SMALL", 1024)
    store = BlobStore(tmp_path / "blobs")
    manifest = tensors.decompose(models["onnx"][0], "onnx", store)
    victim = max(manifest["files"][0]["segments"], key=lambda s: s["length"])
    blob = store.path(victim["blob"])
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes()[: victim["length"] // 2])
    with pytest.raises(BlobCorruptError, match=victim["blob"]):
        tensors.rebuild(manifest, store, tmp_path / "short.onnx")
    assert not (tmp_path / "short.onnx").exists()
    _no_partials(tmp_path)


def test_without_maps_or_without_blake3_rebuild_still_checks_every_byte(models, tmp_path, monkeypatch):
    """A file system that cannot map a blob gets it read instead; a Python without the blake3
    module records no BLAKE3 and checks files by their SHA-256."""
    import sys

    import blake3

    monkeypatch.setattr(tensors._Out, "STEP", 4096)
    monkeypatch.setattr(tensors._Out, "SMALL", 1024)
    store = BlobStore(tmp_path / "blobs")
    path = Path(models["onnx"][0])
    manifest = tensors.decompose(path, "onnx", store)

    refused = []

    def no_map(*args, **kwargs):
        refused.append(args)
        raise OSError(19, "No such device")  # what mmap raises where the file system cannot map

    with monkeypatch.context() as m:
        m.setattr(tensors.mmap, "mmap", no_map)
        tensors.rebuild(manifest, store, tmp_path / "read.onnx")
    assert refused and (tmp_path / "read.onnx").read_bytes() == path.read_bytes()

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "blake3", None)  # `import blake3` raises ImportError
        plain = tensors.decompose(path, "onnx", store)
        assert "blake3" not in plain["files"][0] and plain["files"][0]["sha256"] == manifest["files"][0]["sha256"]
        tensors.rebuild(manifest, store, tmp_path / "sha.onnx")  # a recorded BLAKE3 it cannot compute: SHA-256
    assert (tmp_path / "sha.onnx").read_bytes() == path.read_bytes()
    assert blake3.blake3(path.read_bytes()).hexdigest() == manifest["files"][0]["blake3"]


@pytest.mark.parametrize("size", [10, 40 << 20], ids=["hashed-in-line", "hashed-by-thread"])
def test_a_failing_write_surfaces_as_itself(tmp_path, monkeypatch, size):
    """A disk that fills up mid-rebuild raises its OSError (reported as "cannot write"), not an
    error about the maps of the blobs being written from."""
    import blake3

    monkeypatch.setattr(tensors._Out, "STEP", 1 << 20)
    monkeypatch.setattr(tensors._Out, "SMALL", 1024)
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3 << 20))

    class FullDisk:
        def __init__(self) -> None:
            self.ok = 1

        def write(self, data) -> int:
            if self.ok:
                self.ok -= 1
                return len(data)
            raise OSError(28, "No space left on device")

    out = tensors._Out(FullDisk(), size, blake3.blake3())
    with pytest.raises(OSError, match="No space left") as e, open(blob, "rb") as src:
        try:
            out.copy(src, 0, 3 << 20)
        finally:
            out.finish()
    assert type(e.value) is OSError and out.written == 1 << 20
