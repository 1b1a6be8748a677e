"""`modelport keygen / sign / signature verify`: OpenSSF model signatures that interoperate with `model_signing`.

Real models (ONNX files from tests/zoo.py, one with its weights in external data in a directory),
real keys, and the real `model_signing` CLI in a subprocess (offline: key-based signing needs no
network) in both directions.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zoo

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


def _one_line(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stdout {res.stdout!r}, stderr {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


def _model_signing(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(MODEL_SIGNING), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    from modelport.security.signing import keygen

    d = tmp_path_factory.mktemp("keys")
    pair = keygen(d / "key.pem")
    return Path(pair.private), Path(pair.public)


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory) -> tuple[Path, Path]:
    from modelport.security.signing import keygen

    pair = keygen(tmp_path_factory.mktemp("other") / "other.pem")
    return Path(pair.private), Path(pair.public)


def _onnx_dir(directory: Path) -> Path:
    """A model directory: model.onnx whose weights live in weights.bin beside it, plus a config file."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    src = zoo.add_offset_model(directory / "plain.onnx", np.arange(4, dtype=np.float32) + 0.5)
    model = onnx.load(src)
    (directory / "plain.onnx").unlink()
    onnx.save_model(model, str(directory / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    (directory / "config.json").write_text(json.dumps({"offset": "arange + 0.5"}))
    return directory


def _copy_signed(src_dir: Path, dest: Path) -> Path:
    shutil.copytree(src_dir, dest)
    shutil.copyfile(src_dir.with_name(src_dir.name + ".sig"), dest.with_name(dest.name + ".sig"))
    return dest


def test_keygen_writes_a_p256_pair_private_key_0600(cli, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    res = cli("keygen", "-o", tmp_path / "k.pem")
    assert res.exit_code == 0, res.stderr
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    private = serialization.load_pem_private_key((tmp_path / "k.pem").read_bytes(), None)
    public = serialization.load_pem_public_key((tmp_path / "k.pub").read_bytes())
    assert isinstance(private.curve, ec.SECP256R1)
    assert private.public_key().public_numbers() == public.public_numbers()
    before = (tmp_path / "k.pem").read_bytes(), (tmp_path / "k.pub").read_bytes()
    _one_line(cli("keygen", "-o", tmp_path / "k.pem"), 2, "refusing to overwrite")
    assert ((tmp_path / "k.pem").read_bytes(), (tmp_path / "k.pub").read_bytes()) == before
    (tmp_path / "lone.pub").write_text("someone's public key")
    _one_line(cli("keygen", "-o", tmp_path / "lone.pem"), 2, "lone.pub", "refusing to overwrite")
    assert not (tmp_path / "lone.pem").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "k.pub", "lone.pub"]  # no temp files left


def test_sign_and_verify_a_file_and_a_directory(cli, keys, tmp_path):
    private, public = keys
    model = Path(zoo.add_offset_model(tmp_path / "m.onnx", [1, 2, 3, 4]))
    res = cli("sign", model, "--key", private)
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "m.onnx.sig").is_file()  # the default: beside the file
    res = cli("signature", "verify", model, "--pub", public, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    import hashlib

    assert doc["files"] == [{"name": ".", "sha256": hashlib.sha256(model.read_bytes()).hexdigest()}]
    d = _onnx_dir(tmp_path / "mdir")
    assert cli("sign", d, "--key", private).exit_code == 0
    assert (tmp_path / "mdir.sig").is_file() and not (d / "model.sig").exists()  # beside, outside the signed set
    res = cli("signature", "verify", d, "--pub", public, "--json")
    assert res.exit_code == 0, res.stderr
    assert sorted(f["name"] for f in json.loads(res.stdout)["files"]) == ["config.json", "model.onnx", "weights.bin"]


@pytest.fixture(scope="module")
def signed_dir(tmp_path_factory, keys) -> Path:
    from modelport.security.signing import sign

    d = _onnx_dir(tmp_path_factory.mktemp("signed") / "bundle")
    sign(d, keys[0])
    return d


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


TAMPERS = {
    "byte flip": (lambda d: _flip(d / "weights.bin"), "weights.bin modified or truncated"),
    "truncation": (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-7]),
                   "model.onnx modified or truncated"),
    "added": (lambda d: (d / "extra.py").write_text("import os\n"), "extra.py added (not signed)"),
    "removed": (lambda d: (d / "config.json").unlink(), "config.json removed"),
    "renamed": (lambda d: (d / "weights.bin").rename(d / "weights2.bin"), "weights.bin renamed to weights2.bin"),
}


@pytest.mark.parametrize("how", list(TAMPERS))
def test_any_change_fails_naming_the_file(cli, keys, signed_dir, tmp_path, how):
    d = _copy_signed(signed_dir, tmp_path / "copy")
    assert cli("signature", "verify", d, "--pub", keys[1]).exit_code == 0  # the copy verifies before the change
    change, named = TAMPERS[how]
    change(d)
    _one_line(cli("signature", "verify", d, "--pub", keys[1]), 4, str(d), named)


def test_modelport_signature_verifies_with_model_signing_cli(cli, keys, tmp_path):
    private, public = keys
    d = _onnx_dir(tmp_path / "m")
    f = Path(zoo.add_offset_model(tmp_path / "single.onnx", [4, 3, 2, 1]))
    assert cli("sign", d, "--key", private).exit_code == 0
    assert cli("sign", f, "--key", private, "--signature", tmp_path / "custom.sig").exit_code == 0
    for model, sig in ((d, tmp_path / "m.sig"), (f, tmp_path / "custom.sig")):
        proc = _model_signing("verify", "key", model, "--signature", sig, "--public_key", public)
        assert proc.returncode == 0 and "Verification succeeded" in proc.stdout, proc.stderr


