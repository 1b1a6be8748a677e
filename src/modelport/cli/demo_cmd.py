"""`modelport demo`: the main job on an embedded default (Keras digits CNN -> ONNX -> PyTorch, verified and benched)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, emit_json, progress


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Annotated[Optional[str], typer.Option("--out", help="Keep the demo's models in this directory.")] = None,
        epochs: Annotated[int, typer.Option("--epochs", help="Training epochs for the digits CNN.")] = 12,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Train a Keras CNN on scikit-learn's digits, convert it, verify it, measure it."""
        from modelport.demo import run_demo
        from modelport.errors import BadInputError

        if epochs < 1:
            raise BadInputError(f"--epochs must be >= 1, got {epochs}")

        with progress(not as_json, "demo") as update:
            report = run_demo(out, epochs=epochs, progress=update)
        if as_json:
            emit_json(report)
        else:
            table = Table(title=f"modelport demo: digits CNN ({report.test_samples} test images; "
                                f"trained in {report.train_seconds:.1f} s, converted+verified in {report.convert_seconds:.1f} s)")
            for col in ("stage", "format", "test accuracy", "size", "p50 ms b=1", "p50 ms b=8", "parity vs Keras"):
                table.add_column(col)
            for r in report.rows:
                table.add_row(r.stage, r.format, f"{r.accuracy:.4f}", f"{r.size_bytes / 1024:.1f} KiB",
                              "-" if r.p50_ms_batch1 is None else f"{r.p50_ms_batch1:.3f}",
                              "-" if r.p50_ms_batch8 is None else f"{r.p50_ms_batch8:.3f}", r.parity)
            console.print(table)
            if out:
                console.print(f"HTML verification reports: {', '.join(report.reports)}", markup=False, soft_wrap=True)
            for note in report.notes:
                console.print(f"[dim]{note}[/]")
            if report.lineage:
                where = report.registry or "a temporary registry, removed with the models"
                console.print(f"registry lineage of the trained model ({where}):", markup=False, soft_wrap=True)
                for line in report.lineage:
                    console.print(line, markup=False, soft_wrap=True)
        if not report:
            raise typer.Exit(1)
