"""Every loader fuzzed briefly (benchmarks/fuzz.py's mutators, a fixed seed), and the bugs fuzzing found.

The short run feeds each loader a few hundred mutated valid files (byte flips, truncations, splices,
protobuf / zip / JSON / flatbuffer / safetensors-aware edits) in this process, each under a 10 s CPU-time timer:
any outcome but accepted or a one-line ModelportError fails the test and names the input, which
``python benchmarks/fuzz.py --loaders NAME --per-loader N --seed 0`` reproduces (input i is a function
of the seed, the loader and i). The full run is ``benchmarks/fuzz.py --per-loader 10000``.
"""

from __future__ import annotations

import base64
import struct
import zipfile
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import zoo

from modelport.errors import BadInputError, ModelportError, UnsafeError

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("modelport_fuzz", ROOT / "benchmarks" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["modelport_fuzz"] = fuzz
_spec.loader.exec_module(fuzz)

# inputs per loader: a few hundred where a load is cheap, fewer where the framework's own load dominates
SHORT_RUN = {"npz-inputs": 300, "caffe": 300, "provenance": 100, "signing": 100, "tensors-safetensors": 150,
             "tensors-onnx": 200, "pickle-scan": 300, "pickle-rescue": 200, "savedmodel": 200, "tflite": 200,
             "onnx": 60, "keras": 30, "weights-safetensors": 300}


def _seeds(name: str) -> list:
    return zoo.cached(f"fuzz_seeds_{name}", lambda d: fuzz.LOADERS[name].build(d))


@pytest.mark.parametrize("name", list(SHORT_RUN))
def test_short_fuzz_run(name, tmp_path):
    import importlib

    loader = fuzz.LOADERS[name]
    seeds = _seeds(name)
    for mod in loader.warm:  # first imports happen here, not under an input's 10 s alarm
        importlib.import_module(mod)
    assert fuzz.run_input(loader, seeds[0], (Path(seeds[0].template) / seeds[0].target).read_bytes(),
                          tmp_path / "x")[0] == "accepted"  # the unmutated seed loads
    outcomes: dict[str, int] = {}
    bad = []
    for i, (k, data) in enumerate(fuzz.inputs_for(loader, seeds, SHORT_RUN[name], 0)):
        outcome, detail = fuzz.run_input(loader, seeds[k], data, tmp_path / "x")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome not in ("accepted", "refused"):
            bad.append(f"input {i}: {outcome}: {detail.strip().splitlines()[-1] if detail.strip() else ''}")
    assert bad == [], bad[:5]
    if name == "tensors-safetensors":  # decompose refuses nothing: what it cannot split it stores whole
        assert outcomes.get("accepted", 0) == SHORT_RUN[name], outcomes
    else:
        assert outcomes.get("refused", 0) > 0, outcomes  # the mutations reach the loaders' checks
    assert sum(outcomes.values()) == SHORT_RUN[name]


def test_mutations_are_deterministic_and_change_the_file():
    loader = fuzz.LOADERS["npz-inputs"]
    seeds = _seeds("npz-inputs")
    a = list(fuzz.inputs_for(loader, seeds, 50, 7))
    b = list(fuzz.inputs_for(loader, seeds, 50, 7))
    assert a == b
    originals = [(Path(s.template) / s.target).read_bytes() for s in seeds]
    assert sum(data != originals[k] for k, data in a) >= 45


def test_protobuf_mutator_round_trips_and_edits_nested_fields():
    import random

    seed = _seeds("onnx")[1]
    data = (Path(seed.template) / seed.target).read_bytes()
    tree = fuzz._pb_parse(data)
    assert tree and fuzz._pb_dump(tree) == data
    depths = {len(fuzz._pb_all(tree, []))}
    assert max(depths) > 20
    r = random.Random(0)
    changed = [fuzz._pb_mut(data, r, [data]) for _ in range(50)]
    assert sum(c != data for c in changed) >= 40


# ----------------------------------------------------------------------------- regressions found by fuzzing


def _signed_file(tmp_path):
    from modelport.security import signing

    keys = signing.keygen(tmp_path / "key.pem")
    model = tmp_path / "w.bin"
    model.write_bytes(b"\x01" * 64)
    signing.sign(model, keys.private)
    return signing, keys, model, signing.default_signature(model)


@pytest.mark.parametrize("material", [1, {"publicKey": 5}, {"publicKey": {"hint": 7}}, {"publicKey": {"hint": []}}])
def test_signature_bundle_with_odd_verification_material_is_refused(tmp_path, material):
    """Fuzzing: ``verificationMaterial`` (or its publicKey / hint) of another JSON type was an AttributeError."""
    signing, keys, model, sig = _signed_file(tmp_path)
    bundle = json.loads(sig.read_text())
    bundle["verificationMaterial"] = material
    sig.write_text(json.dumps(bundle))
    try:
        signing.verify(model, keys.public, sig)  # the hint is advisory: the DSSE signature still decides
    except ModelportError as exc:
        assert isinstance(exc, UnsafeError) and "\n" not in str(exc)


def test_deeply_nested_json_is_refused_not_a_recursion_error(tmp_path):
    """Fuzzing: ``[[[[...]]]]`` in a signature, a provenance line, a Keras config, a safetensors header was a
    RecursionError out of json.loads."""
    from modelport.registry.blobs import BlobStore
    from modelport.registry.tensors import decompose
    from modelport.security import loaders, provenance

    deep = b"[" * 200000 + b"]" * 200000
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)  # frameworks raise it: then json.loads overflowed the C stack (a segfault)
    try:
        _deep_json_refused(deep, tmp_path, BlobStore, decompose, loaders, provenance)
    finally:
        sys.setrecursionlimit(old_limit)
    assert sys.getrecursionlimit() == old_limit


