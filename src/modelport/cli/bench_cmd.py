"""`modelport bench MODEL [MODEL ...]`: latency and throughput, several models interleaved."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, emit_json, progress
from modelport.cli.sign_cmd import RequireSignatureOpt, require_signed, user_paths


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        models: Annotated[list[str], typer.Argument(help="Models to measure (any formats); ratios are to the first.")],
        batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")] = "1,8",
        threads: Annotated[Optional[int], typer.Option("--threads", help="Intra-op threads.")] = None,
        warmup: Annotated[int, typer.Option("--warmup", help="Warm-up runs per model and batch.")] = 3,
        runs: Annotated[int, typer.Option("--runs", help="Measured runs per model and batch.")] = 20,
        weights: Annotated[Optional[str], typer.Option("--weights", help="Weights for a module file.")] = None,
        input: Annotated[Optional[list[str]], typer.Option("--input", help="Input spec name:1x3x224x224:float32.")] = None,
        dim: Annotated[Optional[list[str]], typer.Option("--dim", help="Size of a non-batch symbolic dim, name=value.")] = None,
        device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
        require_signature: RequireSignatureOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Measure latency p50/p90 and throughput per batch size; models run interleaved."""
        import modelport as api
        from modelport.inputs import parse_int_list

        batches = parse_int_list(batch, "--batch")
        if warmup < 0 or runs < 1:
            from modelport.errors import BadInputError

            raise BadInputError("--warmup must be >= 0 and --runs >= 1")
        models_in, weights_in = require_signed(require_signature, models, weights)  # the verified copies
        with progress(not as_json, "benchmarking") as update:
            report = api.bench(models_in, batches=batches, threads=threads, warmup=warmup, runs=runs, weights=weights_in,
                               input_specs=input, dims=dim, device=device, progress=update)
        report = user_paths(report)
        if as_json:
            emit_json(report)
            return
        table = Table(title="latency (ms) and throughput; ratio = p50 / first model's p50")
        for col in ("model", "format", "batch", "p50 ms", "p90 ms", "samples/s", "ratio"):
            table.add_column(col)
        for row in report.rows:
            if getattr(row, "skipped", None):
                table.add_row(row.model, row.format, str(row.batch), "-", "-", "-", f"skipped: {row.skipped}")
                continue
            ratio = getattr(row, "ratio", None)
            table.add_row(row.model, row.format, str(row.batch), f"{row.p50_ms:.3f}", f"{row.p90_ms:.3f}",
                          f"{row.throughput:.1f}", "-" if ratio is None else f"{ratio:.2f}x")
        console.print(table)
        for note in report.notes:
            console.print(f"[dim]note: {note}[/]")
