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
             "onnx": 60, "keras": 30}


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
