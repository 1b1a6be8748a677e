"""`modelport registry ...`: add, list, show, get, alias set/history, gc, fsck over a model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, emit_json
from modelport.cli.sign_cmd import RequireSignatureOpt

registry_app = typer.Typer(
    name="registry",
    help="Versions of models with lineage, aliases with history and deduplicated tensors "
         "(default store: $MODELPORT_REGISTRY or ~/.modelport/registry).",
    no_args_is_help=True,
)
alias_app = typer.Typer(name="alias", help="Move an alias, or show its history.", no_args_is_help=True)
registry_app.add_typer(alias_app, name="alias")

RegistryOpt = Annotated[Optional[str], typer.Option(
    "--registry", help="A directory, sqlite:///path/registry.db or postgresql+psycopg://...?blobs=DIR "
                       "(default: $MODELPORT_REGISTRY, else ~/.modelport/registry).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def emit_report(report) -> None:
    """``emit_json`` for the registry's commands (a dict, or a report with ``to_dict``). It adds a
    top-level ``"versions"`` key (the tool versions) that would overwrite a report's own, so no
    registry report has one: a list of versions is ``"entries"`` (``registry list``) or
    ``"matches"`` (``registry search``)."""
    doc = report.to_dict() if hasattr(report, "to_dict") else report
    if isinstance(doc, dict) and "versions" in doc:
        raise AssertionError(f"a registry report has a top-level 'versions' key, which emit_json overwrites: {sorted(doc)}")
    emit_json(doc)


def _open(url: str | None, *, create: bool = False):
    from modelport.registry.store import Registry

    return Registry.open(url, create=create)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def _version_table(title: str, versions) -> Table:
    table = Table(title=title)
    for col in ("version", "format", "size", "stored", "created (UTC)", "by", "aliases", "tags"):
        table.add_column(col)
    for v in versions:
        table.add_row(v.ref, v.format, _bytes(v.size), _bytes(v.stored_bytes), v.created_at[:19].replace("T", " "),
                      v.created_by, ", ".join(v.aliases), ", ".join(f"{k}={val}" for k, val in v.tags.items()))
    return table


def _show_version(v) -> None:
    import json

    table = Table(title=v.ref, show_header=False)
    for label, value in (("format", v.format), ("file", v.filename), ("size", f"{v.size:,} bytes"),
                         ("stored", f"{v.stored_bytes:,} new bytes"), ("created", f"{v.created_at} by {v.created_by}"),
                         ("files sha256", v.files_sha256), ("manifest", v.manifest_blob)):
        table.add_row(label, value)
    if v.aliases:
        table.add_row("aliases", ", ".join(v.aliases))
    for k, val in v.tags.items():
        table.add_row("tag", f"{k}={val}")
    for p in v.parents:
        table.add_row("parent", p)
    table.add_row("provenance", _provenance_text(v))
    if v.step:
        table.add_row("step", json.dumps(v.step, sort_keys=True)[:400])
    for s in v.lineage:
        verified = {True: "verified", False: "FAILED", None: "unverified"}[s.verified]
        table.add_row("lineage", f"{s.step}: {s.src_format} -> {s.dst_format} ({s.tool}, {verified})")
    console.print(table)


def _provenance_text(v) -> str:
    """signed (by which key id, as the bundle names it) or unsigned."""
    p = v.provenance
    if not p:
        return "unsigned (no provenance stored with it)"
    ids = ", ".join(k[:16] + "…" for k in p.get("key_ids") or ()) or "no key id"
    chain = f", with {p['statements'] - 1} earlier step(s)" if p.get("statements", 1) > 1 else ""
    return (f"signed: {p.get('command', '?')} step by key id {ids}{chain} "
            f"(check it: modelport provenance verify {v.ref} --pub KEY.pub)")


def _event_row(table: Table, e) -> None:
    table.add_row(str(e.id), e.at.replace("T", " "), e.who, "-" if e.old is None else str(e.old), str(e.new), e.reason)


def _events_table(title: str, events) -> Table:
    table = Table(title=title)
    for col in ("#", "when (UTC)", "who", "old", "new", "reason"):
        table.add_column(col)
    for e in events:
        _event_row(table, e)
    return table


@registry_app.command("add")
def add(
    path: Annotated[str, typer.Argument(help="Model file or directory (any format modelport detects).")],
    name: Annotated[str, typer.Option("--name", "-n", help="The model's name; versions are numbered per name.")],
    alias: Annotated[Optional[str], typer.Option("--alias", help="Point this alias at the new version.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="key=value (repeatable).")] = None,
    parent: Annotated[Optional[list[str]], typer.Option("--parent", help="A version it was made from, NAME@V (repeatable).")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why the alias moves (kept in its history).")] = "",
    fmt: Annotated[Optional[str], typer.Option("--format", help="Format, when detection should be skipped.")] = None,
    provenance: Annotated[Optional[str], typer.Option("--provenance", help="Its signed provenance (default: PATH.intoto.jsonl beside it, if there is one); stored with the version.")] = None,
    registry: RegistryOpt = None,
    require_signature: RequireSignatureOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a model as the next version of NAME (tensors already stored are not stored again)."""
    from modelport.cli.sign_cmd import require_signed, user_paths
    from modelport.registry.refs import check_alias, check_name, parse_ref, parse_tag
    from modelport.registry.store import storable_format

    # everything is checked before a new registry is created for it
    tags = dict(parse_tag(t) for t in tag or ())
    check_name(name)
    if alias is not None:
        check_alias(alias)
    for p in parent or ():
        parse_ref(p)
    (path_in,) = require_signed(require_signature, path)  # before anything parses the model (format detection included)
    if provenance is None and path_in != path:  # the verified copy has no PATH.intoto.jsonl beside it: the user's
        from modelport.security.provenance import bundle_path

        provenance = str(bundle_path(path)) if bundle_path(path).is_file() else None
    if provenance is not None and not Path(provenance).is_file():
        from modelport.errors import BadInputError

        raise BadInputError("no such provenance file", path=provenance)
    fmt = storable_format(path_in, fmt)
    with _open(registry, create=True) as reg:
        version = reg.add(path_in, name, alias=alias, tags=tags, parents=parent or (), fmt=fmt, reason=reason,
                          provenance=provenance if provenance is not None else True)
    version = user_paths(version)
    if as_json:
        emit_report(version.to_dict())
        return
    signed = ", with its signed provenance" if version.provenance else ""
    console.print(f"added {version.ref} ({version.format}, {_bytes(version.size)}; "
                  f"{_bytes(version.stored_bytes)} new in the store{signed})"
                  + (f", {alias} -> {version.number}" if alias else ""), markup=False, soft_wrap=True)


