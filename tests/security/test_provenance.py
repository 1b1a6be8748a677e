"""Signed provenance: keras -> onnx -> int8 -> tflite, each step with --sign; the chain verifies back to
the Keras file, and an edited statement, another key, a replaced intermediate or a changed output fail.

The chain is built once per module with the real commands (tf2onnx, onnxruntime's quantizer, onnx2tf)
on the trained digits CNN from tests/zoo_tf.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zoo_tf

pytest.importorskip("tensorflow")
pytest.importorskip("onnx2tf")


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _one_line(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stdout {res.stdout[-2000:]!r}, stderr {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


def _statements(bundle: Path) -> list[dict]:
    return [json.loads(base64.b64decode(json.loads(line)["payload"])) for line in bundle.read_text().splitlines()]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """keras -> onnx (convert) -> int8 (compress, static QDQ) -> tflite (convert), each signed."""
    from modelport.cli.app import main
    from modelport.security.signing import keygen

    d = tmp_path_factory.mktemp("chain")
    keys = keygen(d / "key.pem")
    keras = d / "cnn.keras"
    shutil.copyfile(zoo_tf.cnn_keras(), keras)
    x_train, _, x_test, y_test = zoo_tf.digits()
    np.savez(d / "calib.npz", image=x_train[:64])
    np.savez(d / "eval.npz", image=x_test[:200], labels=y_test[:200])
    digests = {}
    for args, out in (
        (["convert", keras, "--to", "onnx", "-o", d / "cnn.onnx"], "cnn.onnx"),
        (["compress", d / "cnn.onnx", "--quantize", "static", "--calibration", d / "calib.npz", "--eval", d / "eval.npz",
          "--runs", "0", "-o", d / "cnn.int8.onnx"], "cnn.int8.onnx"),
        # int8 -> TFLite is judged on the task (a budget), as lossy formats are
        (["convert", d / "cnn.int8.onnx", "--to", "tflite", "-o", d / "cnn.tflite", "--eval", d / "eval.npz",
          "--max-drop", "0.2"], "cnn.tflite"),
    ):
        rc = main([str(a) for a in args] + ["--sign", keys.private])
        assert rc == 0, args
        digests[out] = _sha(d / out)
    return {"dir": d, "key": Path(keys.private), "pub": Path(keys.public), "digests": digests}


def test_the_chain_verifies_back_to_the_keras_file(cli, chain):
    d = chain["dir"]
    res = cli("provenance", "verify", d / "cnn.tflite", "--pub", chain["pub"], "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    steps = doc["steps"]
    assert [s["command"] for s in steps] == ["convert", "compress", "convert"]
    assert [[o["name"] for o in s["outputs"]] for s in steps] == [["cnn.onnx"], ["cnn.int8.onnx"], ["cnn.tflite"]]
    for before, after in zip(steps, steps[1:]):  # each step's model input is the previous step's output
        model = [i for i in after["inputs"] if i["role"] == "model"]
        assert [i["digest"] for i in model] == [o["digest"] for o in before["outputs"]]
        assert model[0]["chained"]
    assert doc["originals"] == [{"name": "cnn.keras", "role": "model", "digest": "sha256:" + _sha(d / "cnn.keras"),
                                 "chained": False}]
    assert steps[-1]["outputs"][0]["digest"] == "sha256:" + _sha(d / "cnn.tflite")
    assert steps[0]["outputs"][0]["digest"] == "sha256:" + _sha(d / "cnn.onnx")  # compress left its input alone
    assert steps[0]["verdict"]["parity"]["ok"] is True and steps[0]["verdict"]["ok"] is True
    metric = steps[1]["verdict"]["metric"]
    assert metric["metric"] == "top-1" and 0.5 < metric["before"] <= 1 and 0.5 < metric["after"] <= 1
    assert steps[2]["verdict"]["metric"]["max_drop"] == 0.2 and steps[2]["verdict"]["ok"] is True
    assert steps[2]["options"]["to"] == "tflite" and steps[1]["options"]["quantize"] == "static"
    text = cli("provenance", "verify", d / "cnn.tflite", "--pub", chain["pub"])
    assert text.exit_code == 0, text.stderr
    assert "3 signed step(s)" in text.stdout and "cnn.keras" in text.stdout
    assert text.stdout.index("convert") < text.stdout.index("compress")


def _pae(payload_type: bytes, body: bytes) -> bytes:  # written out from the DSSE v1 spec, independently
    return b"DSSEv1 " + str(len(payload_type)).encode() + b" " + payload_type + b" " + str(len(body)).encode() + b" " + body


def test_each_line_is_a_dsse_envelope_of_an_slsa_statement(chain):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = chain["dir"]
    pub_pem = chain["pub"].read_bytes()
    public = serialization.load_pem_public_key(pub_pem)
    lines = (d / "cnn.tflite.intoto.jsonl").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        env = json.loads(line)
        assert env["payloadType"] == "application/vnd.in-toto+json"
        body = base64.b64decode(env["payload"])
        [sig] = env["signatures"]
        assert sig["keyid"] == hashlib.sha256(pub_pem).hexdigest()
        public.verify(base64.b64decode(sig["sig"]), _pae(env["payloadType"].encode(), body), ec.ECDSA(hashes.SHA256()))
    last, compress, first = _statements(d / "cnn.tflite.intoto.jsonl")
    assert last["_type"] == "https://in-toto.io/Statement/v1"
    assert last["predicateType"] == "https://slsa.dev/provenance/v1"
    assert last["subject"] == [{"name": "cnn.tflite", "digest": {"sha256": chain["digests"]["cnn.tflite"]},
                                "annotations": {"role": "output"}}]
    build = last["predicate"]["buildDefinition"]
    assert build["buildType"] == "urn:modelport:step:convert:v1"
    assert build["externalParameters"]["command"] == "convert"
    roles = {dep["annotations"]["role"]: dep for dep in build["resolvedDependencies"]}
    assert roles["model"]["digest"] == compress["subject"][0]["digest"]
    assert roles["eval"]["digest"] == {"sha256": _sha(d / "eval.npz")}
    assert build["internalParameters"]["route"] == ["onnx2tf"]
    run = last["predicate"]["runDetails"]
    assert {"modelport", "onnx2tf", "tensorflow", "onnxruntime"} <= set(run["builder"]["version"])
    assert run["metadata"]["startedOn"] <= run["metadata"]["finishedOn"]
    first_deps = first["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert first_deps[0]["name"] == "cnn.keras" and "provenance" not in first_deps[0]["annotations"]
    assert compress["predicate"]["buildDefinition"]["resolvedDependencies"][1]["annotations"]["role"] == "calibration"


def _copy(chain, tmp_path: Path, name: str) -> Path:
    d = chain["dir"]
    shutil.copyfile(d / name, tmp_path / name)
    shutil.copyfile(d / f"{name}.intoto.jsonl", tmp_path / f"{name}.intoto.jsonl")
    return tmp_path / name


def test_an_edited_statement_or_another_key_fails_naming_the_step(cli, chain, tmp_path):
    from modelport.security import provenance
    from modelport.security.signing import keygen, load_private_key

    model = _copy(chain, tmp_path, "cnn.tflite")
    bundle = tmp_path / "cnn.tflite.intoto.jsonl"
    lines = bundle.read_text().splitlines()
    env = json.loads(lines[1])  # the compress step
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"]["runDetails"]["byproducts"][0]["annotations"]["metric"]["after"] = 0.999
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()  # the old signature kept
    bundle.write_text("\n".join([lines[0], json.dumps(env), lines[2]]) + "\n")
    _one_line(cli("provenance", "verify", model, "--pub", chain["pub"]), 4, "compress cnn.onnx -> cnn.int8.onnx",
              "statement 2 of 3", "edited or signed by another key")
    other = keygen(tmp_path / "other.pem")
    resigned = provenance._envelope(statement, load_private_key(other.private))  # a valid signature, by another key
    bundle.write_text("\n".join([lines[0], json.dumps(resigned), lines[2]]) + "\n")
    _one_line(cli("provenance", "verify", model, "--pub", chain["pub"]), 4, "compress cnn.onnx -> cnn.int8.onnx",
              other.key_id[:16])
    res = cli("provenance", "verify", model, "--pub", chain["pub"], "--pub", other.public, "--json")
    assert res.exit_code == 0, res.stderr  # both keys trusted: the chain holds (and the forged metric shows)
    assert json.loads(res.stdout)["steps"][1]["verdict"]["metric"]["after"] == 0.999


def test_a_replaced_intermediate_breaks_the_chain_at_the_next_step(cli, chain, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = _copy(chain, tmp_path, "cnn.onnx")  # with its (now stale) provenance beside it
    proto = onnx.load(str(model))
    init = proto.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.25, init.name))  # someone swaps the weights
    onnx.save(proto, str(model))
    res = cli("compress", model, "--quantize", "dynamic", "--runs", "0", "-o", tmp_path / "swapped.int8.onnx",
              "--sign", chain["key"])
    assert res.exit_code == 0, res.stderr
    assert "does not describe it" in res.stdout  # said at signing time ...
    _one_line(cli("provenance", "verify", tmp_path / "swapped.int8.onnx", "--pub", chain["pub"]), 4,  # ... and refused
              "broken provenance chain at step 'compress cnn.onnx -> swapped.int8.onnx'", "the intermediate was replaced")
    _one_line(cli("provenance", "verify", model, "--pub", chain["pub"]), 4, "does not match its signed provenance",
              "cnn.onnx")


def test_a_changed_output_fails(cli, chain, tmp_path):
    model = _copy(chain, tmp_path, "cnn.tflite")
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    _one_line(cli("provenance", "verify", model, "--pub", chain["pub"]), 4, "does not match its signed provenance",
              "cnn.tflite: sha256")


def test_adapt_and_a_directory_output_carry_the_chain(cli, chain, tmp_path):
    src = _copy(chain, tmp_path, "cnn.onnx")
    res = cli("adapt", src, "-o", tmp_path / "cnn_b1.onnx", "--batch", "1", "--sign", chain["key"])
    assert res.exit_code == 0, res.stderr
    res = cli("convert", tmp_path / "cnn_b1.onnx", "--to", "torch", "-o", tmp_path / "cnn_torch", "--sign", chain["key"])
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "cnn_torch.intoto.jsonl").is_file()
    res = cli("provenance", "verify", tmp_path / "cnn_torch", "--pub", chain["pub"], "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [s["command"] for s in doc["steps"]] == ["convert", "adapt", "convert"]
    assert doc["steps"][-1]["outputs"][0]["digest"].startswith("dirHash:h1:")
    assert doc["steps"][1]["options"]["batch"] == 1
    (tmp_path / "cnn_torch" / "model.py").write_text((tmp_path / "cnn_torch" / "model.py").read_text() + "\n# edited\n")
    _one_line(cli("provenance", "verify", tmp_path / "cnn_torch", "--pub", chain["pub"]), 4,
              "model.py modified or truncated")


def test_bad_keys_and_bundles(cli, chain, tmp_path):
    d = chain["dir"]
    out = tmp_path / "never.onnx"
    _one_line(cli("convert", d / "cnn.keras", "--to", "onnx", "-o", out, "--sign", chain["pub"]), 2, "this is a public key")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    _one_line(cli("compress", d / "cnn.onnx", "--quantize", "dynamic", "-o", out, "--sign", garbage), 2,
              "not a PEM-encoded private key")
    assert list(tmp_path.iterdir()) == [garbage]  # nothing written: the key is read before the step
    _one_line(cli("provenance", "verify", d / "cnn.tflite", "--pub", chain["key"]), 2, "this is a private key")
    lone = tmp_path / "lone.onnx"
    shutil.copyfile(d / "cnn.onnx", lone)
    _one_line(cli("provenance", "verify", lone, "--pub", chain["pub"]), 4, "no provenance",
              str(tmp_path / "lone.onnx.intoto.jsonl"))
    (tmp_path / "lone.onnx.intoto.jsonl").write_text("{this is not json\n")
    _one_line(cli("provenance", "verify", lone, "--pub", chain["pub"]), 4, "line 1 of the provenance is not JSON")
    _one_line(cli("provenance", "verify", tmp_path / "missing.onnx", "--pub", chain["pub"]), 2, "no such file")


def test_distill_signs_both_outputs_and_carries_the_teachers_chain(cli, chain, tmp_path):
    d = chain["dir"]
    res = cli("distill", "--teacher", d / "cnn.onnx", "--student", d / "cnn.onnx", "-o", tmp_path / "student.onnx",
              "--data", d / "eval.npz", "--epochs", "1", "--runs", "0", "--sign", chain["key"], "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert sorted(Path(b).name for b in doc["provenance"]["bundles"]) == ["student.onnx.intoto.jsonl",
                                                                         "student_torch.intoto.jsonl"]
    for out in (tmp_path / "student.onnx", tmp_path / "student_torch"):
        res = cli("provenance", "verify", out, "--pub", chain["pub"], "--json")
        assert res.exit_code == 0, res.stderr
        steps = json.loads(res.stdout)["steps"]
        assert [s["command"] for s in steps] == ["convert", "distill"]
        distill = steps[-1]
        assert {i["role"] for i in distill["inputs"]} >= {"teacher", "student", "data"}
        assert distill["verdict"]["metric"]["metric"] == doc["metric_name"]
        assert distill["verdict"]["metric"]["student"] == doc["after"]["metric"]
