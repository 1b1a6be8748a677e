"""What a command registers: its output as a new version, with the step that made it.

``convert`` / ``adapt`` / ``compress`` / ``distill`` call ``register_report`` with their report
(``--register NAME``, or by default when the source was a registry reference ``NAME@v``). The step
record stored with the version holds:

- ``command`` and ``options`` (what the user asked for), ``tools`` (versions of every framework);
- ``input`` and ``output``: path, format and ``files_sha256`` (the registry's content digest);
- ``route``: the formats the model went through; ``steps``: this run's lineage records;
- ``parity``: the shapes probed, the worst max abs / max rel errors, the tolerances, pass/fail, per
  output (``enforced`` False where the command judged on a task metric instead);
- ``metrics``: the task metric of source and result (and sizes, parameters, sparsity for compress);
- ``verified``: the command's verdict (None where it has none, e.g. distillation's training).

The input becomes the parent version: the version with the same content digest if the registry
has one (any name; the same name first), else it is added under the output's name first
(``input_version``: one find-or-add under the registry's writer lock, so two commands registering
the same new input at once add it once). One lineage writer: the steps are the same
``StepRecord`` s the pipeline wrote into the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelport.artifact import to_jsonable
from modelport.errors import BadInputError

__all__ = ["Registration", "register_report", "step_record", "parity_record", "metrics_record", "files_sha256",
           "find_by_digest", "input_version", "is_registry_ref", "leaf_name", "outputs_of", "source_of"]


@dataclasses.dataclass(frozen=True)
class Registration:
    """What a command added to the registry."""

    registry: str
    versions: tuple[str, ...]  # the outputs, as NAME@N
    parent: str | None  # the input's version
    parent_added: bool  # the input was not in the registry and was added by this command
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def summary(self) -> str:
        made = ", ".join(self.versions)
        if self.parent is None:
            return f"registered {made} in {self.registry}"
        how = "added as" if self.parent_added else "found as"
        return f"registered {made} in {self.registry} (input {how} {self.parent})"


def leaf_name(version) -> str:
    """The file or directory name a version is materialized under."""
    return getattr(version, "filename", "") or version.name.replace("/", "_")


def is_registry_ref(text: str | os.PathLike | None) -> bool:
    """True for ``NAME@VERSION`` / ``NAME@ALIAS`` that is not an existing path (a path always wins)."""
    from modelport.registry.refs import parse_ref

    if text is None:
        return False
    s = str(text)
    if "@" not in s or ":" in s or Path(s).exists():
        return False
    try:
        parse_ref(s)
    except BadInputError:
        return False
    return True


def files_sha256(path: str | os.PathLike) -> str:
    """The registry's content digest of a model file or directory (``Version.files_sha256``):
    sha256 over ``"<sha256>  <relative path>\\n"`` of its files sorted by path ("" for a single file)."""
    p = Path(path)
    if p.is_file():
        entries = [("", p)]
    elif p.is_dir():
        entries = sorted((f.relative_to(p).as_posix(), f) for f in p.rglob("*") if f.is_file())
    else:
        raise BadInputError("no such file or directory", path=p)
    lines = "".join(f"{_sha256_file(f)}  {rel}\n" for rel, f in entries)
    return hashlib.sha256(lines.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def find_by_digest(registry, digest: str, prefer: str | None = None):
    """The newest version whose files_sha256 is ``digest`` (of the name ``prefer`` first), or None
    (an indexed query)."""
    return registry.find_by_digest(digest, prefer=prefer)


def input_version(registry, path: str | os.PathLike, name: str, *, fmt: str | None = None,
                  digest: str | None = None):
    """(version, added): the version holding the model at ``path`` (by content digest, a version
    of ``name`` first), else a new version of ``name`` made from it. Atomic under the registry's
    writer lock (``Registry.find_or_add``)."""
    if digest is None:
        digest = files_sha256(path)
    return registry.find_or_add(path, name, digest=digest, fmt=fmt)


# ----------------------------------------------------------------------------------- step records


def parity_record(parity, *, enforced: bool = True) -> dict[str, Any] | None:
    """A ParityReport as the step's parity: shapes probed, worst errors, tolerances, verdict, per output."""
    if parity is None:
        return None
    runs = list(getattr(parity, "runs", ()) or ())
    outputs = [o for r in runs for o in r.outputs]

    def worst(attr: str) -> float | None:
        vals = [float(getattr(o, attr)) for o in outputs if getattr(o, attr) is not None]
        return max(vals) if vals else None

    return to_jsonable({
        "ok": bool(parity.ok),
        "enforced": enforced,
        "compared": f"{parity.a_format} vs {parity.b_format}",
        "inputs": parity.inputs_source,
        "shapes": [dict(r.input_shapes) for r in runs],
        "max_abs": worst("max_abs"),
        "max_rel": worst("max_rel"),
        "rtol": worst("rtol"),
        "atol": worst("atol"),
        "outputs": [{"run": i, "name": o.name, "shape": o.shape, "dtype": o.dtype, "max_abs": o.max_abs,
                     "max_rel": o.max_rel, "cosine": o.cosine, "top1": o.top1, "rtol": o.rtol, "atol": o.atol,
                     "ok": o.ok, **({"reason": o.reason} if o.reason else {})}
                    for i, r in enumerate(runs) for o in r.outputs],
        "summary": parity.summary(),
    })