@registry_app.command("list")
def list_versions(
    name: Annotated[Optional[str], typer.Argument(help="Only this model's versions.")] = None,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the versions in the registry (of NAME).

    With --json: {"registry": URL, "entries": the versions, each as `show --json` prints it}; the top-level "versions" key holds the tool versions, as in every command's JSON.
    """
    with _open(registry) as reg:
        versions = reg.versions(name)
        url = reg.url
    if as_json:
        emit_report({"registry": url, "entries": [v.to_dict() for v in versions]})
        return
    console.print(_version_table(f"{url}: {len(versions)} version(s)", versions))


@registry_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION, NAME@ALIAS or NAME@latest.")],
    at: Annotated[Optional[str], typer.Option("--at", help="What REF named at this time (ISO 8601; no zone = UTC).")] = None,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one version: format, sizes, digests, aliases, tags, parents, step and lineage."""
    with _open(registry) as reg:
        version = reg.resolve(ref, at=at)
    if as_json:
        emit_report(version.to_dict())
        return
    _show_version(version)


@registry_app.command("get")
def get(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION, NAME@ALIAS or NAME@latest.")],
    out: Annotated[str, typer.Option("-o", "--out", help="Where to write it (a new path, or a directory to write into).")],
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a version's files, byte-identical to what was added."""
    from modelport.security.provenance import bundle_path

    with _open(registry) as reg:
        version = reg.resolve(ref)
        path = reg.get(version, out)
    bundle = str(bundle_path(path)) if version.provenance else None
    if as_json:
        emit_report({"ref": version.ref, "path": str(path), "files_sha256": version.files_sha256, "size": version.size,
                     "provenance": bundle})
        return
    console.print(f"{version.ref} -> {path}" + (f" (signed provenance: {bundle})" if bundle else ""),
                  markup=False, soft_wrap=True)


@alias_app.command("set")
def alias_set(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. prod.")],
    version: Annotated[int, typer.Argument(help="Version number it should point at.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the alias's history).")] = "",
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point NAME@ALIAS at VERSION; the move is appended to the alias's history."""
    with _open(registry) as reg:
        event = reg.set_alias(name, alias, version, reason=reason)
    if as_json:
        emit_report(event.to_dict())
        return
    old = "(new)" if event.old is None else str(event.old)
    console.print(f"{name}@{alias}: {old} -> {event.new}", markup=False, soft_wrap=True)


@alias_app.command("history")
def alias_history(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias.")],
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every move of NAME@ALIAS: who, when, old -> new, why (oldest first)."""
    with _open(registry) as reg:
        events = reg.alias_history(name, alias)
    if as_json:
        emit_report({"name": name, "alias": alias, "events": [e.to_dict() for e in events]})
        return
    console.print(_events_table(f"{name}@{alias}", events))


@registry_app.command("gc")
def gc(
    temp_grace: Annotated[float, typer.Option("--temp-grace", help="Remove temp files of dead writers older than this (seconds).")] = 3600.0,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete the blobs no version references (left by interrupted writes)."""
    with _open(registry) as reg:
        report = reg.gc(temp_grace_s=temp_grace)
    if as_json:
        emit_report(report.to_dict())
        return
    console.print(f"gc {report.registry}: removed {len(report.removed)} blob(s) ({_bytes(report.bytes_freed)}), "
                  f"{report.temp_files_removed} temp file(s); {report.kept} blob(s) in use", markup=False, soft_wrap=True)


@registry_app.command("fsck")
def fsck(
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash every blob and check every row; exit 1 naming what is broken."""
    from modelport.errors import CheckFailedError

    with _open(registry) as reg:
        report = reg.fsck()
    if as_json:
        emit_report(report.to_dict())
    else:
        if report.problems:
            table = Table(title=f"fsck {report.registry}: {len(report.problems)} problem(s)")
            for col in ("problem", "what", "detail"):
                table.add_column(col)
            for p in report.problems:
                table.add_row(p.kind, p.what, p.detail)
            console.print(table)
        console.print(f"fsck {report.registry}: {'ok' if report.ok else 'BROKEN'}: {report.versions_checked} version(s), {report.blobs_checked} blob(s), "
                      f"{_bytes(report.bytes_hashed)} re-hashed; "
                      f"{len(report.unreferenced)} unreferenced blob(s) (gc removes them), "
                      f"{report.temp_files} temp file(s)", markup=False, soft_wrap=True)
    if not report.ok:
        shown = "; ".join(str(p) for p in report.problems[:3])
        more = f"; and {len(report.problems) - 3} more" if len(report.problems) > 3 else ""
        raise CheckFailedError(f"fsck found {len(report.problems)} problem(s) in {report.registry}: {shown}{more}")


def register(app: typer.Typer) -> None:
    from modelport.cli.registry_lineage_cmd import register as add_lineage_commands  # lineage, search, diff, export, push
    add_lineage_commands(registry_app)
    app.add_typer(registry_app, name="registry")
