"""`modelport scan PATH`: the globals every pickle inside would import, read without unpickling."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelport.cli.output import console, emit_json
from modelport.cli.sign_cmd import RequireSignatureOpt, require_signed, user_paths


def register(app: typer.Typer) -> None:
    @app.command("scan")
    def scan(
        path: Annotated[str, typer.Argument(help="A pickle, torch checkpoint, joblib file, zip/tar archive, .npy/.npz, or a directory of them.")],
        require_signature: RequireSignatureOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """List what every pickle inside PATH imports, without unpickling it: exit 0 when all of it is on the
        allow-list (what torch's weights_only loader permits), 4 naming each offending global and where."""
        from modelport.security.pickles import scan_path

        (path_in,) = require_signed(require_signature, path)  # before the scanner reads a byte of it
        report = user_paths(scan_path(path_in))
        if as_json:
            emit_json(report.to_dict())
        else:
            _print(report)
        report.check()


def _print(report) -> None:
    table = Table(title=f"scan {report.path}", show_header=True)
    for col in ("pickle", "protocol", "globals it imports"):
        table.add_column(col)
    for p in report.pickles:
        # names come from the file: escaped, so that they cannot be rich markup
        names = ", ".join(escape(g.name) if g.allowed else f"[red]{escape(g.name)}[/]" for g in p.globals) or "-"
        error = f" [yellow]({escape(p.error)})[/]" if p.error else ""
        table.add_row(escape(f"{p.where} @{p.offset}"), str(p.protocol), names + error)
    console.print(table)
    if report.findings:
        found = Table(title="refused: outside the allow-list", show_header=True)
        for col in ("what", "kind", "where", "byte"):
            found.add_column(col)
        for f in report.findings:
            found.add_row(escape(f.detail + (f" ({f.count}x)" if f.count > 1 else "")), f.kind, escape(f.where),
                          "-" if f.offset is None else str(f.offset))
        console.print(found)
    for note in report.notes[:20]:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    if report.ok:
        console.print(f"clean: {len(report.pickles)} pickle(s) in {report.files} file(s); every global is on the "
                      f"allow-list ({report.allow_list})", markup=False, soft_wrap=True)
