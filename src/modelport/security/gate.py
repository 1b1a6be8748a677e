"""Verify before load: ``--require-signature key.pub`` (or ``MODELPORT_REQUIRE_SIGNATURE``).

Every model a command is about to open is checked against its signature before any framework
reads a byte of it: an unsigned, tampered or foreign-signed model is refused (UnsafeError, exit 4),
and nothing has parsed it. Where the signature of a model may sit, in the order looked at:

    file F        F.sig (F signed alone) · F's directory/model.sig · F's directory.sig
                  (the directory signed as a whole, which must list F)
    directory D   D.sig · D/model.sig

The first one found decides; none found is a refusal that says where it looked. A model file that
keeps parts of itself beside it (ONNX external data, OpenVINO's .bin) is accepted only when the
signature covers those files too: sign the directory that holds them (``modelport sign DIR``).
The ONNX file is read for its external data list only after its own bytes verified (with a
snapshot: from the verified copy, so nothing ever parses the user's file).

What the framework parses is what was verified: ``verified_snapshot`` checks the signature, then
copies every file the signature covers into a private temporary directory (mode 0700), hashing
each while copying it, and refuses (exit 4) any file whose copied bytes differ from the digest in
the signed manifest. The command then opens the copy, so a file replaced or rewritten after the
check (by someone who can write beside the model) never reaches a parser. The copy costs the disk
space of what the signature covers (the file, or the whole signed directory) for the length of
the command; it is read in 1 MiB pieces, never whole into memory. ``require_signature`` alone
(no snapshot) verifies the files as they are at that moment.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from modelport.errors import BadInputError, ModelportError, UnsafeError
from modelport.security import signing

__all__ = ["ENV_VAR", "SNAPSHOT_PREFIX", "Snapshot", "require_signature", "signature_locations", "verified_snapshot"]

SNAPSHOT_PREFIX = "modelport-verified-"
_CHUNK = 1 << 20

ENV_VAR = "MODELPORT_REQUIRE_SIGNATURE"


def signature_locations(model: str | Path) -> tuple[tuple[Path, Path], ...]:
    """(signature, what it signs) for every place a model's signature may sit, in the order looked at."""
    p = signing._model_path(model)
    if p.is_dir():
        return tuple((sig, p) for sig in signing.signature_candidates(p))
    parent = p.parent if str(p.parent) not in ("", ".") else Path(".")
    parent_name = parent.resolve().name
    out = [(signing.default_signature(p), p), (parent / signing.DIR_SIGNATURE_NAME, parent)]
    if parent_name:
        out.append((parent.resolve().parent / f"{parent_name}{signing.SIGNATURE_SUFFIX}", parent))
    return tuple(out)


def _model_file(spec: str) -> Path:
    """The file or directory a model argument names: ``file.py:Name`` (a PyTorch module) -> ``file.py``."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        return Path(head)
    return signing._model_path(spec)


def _parts_beside(model: Path) -> list[Path]:
    """What a verified model file reads beside itself: ONNX external data, OpenVINO's .bin."""
    if model.suffix == ".xml":
        return [model.with_suffix(".bin")] if model.with_suffix(".bin").exists() else []
    if model.suffix != ".onnx":
        return []
    import onnx

    from modelport.security.provenance import _tensors

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001  (not ONNX after all: the loader reports that)
        return []
    found: list[Path] = []
    for tensor in _tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location and (model.parent / location) not in found:
                found.append(model.parent / location)
    return found


def _check_one(model: Path, public_key: str | Path, *, parts: bool = True) -> tuple[signing.SignatureReport, Path]:
    """The model's signature verified: (its report, the file or directory it signs); ``parts``: check the files beside too."""
    locations = signature_locations(model)
    chosen = next(((sig, root) for sig, root in locations if sig.is_file()), None)
    if chosen is None:
        looked = ", ".join(str(sig) for sig, _ in locations)
        raise UnsafeError(f"refused: a signature is required (--require-signature) and there is none "
                          f"(looked for {looked})", path=model)
    sig, root = chosen
    report = signing.verify(root, public_key, sig)
    if root != model:
        rel = model.resolve().relative_to(root.resolve()).as_posix()
        if not report.covers(rel):
            raise UnsafeError(f"refused: {sig} signs {root} but not this file", path=model)
    if parts:
        _check_parts(model, model, root, report)
    return report, root


