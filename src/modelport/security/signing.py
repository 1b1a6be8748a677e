"""Keys, and signatures of a model file or directory through OpenSSF model-signing.

    keys = keygen("key.pem")                      # ECDSA P-256: key.pem (mode 0600) and key.pub
    sign("model.onnx", "key.pem")                 # -> model.onnx.sig
    verify("model.onnx", "key.pub")               # a SignatureReport, or UnsafeError (exit 4)

The signature is the one ``model_signing sign key`` writes: a Sigstore bundle whose DSSE
envelope carries an in-toto statement listing every file of the model with its sha256, so a
model signed here verifies with ``model_signing verify key`` and the other way round. It sits
beside the model: ``PATH.sig`` for a file ``PATH`` and for a directory ``PATH/`` (outside the
signed file set). A signature inside a directory is accepted where model_signing puts it,
``DIR/model.sig`` (model_signing leaves it out of the signed files).

Verification runs model_signing's own verifier, and when it refuses, works out what differs from
the signed manifest in the bundle (its DSSE signature checked first): each file modified,
truncated, added, removed or renamed is named.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelport.errors import BadInputError, MissingExtraError, UnsafeError

__all__ = [
    "DIR_SIGNATURE_NAME",
    "KeyPair",
    "SignatureReport",
    "SignedFile",
    "default_signature",
    "key_id",
    "keygen",
    "load_private_key",
    "load_public_key",
    "pae",
    "sign",
    "signature_candidates",
    "verify",
]

SIGNATURE_SUFFIX = ".sig"
DIR_SIGNATURE_NAME = "model.sig"  # model_signing's default name; ignored when inside the signed directory
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MODEL_SIGNATURE_PREDICATE = "https://model_signing/signature/v1.0"
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_MAX_SIGNATURE_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """The files ``keygen`` wrote and the key id (sha256 of the public key's PEM, model_signing's hint)."""

    private: str
    public: str
    key_id: str


@dataclasses.dataclass(frozen=True, order=True)
class SignedFile:
    """One file a signature covers: its path inside the model (``.`` for a single-file model) and sha256."""

    name: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class SignatureReport:
    """A signature made or verified: the model, the signature file, the key and every file covered."""

    model: str
    signature: str
    key_id: str
    files: tuple[SignedFile, ...]
    ok: bool = True

    def __bool__(self) -> bool:
        return self.ok

    def covers(self, relative: str) -> bool:
        return any(f.name == relative for f in self.files)


# ---------------------------------------------------------------------------------------- keys


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:  # pragma: no cover - cryptography comes with the sign extra
        raise MissingExtraError("cryptography", "sign", purpose="signing") from None
    return serialization, ec


def _read_key_file(path: str | Path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"no such {what} file", path=p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read the {what}: {exc.strerror or exc}", path=p) from None
    if len(data) > 1 << 20:
        raise BadInputError(f"not a PEM {what} (file larger than 1 MiB)", path=p)
    return data


def _kind(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import dsa, ed448, ed25519, rsa

    for cls, name in ((rsa.RSAPublicKey, "an RSA key"), (ed25519.Ed25519PublicKey, "an Ed25519 key"),
                      (ed448.Ed448PublicKey, "an Ed448 key"), (dsa.DSAPublicKey, "a DSA key")):
        if isinstance(key, cls):
            return name
    return f"a {type(key).__name__} key"


def _check_curve(public: Any, path: Path, ec: Any) -> None:
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise BadInputError(f"{_kind(public)}, not an ECDSA key: model signatures use ECDSA P-256, P-384 or P-521 "
                            "(make one with `modelport keygen`)", path=path)
    if public.curve.name not in _CURVES:
        raise BadInputError(f"ECDSA key on curve {public.curve.name}: model signatures use P-256, P-384 or P-521",
                            path=path)


def load_private_key(path: str | Path) -> Any:
    """The ECDSA private key in a PEM file; BadInputError (exit 2) for anything else, naming what it is."""
    serialization, ec = _crypto()
    p, data = Path(path), _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise BadInputError("the private key is encrypted; modelport signs with unencrypted PEM keys "
                            "(keep the file mode 0600)", path=p) from None
    except Exception:  # noqa: BLE001 (ValueError, or UnsupportedAlgorithm for an unknown key type)
        try:
            serialization.load_pem_public_key(data)
        except Exception:  # noqa: BLE001
            raise BadInputError("not a PEM-encoded private key", path=p) from None
        raise BadInputError("this is a public key; sign with the private key (e.g. key.pem)", path=p) from None
    _check_curve(key.public_key(), p, ec)
    return key


def load_public_key(path: str | Path) -> Any:
    """The ECDSA public key in a PEM file; BadInputError (exit 2) for anything else, naming what it is."""
    serialization, ec = _crypto()
    p, data = Path(path), _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:  # noqa: BLE001
        if b"PRIVATE KEY" in data:
            raise BadInputError("this is a private key; verify with the public key (e.g. key.pub)", path=p) from None
        raise BadInputError("not a PEM-encoded public key", path=p) from None
    _check_curve(key, p, ec)
    return key


def key_id(public_key: Any) -> str:
    """sha256 (hex) of the public key's SubjectPublicKeyInfo PEM: the hint model_signing writes in its bundles."""
    serialization, _ = _crypto()
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` which must not exist: a temp file beside it, linked into place (no overwrite)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails if path appeared meanwhile
    finally:
        os.unlink(tmp)


def _public_path(private: Path) -> Path:
    return private.with_suffix(".pub") if private.suffix == ".pem" else private.with_name(private.name + ".pub")


def keygen(out: str | Path) -> KeyPair:
    """Make an ECDSA P-256 key pair: ``out`` (PKCS#8 PEM, mode 0600) and its public key beside it (``.pub``).

    Refuses (BadInputError) to overwrite either file.
    """
    serialization, ec = _crypto()
    private = Path(out)
    public = _public_path(private)
    if private.is_dir():
        raise BadInputError("is a directory; give the private key's file name (e.g. key.pem)", path=private)
    for p in (private, public):
        if p.exists() or p.is_symlink():
            raise BadInputError("already exists; refusing to overwrite a key (remove it first)", path=p)
    if not private.parent.is_dir():
        raise BadInputError("no such directory", path=private.parent)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        _write_new(private, pem, 0o600)
        try:
            _write_new(public, pub, 0o644)
        except BaseException:
            private.unlink(missing_ok=True)
            raise
    except FileExistsError as exc:
        raise BadInputError("already exists; refusing to overwrite a key", path=exc.filename2 or exc.filename) from None
    except OSError as exc:
        raise BadInputError(f"cannot write the key: {exc.strerror or exc}", path=private) from None
    return KeyPair(str(private), str(public), key_id(key.public_key()))


# ---------------------------------------------------------------------------------- signatures


def _model_path(model: str | Path) -> Path:
    text = str(model)
    return Path(text.rstrip("/") if text.rstrip("/") else text)


def default_signature(model: str | Path) -> Path:
    """Where ``sign`` writes by default: ``PATH.sig`` beside the file or directory."""
    p = _model_path(model)
    return p.with_name(p.name + SIGNATURE_SUFFIX)


def signature_candidates(model: str | Path) -> tuple[Path, ...]:
    """Where a model's own signature may sit, in the order looked at: ``PATH.sig``, then ``DIR/model.sig``."""
    p = _model_path(model)
    found = [default_signature(p)]
    if p.is_dir():
        found.append(p / DIR_SIGNATURE_NAME)
    return tuple(found)


def _signing():
    try:
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError:
        raise MissingExtraError("model-signing", "sign", purpose="model signatures") from None
    return model_signing


def _inside(path: Path, root: Path) -> Path | None:
    """``path`` relative to directory ``root`` when it lies inside it, else None."""
    if not root.is_dir():
        return None
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return None


def _hashing_config(ms: Any, model: Path, signature: Path, extra_ignored: Iterable[str] = ()):
    """model_signing's CLI configuration: files, sha256, no symlinks, git files and the signature ignored."""
    ignored = [str(p) for p in extra_ignored]
    rel = _inside(signature, model)
    if rel is not None:
        ignored.append(str(rel))
    return ms.hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=True).set_allow_symlinks(False)


def _check_model(model: Path, error: type = UnsafeError) -> None:
    if model.is_symlink():
        raise error(f"{'refused: ' if error is UnsafeError else ''}is a symbolic link; signatures cover regular files only",
                    path=model)
    if not model.exists():
        raise BadInputError("no such file or directory", path=model)
    if not (model.is_file() or model.is_dir()):
        raise BadInputError("not a regular file or directory", path=model)


def _symlink_inside(model: Path) -> Path | None:
    if model.is_dir():
        for root, dirs, files in os.walk(model):
            for name in dirs + files:
                if os.path.islink(os.path.join(root, name)):
                    return Path(root, name)
    return None


def sign(model: str | Path, key: str | Path, signature: str | Path | None = None) -> SignatureReport:
    """Sign a model file or directory with an ECDSA private key (PEM); the signature replaces ``signature`` atomically.

    Args:
        model: a file, or a directory (every file in it is signed, git files excepted).
        key: the private key (``modelport keygen``).
        signature: where to write (default ``PATH.sig`` beside the model).

    Raises:
        BadInputError: an unreadable or wrong key, a missing model, a symlink inside the model.
    """
    ms = _signing()
    path = _model_path(model)
    _check_model(path, BadInputError)
    private = load_private_key(key)
    sig = Path(signature) if signature is not None else default_signature(path)
    if sig.resolve() == path.resolve() or (path.is_file() and sig.is_dir()) or sig.is_dir():
        raise BadInputError("the signature path is the model itself or a directory", path=sig)
    if (link := _symlink_inside(path)) is not None:
        raise BadInputError(f"contains a symbolic link ({link.relative_to(path)}); signatures cover regular files only",
                            path=path)
    if not sig.parent.is_dir():
        raise BadInputError("no such directory for the signature", path=sig.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{sig.name}.", suffix=".tmp", dir=sig.parent)
    os.close(fd)
    try:
        config = ms.signing.Config().use_elliptic_key_signer(private_key=str(key))
        config.set_hashing_config(_hashing_config(ms, path, sig)).sign(path, tmp)
        os.replace(tmp, sig)
    except OSError as exc:
        raise BadInputError(f"cannot sign: {exc.strerror or exc}", path=exc.filename or path) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    bundle = _read_bundle(sig)
    statement = _statement(bundle, sig)
    return SignatureReport(str(path), str(sig), key_id(private.public_key()), _signed_files(statement, sig))


# ---------------------------------------------------------------------------------------- DSSE


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def ecdsa_hash(public_key: Any):
    """The hash model_signing pairs with each curve: SHA-256 (P-256), SHA-384 (P-384), SHA-512 (P-521)."""
    from cryptography.hazmat.primitives import hashes

    return {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[public_key.curve.key_size]


def dsse_verify(public_key: Any, payload_type: str, payload: bytes, signature: bytes) -> bool:
    """True when ``signature`` (DER ECDSA) over the PAE of (type, payload) verifies with ``public_key``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        public_key.verify(signature, pae(payload_type, payload), ec.ECDSA(ecdsa_hash(public_key)))
        return True
    except (InvalidSignature, ValueError):
        return False


def b64decode(text: Any, what: str, path: Path) -> bytes:
    if not isinstance(text, str):
        raise UnsafeError(f"refused: malformed {what} (not a base64 string)", path=path)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UnsafeError(f"refused: malformed {what} (not base64)", path=path) from None


def _read_bundle(sig: Path) -> dict[str, Any]:
    try:
        if sig.stat().st_size > _MAX_SIGNATURE_BYTES:
            raise UnsafeError("refused: not a model signature (larger than 64 MiB)", path=sig)
        from modelport.security.jsonsafe import loads

        bundle = loads(sig.read_bytes())
    except OSError as exc:
        raise BadInputError(f"cannot read the signature: {exc.strerror or exc}", path=sig) from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UnsafeError("refused: not a model signature (not a JSON Sigstore bundle)", path=sig) from None
    if not isinstance(bundle, dict) or not isinstance(bundle.get("dsseEnvelope"), dict):
        raise UnsafeError("refused: not a model signature (no DSSE envelope in the bundle)", path=sig)
    return bundle


def _envelope(bundle: dict[str, Any], sig: Path) -> tuple[str, bytes, bytes]:
    env = bundle["dsseEnvelope"]
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs or not isinstance(sigs[0], dict):
        raise UnsafeError("refused: the signature bundle holds no signature", path=sig)
    return (str(env.get("payloadType", "")), b64decode(env.get("payload"), "signature payload", sig),
            b64decode(sigs[0].get("sig"), "signature", sig))


def _statement(bundle: dict[str, Any], sig: Path) -> dict[str, Any]:
    _, payload, _ = _envelope(bundle, sig)
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UnsafeError("refused: the signed payload is not an in-toto statement", path=sig) from None
    if not isinstance(statement, dict) or statement.get("predicateType") != MODEL_SIGNATURE_PREDICATE:
        kind = statement.get("predicateType") if isinstance(statement, dict) else None
        raise UnsafeError(f"refused: not a model signature (predicate {kind!r})", path=sig)
    return statement


def _signed_files(statement: dict[str, Any], sig: Path) -> tuple[SignedFile, ...]:
    resources = (statement.get("predicate") or {}).get("resources")
    if not isinstance(resources, list):
        raise UnsafeError("refused: the model signature lists no files", path=sig)
    try:
        return tuple(sorted(SignedFile(str(r["name"]), str(r["digest"])) for r in resources))
    except (KeyError, TypeError):
        raise UnsafeError("refused: malformed file list in the model signature", path=sig) from None


def _subject_name(statement: dict[str, Any]) -> str:
    subjects = statement.get("subject")
    return str(subjects[0].get("name", "?")) if isinstance(subjects, list) and subjects and isinstance(subjects[0], dict) else "?"


def _check_envelope(bundle: dict[str, Any], public_key: Any, sig: Path, model: Path) -> None:
    """The bundle's DSSE signature, checked with ``public_key`` (the hint first: a clearer message)."""
    ours = key_id(public_key)
    material = bundle.get("verificationMaterial")
    public = material.get("publicKey") if isinstance(material, dict) else None
    hint = public.get("hint") if isinstance(public, dict) else None
    if isinstance(hint, str) and hint and hint != ours:
        raise UnsafeError(f"refused: signed with another key (key id {hint[:16]}…, this key is {ours[:16]}…)",
                          path=model)
    payload_type, payload, signature = _envelope(bundle, sig)
    if payload_type != IN_TOTO_PAYLOAD_TYPE or not dsse_verify(public_key, payload_type, payload, signature):
        raise UnsafeError(f"refused: the signature {sig.name} does not verify with this key (key id {ours[:16]}…): "
                          "the signature was altered or made with another key", path=model)


# ------------------------------------------------------------------------------------ verifying


def _differences(expected: tuple[SignedFile, ...], actual: dict[str, str], single_file: bool, signed_name: str) -> list[str]:
    """What changed between the signed manifest and the files on disk, one phrase per file."""
    signed = {f.name: f.sha256 for f in expected}
    if single_file and set(actual) == set(signed) == {"."} and actual["."] != signed["."]:
        return [f"its content differs from the signed digest of {signed_name!r} (sha256 {actual['.'][:12]}…, signed "
                f"{signed['.'][:12]}…): a signature for another file, or the file was modified or truncated"]
    if single_file and set(actual) == {"."} and set(signed) != {"."}:
        return [f"the signature is for a directory of {len(signed)} file(s), not a single file"]
    if not single_file and set(signed) == {"."}:
        return ["the signature is for a single file, not a directory"]
    out = []
    removed = {n: d for n, d in signed.items() if n not in actual}
    added = {n: d for n, d in actual.items() if n not in signed}
    for name, digest in sorted(removed.items()):
        twin = next((a for a, d in sorted(added.items()) if d == digest), None)
        if twin is not None:
            out.append(f"{name} renamed to {twin}")
            added.pop(twin)
        else:
            out.append(f"{name} removed (signed, now missing)")
    out += [f"{name} added (not signed)" for name in sorted(added)]
    for name in sorted(set(signed) & set(actual)):
        if signed[name] != actual[name]:
            out.append(f"{name} modified or truncated (sha256 {actual[name][:12]}…, signed {signed[name][:12]}…)")
    return out


def verify(model: str | Path, public_key: str | Path, signature: str | Path | None = None) -> SignatureReport:
    """Verify a model file or directory against its signature with an ECDSA public key (PEM).

    Args:
        model: the file or directory.
        public_key: the public key (``key.pub``).
        signature: the signature (default: ``PATH.sig`` beside the model, else ``DIR/model.sig`` inside it).

    Raises:
        BadInputError: an unreadable or wrong key, a missing model (exit 2).
        UnsafeError: no signature, another key's signature, a signature for another model, or any file
            modified, truncated, added, removed or renamed; the message names them (exit 4).
    """
    ms = _signing()
    path = _model_path(model)
    _check_model(path)
    pub = load_public_key(public_key)
    if signature is not None:
        sig = Path(signature)
        if not sig.is_file():
            raise UnsafeError(f"refused: no signature at {sig}", path=path)
    else:
        candidates = signature_candidates(path)
        sig = next((c for c in candidates if c.is_file()), None)
        if sig is None:
            raise UnsafeError(f"refused: no signature (looked for {', '.join(str(c) for c in candidates)})", path=path)
    bundle = _read_bundle(sig)
    _check_envelope(bundle, pub, sig, path)
    statement = _statement(bundle, sig)
    files = _signed_files(statement, sig)
    serialization = (statement.get("predicate") or {}).get("serialization") or {}
    if (link := _symlink_inside(path)) is not None:
        raise UnsafeError(f"refused: {link.relative_to(path)} is a symbolic link; signatures cover regular files only",
                          path=path)
    config = ms.verifying.Config().use_elliptic_key_verifier(public_key=str(public_key))
    files_method = serialization.get("method") == "files"
    if files_method:
        config.set_hashing_config(_hashing_config(ms, path, sig))
    try:
        config.verify(path, sig)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        problems = []
        if files_method:
            hashing = _hashing_config(ms, path, sig, serialization.get("ignore_paths") or ())
            try:
                actual = {rd.identifier: rd.digest.digest_hex for rd in hashing.hash(path).resource_descriptors()}
            except (ValueError, OSError) as err:
                raise UnsafeError(f"refused: {err}", path=path) from None
            problems = _differences(files, actual, path.is_file(), _subject_name(statement))
        detail = "; ".join(problems) if problems else " ".join(str(exc).split())[:300]
        raise UnsafeError(f"refused: does not match its signature {sig.name}: {detail}", path=path) from None
    return SignatureReport(str(path), str(sig), key_id(pub), files)