def _stats(prefix: str, stats) -> dict[str, Any]:
    out = {}
    for field in ("file_bytes", "params", "sparsity", "macs"):
        value = getattr(stats, field, None)
        if value is not None:
            out[f"{field}.{prefix}"] = value
    return out


def metrics_record(command: str, report) -> dict[str, Any] | None:
    """The task metrics (source vs result) a report measured, flat: metric, source, result, samples, ..."""
    out: dict[str, Any] = {}
    if command == "convert" and getattr(report, "metric", None) is not None:
        m = report.metric
        out = {"metric": m.metric, "source": m.before, "result": m.after, "samples": m.samples}
        if m.max_drop is not None:
            out["max_drop"] = m.max_drop
    elif command == "adapt" and getattr(report, "metric", None):
        m = report.metric
        out = {"metric": m.get("metric"), "source": m.get("before"), "result": m.get("after"),
               "samples": m.get("samples")}
    elif command == "compress":
        if report.metric_name and report.before.metric is not None:
            out = {"metric": report.metric_name, "source": report.before.metric, "result": report.after.metric}
            if report.max_drop is not None:
                out["max_drop"] = report.max_drop
        out.update(_stats("source", report.before))
        out.update(_stats("result", report.after))
    elif command == "distill":
        out = {"metric": report.metric_name, "source": report.teacher_metric, "result": report.after.metric,
               "student_before": report.student_metric_before, "best_epoch": report.best_epoch}
        out.update(_stats("source", report.before))
        out.update(_stats("result", report.after))
    out = {k: v for k, v in out.items() if v is not None}
    return to_jsonable(out) or None


def source_of(command: str, report) -> str:
    return str(report.teacher if command == "distill" else report.src)


def outputs_of(command: str, report) -> list[tuple[str, Any, bool | None, bool]]:
    """(path, parity report, verdict, parity enforced) of each model the command wrote; the first is
    made from the source, a second (distill's torch directory) from the first."""
    if command == "convert":
        return [(report.artifact.path, report.parity, report.ok, True)]
    if command == "adapt":
        return [(report.out, report.parity, report.ok, True)]
    if command == "compress":
        return [(report.out, report.parity, report.ok, bool(report.parity_enforced))]
    if command == "distill":
        outs = [(report.out, None, None, True)]
        if report.torch_out:
            tp = report.torch_parity
            outs.append((report.torch_out, tp, None if tp is None else bool(tp.ok), True))
        return outs
    raise BadInputError(f"cannot register the output of {command!r}")


def _route(command: str, report, steps) -> list[str]:
    if command == "convert" and getattr(report, "route", None):
        return [report.src_format, *[s.dst_format for s in steps]] if steps else [report.src_format, report.dst_format]
    if steps:
        return [steps[0].src_format, *[s.dst_format for s in steps]]
    return []


def _this_run(command: str, report, lineage) -> tuple:
    """The StepRecords this run added (the lineage starts with the source's)."""
    if command == "convert":  # one record per route edge (a scrub record may follow them)
        return tuple([s for s in lineage if s.step != "scrub"][-len(report.route):]) if report.route else ()
    if command == "adapt" and not report.steps:  # already compatible: written unchanged, no step recorded
        return ()
    return tuple(lineage[-1:])  # adapt, compress and distill record one step each


