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
The ONNX file is read for its external data list only after its own bytes verified.

What is verified is the file at the moment of the check; a file replaced between the check and
the load (by someone who can write there) is not caught.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from modelport.errors import BadInputError, UnsafeError
from modelport.security import signing

__all__ = ["ENV_VAR", "require_signature", "signature_locations"]

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


def _check_one(model: Path, public_key: str | Path) -> signing.SignatureReport:
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
    for part in _parts_beside(model) if model.is_file() else []:
        if root == model:
            covered = False
        else:
            try:
                covered = report.covers(part.resolve().relative_to(root.resolve()).as_posix())
            except ValueError:
                covered = False
        if not covered:
            raise UnsafeError(f"refused: {part.name}, which this model reads beside it, is not covered by its signature "
                              f"{sig.name} (sign the directory that holds both: modelport sign {model.parent})", path=model)
    return report


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
        reports.append(_check_one(model, key))
    return tuple(reports)