def _deep_json_refused(deep, tmp_path, BlobStore, decompose, loaders, provenance):
    signing, keys, model, sig = _signed_file(tmp_path)
    sig.write_bytes(deep)
    with pytest.raises(UnsafeError, match="not a model signature"):
        signing.verify(model, keys.public, sig)
    provenance.bundle_path(model).write_bytes(deep + b"\n")
    with pytest.raises(UnsafeError, match="not JSON"):
        provenance.verify(model, [keys.public])
    with pytest.raises(BadInputError, match="not valid JSON"):
        loaders._read_json(deep, "config.json", tmp_path / "m.keras")
    st = tmp_path / "m.safetensors"
    st.write_bytes(len(deep).to_bytes(8, "little") + deep)
    manifest = decompose(st, "safetensors", BlobStore(tmp_path / "blobs"))
    assert manifest["files"][0]["notes"] == ["safetensors header is not JSON: stored whole"]


def test_provenance_signature_with_a_list_keyid_is_refused(tmp_path):
    """Fuzzing: a DSSE signature whose ``keyid`` is a list was a TypeError (unhashable) in provenance verify."""
    from modelport.security import provenance

    seeds = _seeds("provenance")
    seed = seeds[0]
    d = tmp_path / "p"
    import shutil

    shutil.copytree(seed.template, d)
    bundle = d / seed.target
    lines = bundle.read_text().splitlines()
    env = json.loads(lines[0])
    env["signatures"][0]["keyid"] = ["a", "b"]
    env["payload"] = base64.b64encode(b'{"_type": 1}').decode()  # and the payload edited: must not verify
    bundle.write_text("\n".join([json.dumps(env), *lines[1:]]) + "\n")
    with pytest.raises(UnsafeError, match="does not verify"):
        provenance.verify(d / seed.entry, [d / seed.extra["pub"]])


