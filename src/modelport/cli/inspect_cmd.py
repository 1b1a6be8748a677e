"""`modelport inspect MODEL`: format, signature, opset, ops, parameters, MACs, size."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, emit_json
from modelport.cli.sign_cmd import RequireSignatureOpt, require_signed, user_paths


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect(
        model: Annotated[str, typer.Argument(help="Model path (any format).")],
        fmt: Annotated[Optional[str], typer.Option("--format", help="Format, when detection should be skipped.")] = None,
        weights: Annotated[Optional[str], typer.Option("--weights", help="Weights for a module file.")] = None,
        input: Annotated[Optional[list[str]], typer.Option("--input", help="Input spec name:1x3x224x224:float32.")] = None,
        require_signature: RequireSignatureOpt = None,
        trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Unpickle a .joblib/.pkl model (loading a pickle runs its code: only for files you trust).")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Show what a model is: format, IO signature, opset, op histogram, parameters, MACs, size."""
        import modelport as api

        model_in, weights_in = require_signed(require_signature, model, weights)  # the verified copies
        from modelport.formats.sklearn_format import trusting_pickles

        with trusting_pickles(trust_pickle):
            report = user_paths(api.inspect(model_in, fmt=fmt, weights=weights_in, input_specs=input))
        if as_json:
            emit_json(report)
            return
        table = Table(title=f"{model}", show_header=False)
        table.add_row("format", report.format)
        table.add_row("file size", _human_bytes(report.file_bytes))
        sig = report.signature
        if sig is not None:
            for s in sig.inputs:
                table.add_row("input", str(s))
            for s in sig.outputs:
                table.add_row("output", str(s))
        if report.onnx is not None:
            table.add_row("opset", ", ".join(f"{k or 'ai.onnx'}:{v}" for k, v in report.onnx.opsets.items()))
            table.add_row("ir version", str(report.onnx.ir_version))
            if report.onnx.producer:
                table.add_row("producer", report.onnx.producer)
        for label, value in (("nodes", report.node_count), ("parameters", report.params), ("MACs", report.macs)):
            if value is not None:
                table.add_row(label, f"{value:,}")
        if report.param_bytes is not None:
            table.add_row("parameter bytes", _human_bytes(report.param_bytes))
        hist = report.op_histogram
        if hist:
            table.add_row("ops", ", ".join(f"{k}×{v}" for k, v in sorted(hist.items(), key=lambda kv: -kv[1])))
        if report.custom_ops:
            table.add_row("custom ops", ", ".join(f"{k}×{v}" for k, v in report.custom_ops.items()))
        for note in report.notes:
            table.add_row("note", note)
        console.print(table)
