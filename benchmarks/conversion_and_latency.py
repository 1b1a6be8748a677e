"""Convert the issue's model set to ONNX, verify parity, and compare runtime latency.

Run (a few minutes on a laptop CPU; nothing is downloaded):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/conversion_and_latency.py [--runs 20] [--warmup 3]
        [--threads N] [--only cnn,bert,...] [--json]

Models: a PyTorch CNN with BatchNorm, a tiny BERT and a tiny GPT-2 (transformers configs,
random weights; sequence length 16), a Keras functional CNN, a Keras Sequential MLP and a
SavedModel (the MLP exported with ``model.export``). Each is converted with
``modelport.convert.run.convert`` and benchmarked with ``modelport.bench.run.bench``,
source and ONNX side by side, runs interleaved.

Columns:
    model        the model and its source format
    route        the converter chain the planner chose (source -> ... -> onnx)
    convert s    wall time of the conversion (parity is checked separately, not timed here)
    parity       ok / FAIL from verifying the ONNX model against the source (random inputs
                 at two shapes, default fp32 tolerances rtol 1e-4, atol 1e-5)
    max rel err  worst max relative error over every output and input shape checked
    src b1 / onnx b1 / x b1   p50 latency (ms) at batch 1 in the source framework, in
                 onnxruntime, and their ratio (onnx / source: below 1 means onnxruntime is faster)
    src b8 / onnx b8 / x b8   the same at batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see modelport.bench.run: spinning threads distort interleaved runs
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from modelport.artifact import TensorSpec, to_jsonable  # noqa: E402
from modelport.formats import LoadOptions  # noqa: E402

SEQUENCE = 16


@dataclasses.dataclass(frozen=True)
class Case:
    """A source model: how to build it, and what convert and bench need to load it."""

    name: str
    build: Callable[[Path], tuple[str, LoadOptions]]


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    src_format: str
    route: str
    convert_s: float | None
    parity_ok: bool | None
    max_rel: float | None
    latency: dict | None  # the BenchReport, as JSON
    error: str | None = None


def _torch_specs(inputs: tuple[str, ...]) -> tuple[TensorSpec, ...]:
    from modelport.inputs import parse_input_specs

    specs = parse_input_specs(inputs)
    # a dynamic batch in the source too, so that it can be measured at batch 8
    return tuple(TensorSpec(s.name, s.dtype, ("batch", *s.shape[1:])) for s in specs)


def _cnn(d: Path) -> tuple[str, LoadOptions]:
    import zoo

    m = zoo.write_cnn(d)
    return m.spec, LoadOptions(weights=m.safetensors, inputs=_torch_specs(m.inputs))


def _bert(d: Path) -> tuple[str, LoadOptions]:
    import zoo

    m = zoo.write_bert(d)
    return m.spec, LoadOptions(inputs=_torch_specs(m.inputs))


def _gpt2(d: Path) -> tuple[str, LoadOptions]:
    import zoo

    m = zoo.write_gpt2(d)
    return m.spec, LoadOptions(inputs=_torch_specs(m.inputs))


def _keras_functional(d: Path) -> tuple[str, LoadOptions]:
    import zoo_tf

    return str(zoo_tf.cnn_keras()), LoadOptions()


def _keras_sequential(d: Path) -> tuple[str, LoadOptions]:
    import zoo_tf

    return str(zoo_tf.mlp_sequential()), LoadOptions()


def _savedmodel(d: Path) -> tuple[str, LoadOptions]:
    import zoo_tf

    return str(zoo_tf.exported_savedmodel()), LoadOptions()


CASES = [
    Case("cnn", _cnn),
    Case("bert", _bert),
    Case("gpt2", _gpt2),
    Case("keras-functional", _keras_functional),
    Case("keras-sequential", _keras_sequential),
    Case("savedmodel", _savedmodel),
]


def _worst_rel(parity) -> float | None:
    errs = [o.max_rel for run in parity.runs for o in run.outputs]
    return max(errs) if errs else None


def run_case(case: Case, work: Path, args, say: Callable[[str], None]) -> Result:
    """Convert (unverified, timed), verify separately, then bench source vs ONNX.

    Verifying apart from converting keeps a model that fails parity in the table with its
    latency (the pipeline's own verify writes nothing when parity fails).
    """
    from modelport.convert.run import convert
    from modelport.convert.registry import ConvertOptions, plan
    from modelport.errors import ModelportError
    from modelport.formats import detect
    from modelport.bench.run import bench
    from modelport.verify import verify

    d = work / case.name
    d.mkdir(parents=True, exist_ok=True)
    say(f"{case.name}: building")
    src, opts = case.build(d)
    fmt = detect(src)
    dims = {"sequence": SEQUENCE}
    route = " -> ".join([fmt, *(f"{e.dst} ({e.name})" for e in plan(fmt, "onnx"))])
    say(f"{case.name}: converting {route}")
    started = time.perf_counter()
    try:
        report = convert(src, "onnx", d / "model.onnx", options=ConvertOptions(inputs=opts.inputs, weights=opts.weights),
                         verify=False)
    except ModelportError as exc:
        return Result(case.name, fmt, route, time.perf_counter() - started, None, None, None, f"conversion failed: {exc}")
    seconds = time.perf_counter() - started
    onnx_path = report.artifact.path
    say(f"{case.name}: verifying parity")
    parity = verify(src, onnx_path, a_options=opts, dims=dims)
    error = None if parity.ok else f"parity failed: {parity.summary()}"
    b = bench([src, onnx_path], batches=(1, 8), threads=args.threads, warmup=args.warmup, runs=args.runs,
              options=[opts, None], dims=dims, progress=lambda m: say(f"{case.name}: {m}"))
    return Result(case.name, fmt, route, seconds, parity.ok, _worst_rel(parity), to_jsonable(b), error)


def _ms(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["skipped"]:
        return "skip"
    return f"{row['p50_ms']:.2f}"


def _row(latency: dict | None, model: int, batch: int) -> dict | None:
    if latency is None:
        return None
    return next((r for r in latency["rows"] if r["model"] == latency["models"][model] and r["batch"] == batch), None)


def _ratio(src: dict | None, onnx: dict | None) -> str:
    if not src or not onnx or src["skipped"] or onnx["skipped"]:
        return "-"
    return f"{onnx['p50_ms'] / src['p50_ms']:.2f}x"


def print_table(results: list[Result], args, machine: dict | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="modelport: conversion to ONNX, parity, and p50 latency (ms) source vs onnxruntime")
    for col, justify in [("model", "left"), ("route", "left"), ("convert s", "right"), ("parity", "center"),
                         ("max rel err", "right"), ("src b1", "right"), ("onnx b1", "right"), ("x b1", "right"),
                         ("src b8", "right"), ("onnx b8", "right"), ("x b8", "right")]:
        table.add_column(col, justify=justify)
    for r in results:
        parity = "-" if r.parity_ok is None else ("ok" if r.parity_ok else "FAIL")
        cells = [f"{r.name} ({r.src_format})", r.route, "-" if r.convert_s is None else f"{r.convert_s:.1f}", parity,
                 "-" if r.max_rel is None else f"{r.max_rel:.1e}"]
        for batch in (1, 8):
            src, onnx = _row(r.latency, 0, batch), _row(r.latency, 1, batch)
            cells += [_ms(src), _ms(onnx), _ratio(src, onnx)]
        table.add_row(*cells)
    caption = f"{args.runs} runs after {args.warmup} warm-up, interleaved; threads: {args.threads or 'framework default'}"
    if machine:
        caption += f"; {machine['cpus_usable']} usable CPUs ({machine['cpu_model']})"
    table.caption = caption
    console = Console(width=max(160, Console().width))
    console.print(table)
    for r in results:
        if r.error:
            console.print(f"[red]{r.name}[/red]: {r.error}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(c.name for c in CASES))
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    cases = [c for c in CASES if not wanted or c.name in wanted]
    from rich.console import Console

    err = Console(stderr=True)
    say = (lambda msg: err.print(f"[dim]{msg}[/dim]", highlight=False, soft_wrap=True)) if not args.json else (lambda msg: None)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="modelport-bench-") as tmp, contextlib.redirect_stdout(sys.stderr):
        for case in cases:  # stdout is the table's or the JSON's alone
            results.append(run_case(case, Path(tmp), args, say))
    machine = next((r.latency["machine"] for r in results if r.latency), None)
    if args.json:
        import json

        print(json.dumps({"results": to_jsonable(results), "seconds": time.perf_counter() - started}, indent=2))
    else:
        print_table(results, args, machine)
        err.print(f"[dim]total {time.perf_counter() - started:.0f} s[/dim]")
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