def test_onnx_tensor_of_an_unknown_data_type_is_no_crash(tmp_path, cli):
    """Fuzzing: an initializer whose data_type is no TensorProto.DataType (127) was a ValueError in inspect."""
    import onnx

    seed = _seeds("onnx")[1]
    model = onnx.load(str(Path(seed.template) / seed.target))
    model.graph.initializer[1].data_type = 127
    model.graph.input[0].type.tensor_type.elem_type = 32767  # and an input's (formats.onnx_format.np_dtype)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    res = cli("inspect", path)
    assert res.exit_code in (0, 2), res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr.lower()
    if res.exit_code == 2:
        assert res.stderr.strip().startswith("modelport: error: ") and "\n" not in res.stderr.strip()


def test_tflite_with_a_non_utf8_tensor_name_is_exit_2(tmp_path, cli):
    """Fuzzing: a tensor name that is not UTF-8 was a UnicodeDecodeError in `modelport inspect` (the
    interpreter's op details decode it)."""
    seed = _seeds("tflite")[0]
    data = (Path(seed.template) / seed.target).read_bytes()
    assert b"out_" in data
    path = tmp_path / "m.tflite"
    path.write_bytes(data.replace(b"out_", b"\xff\xff\xff\xff", 1))
    res = cli("inspect", path)
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    line = res.stderr.strip()
    assert line.startswith("modelport: error: ") and "\n" not in line and "not UTF-8" in line


@pytest.mark.parametrize("predicate", [[1], {"buildDefinition": 3}, {"buildDefinition": {"externalParameters": [1]}},
                                       {"buildDefinition": {"resolvedDependencies": [{"annotations": 4}]}}])
def test_provenance_statement_of_odd_shape_is_refused(tmp_path, predicate):
    """Fuzzing: a (not yet verified) statement whose predicate fields had another JSON type was an AttributeError
    while naming the step in the refusal."""
    import shutil

    from modelport.security import provenance

    seed = _seeds("provenance")[0]
    d = tmp_path / "p"
    shutil.copytree(seed.template, d)
    bundle = d / seed.target
    lines = bundle.read_text().splitlines()
    env = json.loads(lines[0])
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"] = predicate
    statement["subject"] = [7, {"annotations": "x"}]
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    bundle.write_text("\n".join([json.dumps(env), *lines[1:]]) + "\n")
    with pytest.raises(UnsafeError, match="does not verify"):
        provenance.verify(d / seed.entry, [d / seed.extra["pub"]])


@pytest.mark.parametrize("dims", [[1] * 93, [2 ** 32, 2 ** 32, 0 + 1], [-4, -1]])
def test_caffe_blob_with_absurd_shape_is_exit_2(tmp_path, dims):
    """Fuzzing: a blob shape of 93 dims was numpy's ValueError; int64 products that wrap could pass the check."""
    from modelport.formats import caffe_format

    blob = caffe_format.messages()["BlobProto"]()
    blob.data.extend([1.0, 2.0, 3.0, 4.0])
    blob.shape.dim.extend(dims)
    with pytest.raises(BadInputError, match="weights blob holds 4 values"):
        caffe_format.blob_array(blob)


