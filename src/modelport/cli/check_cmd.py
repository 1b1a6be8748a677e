"""`modelport check MODEL --target T`: every reason the model will not run on the target, each with its fix."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, emit_json
from modelport.cli.sign_cmd import RequireSignatureOpt, require_signed, user_paths


def check_table(report) -> Table:
    table = Table(title=f"check {report.model} against {report.target}: {report.summary()}")
    for col in ("problem", "where", "detail", "fix"):
        table.add_column(col)
    for p in report.problems:
        fix = f"[green]{p.fix}[/]" if p.automatic else f"[yellow]{p.fix}[/]"
        table.add_row(p.kind, p.where, p.message, fix, end_section=False)
    return table


def register(app: typer.Typer) -> None:
    @app.command("check")
    def check(
        model: Annotated[Optional[str], typer.Argument(help="ONNX model to check.")] = None,
        target: Annotated[Optional[str], typer.Option("--target", "-t", help="Built-in target name or a profile .json path.")] = None,
        list_targets: Annotated[bool, typer.Option("--list-targets", help="List the built-in targets and exit.")] = False,
        require_signature: RequireSignatureOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Check an ONNX model against a target platform (exit 0 compatible, 3 not)."""
        from modelport.errors import BadInputError
        from modelport.targets.profile import known_targets, load_profile

        if list_targets:
            rows = []
            for name in known_targets():
                try:
                    rows.append(load_profile(name).summary())
                except Exception as exc:  # e.g. torch when its converter is unavailable
                    rows.append({"name": name, "description": f"unavailable: {exc}"})
            if as_json:
                emit_json({"targets": rows})
                return
            table = Table(title="targets")
            for col in ("name", "ops", "opsets", "layout", "dynamic dims", "description"):
                table.add_column(col)
            for r in rows:
                opsets = ", ".join(f"{d} {lo}..{hi}" for d, (lo, hi) in r.get("opsets", {}).items()) or "-"
                table.add_row(r["name"], str(r.get("ops", "-")), opsets, r.get("layout", "-"),
                              r.get("dynamic_dims", "-"), r.get("description", ""))
            console.print(table)
            return
        if model is None or target is None:
            raise BadInputError(f"usage: modelport check MODEL --target T (known targets: {', '.join(known_targets())})")
        from modelport.adapt.run import check as run_check

        (model_in,) = require_signed(require_signature, model)  # the verified copy
        report = user_paths(run_check(model_in, target))
        if as_json:
            emit_json(report)
        else:
            if report.ok:
                console.print(f"[green]{report.summary()}[/] ({report.model})")
            else:
                console.print(check_table(report))
            for note in report.notes:
                console.print(f"note: {note}")
        if not report:
            from modelport.errors import UnsupportedError

            raise UnsupportedError(f"not compatible with {report.target} ({len(report.problems)} problem(s), listed above)", path=model)
