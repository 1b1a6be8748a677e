"""`modelport toolchain install|list|remove`: the per-framework environments (modelport.toolchains)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from modelport.cli.output import console, emit_json, progress

toolchain_app = typer.Typer(
    name="toolchain",
    help="Environments of their own for frameworks that cannot share modelport's (built from locks shipped "
         "with modelport, under $MODELPORT_CACHE or ~/.cache/modelport/toolchains).",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


@toolchain_app.command("install")
def install(
    name: Annotated[str, typer.Argument(help="The toolchain (see `modelport toolchain list`).")],
    force: Annotated[bool, typer.Option("--force", help="Rebuild it even when it is installed.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build toolchain NAME from its lock (hash-checked); a no-op when it is installed."""
    from modelport import toolchains

    with progress(not as_json, f"installing toolchain {name}"):
        report = toolchains.install(name, force=force)
    if as_json:
        emit_json(report)
        return
    versions = ", ".join(f"{k} {v}" for k, v in report.packages)
    verb = f"installed in {report.seconds:.1f} s" if report.built else "already installed"
    console.print(f"toolchain {report.name} {verb}: {report.path} ({versions})", markup=False)


@toolchain_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """What is installed (with the versions of its key packages) and what could be."""
    from modelport import toolchains

    rows = toolchains.status()
    if as_json:
        emit_json({"cache": str(toolchains.cache_root() / "toolchains"), "toolchains": rows})
        return
    table = Table(title=f"toolchains ({toolchains.cache_root() / 'toolchains'})")
    for col in ("name", "state", "packages", "path"):
        table.add_column(col)
    for row in rows:
        state = "installed" if row.installed else "not installed"
        if row.other_locks:
            state += f" (+{len(row.other_locks)} from another lock)"
        table.add_row(row.name, state, ", ".join(f"{k} {v}" for k, v in row.packages),
                      row.path if row.installed else f"`modelport toolchain install {row.name}`")
    console.print(table)


@toolchain_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="The toolchain to remove (every lock's environment of it).")],
    as_json: JsonOpt = False,
) -> None:
    """Delete toolchain NAME's environments from the cache."""
    from modelport import toolchains

    report = toolchains.remove(name)
    if as_json:
        emit_json(report)
        return
    for path in report.removed:
        console.print(f"removed {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(toolchain_app, name="toolchain")
