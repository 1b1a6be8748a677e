"""`modelport convert`: plan a route, convert, verify, write atomically."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, progress
from modelport.cli.sign_cmd import (RequireSignatureOpt, SignOpt, emit_report, finish_provenance, print_provenance,
                                    require_signed, resolve_inputs, start_provenance, user_paths)
from modelport.cli.registry_lineage_cmd import RegisterOpt, RegistryOpt, record_output, registry_source
from modelport.cli.verify_cmd import NoNoiseFloorOpt, parity_table

InputOpt = Annotated[Optional[list[str]], typer.Option("--input", help="Input spec name:1x3x224x224:float32 (repeatable; symbolic dims by name, e.g. batch).")]
DimOpt = Annotated[Optional[list[str]], typer.Option("--dim", help="Size of a symbolic dim for verification, name=value (repeatable).")]


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert(
        ctx: typer.Context,
        src: Annotated[str, typer.Argument(help="Model path, or path/file.py:Name for a PyTorch module.")],
        to: Annotated[str, typer.Option("--to", help="Target format: onnx, torch, …")],
        out: Annotated[Optional[str], typer.Option("-o", "--out", help="Output path (default: beside the source).")] = None,
        src_format: Annotated[Optional[str], typer.Option("--from", help="Source format, when detection should be skipped.")] = None,
        weights: Annotated[Optional[str], typer.Option("--weights", help="Weights for a module file: .safetensors or a .pt state_dict.")] = None,
        input: InputOpt = None,
        opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset to export at.")] = None,
        static_batch: Annotated[bool, typer.Option("--static-batch", help="Keep the batch dim static (default: dynamic).")] = False,
        tflite_dtype: Annotated[Optional[str], typer.Option("--tflite-dtype", help="TFLite weights: float32 or float16 (I/O stay float32).")] = None,
        static_dims: Annotated[Optional[str], typer.Option("--static-dims", help="Sizes for dims TF/TFLite must freeze, e.g. batch=1,sequence=128.")] = None,
        tflite_route: Annotated[Optional[str], typer.Option("--tflite-route", help="TFLite converter: auto (onnx2tf, then litert-torch: the first that verifies), onnx2tf or litert.")] = None,
        no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the parity check.")] = False,
        inputs: Annotated[Optional[str], typer.Option("--inputs", help="Verify on these inputs (.npz or .mindrecord, keyed by input name).")] = None,
        dim: DimOpt = None,
        rtol: Annotated[Optional[float], typer.Option("--rtol")] = None,
        atol: Annotated[Optional[float], typer.Option("--atol")] = None,
        tol: Annotated[Optional[list[str]], typer.Option("--tol", help="Tolerance of one output, NAME=rtol,atol (repeatable).")] = None,
        report_dir: Annotated[Optional[str], typer.Option("--report-dir", help="Where a failed verification keeps its inputs and outputs (default: beside the output).")] = None,
        eval_data: Annotated[Optional[str], typer.Option("--eval", help="Labelled data (.npz or .mindrecord: inputs + labels): measure the task metric of source and result.")] = None,
        metric: Annotated[Optional[str], typer.Option("--metric", help="The task metric: file.py:fn(outputs, labels) -> float (default top-1).")] = None,
        max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="Judge on the task: the largest acceptable metric drop (with --eval).")] = None,
        no_noise_floor: NoNoiseFloorOpt = False,
        register: RegisterOpt = None,
        registry: RegistryOpt = None,
        sign: SignOpt = None,
        require_signature: RequireSignatureOpt = None,
        scrub: Annotated[bool, typer.Option("--scrub", help="Remove paths, user/host names and stack traces from the ONNX output's metadata.")] = False,
        trust: Annotated[bool, typer.Option("--trust", help="Load a SavedModel even if its graph reads/writes files, reaches the network or runs Python.")] = False,
        trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Unpickle a .joblib/.pkl model (loading a pickle runs its code: only for files you trust).")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Convert a model to another format and verify it still computes the same outputs."""
        import modelport as api

        from modelport.convert.run import default_output

        signer = start_provenance(sign)
        src, origin, out = registry_source(ctx, src, registry, register, out, lambda p: default_output(p, to))
        src_in, weights_in = require_signed(require_signature, src, weights)  # the verified copies
        if out is None and src_in != src:  # the default output goes beside the user's model
            out = default_output(src, to)
        resolve_inputs(signer, {"model": src, "weights": weights, "inputs": inputs, "eval": eval_data})

        from modelport.verify.noise import enabled as noise_floor

        from modelport.formats.sklearn_format import trusting_pickles
        from modelport.security.loaders import trusting

        with progress(not as_json, f"converting {src} -> {to}") as update, noise_floor(not no_noise_floor), \
                trusting(trust), trusting_pickles(trust_pickle):
            report = api.convert(
                src_in, to, out, src_format=src_format, weights=weights_in, input_specs=input, opset=opset,
                dynamic_batch=not static_batch, tflite_dtype=tflite_dtype, static_dims=static_dims, tflite_route=tflite_route,
                verify=not no_verify, inputs=inputs, dims=dim, rtol=rtol, atol=atol, tol=tol, report_dir=report_dir,
                eval_data=eval_data, metric=metric, max_drop=max_drop, progress=update, scrub=scrub,
            )
        report = user_paths(report)
        record = finish_provenance(signer, "convert", report, ctx.params)
        record_output(ctx, "convert", report, origin, register, registry, as_json)
        if as_json:
            emit_report(report, record)
            return
        table = Table(title=f"convert {report.src_format} -> {report.dst_format}", show_header=False)
        table.add_row("output", report.artifact.path if report.artifact else "-")
        # this run's steps (the lineage starts with the source's; a scrub record may follow them)
        steps = [s for s in report.artifact.lineage if s.step != "scrub"][-len(report.route):]
        table.add_row("route", " -> ".join([report.src_format] + [s.dst_format for s in steps]))
        for step in steps:
            table.add_row(f"{step.src_format} -> {step.dst_format}", f"{step.tool}: {step.detail}")
        if report.metric is not None:
            m = report.metric
            budget = f" (budget {m.max_drop:g}: {'met' if m.within_budget else 'missed'})" if m.max_drop is not None else ""
            table.add_row(m.metric, f"{m.before:.4f} -> {m.after:.4f} on {m.samples} samples{budget}")
        if report.scrub is not None:
            table.add_row("scrubbed", report.scrub.summary())
        table.add_row("time", f"{report.seconds:.1f} s")
        console.print(table)
        for w in report.warnings:
            console.print(f"[yellow]warning:[/] {w}")
        if report.parity is not None:
            console.print(parity_table(report.parity))
        print_provenance(record)