def step_record(command: str, report, *, output: str, options: Mapping[str, Any] | None, parity, verified,
                enforced: bool, lineage=(), source: str | None = None, source_format: str | None = None,
                source_digest: str | None = None, source_ref: str | None = None) -> dict[str, Any]:
    """The step record of one output (see the module docstring)."""
    from modelport.versions import tool_versions

    steps = _this_run(command, report, tuple(lineage)) if lineage else ()
    record: dict[str, Any] = {
        "command": command,
        "options": to_jsonable({k: v for k, v in (options or {}).items() if v is not None}),
        "tools": dict(tool_versions()),
        "input": {k: v for k, v in {"path": source, "format": source_format, "files_sha256": source_digest,
                                    "ref": source_ref}.items() if v is not None},
        "output": {"path": str(output), "format": _detect(str(output)), "files_sha256": files_sha256(output)},
        "route": _route(command, report, steps),
        "steps": to_jsonable([dataclasses.asdict(s) for s in steps]),
        "verified": verified,
        "seconds": getattr(report, "seconds", None),
    }
    p = parity_record(parity, enforced=enforced)
    if p is not None:
        record["parity"] = p
    m = metrics_record(command, report) if output == outputs_of(command, report)[0][0] else None
    if m is not None:
        record["metrics"] = m
    return record


# ------------------------------------------------------------------------------------ registering


def _detect(path: str) -> str | None:
    from modelport.errors import ModelportError
    from modelport.formats import detect

    try:
        return detect(Path(path), None)
    except ModelportError:
        return None


def _student_init(registry, command: str, report, name: str, teacher):
    """For distill: the version of the student's starting point when it is a model file (found by
    digest, else added), the second parent of the student; None otherwise."""
    if command != "distill":
        return None
    student = str(report.student)
    fmt = _detect(student) if Path(student).exists() else None
    if fmt is None or fmt == "torch-module":
        return None
    digest = files_sha256(student)
    if teacher is not None and teacher.files_sha256 == digest:
        return None
    return input_version(registry, student, name, fmt=fmt, digest=digest)[0]


def register_report(registry, command: str, report, name: str | None = None, *, source_version=None,
                    options: Mapping[str, Any] | None = None, alias: str | None = None,
                    tags: Mapping[str, str] | None = None) -> Registration:
    """Add what ``command`` wrote as new versions of ``name`` (default: the source version's name),
    with the step that made each; the input becomes their parent (see the module docstring)."""
    from modelport.pipeline.lineage import read_lineage
    from modelport.registry.refs import check_name

    if name is None:
        if source_version is None:
            raise BadInputError("register: give a name (--register NAME)")
        name = source_version.name
    check_name(name)
    notes: list[str] = []
    src = source_of(command, report)
    parent, parent_added = source_version, False
    src_fmt = source_version.format if source_version is not None else _detect(src)
    src_digest = source_version.files_sha256 if source_version is not None else None
    if parent is None:
        if src_fmt is None or src_fmt == "torch-module" or not Path(src).exists():
            notes.append(f"the input {src} is no model file the registry can store: recorded in the step only")
        else:
            src_digest = files_sha256(src)
            parent, parent_added = input_version(registry, src, name, fmt=src_fmt, digest=src_digest)
    extra = _student_init(registry, command, report, name, parent)  # distill: the student it started from
    made: list[str] = []
    prev, prev_path = parent, None
    for i, (path, parity, verified, enforced) in enumerate(outputs_of(command, report)):
        artifact = getattr(report, "artifact", None)
        lineage = artifact.lineage if (i == 0 and artifact is not None) else read_lineage(path)
        record = step_record(command, report, output=path, options=options, parity=parity, verified=verified,
                             enforced=enforced, lineage=lineage,
                             source=(None if source_version is not None else src) if i == 0 else prev_path,
                             source_format=src_fmt if i == 0 else prev.format,
                             source_digest=src_digest if i == 0 else prev.files_sha256,
                             source_ref=None if prev is None else prev.ref)
        if i > 0:
            record["command"] = f"{command} (torch export)"
        parents = ([prev.ref] if prev is not None else []) + ([extra.ref] if i == 0 and extra is not None else [])
        version = registry.add(path, name, alias=alias if i == 0 else None, tags=dict(tags or {}), step=record,
                               parents=parents, lineage=tuple(lineage) or None)
        made.append(version.ref)
        prev, prev_path = version, path
    return Registration(registry.url, tuple(made), None if parent is None else parent.ref, parent_added, tuple(notes))