def test_decompose_onnx_with_an_overlong_external_location_is_exit_2(tmp_path):
    """Fuzzing: an external-data location longer than a file name may be was an OSError (ENAMETOOLONG)."""
    import shutil

    import onnx

    from modelport.registry.blobs import BlobStore
    from modelport.registry.tensors import decompose

    seed = _seeds("onnx")[0]
    d = tmp_path / "m"
    shutil.copytree(seed.template, d)
    model = onnx.load(str(d / seed.target), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "model.bin" * 60
    (d / seed.target).write_bytes(model.SerializeToString())
    with pytest.raises(BadInputError, match="cannot read"):
        decompose(d / seed.target, "onnx", BlobStore(tmp_path / "blobs"))


def test_keras_archive_with_an_unknown_compression_method_is_exit_2(tmp_path):
    """Fuzzing: a .keras whose config.json member names a compression method zipfile lacks was a
    NotImplementedError out of the config check."""
    import shutil

    from modelport.security.loaders import check_keras_file

    seed = _seeds("keras")[0]
    path = tmp_path / "m.keras"
    shutil.copyfile(Path(seed.template) / seed.target, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("config.json")
    struct.pack_into("<H", data, info.header_offset + 8, 99)  # the local header's method: 99 (AES), unsupported
    for pos in range(len(data) - 46):
        if data[pos:pos + 4] == b"PK\x01\x02" and struct.unpack_from("<I", data, pos + 42)[0] == info.header_offset:
            struct.pack_into("<H", data, pos + 10, 99)  # and the central directory's
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="corrupt or truncated Keras archive"):
        check_keras_file(path)


def test_scan_of_a_pickle_with_a_multi_disk_zip64_trailer_is_no_crash(tmp_path):
    """Fuzzing (the full run): a pickle followed by a zip64 end locator naming a second disk made
    ``zipfile.is_zipfile`` raise BadZipFile out of the scanner's polyglot check."""
    import pickle

    from modelport.security.pickles import scan_path

    path = tmp_path / "p.pkl"
    trailer = struct.pack("<4sLQL", b"PK\x06\x07", 1, 0, 2) + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0)
    path.write_bytes(pickle.dumps({"a": [1, 2.5]}, protocol=2) + trailer)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.is_zipfile(path)  # what the scanner called unguarded
    report = scan_path(path)
    assert report.ok and len(report.pickles) == 1


def test_scan_of_an_archive_with_an_empty_member_name_is_no_crash(tmp_path):
    """Fuzzing (the full run): a zip member named "" (inside a tar) was an IndexError from ZipInfo.is_dir()."""
    import io
    import pickle
    import tarfile

    from modelport.security.pickles import scan_path

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        z.writestr(zipfile.ZipInfo(""), b"\x80\x02}q\x00.")
    tar = tmp_path / "bundle.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("run/model.pt")
        info.size = len(buf.getvalue())
        t.addfile(info, io.BytesIO(buf.getvalue()))
    report = scan_path(tar)
    assert report.ok, report.findings
    assert any(p.where.endswith("archive/data.pkl") for p in report.pickles)


def test_a_hang_is_cpu_time_not_wall_time(tmp_path, monkeypatch):
    """The harness: an input that spins is a hang after HANG_SECONDS of CPU time; one that waits (as a worker
    starved of CPU on a loaded machine does) is not, however long the wall clock says it took."""
    import time

    monkeypatch.setattr(fuzz, "HANG_SECONDS", 1)
    seed = _seeds("npz-inputs")[0]
    data = (Path(seed.template) / seed.target).read_bytes()

    def spin(path, seed):
        while True:
            sum(range(1000))

    def wait(path, seed):
        time.sleep(1.5)

    t0 = time.process_time()
    outcome, detail = fuzz.run_input(dataclass_replace(fuzz.LOADERS["npz-inputs"], run=spin), seed, data, tmp_path / "a")
    assert outcome == "hang" and "of CPU time" in detail and "spin" in detail
    assert time.process_time() - t0 >= 0.8  # (the timer counts every thread of the process; clock ticks are coarse)
    assert fuzz.run_input(dataclass_replace(fuzz.LOADERS["npz-inputs"], run=wait), seed, data, tmp_path / "b")[0] == "accepted"


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_the_forked_supervisor_runs_a_loader_and_reports(tmp_path):
    """fuzz_in_child: a warmed supervisor forks the workers; its stats come back through the report file."""
    loader = fuzz.LOADERS["npz-inputs"]
    seeds = _seeds("npz-inputs")
    report = tmp_path / "npz.json"
    stats = fuzz.fuzz_in_child(loader, seeds, 40, report=report, jobs=1, work=tmp_path / "w", out=tmp_path)
    assert stats.inputs == 40 and stats.accepted + stats.refused == 40 and stats.refused > 0
    assert stats.crashes == stats.hangs == 0 and not stats.stopped_early
    assert 0 < stats.startup <= stats.seconds and stats.peak_rss_kb > 0
    assert json.loads(report.read_text())["inputs"] == 40
    past = fuzz.fuzz_in_child(loader, seeds, 40, report=tmp_path / "late.json", jobs=1, work=tmp_path / "w2",
                              until=0.0)
    assert past.inputs == 0 and past.stopped_early


