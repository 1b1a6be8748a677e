"""`modelport verify A B`: run two models on the same inputs and compare outputs."""

from __future__ import annotations

import shlex
from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.artifact import to_jsonable
from modelport.cli.output import console, emit_json, fmt_float, progress
from modelport.cli.sign_cmd import RequireSignatureOpt, require_signed, user_paths


def parity_table(report) -> Table:
    table = Table(title=f"parity: {report.summary()}")
    for col in ("inputs", "output", "shape", "max abs", "max rel", "mean abs", "cosine", "top-1", "ok"):
        table.add_column(col)
    for run in report.runs:
        shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in run.input_shapes.items())
        for o in run.outputs:
            table.add_row(
                shapes, o.name, "x".join(map(str, o.shape)), fmt_float(o.max_abs), fmt_float(o.max_rel),
                fmt_float(o.mean_abs), fmt_float(o.cosine, ".6f"), fmt_float(o.top1, ".3f"),
                "[green]yes[/]" if o.ok else f"[red]NO[/] {o.reason}",
            )
            shapes = ""
    notes = list(dict.fromkeys(o.noise_line() for r in report.runs for o in r.outputs if o.noise_line()))
    if notes:  # which outputs were judged against the reference's own noise floor, and how it was measured
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


NoNoiseFloorOpt = Annotated[bool, typer.Option(
    "--no-noise-floor", help="Judge on the tolerances alone: do not measure the ONNX reference's own noise floor "
                             "(onnxruntime optimized vs unoptimized) where an output misses them.")]


def localization_table(loc) -> Table:
    table = Table(title=f"localization ({loc.method}): {loc.summary()}")
    for col in ("node", "op", "output", "B tensor", "max rel", "inputs max rel", "ok"):
        table.add_column(col)
    first = loc.first_divergent
    for c in loc.compared:
        mark = "[red]NO[/]" if not c.ok else "[green]yes[/]"
        table.add_row(("[bold]" if c is first else "") + c.node, c.op_type, c.output, c.b_name or "-",
                      fmt_float(c.max_rel), fmt_float(c.inputs_max_rel), mark)
    if loc.note:
        table.caption = loc.note
    return table


