"""`modelport registry lineage|search|diff|export|push`, and `--register` / `NAME@v` sources for the commands that make models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, err_console
from modelport.cli.registry_cmd import emit_report

RegistryOpt = Annotated[Optional[str], typer.Option(
    "--registry", help="A directory, sqlite:///path/registry.db or postgresql+psycopg://...?blobs=DIR "
                       "(default: $MODELPORT_REGISTRY, else ~/.modelport/registry).")]
RegisterOpt = Annotated[Optional[str], typer.Option(
    "--register", help="Add the output to the registry as a version of NAME, with the step that made it "
                       "(the input too, as its parent, if the registry lacks it). Default when the source is NAME@V.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _open(url: str | None, *, create: bool = False):
    from modelport.registry.store import Registry

    return Registry.open(url, create=create)


# ------------------------------------------------------------------ used by convert / adapt / compress / distill


def registry_source(ctx: typer.Context, src: str | None, registry: str | None, register: str | None = None, out: str | None = None,
                    default: Callable[[str], Any] | None = None) -> tuple[str | None, Any, str | None]:
    """(path to run the command on, the source's Version or None, output path).

    A source ``NAME@V`` / ``NAME@ALIAS`` (not an existing path) is materialized into a temp dir that
    lives until the command ends; with no ``-o`` the output goes to the current directory under the
    name the command would have picked (``default(path)``'s file name). With ``--register`` the
    registry is opened first, so a bad URL or name fails before any work is done.
    """
    import tempfile

    from modelport.registry.record import is_registry_ref
    from modelport.registry.refs import check_name

    if register is not None:
        check_name(register)
    if not is_registry_ref(src):
        if register is not None:
            _open(registry, create=True).close()
        return src, None, out
    tmp = ctx.with_resource(tempfile.TemporaryDirectory(prefix="modelport-ref-"))
    with _open(registry) as reg:
        version = reg.resolve(src)
        path = reg.get(version, Path(tmp))
    if out is None and default is not None:
        out = str(Path.cwd() / Path(str(default(str(path)))).name)
    return str(path), version, out


def record_output(ctx: typer.Context, command: str, report, origin, register: str | None, registry: str | None, as_json: bool) -> None:
    """Register what the command wrote when ``--register`` was given or the source was a registry version."""
    from modelport.registry.record import register_report

    if register is None and origin is None:
        return
    options = {k: v for k, v in ctx.params.items() if k not in ("register", "registry", "as_json") and v not in (None, False, [], ())}
    with _open(registry, create=True) as reg:
        registration = register_report(reg, command, report, register, source_version=origin, options=options)
    lines = [registration.summary(), *(f"note: {n}" for n in registration.notes)]
    if as_json:  # stdout holds the report's JSON only
        for line in lines:
            err_console.print(line, markup=False, soft_wrap=True)
        return

    def say() -> None:  # after the command's own output
        for line in lines:
            console.print(line, markup=False, soft_wrap=True)

    ctx.call_on_close(say)


# --------------------------------------------------------------------------------------------- rendering


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _diff_tables(d) -> list[Table]:
    tables = []
    head = Table(title=f"diff {d.a} ({d.a_format}) -> {d.b} ({d.b_format})", show_header=False)
    head.add_row("files", "identical" if d.identical else "differ")
    c = d.counts
    head.add_row("tensors", f"{c['same']} same, {c['changed']} changed, {c['layout']} same values in another "
                            f"layout, {c['added']} added, {c['removed']} removed")
    for note in d.notes:
        head.add_row("note", note)
    tables.append(head)
    if d.signature:
        t = Table(title="signature")
        for col in ("io", "name", "change", "A", "B"):
            t.add_column(col)
        for s in d.signature:
            t.add_row(s.io, s.name, s.change, s.a or "-", s.b or "-")
        tables.append(t)
    if any(a != b for _, a, b in d.ops):
        t = Table(title="op histogram (changed ops)")
        for col in ("op", "A", "B"):
            t.add_column(col)
        for op, a, b in d.ops:
            if a != b:
                t.add_row(op, str(a), str(b))
        tables.append(t)
    if d.nodes:
        t = Table(title="nodes (matched by name)")
        for col in ("node", "change", "A", "B"):
            t.add_column(col)
        for n in d.nodes[:50]:
            t.add_row(n.name, n.change, n.a or "-", n.b or "-")
        if len(d.nodes) > 50:
            t.add_row("...", f"{len(d.nodes) - 50} more", "", "")
        tables.append(t)
    changed = [w for w in d.tensors if w.status != "same"]
    if changed:
        t = Table(title="weights (not identical)")
        for col in ("tensor A", "tensor B", "status", "matched by", "dtype/shape", "L2 delta", "max abs delta"):
            t.add_column(col)
        for w in changed[:60]:
            shape = f"{w.dtype_a or w.dtype_b} {list(w.shape_a or w.shape_b or [])}"
            if w.shape_a is not None and w.shape_b is not None and (w.shape_a != w.shape_b or w.dtype_a != w.dtype_b):
                shape = f"{w.dtype_a} {list(w.shape_a)} -> {w.dtype_b} {list(w.shape_b)}"
            t.add_row(w.key_a or "-", w.key_b or "-", w.status, w.matched_by or "-", shape,
                      _fmt(w.l2), _fmt(w.max_abs))
        if len(changed) > 60:
            t.add_row("...", f"{len(changed) - 60} more", "", "", "", "", "")
        tables.append(t)
    for title, rows in (("metrics", d.metrics), ("parity", d.parity)):
        if rows:
            t = Table(title=title)
            for col in ("", "A", "B"):
                t.add_column(col)
            for key, a, b in rows:
                t.add_row(key, _fmt(a), _fmt(b))
            tables.append(t)
    return tables


def _versions_table(title: str, versions) -> Table:
    table = Table(title=title)
    for col in ("version", "format", "made by", "verified", "rtol", "parents", "aliases"):
        table.add_column(col)
    for v in versions:
        step = v.step or {}
        rtol = (step.get("parity") or {}).get("rtol")
        table.add_row(v.ref, v.format, str(step.get("command") or "add"), _fmt(step.get("verified")),
                      _fmt(rtol), ", ".join(v.parents) or "-", ", ".join(v.aliases))
    return table


# ---------------------------------------------------------------------------------------------- commands


def register(registry_app: typer.Typer) -> None:
    @registry_app.command("lineage")
    def lineage_cmd(
        ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS.")],
        dot: Annotated[bool, typer.Option("--dot", help="Print the DAG as Graphviz DOT.")] = False,
        registry: RegistryOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """The lineage DAG of a version: every ancestor and descendant, with the step of each edge."""
        from modelport.errors import BadInputError
        from modelport.registry.lineage import lineage, render_text

        if dot and as_json:
            raise BadInputError("--dot and --json exclude each other")
        with _open(registry) as reg:
            graph = lineage(reg, ref)
        if as_json:
            emit_report(graph.to_dict())
        elif dot:
            typer.echo(graph.to_dot(), nl=False)
        else:
            for line in render_text(graph):
                console.print(line, markup=False, soft_wrap=True)

    @registry_app.command("search")
    def search_cmd(
        derived_from: Annotated[Optional[str], typer.Option("--derived-from", help="Only descendants of this version (NAME@V).")] = None,
        fmt: Annotated[Optional[str], typer.Option("--format", help="Only versions of this format (onnx, torch, tflite, ...).")] = None,
        verified: Annotated[Optional[bool], typer.Option("--verified/--unverified", help="Only versions whose step passed (or did not).", show_default=False)] = None,
        rtol: Annotated[Optional[float], typer.Option("--rtol", help="Only versions that passed parity with every output held to this relative tolerance or tighter.")] = None,
        name: Annotated[Optional[str], typer.Option("--name", help="Only versions of this model.")] = None,
        registry: RegistryOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Find versions by lineage and verification, e.g. every tflite version derived from v3 that passed at rtol 1e-4."""
        from modelport.errors import BadInputError
        from modelport.registry.lineage import search

        if rtol is not None and verified is False:
            raise BadInputError("--rtol asks for versions that passed; it excludes --unverified")
        with _open(registry) as reg:
            found = search(reg, derived_from=derived_from, format=fmt, verified=verified, rtol=rtol, name=name)
        if as_json:
            emit_report({"query": {"derived_from": derived_from, "format": fmt, "verified": verified, "rtol": rtol,
                                 "name": name}, "matches": [v.to_dict() for v in found]})
            return
        console.print(_versions_table(f"{len(found)} version(s)", found))

    @registry_app.command("diff")
    def diff_cmd(
        a: Annotated[str, typer.Argument(help="A version (NAME@V) or a model path.")],
        b: Annotated[str, typer.Argument(help="Another version or model path.")],
        registry: RegistryOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Signature, graph, weights (per tensor), metrics and parity of two versions, side by side."""
        from modelport.registry.diff import diff

        needs_registry = any(not Path(x).exists() for x in (a, b))
        if needs_registry:
            with _open(registry) as reg:
                report = diff(a, b, registry=reg)
        else:
            report = diff(a, b)
        if as_json:
            emit_report(report.to_dict())
            return
        for table in _diff_tables(report):
            console.print(table)

    @registry_app.command("export")
    def export_cmd(
        ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS.")],
        oci: Annotated[str, typer.Option("--oci", help="Write (or add to) an OCI image layout in this directory.")],
        tag: Annotated[Optional[str], typer.Option("--tag", help="Tag in the layout's index (default NAME-vN).")] = None,
        registry: RegistryOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Export a version as an OCI image layout (one layer per file, the lineage as an annotation)."""
        from modelport.registry.oci import export

        with _open(registry) as reg:
            result = export(reg, ref, oci, tag=tag)
        if as_json:
            emit_report(result)
            return
        console.print(f"{result.ref} -> {result.layout} (tag {result.tag}, manifest {result.manifest_digest}, "
                      f"{len(result.layers)} layer(s), {result.bytes_written:,} new bytes)", markup=False, soft_wrap=True)

    @registry_app.command("push")
    def push_cmd(
        ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS.")],
        mlflow: Annotated[str, typer.Option("--mlflow", help="MLflow tracking/registry URI, e.g. sqlite:///path/mlflow.db.")],
        model_name: Annotated[Optional[str], typer.Option("--model-name", help="Registered model name in MLflow (default: NAME).")] = None,
        artifact_root: Annotated[Optional[str], typer.Option("--artifact-root", help="Where MLflow keeps the files (default for sqlite: mlartifacts/ beside the database).")] = None,
        registry: RegistryOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Log a version to an MLflow model registry: files as artifacts, lineage as tags, aliases mirrored."""
        from modelport.registry.mlflow_push import push

        with _open(registry) as reg:
            result = push(reg, ref, mlflow, model_name=model_name, artifact_root=artifact_root)
        if as_json:
            emit_report(result)
            return
        what = "already there" if result.reused else "logged"
        aliases = f"; aliases {', '.join(result.aliases)}" if result.aliases else ""
        console.print(f"{result.ref} -> MLflow {result.model_name} version {result.mlflow_version} ({what}, run "
                      f"{result.run_id}{aliases})", markup=False, soft_wrap=True)