def test_onnx_string_fields_that_are_not_utf8_are_exit_2(tmp_path, cli):
    """Fuzzing (the full run, 72 crashes): ONNX is proto2, so protobuf hands back a string field that is not
    UTF-8 as bytes (an op type, a producer name, a dim_param, a metadata value...), and inspect's sorting and
    joining of names raised TypeError. read_onnx now refuses such a file as corrupt, naming the field."""
    import onnx

    seed = _seeds("onnx")[1]
    model = onnx.load(str(Path(seed.template) / seed.target))
    model.graph.node[1].op_type = "Relu"
    data = model.SerializeToString().replace(b"Relu", b"R\xffl\xfe", 1)
    (tmp_path / "m.onnx").write_bytes(data)
    assert isinstance(onnx.load_model_from_string(data).graph.node[1].op_type, bytes)  # what protobuf does
    res = cli("inspect", tmp_path / "m.onnx")
    assert res.exit_code == 2 and "NodeProto.op_type is not valid UTF-8" in res.stderr, res.stderr
    assert "\n" not in res.stderr.strip()


def test_onnx_external_location_too_long_for_the_file_system_is_exit_2(tmp_path):
    """Fuzzing (the full run): a location made of one 2,000-character name was OSError (ENAMETOOLONG) out of
    the symlink check."""
    import onnx

    from modelport.security.loaders import check_onnx_file

    seed = _seeds("onnx")[0]
    model = onnx.load(str(Path(seed.template) / seed.target), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "model.bin" * 250
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(BadInputError, match="cannot be looked up"):
        check_onnx_file(tmp_path / "m.onnx")


def test_keras_names_with_line_breaks_stay_on_one_line(tmp_path):
    """Fuzzing (the full run): a class name holding a newline made a refusal of two lines."""
    from modelport.security.loaders import check_keras_config

    config = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"name": "d", "kernel_initializer": {
            "class_name": "Ones\nEvil", "module": "keras.initializers", "config": {}}}}]}}
    with pytest.raises(UnsafeError) as info:
        check_keras_config(config, path=tmp_path / "m.keras")
    assert "\n" not in str(info.value) and "Ones\\nEvil" in str(info.value)


def test_hdf5_reads_run_under_a_deadline(tmp_path, monkeypatch):
    """Fuzzing (the full run): libhdf5 spun forever in C reading the model_config of some corrupt .h5 files
    (no signal handler runs there). The attribute is read in a forked child killed at the deadline."""
    import shutil

    from modelport.security import loaders

    seed = _seeds("keras")[1]
    path = tmp_path / "m.h5"
    shutil.copyfile(Path(seed.template) / seed.target, path)
    assert loaders.keras_config(path)["class_name"] == "Sequential"  # through the child, in time
    monkeypatch.setattr(loaders, "H5_READ_SECONDS", 0)
    with pytest.raises(BadInputError, match="did not finish in 0 s"):
        loaders.keras_config(path)
    monkeypatch.setattr(loaders, "H5_READ_SECONDS", 30)
    data = bytearray(path.read_bytes())
    data[8:4096] = bytes(4088)  # the superblock and root group gone
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="not a readable HDF5 file"):
        loaders.keras_config(path)


DATA = Path(__file__).resolve().parent / "data"


