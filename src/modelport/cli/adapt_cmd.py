"""`modelport adapt MODEL -o OUT [--target T] [changes…]`: fix what a target lacks, verify, write atomically."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, progress
from modelport.cli.sign_cmd import (RequireSignatureOpt, SignOpt, emit_report, finish_provenance, print_provenance,
                                    require_signed, resolve_inputs, start_provenance, user_paths)
from modelport.cli.registry_lineage_cmd import RegisterOpt, RegistryOpt, record_output, registry_source
from modelport.cli.verify_cmd import NoNoiseFloorOpt, parity_table


def register(app: typer.Typer) -> None:
    @app.command("adapt")
    def adapt(
        ctx: typer.Context,
        model: Annotated[Optional[str], typer.Argument(help="ONNX model to adapt.")] = None,
        out: Annotated[Optional[str], typer.Option("-o", "--out", help="Output .onnx path.")] = None,
        target: Annotated[Optional[str], typer.Option("--target", "-t", help="Apply every automatic fix for this target (name or profile .json).")] = None,
        opset: Annotated[Optional[int], typer.Option("--opset", help="Convert to this opset (up or down).")] = None,
        layout: Annotated[Optional[str], typer.Option("--layout", help="nhwc: rank-4 NCHW inputs take NHWC data; nchw: the reverse (e.g. a Keras model).")] = None,
        batch: Annotated[Optional[int], typer.Option("--batch", help="Static batch size for every input.")] = None,
        dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Make dim 0 of every input symbolic.")] = False,
        rename: Annotated[Optional[list[str]], typer.Option("--rename", help="Rename an input or output, old=new (repeatable).")] = None,
        io_dtype: Annotated[Optional[str], typer.Option("--io-dtype", help="float16: float inputs/outputs in float16.")] = None,
        normalize: Annotated[Optional[str], typer.Option("--normalize", help="Bake normalization in: 'mean=0.485,0.456,0.406,std=0.229,0.224,0.225[,scale=255][,input=x]'.")] = None,
        replace: Annotated[Optional[list[str]], typer.Option("--replace", help="Rewrite rule OP=RULE, e.g. Gelu=tanh-approx, LayerNormalization=decompose (repeatable).")] = None,
        device: Annotated[str, typer.Option("--device", help="cpu or cuda (falls back to CPU when CUDA is missing).")] = "cpu",
        eval_data: Annotated[Optional[str], typer.Option("--eval", help="Inputs + labels (.npz or .mindrecord): report top-1 before/after.")] = None,
        max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="Judge on the task: the largest acceptable metric drop (with --eval).")] = None,
        metric: Annotated[Optional[str], typer.Option("--metric", help="The task metric for --eval: file.py:fn(outputs, labels) -> float (default top-1).")] = None,
        inputs: Annotated[Optional[str], typer.Option("--inputs", help="Verify on these inputs (.npz or .mindrecord, keyed by the adapted model's input names).")] = None,
        dim: Annotated[Optional[list[str]], typer.Option("--dim", help="Size of a symbolic dim for verification, name=value (repeatable).")] = None,
        rtol: Annotated[Optional[float], typer.Option("--rtol")] = None,
        atol: Annotated[Optional[float], typer.Option("--atol")] = None,
        tol: Annotated[Optional[list[str]], typer.Option("--tol", help="Tolerance of one output, NAME=rtol,atol (repeatable).")] = None,
        report_dir: Annotated[Optional[str], typer.Option("--report-dir", help="Where a failed verification keeps its inputs and outputs (default: beside the output).")] = None,
        list_rules: Annotated[bool, typer.Option("--list-rules", help="List the rewrite rules and exit.")] = False,
        no_noise_floor: NoNoiseFloorOpt = False,
        register: RegisterOpt = None,
        registry: RegistryOpt = None,
        sign: SignOpt = None,
        require_signature: RequireSignatureOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Adapt an ONNX model to a target (ops, opset, inputs/outputs) and verify it still computes the same."""
        from modelport.adapt.run import adapt as run_adapt
        from modelport.inputs import parse_dims
        from modelport.verify.parity import parse_tolerances

        if list_rules:
            from modelport.adapt.rules import all_rules

            for r in all_rules():
                console.print(f"{r.key:32s} {'exact' if r.exact else 'approximation':14s} {r.doc}")
            return
        if model is None or out is None:
            from modelport.errors import BadInputError

            raise BadInputError("usage: modelport adapt MODEL -o OUT [--target T] [--opset N] [--layout nhwc] …")
        signer = start_provenance(sign)
        model, origin, out = registry_source(ctx, model, registry, register, out)
        (model_in,) = require_signed(require_signature, model)  # the verified copy
        resolve_inputs(signer, {"model": model, "eval": eval_data, "inputs": inputs,
                               "target": target if target and target.endswith(".json") else None})
        from modelport.verify.noise import enabled as noise_floor

        with progress(not as_json, f"adapting {model}") as update, noise_floor(not no_noise_floor):
            report = run_adapt(model_in, out, target=target, opset=opset, layout=layout, batch=batch, dynamic_batch=dynamic_batch,
                               rename=rename, io_dtype=io_dtype, normalize=normalize, replace=replace, device=device,
                               eval_data=eval_data, inputs=inputs, dims=parse_dims(dim) or None, rtol=rtol, atol=atol,
                               tolerances=parse_tolerances(tol) or None, report_dir=report_dir, metric=metric, max_drop=max_drop,
                               progress=update)
        report = user_paths(report)
        record = finish_provenance(signer, "adapt", report, ctx.params)
        record_output(ctx, "adapt", report, origin, register, registry, as_json)
        if as_json:
            emit_report(report, record)
            return
        table = Table(title=f"adapt {report.src} -> {report.out}", show_header=False)
        for step in report.steps:
            table.add_row(step.name, step.detail + ("" if step.exact else " [yellow](approximation)[/]"))
        if report.check is not None:
            table.add_row("target", f"{report.target}: {report.check.summary()}")
        if report.metric:
            m = report.metric
            table.add_row(m["metric"], f"{m['before']:.4f} -> {m['after']:.4f} on {m['samples']} samples")
        table.add_row("time", f"{report.seconds:.1f} s")
        console.print(table)
        for w in report.warnings:
            console.print(f"[yellow]warning:[/] {w}")
        if report.parity is not None:
            console.print(parity_table(report.parity))
        print_provenance(record)
