"""Signed provenance of every step: a DSSE-signed in-toto Statement v1 with an SLSA provenance v1 predicate.

    signer = ProvenanceSigner.load("key.pem")     # before the step: a bad key fails before any work
    report = modelport.convert("model.keras", "onnx", "model.onnx")
    signer.attest("convert", report, inputs={"model": "model.keras"}, parameters={...})
    verify("model.onnx", ["key.pub"])              # walks the chain back to the original input

One statement per step::

    _type          https://in-toto.io/Statement/v1
    subject        the step's outputs: a file by its sha256, a directory by its dirHash (Go's
                   dirhash h1 over "sha256  relative/path" lines) with every file's sha256 in
                   its annotations; companions (ONNX external data, OpenVINO .bin) as their own entries
    predicateType  https://slsa.dev/provenance/v1
    buildDefinition.buildType            urn:modelport:step:<command>:v1
    buildDefinition.externalParameters   {"command": ..., "options": {...}} as the user gave them
    buildDefinition.internalParameters   what modelport chose (route, tools, steps applied)
    buildDefinition.resolvedDependencies every input file with its digest and role (model,
                   weights, calibration, eval, ...); "provenance" names the chain it came with
    runDetails.builder                   {"id": urn:modelport:builder, "version": tool versions}
    runDetails.metadata                  invocationId, startedOn, finishedOn
    runDetails.byproducts                [{"name": "verdict", "annotations": parity / task metric}]

The envelope is DSSE (payloadType ``application/vnd.in-toto+json``, the signature an ECDSA
P-256/SHA-256 DER signature over ``PAE(type, payload)``, keyid = sha256 of the public key's PEM,
as model_signing's hint). The file beside the output, ``OUT.intoto.jsonl`` (an in-toto bundle:
one envelope per line), holds the step's envelope first, then every line of its inputs' own
bundles: the whole chain travels with the model and verifies offline. ``verify`` checks every
signature, that the output on disk is the first statement's subject, and that every input that
came with provenance is the subject of a statement in the chain, back to the original inputs.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelport.artifact import to_jsonable
from modelport.errors import BadInputError, UnsafeError
from modelport.security import signing

__all__ = [
    "BUNDLE_SUFFIX",
    "ArtifactRef",
    "ProvenanceRecord",
    "ProvenanceReport",
    "ProvenanceSigner",
    "ProvenanceStep",
    "StoredProvenance",
    "bundle_lines",
    "bundle_path",
    "check_bundle",
    "manifest_descriptors",
    "describe",
    "verdict_summary",
    "verify",
    "verify_ref",
]

BUNDLE_SUFFIX = ".intoto.jsonl"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:modelport:step:{command}:v1"
BUILDER_ID = "urn:modelport:builder"
_MAX_BUNDLE_BYTES = 64 << 20
_MODEL_ROLES = ("model", "teacher", "student")  # inputs that are models: they carry their chain
_IGNORED_IN_DIRS = {signing.DIR_SIGNATURE_NAME, ".git", ".gitattributes", ".github", ".gitignore"}


def bundle_path(output: str | Path) -> Path:
    """Where an output's provenance sits: ``OUT.intoto.jsonl`` beside the file or directory."""
    p = signing._model_path(output)
    return p.with_name(p.name + BUNDLE_SUFFIX)


# ------------------------------------------------------------------------------ descriptors


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dir_files(root: Path) -> dict[str, str]:
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in _IGNORED_IN_DIRS]
            filenames = [f for f in filenames if f not in _IGNORED_IN_DIRS]
        for name in filenames:
            path = here / name
            if path.is_file():
                files[path.relative_to(root).as_posix()] = _sha256(path)
    return dict(sorted(files.items()))


def dirhash(files: Mapping[str, str]) -> str:
    """Go's dirhash Hash1 over {relative path: sha256}: ``h1:`` + base64(sha256 of "hex  name\\n" lines, sorted)."""
    summary = "".join(f"{digest}  {name}\n" for name, digest in sorted(files.items()))
    return "h1:" + base64.b64encode(hashlib.sha256(summary.encode("utf-8")).digest()).decode("ascii")