def _one_line_error(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, (res.exit_code, res.stderr)
    line = res.stderr.strip()
    assert line.startswith("modelport: error: ") and "\n" not in line, res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in line.lower()
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_keras_h5_that_segfaulted_libhdf5_is_exit_2(tmp_path, cli):
    """Fuzzing (the full run, input 6133 of seed 0): two flipped bytes in an .h5 made the ``backend`` attribute
    of ``model_weights`` a variable-length sequence; reading it (Keras' weight loading) was a segfault that
    killed modelport. The HDF5 parts are now read in a child and rebuilt; this file is refused there (exit 2)."""
    import shutil

    path = tmp_path / "model.h5"
    shutil.copyfile(DATA / "keras_h5_vlen_attribute_segfault.h5", path)
    for command in (("inspect", path), ("convert", path, "--to", "onnx", "-o", tmp_path / "out.onnx")):
        _one_line_error(cli(*command), 2, "cannot load Keras model", "model_weights")
    assert not (tmp_path / "out.onnx").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.h5"]


def test_a_crash_of_the_hdf5_child_is_exit_2_not_a_dead_process(tmp_path):
    """What a segfault inside libhdf5 becomes: the child that read the file dies of SIGSEGV, the caller
    gets a one-line BadInputError naming the signal (and a reader past the deadline is killed)."""
    import os
    import signal

    from modelport.security import loaders

    def segfault() -> bytes:
        os.kill(os.getpid(), signal.SIGSEGV)
        return b"N"

    with pytest.raises(BadInputError, match="the reader crashed with SIGSEGV") as info:
        loaders._child_result(segfault, 30, tmp_path / "m.h5")
    assert "\n" not in str(info.value)
    assert loaders._child_result(lambda: b"B" + b"x" * (3 << 20), 30, tmp_path / "m.h5") == b"B" + b"x" * (3 << 20)


def test_valid_keras_files_load_from_their_rebuilt_copy_and_convert(tmp_path, cli):
    """The rebuilt HDF5 holds every group, dataset and attribute of the original, and a valid .h5 and .keras
    still load (same outputs as Keras on the original) and convert to ONNX."""
    import shutil

    import h5py
    import numpy as np

    from modelport.formats import open_runner
    from modelport.security.loaders import rebuilt_keras_file

    seeds = _seeds("keras")
    x = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)

    def contents(f) -> dict:
        out = {"/": {k: np.asarray(v).tolist() for k, v in f.attrs.items()}}
        f.visititems(lambda n, o: out.__setitem__(n, (
            {k: np.asarray(v).tolist() for k, v in o.attrs.items()},
            np.asarray(o[()]).tolist() if isinstance(o, h5py.Dataset) else None)))
        return out

    h5 = tmp_path / "m.h5"
    shutil.copyfile(Path(seeds[1].template) / seeds[1].target, h5)
    with rebuilt_keras_file(h5) as clean, h5py.File(h5, "r") as a, h5py.File(clean, "r") as b:
        assert clean != str(h5) and contents(a) == contents(b) and len(contents(a)) > 10
    assert not Path(clean).parent.exists()  # the copy is gone after the block
    keras_file = tmp_path / "m.keras"
    shutil.copyfile(Path(seeds[0].template) / seeds[0].target, keras_file)
    with rebuilt_keras_file(keras_file) as clean:
        with zipfile.ZipFile(keras_file) as za, zipfile.ZipFile(clean) as zb:
            assert sorted(za.namelist()) == sorted(zb.namelist())
            assert za.read("config.json") == zb.read("config.json")
    import keras

    for path in (h5, keras_file):
        expected = np.asarray(keras.models.load_model(path, compile=False)(x, training=False))
        with open_runner(path) as runner:
            got = runner.run({runner.signature.inputs[0].name: x})
        np.testing.assert_allclose(next(iter(got.values())), expected, rtol=1e-6, atol=1e-6)
    assert cli("convert", h5, "--to", "onnx", "-o", tmp_path / "m.onnx").exit_code == 0
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(onnx_out, np.asarray(keras.models.load_model(h5, compile=False)(x)), rtol=1e-4, atol=1e-4)


