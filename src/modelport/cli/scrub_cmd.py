"""`modelport scrub MODEL -o OUT`: remove what an ONNX model leaks about the machine that exported it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, emit_json
from modelport.cli.sign_cmd import RequireSignatureOpt, require_signed, user_paths


def scrub_table(report) -> Table:
    table = Table(title=f"scrub {report.src}: {report.summary()}", show_header=False)
    table.add_row("output", report.out)
    for kind, n in report.removed.items():
        table.add_row(kind, f"{n:,}")
    if report.lineage_fields:
        table.add_row("lineage", f"{report.lineage_fields} field(s) redacted, records kept")
    table.add_row("graph", "unchanged" if report.graph_unchanged else "[red]CHANGED[/]")
    for example in report.examples:
        table.add_row("e.g.", example)
    for left in report.remaining:
        table.add_row("[yellow]left[/]", f"{left} (part of the graph: not changed)")
    if report.external_data:
        table.add_row("external data", ", ".join(report.external_data))
    return table


def register(app: typer.Typer) -> None:
    @app.command("scrub")
    def scrub(
        model: Annotated[str, typer.Argument(help="ONNX model to scrub.")],
        out: Annotated[Optional[str], typer.Option("-o", "--out", help="Output path (default: NAME.scrubbed.onnx beside it; may be MODEL itself).")] = None,
        require_signature: RequireSignatureOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Remove paths, user and host names, stack traces and source locations from an ONNX model's metadata."""
        from modelport.security.scrub import scrub as run_scrub

        (model_in,) = require_signed(require_signature, model)  # the verified copy
        if out is None and model_in != model:  # the default output goes beside the user's model
            out = str(Path(model).with_name(Path(model).stem + ".scrubbed.onnx"))
        report = user_paths(run_scrub(model_in, out))
        if as_json:
            emit_json(report)
            return
        console.print(scrub_table(report))