def _check_parts(model: Path, shown: Path, root: Path, report: signing.SignatureReport) -> None:
    """Refuse a model file (``shown`` to the user) that reads files beside it its signature does not cover."""
    sig = Path(report.signature)
    parts = _parts_beside(model) if model.is_file() else []
    if model.suffix == ".xml" and not parts and shown.with_suffix(".bin").exists():
        parts = [model.with_suffix(".bin")]  # beside the user's file, not in the copy: the signature left it out
    for part in parts:
        if root == model:
            covered = False
        else:
            try:
                covered = report.covers(part.resolve().relative_to(root.resolve()).as_posix())
            except ValueError:
                covered = False
        if not covered:
            raise UnsafeError(f"refused: {part.name}, which this model reads beside it, is not covered by its signature "
                              f"{sig.name} (sign the directory that holds both: modelport sign {shown.parent})", path=shown)


def require_signature(models: Iterable[str | Path | None], public_key: str | Path | None = None
                      ) -> tuple[signing.SignatureReport, ...]:
    """Verify the signature of every model before anything opens it; () when no key is required.

    Args:
        models: model arguments as given (paths, ``file.py:Name``); None entries are skipped.
        public_key: the trusted public key; None: ``$MODELPORT_REQUIRE_SIGNATURE``; neither: no check.

    Raises:
        UnsafeError: a model without a signature (the message lists where it looked), tampered,
            signed by another key, or reading files beside it that the signature does not cover.
        BadInputError: an unreadable key or a model that does not exist.
    """
    key = public_key or os.environ.get(ENV_VAR) or None
    if key is None:
        return ()
    signing.load_public_key(key)  # a bad key is exit 2 before any model is looked at
    reports = []
    for given in models:
        if given is None or str(given) == "":
            continue
        model = _model_file(str(given))
        if not model.exists():
            raise BadInputError("no such file or directory", path=model)
        reports.append(_check_one(model, key)[0])
    return tuple(reports)


# ------------------------------------------------------------------ verified snapshots (check = load)


def _relative_name(name: str, sig: str, model: Path) -> PurePosixPath:
    """A signed file's name as a safe relative path (a signed ``..`` or absolute name is refused)."""
    rel = PurePosixPath(name)
    if name in ("", ".") or rel.is_absolute() or ".." in rel.parts or "\0" in name:
        raise UnsafeError(f"refused: the signature {sig} lists a file named {name!r}, outside the model", path=model)
    return rel


def _copy_verified(src: Path, dst: Path, sha256: str, what: str, shown: Path) -> int:
    """Copy ``src`` to the new file ``dst`` in 1 MiB pieces, hashing them; UnsafeError unless the sha256 is the signed one."""
    if len(sha256) != 64:
        raise UnsafeError(f"refused: {what} is signed with a digest other than sha256, which --require-signature "
                          "needs (re-sign it with modelport sign)", path=shown)
    try:
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UnsafeError(f"refused: {what} disappeared after its signature was verified", path=shown) from None
    except OSError as exc:
        raise UnsafeError(f"refused: {what} cannot be opened as a regular file after its signature was verified "
                          f"({exc.strerror or exc})", path=shown) from None
    digest, size = hashlib.sha256(), 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeError(f"refused: {what} is no longer a regular file", path=shown)
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            while chunk := os.read(fd, _CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
                size += len(chunk)
        finally:
            os.close(out)
    except OSError as exc:
        raise BadInputError(f"cannot copy {what} into the verified snapshot ({exc.strerror or exc}; "
                            f"it needs as much free space in {tempfile.gettempdir()} as the signed files)",
                            path=shown) from None
    finally:
        os.close(fd)
    got = digest.hexdigest()
    if got != sha256.lower():
        raise UnsafeError(f"refused: {what} changed after its signature was verified (sha256 {got[:12]}…, signed "
                          f"{sha256[:12]}…); nothing was loaded", path=shown)
    return size


class Snapshot:
    """The verified copies of a command's models: a private directory (0700) and what each argument becomes.

    ``args`` are the model arguments to hand to the command (each pointing into the snapshot, or as
    given when no signature is required); ``restore`` and ``user_text`` turn snapshot paths in reports
    and messages back into the user's paths. A context manager: leaving it removes the copies, and a
    ModelportError raised inside it names the user's paths.
    """

    def __init__(self, given: list[Any]) -> None:
        self.root: Path | None = None
        self.args: list[Any] = list(given)
        self.bytes_copied = 0
        self.files_copied = 0
        self._paths: list[tuple[str, str]] = []  # (snapshot path, user path), longest first

    def _dir(self) -> Path:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix=SNAPSHOT_PREFIX))  # mode 0700
        return self.root

    def _add(self, snap: Path, user: Path) -> None:
        for s in {str(snap), str(snap.resolve())}:
            self._paths.append((s, str(user)))
        self._paths.sort(key=lambda pair: -len(pair[0]))

    def user_text(self, text: str) -> str:
        for snap, user in self._paths:
            if snap in text:
                text = text.replace(snap, user)
        return text

    def restore(self, obj: Any, _depth: int = 0) -> Any:
        """``obj`` (a report: dataclasses, tuples, lists, dicts, strings, paths) with snapshot paths replaced by the user's."""
        if not self._paths or _depth > 40:
            return obj
        if isinstance(obj, str):
            return self.user_text(obj)
        if isinstance(obj, Path):
            return type(obj)(self.user_text(str(obj)))
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            new = copy.copy(obj)
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name, None)
                restored = self.restore(value, _depth + 1)
                if restored is not value:
                    object.__setattr__(new, f.name, restored)
            return new
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*(self.restore(v, _depth + 1) for v in obj))
        if isinstance(obj, (tuple, list)):
            return type(obj)(self.restore(v, _depth + 1) for v in obj)
        if isinstance(obj, dict):
            return type(obj)((self.restore(k, _depth + 1), self.restore(v, _depth + 1)) for k, v in obj.items())
        return obj

    def close(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, ModelportError) and self._paths:
            if exc.path is not None:
                exc.path = self.user_text(exc.path)
            if exc.args and isinstance(exc.args[0], str):
                exc.args = (self.user_text(exc.args[0]), *exc.args[1:])
        self.close()

    def _copy_root(self, root: Path, report: signing.SignatureReport, sig: str) -> Path:
        """Copy every file the signature covers: the file itself, or each signed file of the directory."""
        dest = self._dir() / str(len(list(self._dir().iterdir())))
        dest.mkdir(mode=0o700)
        name = root.resolve().name or "model"
        if root.is_file():
            signed = next((f for f in report.files if f.name == "."), None)
            if signed is None:
                raise UnsafeError(f"refused: the signature {sig} is for a directory, not this file", path=root)
            self.bytes_copied += _copy_verified(root, dest / name, signed.sha256, root.name, root)
            self.files_copied += 1
        else:
            for f in report.files:
                rel = _relative_name(f.name, sig, root)
                target = dest.joinpath(name, *rel.parts)
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.bytes_copied += _copy_verified(root.joinpath(*rel.parts), target, f.sha256, f.name, root)
                self.files_copied += 1
        self._add(dest / name, root)
        return dest / name