def _h5_with(tmp_path, edit):
    import shutil

    import h5py

    path = tmp_path / "m.h5"
    shutil.copyfile(Path(_seeds("keras")[1].template) / _seeds("keras")[1].target, path)
    with h5py.File(path, "r+") as f:
        edit(f, tmp_path)
    return path


def _bias_group(f):
    """The group that holds the last layer's bias (its path names the model, numbered per process by Keras)."""
    found = []
    f["model_weights/out"].visit(lambda name: found.append(name) if name.endswith("/bias") else None)
    assert len(found) == 1, found
    return f["model_weights/out"][found[0].rsplit("/", 1)[0]]


def _external_storage(f, tmp_path):
    import numpy as np

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    group = _bias_group(f)
    del group["bias"]
    group.create_dataset("bias", shape=(2,), dtype="f4", external=[(str(secret), 0, 8)])


def _virtual(f, tmp_path):
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as o:
        o.create_dataset("b", data=[1.0, 2.0], dtype="f4")
    layout = h5py.VirtualLayout(shape=(2,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "b", shape=(2,))
    group = _bias_group(f)
    del group["bias"]
    group.create_virtual_dataset("bias", layout)


@pytest.mark.parametrize("edit, code, fragment", [
    (lambda f, d: f["model_weights"].__setitem__("leak", __import__("h5py").ExternalLink(str(d / "x.h5"), "/")),
     4, "external link '/model_weights/leak' points into another file"),
    (_external_storage, 4, "keeps its data in an external file"),
    (_virtual, 4, "virtual dataset"),
    (lambda f, d: f["model_weights"].create_dataset("refs", data=[f.ref], dtype=__import__("h5py").ref_dtype),
     2, "unsupported data type"),
    (lambda f, d: f["model_weights"].create_dataset("huge", shape=(1 << 40,), dtype="f8", chunks=(1 << 16,)),
     2, "more than the file could hold"),
])
def test_keras_h5_that_reads_other_files_or_is_no_weight_file_is_refused(tmp_path, cli, edit, code, fragment):
    """The rebuilding child refuses what would make Keras read another file (exit 4) and what no Keras file
    holds: references, data that claims terabytes from unallocated chunks (exit 2)."""
    path = _h5_with(tmp_path, edit)
    _one_line_error(cli("inspect", path), code, fragment)


def test_keras_archive_with_corrupt_weights_is_exit_2(tmp_path, cli):
    """A .keras whose model.weights.h5 is damaged is rebuilt (and refused) in the child too."""
    seed = _seeds("keras")[0]
    src = Path(seed.template) / seed.target
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info)
            if info.filename == "model.weights.h5":
                body = body[:8] + bytes(4088) + body[4096:]
            zout.writestr(info, body)
    _one_line_error(cli("inspect", path), 2, "cannot load Keras model", "not a readable HDF5 file")


def test_keras_config_declaring_huge_layers_is_refused_before_allocating(tmp_path, cli):
    """Fuzzing (peak RSS 2.6 GB in the full run): a config whose Dense has 10^8 units made Keras allocate and
    initialize a 2.4 GB kernel before it read a weight. Variables beyond what the file's weights could fill
    are refused (exit 2) before Keras creates them; the unmutated model still loads."""
    import resource

    seed = _seeds("keras")[0]
    src = Path(seed.template) / seed.target
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info)
            if info.filename == "config.json":
                config = json.loads(body)
                config["config"]["layers"][1]["config"]["units"] = 10 ** 8
                body = json.dumps(config).encode()
            zout.writestr(info, body)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = _one_line_error(cli("inspect", path), 2, "declares at least 2400000000 bytes of variables")
    assert "bytes of weights in the file" in line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1 << 20  # KiB: far below the 2.3 GiB kernel
    assert cli("inspect", src).exit_code == 0