def _tensors(graph) -> list:
    out = list(graph.initializer)
    out += [s.values for s in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                out.append(attr.t)
            out += list(attr.tensors)
            if attr.HasField("g"):
                out += _tensors(attr.g)
            for g in attr.graphs:
                out += _tensors(g)
    return out


def _companions(path: Path) -> list[Path]:
    """Files a single-file model needs beside it: ONNX external data, OpenVINO weights (inside its directory only)."""
    found: list[Path] = []
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        found.append(path.with_suffix(".bin"))
    elif path.suffix == ".onnx":
        try:
            import onnx

            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001  (not ONNX after all: no companions)
            return []
        base = path.parent.resolve()
        for tensor in _tensors(model.graph):
            if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
                continue
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if not location:
                continue
            target = (path.parent / location).resolve()
            if target.is_relative_to(base) and target.is_file() and target not in found:
                found.append(target)
    return found


def describe(path: str | Path, role: str, *, companions: bool = True) -> list[dict[str, Any]]:
    """in-toto ResourceDescriptors of one model: the file (sha256) or directory (dirHash), then its companions.

    Finding an ONNX file's companions reads the file (its external data list); ``companions=False``
    digests the bytes only.
    """
    p = signing._model_path(path)
    if p.is_dir():
        files = _dir_files(p)
        return [{"name": p.name, "digest": {"dirHash": dirhash(files)}, "annotations": {"role": role, "files": files}}]
    out = [{"name": p.name, "digest": {"sha256": _sha256(p)}, "annotations": {"role": role}}]
    parent = p.parent.resolve()
    for c in _companions(p) if companions else ():
        out.append({"name": c.relative_to(parent).as_posix(), "digest": {"sha256": _sha256(c)},
                    "annotations": {"role": role, "companionOf": p.name}})
    return out


# ------------------------------------------------------------------------------ what a report says


def _parity(p: Any) -> dict[str, Any] | None:
    if p is None:
        return None
    worst = max((o.max_rel for r in getattr(p, "runs", ()) for o in r.outputs), default=None)
    return {"ok": bool(p.ok), "summary": p.summary(), "worst_max_rel": worst}


def _outputs(command: str, report: Any) -> list[str]:
    if command == "convert":
        return [report.artifact.path]
    if command == "distill":
        return [report.out] + ([report.torch_out] if report.torch_out else [])
    return [report.out]


def _verdict(command: str, report: Any) -> dict[str, Any]:
    if command == "convert":
        return {"ok": report.ok, "verified": report.ok is not None, "parity": _parity(report.parity),
                "metric": to_jsonable(report.metric)}
    if command == "adapt":
        return {"ok": report.ok, "parity": _parity(report.parity), "metric": to_jsonable(report.metric),
                "target": report.target, "check": report.check.summary() if report.check is not None else None}
    if command == "compress":
        return {"ok": report.ok, "parity": _parity(report.parity), "parity_enforced": report.parity_enforced,
                "metric": {"metric": report.metric_name, "before": report.before.metric, "after": report.after.metric,
                           "max_drop": report.max_drop} if report.metric_name else None}
    if command == "distill":
        return {"ok": None, "metric": {"metric": report.metric_name, "teacher": report.teacher_metric,
                                       "student_before": report.student_metric_before, "student": report.after.metric},
                "parity": _parity(report.torch_parity)}
    raise BadInputError(f"no provenance for command {command!r}: convert, adapt, compress or distill")


def _internal(command: str, report: Any) -> dict[str, Any]:
    if command == "convert":
        steps = report.artifact.lineage[-len(report.route):] if report.route else ()
        return {"route": list(report.route), "steps": to_jsonable(steps), "warnings": list(report.warnings)}
    if command == "adapt":
        return {"steps": to_jsonable(report.steps), "approximations": list(report.approximations),
                "warnings": list(report.warnings)}
    if command == "compress":
        return {"steps": list(report.steps), "kept_float": list(report.kept_float), "notes": list(report.notes)}
    return {"best_epoch": report.best_epoch, "epochs": len(report.history), "temperature": report.temperature,
            "alpha": report.alpha, "notes": list(report.notes)}


def verdict_summary(verdict: Mapping[str, Any] | None) -> str:
    """One line: what the step's verification found."""
    if not verdict:
        return "-"
    parts = []
    m = verdict.get("metric")
    if isinstance(m, Mapping) and m.get("metric"):
        if "teacher" in m:
            parts.append(f"{m['metric']} teacher {m['teacher']:.4f}, student {m['student']:.4f}")
        elif m.get("before") is not None and m.get("after") is not None:
            budget = f" (max drop {m['max_drop']:g})" if m.get("max_drop") is not None else ""
            parts.append(f"{m['metric']} {m['before']:.4f} -> {m['after']:.4f}{budget}")
    p = verdict.get("parity")
    if isinstance(p, Mapping) and p.get("summary"):
        parts.append(str(p["summary"]))
    if verdict.get("verified") is False:
        parts.append("not verified (--no-verify)")
    ok = verdict.get("ok")
    head = "ok" if ok is True else "FAILED" if ok is False else "measured"
    return f"{head}: {'; '.join(parts)}" if parts else head


# ------------------------------------------------------------------------------------ DSSE


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _envelope(statement: dict[str, Any], private_key: Any) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode("utf-8")
    public = private_key.public_key()
    sig = private_key.sign(signing.pae(signing.IN_TOTO_PAYLOAD_TYPE, payload), ec.ECDSA(signing.ecdsa_hash(public)))
    return {"payloadType": signing.IN_TOTO_PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode("ascii"),
            "signatures": [{"keyid": signing.key_id(public), "sig": base64.b64encode(sig).decode("ascii")}]}


def _read_lines(path: Path) -> list[str]:
    try:
        if path.stat().st_size > _MAX_BUNDLE_BYTES:
            raise UnsafeError("refused: provenance bundle larger than 64 MiB", path=path)
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read the provenance: {exc.strerror or exc}", path=path) from None
    return bundle_lines(data, path)


def bundle_lines(data: bytes, where: str | Path) -> list[str]:
    """The non-empty lines of a provenance bundle's bytes; UnsafeError (exit 4) when too large or not UTF-8."""
    if len(data) > _MAX_BUNDLE_BYTES:
        raise UnsafeError("refused: provenance bundle larger than 64 MiB", path=where)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeError("refused: the provenance is not UTF-8 JSON lines", path=where) from None
    return [line for line in text.splitlines() if line.strip()]


def _parse_line(line: str, index: int, path: Path | str) -> dict[str, Any]:
    try:
        from modelport.security.jsonsafe import loads

        env = loads(line)
    except (ValueError, RecursionError):
        raise UnsafeError(f"refused: line {index + 1} of the provenance is not JSON", path=path) from None
    if not isinstance(env, dict) or not isinstance(env.get("signatures"), list):
        raise UnsafeError(f"refused: line {index + 1} of the provenance is not a DSSE envelope", path=path)
    return env


def _payload(env: dict[str, Any]) -> dict[str, Any] | None:
    """The statement in an envelope, unverified (for naming it in messages); None when unreadable."""
    try:
        statement = json.loads(base64.b64decode(env.get("payload", ""), validate=True))
    except (ValueError, TypeError, RecursionError):
        return None
    return statement if isinstance(statement, dict) else None


def _obj(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (fields of a statement not yet verified may be anything)."""
    return value if isinstance(value, dict) else {}


def _build(statement: Mapping[str, Any]) -> Mapping[str, Any]:
    return _obj(_obj(statement.get("predicate")).get("buildDefinition"))


def _mains(descriptors: Any, role: str | None = None) -> list[dict[str, Any]]:
    if not isinstance(descriptors, list):
        return []
    return [d for d in descriptors if isinstance(d, dict) and not _obj(d.get("annotations")).get("companionOf")
            and (role is None or _obj(d.get("annotations")).get("role") == role)]


def _label(statement: Mapping[str, Any] | None, index: int) -> str:
    if not statement:
        return f"statement {index + 1}"
    command = _obj(_build(statement).get("externalParameters")).get("command", "?")
    inputs = [str(d.get("name")) for d in _mains(_build(statement).get("resolvedDependencies"))
              if _obj(d.get("annotations")).get("role") in _MODEL_ROLES]
    outputs = [str(d.get("name")) for d in _mains(statement.get("subject"))]
    return f"{command} {', '.join(inputs) or '?'} -> {', '.join(outputs) or '?'}"


# ------------------------------------------------------------------------------------ signing


@dataclasses.dataclass(frozen=True)
class ProvenanceRecord:
    """What ``attest`` wrote: the bundle file(s), the statement's subject, the key and the chain length."""

    command: str
    bundles: tuple[str, ...]
    subject: tuple[tuple[str, str], ...]  # (name, "algorithm:digest")
    key_id: str
    statements: int  # in the bundle: this step's plus its inputs' chain
    warnings: tuple[str, ...] = ()


def _digest_text(d: Mapping[str, Any]) -> str:
    digest = d.get("digest") or {}
    return next((f"{k}:{v}" for k, v in sorted(digest.items())), "?") if isinstance(digest, Mapping) else "?"


class ProvenanceSigner:
    """Signs the provenance of convert / adapt / compress / distill steps with an ECDSA private key."""

    def __init__(self, private_key: Any, key_path: str) -> None:
        self.private_key = private_key
        self.key_path = key_path
        self.key_id = signing.key_id(private_key.public_key())
        self.started = _now()
        self._resolved: tuple[list[dict[str, Any]], list[str], list[str]] | None = None

    @classmethod
    def load(cls, key: str | Path) -> ProvenanceSigner:
        """Read the key now (BadInputError, exit 2, for a wrong or unreadable one): before the step runs."""
        return cls(signing.load_private_key(key), str(key))

    def resolve(self, inputs: Mapping[str, str | Sequence[str] | None]) -> None:
        """Digest the step's inputs (and read the chains that came with them) now, before the step runs.

        The statement then records each input as the step received it, even if the step (or a tool
        it runs) touches the file afterwards.

        Args:
            inputs: role -> path(s) of every input file (``model``, ``weights``, ``calibration``, ...);
                None values are skipped. Inputs with the role ``model``, ``teacher`` or ``student``
                carry their chain (``INPUT.intoto.jsonl`` beside them).
        """
        deps: list[dict[str, Any]] = []
        carried: list[str] = []
        warnings: list[str] = []
        for role, given in inputs.items():
            for path in ([given] if isinstance(given, (str, Path)) else list(given or ())):
                p = signing._model_path(_file_part(str(path)))
                if not p.exists():
                    continue
                described = describe(p, role)
                chain = bundle_path(p)
                if role in _MODEL_ROLES and chain.is_file():
                    lines = _read_lines(chain)
                    described[0]["annotations"]["provenance"] = chain.name
                    first = _payload(_parse_line(lines[0], 0, chain)) if lines else None
                    produced = {_digest_text(d) for d in (first or {}).get("subject") or [] if isinstance(d, dict)}
                    if _digest_text(described[0]) not in produced:
                        warnings.append(f"the provenance beside {p.name} ({chain.name}) does not describe it: "
                                        "`provenance verify` will report the chain broken here")
                    carried += [line for line in lines if line not in carried]
                deps += described
        self._resolved = (deps, carried, warnings)

    def attest(self, command: str, report: Any, *, inputs: Mapping[str, str | Sequence[str] | None] | None = None,
               parameters: Mapping[str, Any] | None = None) -> ProvenanceRecord:
        """Write ``OUT.intoto.jsonl`` beside each output of ``report``: this step's statement, then its inputs' chains.

        Args:
            command: ``convert``, ``adapt``, ``compress`` or ``distill``.
            report: what the command returned (its outputs, verdict and steps are read from it).
            inputs: as for ``resolve``; omitted: the inputs ``resolve`` digested before the step.
            parameters: the command's options as the user gave them (externalParameters).
        """
        if inputs is not None:
            self.resolve(inputs)
        if self._resolved is None:
            raise BadInputError("no inputs recorded for the provenance: call resolve(inputs) before the step")
        deps, carried, warnings = self._resolved
        outputs = _outputs(command, report)
        subject = [d for out in outputs for d in describe(out, "output")]
        from modelport.versions import tool_versions

        versions = {k: str(v) for k, v in tool_versions().items()}
        versions.update({str(k): str(v) for k, v in (getattr(report, "versions", None) or {}).items()})
        options = {k: to_jsonable(v) for k, v in (parameters or {}).items()}
        statement = {
            "_type": STATEMENT_TYPE,
            "subject": subject,
            "predicateType": SLSA_PROVENANCE,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE.format(command=command),
                    "externalParameters": {"command": command, "options": options},
                    "internalParameters": _internal(command, report),
                    "resolvedDependencies": deps,
                },
                "runDetails": {
                    "builder": {"id": BUILDER_ID, "version": versions},
                    "metadata": {"invocationId": f"urn:uuid:{uuid.uuid4()}", "startedOn": self.started,
                                 "finishedOn": _now()},
                    "byproducts": [{"name": "verdict", "mediaType": "application/json",
                                    "annotations": to_jsonable(_verdict(command, report))}],
                },
            },
        }
        line = json.dumps(_envelope(statement, self.private_key), separators=(",", ":"))
        text = "\n".join([line, *carried]) + "\n"
        written = []
        for out in outputs:
            dest = bundle_path(out)
            _write_atomic(dest, text)
            written.append(str(dest))
        return ProvenanceRecord(command, tuple(written), tuple((d["name"], _digest_text(d)) for d in subject),
                                self.key_id, 1 + len(carried), tuple(warnings))