def _replace_model(given: str, model: Path, snap_model: Path) -> str:
    head, sep, tail = given.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier() and Path(head) == model:
        return f"{snap_model}:{tail}"
    return str(snap_model)


def verified_snapshot(models: Iterable[Any], public_key: str | Path | None = None) -> Snapshot:
    """Verify every model's signature and copy what it covers into a private snapshot the command then opens.

    Args:
        models: model arguments as given (paths, ``file.py:Name``, or lists of them); None entries stay None.
        public_key: the trusted public key; None: ``$MODELPORT_REQUIRE_SIGNATURE``; neither: no check, no copy.

    Returns:
        A Snapshot whose ``args`` mirror ``models`` (lists stay lists), pointing at the verified copies.
        Use it as a context manager so the copies are removed.

    Raises:
        UnsafeError: as ``require_signature``, and for a file whose bytes changed between the check and the copy.
        BadInputError: an unreadable key, a missing model, no room for the copy.
    """
    given = list(models)
    snapshot = Snapshot(given)
    key = public_key or os.environ.get(ENV_VAR) or None
    if key is None:
        return snapshot
    signing.load_public_key(key)
    copied: dict[str, Path] = {}  # signed root (resolved) -> its copy

    def one(arg: Any) -> Any:
        if arg is None or str(arg) == "":
            return arg
        model = _model_file(str(arg))
        if not model.exists():
            raise BadInputError("no such file or directory", path=model)
        report, root = _check_one(model, key, parts=False)  # hashes only: nothing parses the user's file
        rkey = str(root.resolve())
        if rkey not in copied:
            copied[rkey] = snapshot._copy_root(root, report, Path(report.signature).name)
        base = copied[rkey]
        snap_model = base if model.resolve() == root.resolve() else base.joinpath(
            *model.resolve().relative_to(root.resolve()).parts)
        if str(model) != str(root):
            snapshot._add(snap_model, model)
        _check_parts(snap_model, model, base if root.is_dir() else snap_model, report)  # read from the verified copy
        return _replace_model(str(arg), model, snap_model)

    try:
        snapshot.args = [[one(a) for a in arg] if isinstance(arg, list) else one(arg) for arg in given]
    except BaseException:
        snapshot.close()
        raise
    return snapshot