def test_decompose_onnx_with_a_control_character_in_a_missing_location_is_one_line(tmp_path, cli):
    """Fuzzing (tensors-onnx, input 3510): a mutated external-data location holding newlines and raw bytes
    that names no file made a ModelportError of several lines (the location printed as it was). It is
    escaped now: one line, exit 2; the unmutated model still decomposes."""
    import shutil

    import onnx

    from modelport.registry.blobs import BlobStore
    from modelport.registry.tensors import decompose

    seed = _seeds("onnx")[0]
    d = tmp_path / "m"
    shutil.copytree(seed.template, d)
    assert decompose(d / seed.target, "onnx", BlobStore(tmp_path / "ok"))  # the control
    model = onnx.load(str(d / seed.target), load_external_data=False)
    bad = "mod\n\x1b[2Jel\x00\x7f\u0085" + "x" * 200 + ".bin"
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = bad
    (d / seed.target).write_bytes(model.SerializeToString())
    with pytest.raises(BadInputError, match="missing external data file") as err:
        decompose(d / seed.target, "onnx", BlobStore(tmp_path / "blobs"))
    text = str(err.value)
    assert "\n" not in text and "\x1b" not in text and "\\n" in text and "…" in text and len(text) < 400


def _weights_file(tmp_path, header: dict, body: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    p = tmp_path / "weights.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return p


@pytest.mark.parametrize("entry, fragment", [
    ({"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}, "offsets and dims must be integers"),
    ({"dtype": "F32", "shape": [-1, 0], "data_offsets": [0, 0]}, "offsets and dims must be integers"),
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "offsets and dims must be integers"),
    ({"dtype": "F32", "shape": [2 ** 32, 2 ** 32], "data_offsets": [0, 0]}, "lies outside the file or has the wrong size"),
    ({"dtype": "F32", "shape": [0, 2 ** 63], "data_offsets": [0, 0]}, "impossible shape"),
])
def test_mapped_safetensors_entries_with_impossible_offsets_or_dims_are_refused(tmp_path, entry, fragment):
    """Fuzzing (weights-safetensors, the memory-mapped reader of a generated torch directory's weights):
    string offsets crashed with TypeError, a negative dim beside a 0 with ValueError, int64-overflowing dims
    passed the size check, and a 2**63 dim of an empty tensor gave numpy's 'Maximum allowed dimension'."""
    from modelport.formats import safetensors_io

    good = _weights_file(tmp_path, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    assert list(safetensors_io.load(good)["w"].shape) == [2]  # the control
    bad = _weights_file(tmp_path, {"w": entry}, b"\0" * 8)
    with pytest.raises(BadInputError, match=fragment) as err:
        safetensors_io.load(bad)
    assert "\n" not in str(err.value)


def test_mapped_safetensors_deep_json_and_bad_shard_names_are_refused(tmp_path):
    """Fuzzing (weights-safetensors): a header or shard index nested thousands deep raised RecursionError, and a
    shard name with a newline made an error of two lines; both are one-line refusals now."""
    from modelport.formats import safetensors_io

    deep = b"[" * 100000 + b"]" * 100000
    p = tmp_path / "weights.safetensors"
    p.write_bytes(struct.pack("<Q", len(deep)) + deep)
    with pytest.raises(BadInputError, match="corrupt safetensors header"):
        safetensors_io.load(p)
    d = tmp_path / "sharded"
    d.mkdir()
    weights = d / "weights.safetensors"
    index = safetensors_io.index_path(weights)
    index.write_bytes(b'{"weight_map": ' + deep + b"}")
    with pytest.raises(BadInputError, match="unreadable shard index"):
        safetensors_io.load(weights)
    for name in ("weights-0\nof-2.safetensors", "", ".."):
        index.write_text(json.dumps({"weight_map": {"a": name}}))
        with pytest.raises(BadInputError, match="outside its directory") as err:
            safetensors_io.load(weights)
        assert "\n" not in str(err.value)
    index.write_text(json.dumps({"weight_map": {"a": ["x"]}}))
    with pytest.raises(BadInputError, match="corrupt shard index"):
        safetensors_io.load(weights)