def test_model_signing_cli_signature_verifies_with_modelport(cli, keys, other_keys, tmp_path):
    private, public = keys
    d = _onnx_dir(tmp_path / "m")
    # model_signing's habit: the signature inside the model directory (it leaves it out of the signed files)
    proc = _model_signing("sign", "key", d, "--signature", d / "model.sig", "--private_key", private)
    assert proc.returncode == 0, proc.stderr
    res = cli("signature", "verify", d, "--pub", public, "--json")  # found as DIR/model.sig
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["signature"] == str(d / "model.sig")
    assert sorted(x["name"] for x in doc["files"]) == ["config.json", "model.onnx", "weights.bin"]
    _one_line(cli("signature", "verify", d, "--pub", other_keys[1]), 4, "signed with another key")
    _flip(d / "weights.bin")
    _one_line(cli("signature", "verify", d, "--pub", public), 4, "weights.bin modified or truncated")


def _rsa_and_ed25519(tmp_path: Path) -> tuple[Path, Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    pem = serialization.Encoding.PEM
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ed_pub = tmp_path / "ed.pub"
    ed_pub.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    k1 = tmp_path / "secp256k1.pem"
    k1.write_bytes(ec.generate_private_key(ec.SECP256K1()).private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return rsa_key, ed_pub, k1


def test_bad_keys_exit_2_with_one_line(cli, keys, tmp_path):
    private, public = keys
    model = Path(zoo.add_offset_model(tmp_path / "m.onnx", [1, 1, 1, 1]))
    rsa_key, ed_pub, k1 = _rsa_and_ed25519(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(os.urandom(300))
    _one_line(cli("sign", model, "--key", rsa_key), 2, "an RSA key, not an ECDSA key")
    _one_line(cli("sign", model, "--key", k1), 2, "curve secp256k1")
    _one_line(cli("sign", model, "--key", garbage), 2, "not a PEM-encoded private key")
    _one_line(cli("sign", model, "--key", tmp_path / "missing.pem"), 2, "no such private key file")
    _one_line(cli("sign", model, "--key", public), 2, "this is a public key")
    assert not (tmp_path / "m.onnx.sig").exists()  # nothing written by any failed sign
    unreadable = tmp_path / "unreadable.pem"
    shutil.copyfile(private, unreadable)
    unreadable.chmod(0)
    if not os.access(unreadable, os.R_OK):  # (root reads anything)
        _one_line(cli("sign", model, "--key", unreadable), 2, "cannot read the private key")
    assert cli("sign", model, "--key", private).exit_code == 0
    _one_line(cli("signature", "verify", model, "--pub", ed_pub), 2, "an Ed25519 key")
    _one_line(cli("signature", "verify", model, "--pub", private), 2, "this is a private key")
    _one_line(cli("signature", "verify", model, "--pub", garbage), 2, "not a PEM-encoded public key")
    _one_line(cli("sign", tmp_path / "nothere.onnx", "--key", private), 2, "no such file or directory")


def test_signature_for_another_file_missing_or_corrupt_exit_4(cli, keys, other_keys, tmp_path):
    private, public = keys
    a = Path(zoo.add_offset_model(tmp_path / "a.onnx", [1, 2, 3, 4]))
    b = Path(zoo.add_offset_model(tmp_path / "b.onnx", [1, 2, 3, 5]))
    assert cli("sign", a, "--key", private).exit_code == 0
    _one_line(cli("signature", "verify", b, "--pub", public, "--signature", tmp_path / "a.onnx.sig"), 4,
              "signed digest of 'a.onnx'", "a signature for another file")
    _one_line(cli("signature", "verify", b, "--pub", public), 4, "no signature", str(tmp_path / "b.onnx.sig"))
    _one_line(cli("signature", "verify", a, "--pub", other_keys[1]), 4, "signed with another key")
    d = _onnx_dir(tmp_path / "d")
    assert cli("sign", d, "--key", private).exit_code == 0
    _one_line(cli("signature", "verify", a, "--pub", public, "--signature", tmp_path / "d.sig"), 4,
              "the signature is for a directory")
    bundle = json.loads((tmp_path / "a.onnx.sig").read_text())
    bundle["verificationMaterial"]["publicKey"]["hint"] = ""  # no hint: only the DSSE signature decides
    sig = bundle["dsseEnvelope"]["signatures"][0]["sig"]
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    forged = tmp_path / "forged.sig"
    forged.write_text(json.dumps(bundle))
    _one_line(cli("signature", "verify", a, "--pub", public, "--signature", forged), 4, "does not verify with this key")
    forged.write_text("{not json")
    _one_line(cli("signature", "verify", a, "--pub", public, "--signature", forged), 4, "not a model signature")


def test_symlink_in_a_signed_directory_is_refused(cli, keys, signed_dir, tmp_path):
    d = _copy_signed(signed_dir, tmp_path / "c")
    (d / "config.json").unlink()
    (d / "config.json").symlink_to("/etc/hostname")
    _one_line(cli("signature", "verify", d, "--pub", keys[1]), 4, "config.json is a symbolic link")