def _file_part(spec: str) -> str:
    """``file.py:Name`` -> ``file.py`` (a PyTorch module spec); any other path as given."""
    head, sep, tail = spec.rpartition(":")
    return head if sep and head.endswith(".py") and tail.isidentifier() else spec


def _write_atomic(dest: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- verifying


@dataclasses.dataclass(frozen=True)
class ArtifactRef:
    """A model named in a statement: its name, role and digest (``sha256:…`` or ``dirHash:h1:…``)."""

    name: str
    role: str
    digest: str
    chained: bool = False  # it came with provenance of its own


@dataclasses.dataclass(frozen=True)
class ProvenanceStep:
    """One verified statement: the command, its inputs and outputs, its verdict, who signed it and when."""

    command: str
    inputs: tuple[ArtifactRef, ...]
    outputs: tuple[ArtifactRef, ...]
    verdict: dict[str, Any]
    key_id: str
    started_on: str
    finished_on: str
    modelport: str
    options: dict[str, Any]

    @property
    def summary(self) -> str:
        return verdict_summary(self.verdict)


@dataclasses.dataclass(frozen=True)
class ProvenanceReport:
    """A verified chain: steps from the original input(s) to ``path``; ``ok`` is True (failures raise)."""

    path: str
    bundle: str
    steps: tuple[ProvenanceStep, ...]
    originals: tuple[ArtifactRef, ...]
    ok: bool = True
    notes: tuple[str, ...] = ()  # (a registry walk) links followed or not followed through ancestors' statements

    def __bool__(self) -> bool:
        return self.ok


def _ref(d: Mapping[str, Any]) -> ArtifactRef:
    ann = d.get("annotations") or {}
    return ArtifactRef(str(d.get("name", "?")), str(ann.get("role", "")), _digest_text(d), bool(ann.get("provenance")))


def _open(env: dict[str, Any], keys: list[Any], index: int, total: int, bundle: str, target: Path | str
          ) -> tuple[dict, str]:
    """The statement of a verified envelope and the id of the key that signed it; UnsafeError naming the step.

    ``bundle`` names where the statement came from (a file name, or a registry version's provenance).
    """
    where = f"provenance step {_label(_payload(env), index)!r} (statement {index + 1} of {total} in {bundle})"
    if env.get("payloadType") != signing.IN_TOTO_PAYLOAD_TYPE:
        raise UnsafeError(f"refused: {where}: not an in-toto payload ({env.get('payloadType')!r})", path=target)
    payload = signing.b64decode(env.get("payload"), f"payload of {where}", target)
    by_id = {signing.key_id(k): k for k in keys}
    for sig in env["signatures"]:
        if not isinstance(sig, dict):
            continue
        keyid = sig.get("keyid")
        candidates = [by_id[keyid]] if isinstance(keyid, str) and keyid in by_id else keys
        raw = signing.b64decode(sig.get("sig"), f"signature of {where}", target)
        for key in candidates:
            if signing.dsse_verify(key, env["payloadType"], payload, raw):
                try:
                    statement = json.loads(payload)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    statement = None
                if (not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE
                        or statement.get("predicateType") != SLSA_PROVENANCE or not _mains(statement.get("subject"))):
                    raise UnsafeError(f"refused: {where}: not an in-toto SLSA provenance v1 statement", path=target)
                return statement, signing.key_id(key)
    ids = ", ".join(str(s.get("keyid", ""))[:16] + "…" for s in env["signatures"] if isinstance(s, dict))
    raise UnsafeError(f"refused: {where}: the signature does not verify with the given key(s) (signed by key id "
                      f"{ids or '?'}): the statement was edited or signed by another key", path=target)


def _step(statement: Mapping[str, Any], key: str) -> ProvenanceStep:
    build, run = _build(statement), (statement.get("predicate") or {}).get("runDetails") or {}
    meta = run.get("metadata") or {}
    verdict = next((b.get("annotations") for b in run.get("byproducts") or [] if isinstance(b, dict)
                    and b.get("name") == "verdict"), None) or {}
    ext = build.get("externalParameters") or {}
    return ProvenanceStep(
        str(ext.get("command", "?")), tuple(_ref(d) for d in _mains(build.get("resolvedDependencies"))),
        tuple(_ref(d) for d in _mains(statement.get("subject"))), dict(verdict), key,
        str(meta.get("startedOn", "")), str(meta.get("finishedOn", "")),
        str(((run.get("builder") or {}).get("version") or {}).get("modelport", "")), dict(ext.get("options") or {}))


def _digests(descriptors: Any) -> set[str]:
    return {_digest_text(d) for d in descriptors or [] if isinstance(d, dict)}


def _groups(descriptors: Any) -> list[list[dict[str, Any]]]:
    """Each main descriptor with its companions."""
    items = [d for d in descriptors or [] if isinstance(d, dict)]
    return [[m] + [c for c in items if (c.get("annotations") or {}).get("companionOf") == m.get("name")
                   and (c.get("annotations") or {}).get("role") == (m.get("annotations") or {}).get("role")]
            for m in _mains(items)]


def _check_output(target: Path, statement: Mapping[str, Any], bundle: str) -> None:
    """The model on disk must be (part of) the first statement's subject; names what differs."""
    have = _digests([d for d in statement.get("subject") or [] if isinstance(d, dict)])
    main = describe(target, "output", companions=False)  # the bytes first: nothing parses an unverified file
    if _digest_text(main[0]) in have:
        main = describe(target, "output")
    _check_descriptors(main, statement, bundle, target)


def _check_descriptors(main: list[dict[str, Any]], statement: Mapping[str, Any], bundle: str,
                       target: Path | str) -> None:
    """Every descriptor of the model (file or dirHash, then companions) must be in the statement's subject."""
    subject = [d for d in statement.get("subject") or [] if isinstance(d, dict)]
    have = _digests(subject)
    for d in main:
        if _digest_text(d) in have:
            continue
        twin = next((s for s in subject if s.get("name") == d["name"]), None)
        if twin is None:
            raise UnsafeError(f"refused: {d['name']} is not an output of the signed step in {bundle} "
                              f"(its subject: {', '.join(str(s.get('name')) for s in subject)})", path=target)
        signed_files = (twin.get("annotations") or {}).get("files")
        if "files" in d["annotations"] and isinstance(signed_files, dict):
            now = d["annotations"]["files"]
            expected = tuple(sorted(signing.SignedFile(str(k), str(v)) for k, v in signed_files.items()))
            detail = "; ".join(signing._differences(expected, now, False, d["name"]))
        else:
            detail = f"sha256 {_digest_text(d)[7:19]}…, the provenance says {_digest_text(twin)[7:19]}…"
        raise UnsafeError(f"refused: does not match its signed provenance ({bundle}): {d['name']}: {detail}",
                          path=target)


def _broken(statements: list[dict[str, Any]], i: int, main: Mapping[str, Any], bundle: str) -> str:
    """Why input ``main`` of statement ``i`` links to no statement: the one that names it, if any, had other bytes."""
    name = main.get("name")
    recorded = next((d for s in statements for d in _mains(s.get("subject")) if d.get("name") == name), None)
    was = (f"; the chain it came with records {name} as {_digest_text(recorded)[:19]}… (the intermediate was replaced)"
           if recorded is not None else "")
    return (f"refused: broken provenance chain at step {_label(statements[i], i)!r}: its input {name} "
            f"({_digest_text(main)[:19]}…) is not the output of any signed step in {bundle}{was}")


def verify(path: str | Path, public_keys: Sequence[str | Path], bundle: str | Path | None = None) -> ProvenanceReport:
    """Verify ``path``'s provenance chain with the given public key(s) and return it, original input first.

    Raises:
        BadInputError: no key, an unreadable key, a missing model (exit 2).
        UnsafeError: no provenance; a statement whose signature fails (edited, or another key); the model
            not the first statement's subject; an input that came with provenance but is the output of
            no statement in the chain (an intermediate replaced). The message names the step (exit 4).
    """
    if not public_keys:
        raise BadInputError("give at least one public key (--pub key.pub)")
    keys = [signing.load_public_key(k) for k in public_keys]
    target = signing._model_path(path)
    if not target.exists():
        raise BadInputError("no such file or directory", path=target)
    bpath = Path(bundle) if bundle is not None else bundle_path(target)
    if not bpath.is_file():
        raise UnsafeError(f"refused: no provenance (looked for {bpath})", path=target)
    lines = _read_lines(bpath)
    if not lines:
        raise UnsafeError("refused: the provenance holds no statement", path=bpath)
    return _verify_chain(lines, keys, bpath.name, target, lambda st: _check_output(target, st, bpath.name),
                         path_text=str(target), bundle_text=str(bpath), source=bpath)


def _verify_chain(lines: list[str], keys: list[Any], bundle: str, target: Path | str,
                  check_output: Any, *, path_text: str, bundle_text: str, source: Path | str | None = None,
                  more: Sequence[tuple[str, str]] = ()) -> ProvenanceReport:
    """Verify every statement of ``lines`` (the model's own bundle) and walk the chain from the first.

    ``more`` are (where, line) statements from elsewhere (a registry version's ancestors): each is
    used, and then verified, only when a step's input is the output of none of ``lines``. An input
    that came with provenance must be found (else the chain is broken); one that came without it
    (the step ran on a copy without its bundle) is followed into ``more`` when a statement there
    produced exactly those bytes and verifies with the given keys, and is an original input otherwise.
    """
    envelopes = [_parse_line(line, i, source if source is not None else bundle) for i, line in enumerate(lines)]
    opened = [_open(env, keys, i, len(envelopes), bundle, target) for i, env in enumerate(envelopes)]
    statements = [s for s, _ in opened]
    key_ids = [k for _, k in opened]
    check_output(statements[0])
    extra: list[tuple[str, int, dict[str, Any], dict[str, Any] | None]] = []
    for n, (where, line) in enumerate(more):
        try:
            env = _parse_line(line, n, where)
        except UnsafeError:
            continue  # an unreadable line elsewhere cannot be a link of this chain; a needed link then fails as broken
        extra.append((where, n, env, _payload(env)))

    notes: list[str] = []

    def producer_of(wanted: set[str], i: int, claimed: bool) -> int | None:
        if claimed:
            found = next((j for j, s in enumerate(statements) if j != i and wanted <= _digests(s.get("subject"))), None)
            if found is not None:
                return found
        for k, (where, n, env, payload) in enumerate(extra):
            if payload is not None and wanted <= _digests(payload.get("subject")):
                try:
                    statement, key = _open(env, keys, n, len(more), where, target)  # a forged link fails here
                except UnsafeError as exc:
                    if claimed:
                        raise
                    notes.append(f"not followed: {exc}")
                    return None
                del extra[k]
                statements.append(statement)
                key_ids.append(key)
                if not claimed:
                    notes.append(f"followed through the registry: {_label(statement, len(statements) - 1)} ({where})")
                return len(statements) - 1
        return None

    order: list[int] = []
    originals: list[ArtifactRef] = []
    seen: set[int] = set()

    def walk(i: int) -> None:
        seen.add(i)
        for group in _groups(_build(statements[i]).get("resolvedDependencies")):
            main = group[0]
            ann = main.get("annotations") or {}
            if not ann.get("provenance"):
                if ann.get("role") not in _MODEL_ROLES:
                    continue
                producer = producer_of(_digests(group), i, False) if extra else None
                if producer is None:
                    originals.append(_ref(main))
                elif producer not in seen:
                    walk(producer)
                continue
            producer = producer_of(_digests(group), i, True)
            if producer is None:
                raise UnsafeError(_broken(statements, i, main, bundle), path=target)
            if producer not in seen:
                walk(producer)
        order.append(i)

    walk(0)
    steps = tuple(_step(statements[i], key_ids[i]) for i in order)
    return ProvenanceReport(path_text, bundle_text, steps, tuple(originals), notes=tuple(notes))


# ---------------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class StoredProvenance:
    """What the registry keeps of a version's provenance bundle besides its bytes (read, not verified, at add)."""

    statements: int  # lines: this step's statement, then its inputs' chain
    key_ids: tuple[str, ...]  # the key ids the first statement's signatures name (verify with the public key)
    command: str

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def manifest_descriptors(manifest: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The descriptors ``describe`` gives for a model, made from a registry manifest's file digests.

    A file: its sha256, then its companions (the manifest's other entries: ONNX external data, an
    OpenVINO .bin); a directory: the dirHash over its files (without a top-level model.sig / .git,
    as ``describe`` leaves them out).
    """
    files = {str(f["path"]): str(f["sha256"]) for f in manifest.get("files", [])}
    if manifest.get("kind") == "dir":
        kept = dict(sorted((p, d) for p, d in files.items() if p.split("/", 1)[0] not in _IGNORED_IN_DIRS))
        return [{"name": name, "digest": {"dirHash": dirhash(kept)}, "annotations": {"role": "output", "files": kept}}]
    if "" not in files:
        raise BadInputError(f"{name}: the manifest has no model file")
    out = [{"name": name, "digest": {"sha256": files[""]}, "annotations": {"role": "output"}}]
    for rel, digest in sorted(files.items()):
        if rel:
            out.append({"name": rel, "digest": {"sha256": digest},
                        "annotations": {"role": "output", "companionOf": name}})
    return out


def check_bundle(data: bytes, descriptors: list[dict[str, Any]], where: str | Path) -> StoredProvenance:
    """Check a bundle about to be stored with a registry version: JSON lines of DSSE envelopes whose first
    statement's subject is exactly this version's files (``manifest_descriptors``). Signatures are not
    verified here (the registry has no key): ``verify_ref`` / ``verify`` do that with the user's key.

    Raises:
        UnsafeError (exit 4): not a bundle, or a first statement that describes other bytes (the message
            names the file that differs).
    """
    label = Path(str(where)).name
    lines = bundle_lines(data, where)
    if not lines:
        raise UnsafeError("refused: the provenance holds no statement", path=where)
    envelopes = [_parse_line(line, i, where) for i, line in enumerate(lines)]
    first = _payload(envelopes[0])
    if not first or first.get("_type") != STATEMENT_TYPE or not _mains(first.get("subject")):
        raise UnsafeError("refused: the first line of the provenance is not an in-toto statement", path=where)
    _check_descriptors(descriptors, first, label, where)
    ids = tuple(dict.fromkeys(str(sig["keyid"]) for sig in envelopes[0]["signatures"]
                              if isinstance(sig, dict) and isinstance(sig.get("keyid"), str)))
    command = str(_obj(_build(first).get("externalParameters")).get("command", "?"))
    return StoredProvenance(len(lines), ids, command)


def verify_ref(registry: Any, ref: str, public_keys: Sequence[str | Path]) -> ProvenanceReport:
    """Verify the provenance stored with registry version ``ref`` and walk its chain through the registry.

    The version's own bundle is verified as ``verify`` verifies a file's (every statement, signed by
    one of ``public_keys``), its first statement against the version's file digests (from the
    manifest: nothing is materialized). A step whose input's producer is not in that bundle is looked
    up in the statements stored with the version's ancestors (its parents, theirs, ...).

    Raises:
        BadInputError: no key, an unreadable key, an unknown reference (exit 2).
        UnsafeError: the version has no provenance, or any check of ``verify`` fails (exit 4).
    """
    if not public_keys:
        raise BadInputError("give at least one public key (--pub key.pub)")
    keys = [signing.load_public_key(k) for k in public_keys]
    version = registry.resolve(ref)
    where = f"the provenance of {version.ref} in registry {registry.url}"
    data = registry.provenance_bytes(version)
    if data is None:
        raise UnsafeError(f"refused: no provenance is stored with {version.ref} in registry {registry.url} "
                          "(add the model with its OUT.intoto.jsonl beside it, or register a step run with --sign)",
                          path=version.ref)
    lines = bundle_lines(data, version.ref)
    if not lines:
        raise UnsafeError("refused: the provenance holds no statement", path=version.ref)
    more: list[tuple[str, str]] = []
    seen, queue = {version.ref}, list(version.parents)
    while queue:
        parent = registry.resolve(queue.pop(0))
        if parent.ref in seen:
            continue
        seen.add(parent.ref)
        queue.extend(parent.parents)
        stored = registry.provenance_bytes(parent)
        if stored is not None:
            with contextlib.suppress(UnsafeError):
                more += [(f"the provenance of {parent.ref}", line) for line in bundle_lines(stored, parent.ref)]
    descriptors = manifest_descriptors(registry.manifest(version), version.filename or version.name)
    return _verify_chain(lines, keys, where, version.ref,
                         lambda st: _check_descriptors(descriptors, st, where, version.ref),
                         path_text=version.ref, bundle_text=where, more=more)