def _locate(a, b, report, inputs, dim, seed, rtol, atol, localize: bool, reduce_to: str | None, show: bool):
    """Localization and reduction on the first input set of the comparison (the failing one when kept)."""
    from modelport.formats import open_runner
    from modelport.inputs import parse_dims
    from modelport.verify import feeds_for
    from modelport.verify.localize import localize as run_localize

    source = report.failure_file or inputs
    with open_runner(a) as ra:
        feeds = feeds_for(ra, inputs=source, dims=parse_dims(dim) if dim else None, seed=seed)[0][0]
    with progress(show, "localizing the divergence"):
        located = run_localize(a, b, feeds, rtol=rtol, atol=atol) if localize else None
        reduced = None
        if reduce_to:
            from modelport.verify.reduce import reduce as run_reduce

            reduced = run_reduce(a, b, feeds, reduce_to, rtol=rtol, atol=atol)
    return located, reduced


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify(
        a: Annotated[str, typer.Argument(help="Reference model (any format).")],
        b: Annotated[str, typer.Argument(help="Model under test (any format).")],
        a_format: Annotated[Optional[str], typer.Option("--a-format", help="Format of A, when detection should be skipped.")] = None,
        b_format: Annotated[Optional[str], typer.Option("--b-format", help="Format of B.")] = None,
        weights: Annotated[Optional[str], typer.Option("--weights", help="Weights for A when it is a module file.")] = None,
        b_weights: Annotated[Optional[str], typer.Option("--b-weights", help="Weights for B when it is a module file.")] = None,
        input: Annotated[Optional[list[str]], typer.Option("--input", help="Input spec name:1x3x224x224:float32 (repeatable).")] = None,
        inputs: Annotated[Optional[str], typer.Option("--inputs", help="Inputs (.npz or .mindrecord), keyed by input name.")] = None,
        dim: Annotated[Optional[list[str]], typer.Option("--dim", help="Size of a symbolic dim, name=value.")] = None,
        rtol: Annotated[Optional[float], typer.Option("--rtol")] = None,
        atol: Annotated[Optional[float], typer.Option("--atol")] = None,
        tol: Annotated[Optional[list[str]], typer.Option("--tol", help="Tolerance of one output, NAME=rtol,atol (repeatable).")] = None,
        report_dir: Annotated[Optional[str], typer.Option("--report-dir", help="Where a failure keeps its inputs and outputs (default: beside B).")] = None,
        html: Annotated[Optional[str], typer.Option("--report", help="Write a self-contained HTML report here (tables, error histograms, lineage).")] = None,
        localize: Annotated[bool, typer.Option("--localize", help="Find the first node whose output diverges (A must be ONNX).")] = False,
        reduce_to: Annotated[Optional[str], typer.Option("--reduce", help="Write the smallest failing subgraph of A (and B's) here, with its inputs (both ONNX).")] = None,
        arbiter: Annotated[Optional[str], typer.Option("--arbiter", help="reference: also run the ONNX side through onnx.reference, to tell which model is off.")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
        device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
        no_noise_floor: NoNoiseFloorOpt = False,
        require_signature: RequireSignatureOpt = None,
        trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Unpickle a .joblib/.pkl model (loading a pickle runs its code: only for files you trust).")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Compare two models of any formats on the same inputs (exit 1 when they differ)."""
        import dataclasses

        import modelport as api
        from modelport.errors import BadInputError
        from modelport.verify import failure_path
        from modelport.formats.sklearn_format import trusting_pickles
        from modelport.verify.noise import enabled as noise_floor

        if arbiter not in (None, "reference"):
            raise BadInputError(f"--arbiter {arbiter!r}: the one arbiter is 'reference' (onnx.reference)")
        a_in, b_in, weights_in, b_weights_in = require_signed(require_signature, a, b, weights, b_weights)

        with progress(not as_json, f"verifying {b} against {a}"), noise_floor(not no_noise_floor), \
                trusting_pickles(trust_pickle):
            report = api.verify(
                a_in, b_in, a_format=a_format, b_format=b_format, weights=weights_in, b_weights=b_weights_in,
                input_specs=input, inputs=inputs, dims=dim, rtol=rtol, atol=atol, seed=seed, device=device, tol=tol,
                keep_failure=failure_path(b, report_dir), report=html,
            )
        report = user_paths(report)
        if report.failure_file:
            words = ["modelport", "verify", a, b, "--inputs", report.failure_file]
            for flag, value in (("--a-format", a_format), ("--b-format", b_format), ("--weights", weights),
                                ("--b-weights", b_weights), ("--rtol", rtol), ("--atol", atol)):
                words += [flag, str(value)] if value is not None else []
            words += ["--no-noise-floor"] if no_noise_floor else []
            words += [w for spec in input or () for w in ("--input", spec)] + [w for t in tol or () for w in ("--tol", t)]
            report = dataclasses.replace(report, reproduce=shlex.join(words))
        judged = None
        if arbiter is not None:
            from modelport.formats import LoadOptions
            from modelport.inputs import parse_input_spec
            from modelport.verify.arbiter import arbitrate

            specs = tuple(parse_input_spec(s) for s in input or ())
            with progress(not as_json, "asking the ONNX reference evaluator"):
                judged = arbitrate(a, b, a_format=a_format, b_format=b_format, inputs=inputs, rtol=rtol, atol=atol,
                                   a_options=LoadOptions(weights=weights, inputs=specs, device=device),
                                   b_options=LoadOptions(weights=b_weights, inputs=specs, device=device),
                                   dims=api._dims(dim), seed=seed, tolerances=api._tolerances(tol))
        located = reduced = None
        if (localize or reduce_to) and not report.ok:
            located, reduced = _locate(a, b, report, inputs, dim, seed, rtol, atol, localize, reduce_to, not as_json)
            if html and located is not None:  # the report again, now with the per-layer error curve
                from modelport.pipeline import read_lineage
                from modelport.verify.html import failure_diffs, write_report

                write_report(html, report, diffs=failure_diffs(report.failure_file) if report.failure_file else None,
                             localization=located, route=read_lineage(b))
        if as_json:
            extra = {k: to_jsonable(v) for k, v in (("arbiter", judged), ("localization", located), ("reduced", reduced)) if v is not None}
            emit_json({**to_jsonable(report), **extra} if extra else report)
        else:
            console.print(parity_table(report))
            if judged is not None:
                console.print(f"arbiter (onnx.reference on {judged.reference_of}): {judged.verdict}; "
                              f"A max rel {judged.a_worst_rel:.2e}, B max rel {judged.b_worst_rel:.2e}",
                              markup=False, soft_wrap=True)
            if located is not None:
                console.print(localization_table(located))
            if reduced is not None:
                console.print(f"{reduced.summary()}; rerun: modelport verify {shlex.quote(reduced.path)} "
                              f"{shlex.quote(reduced.b_path)} --inputs {shlex.quote(reduced.inputs_path)}",
                              markup=False, soft_wrap=True)
            if (localize or reduce_to) and report.ok:
                console.print("the models agree: nothing to localize", markup=False)
            if html:
                console.print(f"report: {html}", markup=False, soft_wrap=True)
            if report.failure_file:
                console.print(f"failing inputs and both outputs kept in {report.failure_file}; reproduce: {report.reproduce}",
                              markup=False, soft_wrap=True)
        if not report:
            raise typer.Exit(1)
