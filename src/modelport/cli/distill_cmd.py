"""`modelport distill`: train a PyTorch student on a teacher's softened outputs, write it as ONNX and a torch directory."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, progress
from modelport.cli.sign_cmd import (RequireSignatureOpt, SignOpt, emit_report, finish_provenance, print_provenance,
                                    require_signed, resolve_inputs, start_provenance, user_paths)
from modelport.cli.registry_lineage_cmd import RegisterOpt, RegistryOpt, record_output, registry_source


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill(
        ctx: typer.Context,
        teacher: Annotated[str, typer.Option("--teacher", help="Teacher model, any supported format.")],
        student: Annotated[str, typer.Option("--student", help="Student: file.py:Name, a modelport torch directory, or ONNX (e.g. a structurally pruned teacher).")],
        out: Annotated[str, typer.Option("-o", "--out", help="Where to write the student (ONNX).")],
        data: Annotated[str, typer.Option("--data", help="Training data (.npz or .mindrecord): the teacher's inputs, plus optional integer `labels`.")],
        torch_out: Annotated[Optional[str], typer.Option("--torch-out", help="Where to write the student as a modelport torch directory (default: OUT's stem + _torch beside it).")] = None,
        onnx_only: Annotated[bool, typer.Option("--onnx-only", help="Write the ONNX file only, no torch directory.")] = False,
        weights: Annotated[Optional[str], typer.Option("--weights", help="Initial weights for a student module file.")] = None,
        epochs: Annotated[int, typer.Option("--epochs")] = 10,
        temperature: Annotated[float, typer.Option("--temperature", help="Softening temperature T.")] = 4.0,
        alpha: Annotated[float, typer.Option("--alpha", help="Weight of the KL term; 1 - alpha weighs cross-entropy on labels.")] = 0.7,
        lr: Annotated[float, typer.Option("--lr")] = 3e-3,
        threads: Annotated[Optional[int], typer.Option("--threads", help="torch threads while training.")] = None,
        runs: Annotated[int, typer.Option("--runs", help="Timed runs per model and batch (0: skip latency).")] = 20,
        register: RegisterOpt = None,
        registry: RegistryOpt = None,
        sign: SignOpt = None,
        require_signature: RequireSignatureOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Distill a teacher into a smaller PyTorch student; report teacher vs student."""
        from modelport.compress.distill import distill as run_distill
        from modelport.errors import BadInputError
        from modelport.compress.report import comparison_rows

        if onnx_only and torch_out is not None:
            raise BadInputError("--torch-out and --onnx-only exclude each other")
        signer = start_provenance(sign)
        teacher, origin, _ = registry_source(ctx, teacher, registry, register)
        teacher_in, student_in, weights_in = require_signed(require_signature, teacher, student, weights)
        resolve_inputs(signer, {"teacher": teacher, "student": student, "weights": weights, "data": data})

        with progress(not as_json, "distilling") as update:
            report = run_distill(teacher_in, student_in, out, data=data, student_weights=weights_in,
                                 torch_out=False if onnx_only else torch_out, epochs=epochs,
                                 temperature=temperature, alpha=alpha, lr=lr, bench_runs=runs, threads=threads, progress=update)
        report = user_paths(report)
        record = finish_provenance(signer, "distill", report, ctx.params)
        record_output(ctx, "distill", report, origin, register, registry, as_json)
        if as_json:
            emit_report(report, record)
            return
        history = Table(title="epochs")
        for col in ("epoch", "loss", f"held-out {report.metric_name}"):
            history.add_column(col, justify="right")
        for rec in report.history:
            mark = " *" if rec.epoch == report.best_epoch else ""
            history.add_row(str(rec.epoch), f"{rec.loss:.4f}", f"{100 * rec.metric:.2f}%{mark}")
        console.print(history)
        table = Table(title=f"teacher {report.teacher} vs student {report.out}")
        for col in ("", "teacher", "student", "student / teacher"):
            table.add_column(col, justify="right" if col else "left")
        for row in comparison_rows(report):
            table.add_row(*row)
        console.print(table)
        if report.torch_out:
            console.print(f"torch directory {report.torch_out}: {report.torch_parity.summary()}")
        wrote = report.out + (f" and {report.torch_out}" if report.torch_out else "")
        console.print(f"best epoch {report.best_epoch} (* above); wrote {wrote} in {report.seconds:.1f} s")
        print_provenance(record)
