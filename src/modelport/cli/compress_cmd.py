"""`modelport compress`: quantize / fp16 / prune an ONNX model under a measured accuracy budget."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, progress
from modelport.cli.sign_cmd import (RequireSignatureOpt, SignOpt, emit_report, finish_provenance, print_provenance,
                                    require_signed, resolve_inputs, start_provenance, user_paths)
from modelport.cli.registry_lineage_cmd import RegisterOpt, RegistryOpt, record_output, registry_source


def _options_table(report) -> Table:
    from modelport.compress.report import comparison_rows

    table = Table(title=f"compress {report.src} -> {report.out}")
    for col in ("", "before", "after", "after / before"):
        table.add_column(col, justify="left" if not col else "right")
    for row in comparison_rows(report):
        table.add_row(*row)
    return table


def _layers_table(report) -> Table:
    table = Table(title="pruned layers")
    reduced = dict(report.reduced_fractions)
    for col in ("node", "op", "weight", "params", "fraction", "sparsity"):
        table.add_column(col)
    for layer in report.layers:
        fraction = "global" if layer.fraction is None else f"{layer.fraction:g}"
        if layer.node in reduced:
            fraction += " (accuracy control)"
        table.add_row(layer.node, layer.op, layer.weight, f"{layer.params:,}", fraction, f"{100 * layer.sparsity_after:.1f}%")
    return table


def _widths_table(report) -> Table:
    table = Table(title="structured pruning: layer widths")
    reduced = dict(report.reduced_fractions)
    for col in ("module", "kind", "fraction", "before", "after"):
        table.add_column(col)
    for layer in report.structured_layers:
        fraction = "output, kept" if layer.fraction is None else f"{layer.fraction:g}"
        if layer.module in reduced:
            fraction += " (accuracy control)"
        table.add_row(layer.module, layer.kind, fraction, str(layer.width_before), str(layer.width_after))
    return table


def register(app: typer.Typer) -> None:
    @app.command("compress")
    def compress(
        ctx: typer.Context,
        model: Annotated[str, typer.Argument(help="ONNX model to compress (convert other formats first).")],
        out: Annotated[Optional[str], typer.Option("-o", "--out", help="Output path (default: beside the source, e.g. model.int8.onnx).")] = None,
        quantize: Annotated[Optional[str], typer.Option("--quantize", help="dynamic | static | fp16 | int4.")] = None,
        calibration: Annotated[Optional[str], typer.Option("--calibration", help="Calibration inputs for --quantize static (.npz or .mindrecord, keyed by input name).")] = None,
        calibrate_method: Annotated[str, typer.Option("--calibrate-method", help="minmax | entropy | percentile.")] = "minmax",
        per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", help="Weight scales per output channel (int8).")] = True,
        keep_io_float32: Annotated[bool, typer.Option("--keep-io-float32/--fp16-io", help="fp16: keep float32 inputs and outputs.")] = True,
        prune: Annotated[Optional[float], typer.Option("--prune", help="Fraction of Conv/Gemm/MatMul weights set to zero, in (0, 1).")] = None,
        prune_scope: Annotated[str, typer.Option("--prune-scope", help="layer (the fraction of every layer) | global (one threshold).")] = "layer",
        structured: Annotated[bool, typer.Option("--structured", help="Remove whole channels/neurons (--prune is then the share removed per layer).")] = False,
        eval_data: Annotated[Optional[str], typer.Option("--eval", help="Eval inputs plus integer `labels` (.npz or .mindrecord): top-1 before and after.")] = None,
        max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="Largest acceptable top-1 drop, e.g. 0.01 (one point).")] = None,
        batch: Annotated[str, typer.Option("--batch", help="Batch sizes for latency, comma-separated.")] = "1,8",
        runs: Annotated[int, typer.Option("--runs", help="Timed runs per model and batch (0: skip latency).")] = 20,
        register: RegisterOpt = None,
        registry: RegistryOpt = None,
        sign: SignOpt = None,
        require_signature: RequireSignatureOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Quantize and/or prune an ONNX model; measure size, MACs, latency and accuracy before and after."""
        from modelport.compress.run import compress as run_compress, default_output
        from modelport.errors import BadInputError

        try:
            batches = tuple(int(b) for b in batch.split(",") if b.strip())
        except ValueError:
            raise BadInputError(f"--batch takes comma-separated integers, got {batch!r}") from None
        signer = start_provenance(sign)
        model, origin, out = registry_source(ctx, model, registry, register, out, lambda p: default_output(p, quantize, prune))
        (model_in,) = require_signed(require_signature, model)  # the verified copy
        if out is None and model_in != model:  # the default output goes beside the user's model
            out = str(default_output(model, quantize, prune))
        resolve_inputs(signer, {"model": model, "calibration": calibration, "eval": eval_data})
        with progress(not as_json, f"compressing {model}") as update:
            report = run_compress(
                model_in, out, quantize=quantize, calibration=calibration, calibrate_method=calibrate_method,
                per_channel=per_channel, keep_io_float32=keep_io_float32, prune=prune, prune_scope=prune_scope,
                structured=structured, eval_data=eval_data, max_drop=max_drop, bench_batches=batches,
                bench_runs=runs, progress=update,
            )
        report = user_paths(report)
        record = finish_provenance(signer, "compress", report, ctx.params)
        record_output(ctx, "compress", report, origin, register, registry, as_json)
        if as_json:
            emit_report(report, record)
            return
        console.print(_options_table(report))
        for step in report.steps:
            console.print(f"step: {step}")
        if report.layers:
            console.print(_layers_table(report))
        if report.structured_layers:
            console.print(_widths_table(report))
        if report.kept_float:
            console.print(f"left uncompressed by accuracy control (float, unpruned): {', '.join(report.kept_float)}")
        if report.parity is not None:
            how = "at fp16 tolerance" if report.parity_enforced else "informational: judged on the metric, not elementwise"
            console.print(f"parity ({how}): {report.parity.summary()}")
        for note in report.notes:
            console.print(f"[yellow]note:[/] {note}")
        console.print(f"wrote {report.out} in {report.seconds:.1f} s")
        print_provenance(record)
