"""Compress an ONNX model (quantize, fp16, prune) under a measured accuracy budget.

    compress(model, out, quantize="static", calibration="calib.npz", eval_data="eval.npz", max_drop=0.01)

The run: check the inputs -> (quantization pre-processing) -> prune -> quantize -> measure the
metric -> if the drop exceeds the budget, leave the most harmful layers uncompressed until it
holds (or fail, writing nothing) -> measure size, parameters, sparsity, MACs and latency of
both models in the same run -> rename the result into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelport.artifact import Artifact, StepRecord
from modelport.compress import accuracy, fp16, prune as prune_pass, quantize as quant
from modelport.compress.report import CompressReport, measure_latency, model_stats
from modelport.errors import BadInputError, CheckFailedError, UnsupportedError
from modelport.pipeline import Pipeline, Staging, StepResult, Verdict, read_lineage
from modelport.security.loaders import read_onnx

__all__ = ["compress", "default_output"]

ArrayData = str | Path | dict[str, np.ndarray]
_SUFFIX = {"dynamic": "int8", "static": "int8", "fp16": "fp16", "int4": "int4"}
FP16_RTOL, FP16_ATOL = 1e-2, 1e-3


def default_output(model: str | Path, quantize: str | None, prune: float | None) -> Path:
    """``model.int8.onnx``, ``model.pruned50.onnx``, ``model.pruned50.int8.onnx`` beside the source."""
    p = Path(model)
    tags = []
    if prune:
        tags.append(f"pruned{round(100 * prune)}")
    if quantize:
        tags.append(_SUFFIX.get(quantize, quantize))
    return p.with_name(f"{p.stem}.{'.'.join(tags) or 'compressed'}.onnx")


@dataclasses.dataclass(frozen=True)
class _Plan:
    quantize: str | None
    calibrate_method: str
    per_channel: bool
    keep_io_float32: bool
    prune: float | None
    prune_scope: str
    calibration: tuple[dict[str, np.ndarray], ...]
    structured: bool = False

    def steps(self) -> tuple[str, ...]:
        out = []
        if self.prune and self.structured:
            out.append(f"prune {self.prune:g} structured: channels/neurons by L2 magnitude (Torch-Pruning), re-exported with torch.onnx")
        elif self.prune:
            out.append(f"prune {self.prune:g} unstructured magnitude ({self.prune_scope} threshold)")
        if self.quantize == "static":
            out.append(f"quantize int8 static QDQ, {self.calibrate_method} calibration, "
                       f"{'per-channel' if self.per_channel else 'per-tensor'} weights")
        elif self.quantize == "dynamic":
            out.append(f"quantize int8 dynamic, {'per-channel' if self.per_channel else 'per-tensor'} weights")
        elif self.quantize == "int4":
            out.append("quantize int4 weight-only MatMulNBits, block 32, symmetric")
        elif self.quantize == "fp16":
            out.append(f"fp16{' (float32 inputs/outputs kept)' if self.keep_io_float32 else ''}")
        return tuple(out)


def _check_args(quantize, calibration, calibrate_method, prune, structured, eval_data, max_drop) -> None:
    if quantize is not None and quantize not in quant.MODES:
        raise BadInputError(f"unknown quantize mode {quantize!r}; known: {', '.join(quant.MODES)}")
    if quantize is None and prune is None:
        raise BadInputError("nothing to do: give quantize (dynamic, static, fp16, int4) and/or prune FRACTION")
    if prune is not None and not 0.0 < float(prune) < 1.0:
        raise BadInputError(f"prune fraction must be in (0, 1), got {prune}")
    if structured and prune is None:
        raise BadInputError("structured pruning needs a fraction (--prune FRACTION --structured)")
    if calibrate_method not in quant.CALIBRATION_METHODS:
        raise BadInputError(f"unknown calibration method {calibrate_method!r}; known: {', '.join(quant.CALIBRATION_METHODS)}")
    if quantize == "static" and calibration is None:
        raise BadInputError("static quantization needs calibration data (--calibration data.npz, keyed by input name)")
    if quantize != "static" and calibration is not None:
        raise BadInputError("calibration data is only used by static quantization (--quantize static)")
    if max_drop is not None and eval_data is None:
        raise BadInputError("an accuracy budget (max_drop) needs eval data with labels (--eval data.npz)")
    if max_drop is not None and not 0.0 <= float(max_drop) < 1.0:
        raise BadInputError(f"max_drop is a fraction of accuracy in [0, 1), got {max_drop}")


def _calibration_chunks(data: ArrayData, specs) -> tuple[dict[str, np.ndarray], ...]:
    from modelport.inputs import check_feeds, load_npz

    source = str(data) if not isinstance(data, dict) else "calibration arrays"
    feeds = check_feeds(load_npz(data) if not isinstance(data, dict) else dict(data), specs, source)
    sizes = {v.shape[0] if v.ndim else 0 for v in feeds.values()}
    if len(sizes) != 1 or 0 in sizes:
        ranks = {s.name: len(s.shape) for s in specs if s.shape is not None}
        if ranks and all(feeds[k].ndim == r for k, r in ranks.items() if k in feeds):
            # One feed as the model takes it (a scalar sr, a state batched on dim 1): one calibration sample.
            return (feeds,)
        raise BadInputError("calibration inputs must share a non-empty first (sample) dim", path=source)
    first = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    return tuple(quant.batches(feeds, first.pop() if len(first) == 1 else 32))


def _example_feeds(specs, data, calibration, source) -> dict[str, np.ndarray]:
    """Two samples to trace the PyTorch module with: eval data, else calibration, else random."""
    if data is not None:
        return {k: v[:2] for k, v in data.feeds.items()}
    if calibration:
        return {k: v[:2] for k, v in calibration[0].items()}
    from modelport.formats.onnx_format import index_bounds
    from modelport.inputs import make_inputs

    return make_inputs(specs, seed=0, bounds=index_bounds(source))[0]


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("onnx", "onnxruntime", "onnxconverter-common", "numpy", "torch", "torch-pruning"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


class _Work:
    """Trial models in a scratch dir beside the destination; each apply writes a fresh file."""

    def __init__(self, base: Path, plan: _Plan, work: Path) -> None:
        self.base, self.plan, self.work = base, plan, work
        self.count = 0
        self.layers: tuple[prune_pass.LayerSparsity, ...] = ()
        self.layers_of: dict[Path, tuple[prune_pass.LayerSparsity, ...]] = {}  # per trial written
        self.notes: list[str] = []
        self.original = None  # the model given to the step, described when nothing gets quantized
        self.large = False  # quantize chunk by chunk from memory-mapped weights (quant.quantize_dynamic_large)
        self.dest_name = "model.onnx"  # the output's file name (a large model's external data is named after it)

    def apply(self, exclude: frozenset[str], fractions: dict[str, float] | None = None) -> Path:
        """Compress with ``exclude`` left alone and ``fractions`` (node -> prune fraction) overriding the plan's."""
        import onnx

        self.count += 1
        if self.large:
            return self._apply_large(exclude, fractions)
        src = self.base
        if self.plan.prune and not self.plan.structured:
            model = read_onnx(src)
            self.layers = prune_pass.magnitude_prune(model, self.plan.prune, scope=self.plan.prune_scope, exclude=exclude,
                                                     fractions=fractions)
            src = self.work / f"trial{self.count}.pruned.onnx"
            onnx.save(model, str(src))
        dst = self.work / f"trial{self.count}.onnx"
        mode = self.plan.quantize
        if self.large:  # a directory per trial: the external data file is named for the destination
            dst = self.work / f"trial{self.count}" / self.dest_name
            dst.parent.mkdir()
        if mode == "dynamic" and self.large:
            quant.quantize_dynamic_large(src, dst, per_channel=self.plan.per_channel, exclude=exclude)
        elif mode == "dynamic":
            note = quant.quantize_dynamic(src, dst, per_channel=self.plan.per_channel, exclude=exclude)
            if note and note not in self.notes:  # weights inside If/Loop/Scan bodies: weight-only int8
                self.notes.append(note)
        elif mode == "static":
            note = quant.quantize_static(src, dst, self.plan.calibration, method=self.plan.calibrate_method,
                                         per_channel=self.plan.per_channel, exclude=exclude)
            if note and note not in self.notes:
                self.notes.append(note)
        elif mode == "int4":
            quant.quantize_int4(src, dst, exclude=exclude)
        elif mode == "fp16":
            fp16.convert_fp16(src, dst, keep_io_float32=self.plan.keep_io_float32, exclude=exclude)
        else:
            shutil.copyfile(src, dst)
        if mode in ("dynamic", "static", "int4") and not exclude:
            # the first (full) trial: a model where nothing was quantized is an error, not "1.00x"
            quant.check_quantized(onnx.load(str(src), load_external_data=False),
                                  onnx.load(str(dst), load_external_data=False), mode, self.original)
        if src != self.base:
            src.unlink(missing_ok=True)
        self.layers_of[dst] = self.layers
        return dst

    def _apply_large(self, exclude: frozenset[str], fractions: dict[str, float] | None) -> Path:
        """``apply`` above the threshold: every pass chunk by chunk from memory-mapped weights (compress.large)."""
        from modelport.compress import large as big

        dst = self.work / f"trial{self.count}" / self.dest_name  # the external data file is named for it
        dst.parent.mkdir()
        src, mode = self.base, self.plan.quantize
        if self.plan.prune:
            src = dst if mode is None else self.work / f"trial{self.count}.pruned" / "model.onnx"
            src.parent.mkdir(exist_ok=True)
            self.layers = big.magnitude_prune(self.base, src, self.plan.prune, scope=self.plan.prune_scope,
                                              exclude=exclude, fractions=fractions)
        if mode == "dynamic":
            quant.quantize_dynamic_large(src, dst, per_channel=self.plan.per_channel, exclude=exclude)
        elif mode == "int4":
            big.quantize_int4(src, dst, exclude=exclude)
        elif mode == "fp16":
            big.convert_fp16(src, dst, keep_io_float32=self.plan.keep_io_float32, exclude=exclude)
        elif mode == "static":  # calibrated once (the float model's ranges), unless pruning changes it per trial
            ranges = None if self.plan.prune else getattr(self, "static_ranges", None)
            if ranges is None:
                scratch = self.work / f"trial{self.count}.calibration"
                scratch.mkdir()
                ranges = big.calibrate(src, self.plan.calibration, scratch, method=self.plan.calibrate_method)
                shutil.rmtree(scratch)
                if not self.plan.prune:
                    self.static_ranges = ranges
            _n, note = big.quantize_static(src, dst, ranges, per_channel=self.plan.per_channel, exclude=exclude)
            if note and note not in self.notes:
                self.notes.append(note)
        before = _load_proto(src)
        if mode in ("dynamic", "static", "int4") and not exclude:  # the first (full) trial: something must be quantized
            quant.check_quantized(before, _load_proto(dst) if dst.is_file() else before, mode, self.original)
        if not dst.is_file():  # accuracy control left every quantizable layer in float: the model as it was
            from modelport.formats import onnx_data

            onnx_data.save(before, dst, base_dir=src.parent, external=True)
        if src not in (self.base, dst):  # the pruned model that was then quantized
            shutil.rmtree(src.parent)
        self.layers_of[dst] = self.layers
        return dst


def _parity(src: Path, out: Path, eval_data: accuracy.EvalData | None, enforce: bool):
    from modelport.verify import verify

    inputs = None
    if eval_data is not None:
        inputs = {k: v[:16] for k, v in eval_data.feeds.items()}
    tol = {"rtol": FP16_RTOL, "atol": FP16_ATOL} if enforce else {}
    return verify(str(src), str(out), a_format="onnx", b_format="onnx", inputs=inputs, **tol)


def _torch_top1(net, names: list[str], data: accuracy.EvalData) -> float:
    """Top-1 of a PyTorch module on the eval data (structured trials are scored before any export)."""
    import torch

    n = len(data.labels)
    preds = []
    with torch.no_grad():
        for i in range(0, n, 256):
            out = net(*[torch.from_numpy(np.ascontiguousarray(data.feeds[k][i:i + 256])) for k in names])
            preds.append((out[0] if isinstance(out, (tuple, list)) else out).argmax(-1).numpy())
    return float(np.mean(np.concatenate(preds) == data.labels))


def _structured(src: Path, work: Path, fraction: float, feeds, data, baseline, max_drop, say):
    """Structured pruning; under a budget, the layers that hurt most are pruned less (accuracy.relax).

    Trials prune copies of the PyTorch module and are scored in PyTorch; only the chosen one
    is exported. Returns (model written, per-layer widths, notes, reduced fractions, ranking, trials).
    """
    from modelport.compress import structured as sp

    say("structured pruning (ONNX -> PyTorch -> Torch-Pruning -> ONNX)")
    scratch = work / "structured"
    scratch.mkdir()
    model = sp.load(src, scratch, feeds)
    net, layers = sp.prune(model, fraction)
    if all(layer.width_after == layer.width_before for layer in layers):
        raise BadInputError("nothing to prune: every Conv/Linear layer produces a model output")
    reduced, ranking, trials = (), (), 1
    if data is not None and max_drop is not None:
        score = lambda trial: _torch_top1(trial[0], model.names, data)  # noqa: E731
        metric = score((net, layers))
        if baseline - metric > max_drop:
            say(f"top-1 drop {100 * (baseline - metric):.2f} pts > {100 * max_drop:g}: ranking {len(model.layers)} layers")
        res = accuracy.relax(lambda fr: sp.prune(model, fraction, fr), model.layers, score, baseline, max_drop,
                                     fraction, first=((net, layers), metric), say=say, discard=lambda _t: None)
        net, layers = res.path
        if baseline - res.metric > max_drop:
            raise CheckFailedError(
                f"accuracy budget cannot be met by structured pruning: top-1 {100 * baseline:.2f}% -> "
                f"{100 * res.metric:.2f}% even with every layer unpruned (prune less, or recover accuracy by "
                "distillation); nothing written", path=src)
        if all(layer.width_after == layer.width_before for layer in layers):
            raise CheckFailedError(
                f"accuracy budget cannot be met by structured pruning: the budget of {100 * max_drop:g} pts holds only "
                "with no channel removed (prune less, or recover accuracy by distillation); nothing written", path=src)
        reduced, ranking, trials = res.fractions, res.ranking, res.trials
    path = scratch / "structured.onnx"
    sp.export(model, net, path)
    return path, layers, model.notes, reduced, ranking, trials


def compress(
    model: str | Path,
    out: str | Path | None = None,
    *,
    quantize: str | None = None,
    calibration: ArrayData | None = None,
    calibrate_method: str = "minmax",
    per_channel: bool = True,
    keep_io_float32: bool = True,
    prune: float | None = None,
    prune_scope: str = "layer",
    structured: bool = False,
    eval_data: ArrayData | None = None,
    max_drop: float | None = None,
    bench_batches: Sequence[int] = (1, 8),
    bench_runs: int = 20,
    progress: Callable[[str], None] | None = None,
) -> CompressReport:
    """Quantize and/or prune an ONNX model, measure what it cost, and write it atomically.

    Args:
        model: an ONNX file.
        out: where to write (default: beside the source, e.g. ``model.int8.onnx``).
        quantize: "dynamic" (int8 weights), "static" (int8 QDQ, needs calibration), "fp16",
            "int4" (weight-only MatMulNBits), or None.
        calibration: .npz or dict of arrays keyed by input name (static only).
        calibrate_method: "minmax", "entropy" or "percentile".
        per_channel: per-output-channel weight scales (int8).
        keep_io_float32: fp16 models keep float32 inputs and outputs.
        prune: fraction of Conv/Gemm/MatMul weights to set to zero, in (0, 1).
        prune_scope: "layer" (that fraction of every layer) or "global" (one threshold).
        structured: remove whole channels/neurons (through PyTorch and Torch-Pruning) instead of
            zeroing single weights; ``prune`` is then the share of channels removed per layer.
        eval_data: .npz or dict with the inputs plus integer ``labels``: top-1 before/after.
        max_drop: largest acceptable top-1 drop (0.01 = one point); the layers that hurt most
            are left uncompressed (quantization) or pruned less, their fraction halved step by
            step down to dense (pruning; structured trials are scored on the PyTorch module),
            until it holds.
        bench_batches, bench_runs: latency measurement (runs 0: skipped).
        progress: called with a line per phase.

    Raises:
        BadInputError: bad arguments or data (names, shapes, labels), nothing to prune.
        UnsupportedError: a model the chosen mode cannot handle.
        CheckFailedError: the accuracy budget cannot be met, or fp16 parity fails; nothing written.
    """
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    _check_args(quantize, calibration, calibrate_method, prune, structured, eval_data, max_drop)
    ctx = _context(model, out, quantize, calibration, calibrate_method, per_channel, keep_io_float32, prune,
                   prune_scope, structured, eval_data, max_drop, say)
    with Staging(ctx.dest) as staging:
        if ctx.data is not None:
            say("measuring the original's top-1 accuracy")
            ctx.baseline = accuracy.top1(ctx.src, ctx.data)
        steps = ([StructuredPruneStep(ctx)] if structured else []) + \
                ([QuantizePruneStep(ctx)] if quantize or not structured else [])
        result = Pipeline(steps, verify=_parity_verifier(ctx), progress=say).run(
            Artifact(str(ctx.src), "onnx", lineage=read_lineage(ctx.src)), staging)
        say("latency")
        final = Path(result.artifact.path)
        if ctx.large:  # one model at a time: two sessions of a large model would hold its weights twice
            p50 = [measure_latency([p], bench_batches, bench_runs, say)[0] for p in (ctx.src, final)]
        else:
            p50 = measure_latency([ctx.src, final], bench_batches, bench_runs, say)
        outcome = _Outcome.merge([r.details for r in result.results])
        before = model_stats(ctx.src, str(ctx.src), p50[0], ctx.baseline)
        after = model_stats(final, str(ctx.dest), p50[1], outcome.metric)
        staging.place(final, ctx.dest)
        data = final.with_name(final.name + ".data")
        if data.is_file():  # external data (a model above the threshold), placed with its model
            staging.place(data, ctx.dest.with_name(ctx.dest.name + ".data"))
    from modelport.formats.onnx_format import graph_signature

    parity = result.verdict.parity if result.verdict else None
    artifact = dataclasses.replace(result.artifact, path=str(ctx.dest),
                                   signature=graph_signature(_load_proto(ctx.dest)))
    return CompressReport(
        str(ctx.src), str(ctx.dest), artifact, _report_steps(ctx.plan, outcome), before, after,
        "top-1" if ctx.data is not None else None, max_drop, outcome.kept, outcome.ranking, outcome.layers,
        outcome.structured_layers, outcome.trials, parity, quantize == "fp16", _within_budget(ctx, outcome, parity),
        time.perf_counter() - t0, _versions(), tuple(outcome.notes), reduced_fractions=outcome.reduced,
    )


def _load_proto(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _within_budget(ctx: _Context, outcome: _Outcome, parity) -> bool:
    """The verdict from what was measured: the budget (when one was set) and fp16 parity (when checked)."""
    budget_ok = ctx.max_drop is None or (ctx.baseline - outcome.metric <= ctx.max_drop)
    parity_ok = parity is None or ctx.plan.quantize != "fp16" or parity.ok
    return bool(budget_ok and parity_ok)


@dataclasses.dataclass
class _Context:
    """What compress's steps share: the source, the plan, the eval data and the original's metric."""

    src: Path
    dest: Path
    source: Any  # the ONNX proto
    specs: tuple
    plan: _Plan
    data: accuracy.EvalData | None
    max_drop: float | None
    say: Callable[[str], None]
    baseline: float | None = None
    large: bool = False  # weights above the external-data threshold: memory-mapped, quantized chunk by chunk


def _context(model, out, quantize, calibration, calibrate_method, per_channel, keep_io_float32, prune, prune_scope,
             structured, eval_data, max_drop, say) -> _Context:
    from modelport.formats.onnx_format import graph_signature, load_model

    src = Path(model)
    if not src.is_file():
        raise BadInputError("no such ONNX file", path=src)
    from modelport.formats import onnx_data

    large = onnx_data.is_large(src)
    if large and structured:
        raise UnsupportedError(f"structured pruning of a model whose weights exceed {onnx_data.threshold()} bytes is not "
                               "supported (it re-exports the model through PyTorch and torch.onnx); --quantize dynamic, "
                               "static, int4 or fp16 and unstructured --prune are", path=src)
    source = load_model(src, load_external_data=not large)  # a large model's weights stay in their files
    specs = graph_signature(source).inputs
    plan = _Plan(quantize, calibrate_method, per_channel, keep_io_float32, float(prune) if prune else None,
                 prune_scope, _calibration_chunks(calibration, specs) if calibration is not None else (), structured)
    data = accuracy.load_eval_data(eval_data, specs) if eval_data is not None else None
    if plan.prune and not structured and not prune_pass.prunable_weights(source):
        prune_pass.magnitude_prune(source, plan.prune, scope=prune_scope)  # raises the clear error
    dest = Path(out) if out is not None else default_output(src, quantize, plan.prune)
    if dest.resolve() == src.resolve():
        raise BadInputError("the output would overwrite the input model", path=dest)
    return _Context(src, dest, source, specs, plan, data, max_drop, say, large=large)


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What the steps found: the metric of the chosen model and what accuracy control decided."""

    metric: float | None = None
    kept: tuple[str, ...] = ()
    ranking: tuple = ()
    layers: tuple = ()
    structured_layers: tuple = ()
    reduced: tuple[tuple[str, float], ...] = ()
    trials: int = 0
    notes: tuple[str, ...] = ()

    @staticmethod
    def merge(parts: list[_Outcome]) -> _Outcome:
        last = parts[-1]
        return _Outcome(last.metric, last.kept, next((p.ranking for p in reversed(parts) if p.ranking), ()),
                        last.layers, next((p.structured_layers for p in parts if p.structured_layers), ()),
                        sum((p.reduced for p in parts), ()), sum(p.trials for p in parts),
                        sum((p.notes for p in parts), ()))


def _record(ctx: _Context, tool: str, detail: str, verified: bool | None) -> StepRecord:
    if ctx.baseline is not None and ctx.max_drop is not None:
        verified = True if verified is None else verified  # the budget held, or the step raised
    return StepRecord("compress", "onnx", "onnx", tool, tuple(_versions().items()), detail, verified)


class StructuredPruneStep:
    """Whole channels removed through PyTorch (Torch-Pruning); under a budget, harmful layers pruned less."""

    name = "compress"

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    def describe(self) -> str:
        return f"structured pruning {self.ctx.plan.prune:g} (ONNX -> PyTorch -> Torch-Pruning -> ONNX)"

    def run(self, artifact: Artifact, staging: Staging) -> StepResult:
        ctx = self.ctx
        feeds = _example_feeds(ctx.specs, ctx.data, ctx.plan.calibration, ctx.source)
        path, layers, notes, reduced, ranking, trials = _structured(
            Path(artifact.path), staging.scratch("structured"), ctx.plan.prune, feeds, ctx.data, ctx.baseline,
            ctx.max_drop, ctx.say)
        last = ctx.plan.quantize is None  # else the quantized model is what gets measured
        metric = accuracy.top1(path, ctx.data) if ctx.data is not None and last else None
        if last and ctx.max_drop is not None and ctx.baseline - metric > ctx.max_drop:
            raise CheckFailedError(  # the exported model scores differently from the trial that met the budget
                f"accuracy budget not met: top-1 {100 * ctx.baseline:.2f}% -> {100 * metric:.2f}% after structured "
                f"pruning (drop {100 * (ctx.baseline - metric):.2f} pts > {100 * ctx.max_drop:g}); nothing written",
                path=ctx.src)
        outcome = _Outcome(metric, (), ranking, (), layers, reduced, trials, tuple(notes))
        detail = ctx.plan.steps()[0] + _metric_note(ctx, metric)
        return StepResult(Artifact(str(path), "onnx"), _record(ctx, "torch-pruning", detail, None), details=outcome)


class QuantizePruneStep:
    """Quantize (int8, int4, fp16) and/or magnitude-prune; under a budget, harmful layers kept or pruned less."""

    name = "compress"

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    def describe(self) -> str:
        return " -> ".join(s for s in self.ctx.plan.steps() if "structured" not in s)

    def run(self, artifact: Artifact, staging: Staging) -> StepResult:
        ctx, work = self.ctx, staging.scratch("compress")
        prepared, notes = _prepare(Path(artifact.path), ctx, work)
        runner = _Work(work / "base.onnx", ctx.plan, work)
        runner.large, runner.dest_name = ctx.large, ctx.dest.name
        if ctx.plan.quantize in ("dynamic", "static", "int4"):  # before onnxruntime's quantizer (it may crash on QDQ)
            runner.original = ctx.source if Path(artifact.path) == ctx.src else _load_proto(Path(artifact.path))
            quant.check_quantizable(prepared, ctx.plan.quantize, runner.original)
        result_path = runner.apply(frozenset())
        metric = accuracy.top1(result_path, ctx.data) if ctx.data is not None else None
        outcome = _Outcome(metric, layers=runner.layers, trials=1, notes=tuple(notes + runner.notes))
        if ctx.max_drop is not None and ctx.baseline - metric > ctx.max_drop:
            result_path, outcome = _control(ctx, runner, prepared, result_path, outcome)
        q = ctx.plan.quantize
        tool = ("onnxruntime.quantization" if q in ("dynamic", "static", "int4")
                else "onnxconverter-common" if q == "fp16" else "modelport.compress.prune")
        detail = "; ".join(_report_steps(ctx.plan, outcome)) + _metric_note(ctx, outcome.metric)
        return StepResult(Artifact(str(result_path), "onnx"), _record(ctx, tool, detail, None),
                          tolerance=(FP16_RTOL, FP16_ATOL) if q == "fp16" else None, details=outcome)


def _metric_note(ctx: _Context, metric: float | None) -> str:
    return f"; top-1 {100 * ctx.baseline:.2f}% -> {100 * metric:.2f}%" if None not in (ctx.baseline, metric) else ""


def _prepare(start: Path, ctx: _Context, work: Path):
    """Quantization pre-processing (int8) and node names (accuracy control refers to nodes by name)."""
    import onnx

    notes: list[str] = []
    base = work / "base.onnx"
    if ctx.large:  # weights above the threshold: never into a protobuf (onnxruntime's pre-processing would)
        from modelport.formats import onnx_data

        notes.append(f"weights above {onnx_data.threshold()} bytes: " + (
            "onnxruntime's quantization pre-processing skipped; " if ctx.plan.quantize in ("dynamic", "static") else "")
            + "weights compressed a block at a time from their memory-mapped external data")
        prepared = ctx.source
        if quant.name_nodes(prepared):
            notes.append("unnamed nodes were given names (accuracy control refers to nodes by name)")
        onnx_data.save(prepared, base, base_dir=start.parent, external=True)
        return prepared, notes
    if ctx.plan.quantize in ("dynamic", "static"):
        ctx.say("quantization pre-processing")
        scratch = work / "preprocess"
        scratch.mkdir()
        notes += quant.preprocess(start, base, scratch)
        prepared = read_onnx(base)
        if ctx.plan.quantize == "static" and ctx.plan.per_channel and not quant.per_axis_opset(prepared):
            notes.append("weight scales per tensor: the model's opset is below 13, where DequantizeLinear has no axis")
    else:
        prepared = read_onnx(start) if start != ctx.src else ctx.source
    if quant.name_nodes(prepared):
        notes.append("unnamed nodes were given names (accuracy control refers to nodes by name)")
    onnx.save(prepared, str(base))
    return prepared, notes


def _control(ctx: _Context, runner: _Work, prepared, result_path: Path, outcome: _Outcome) -> tuple[Path, _Outcome]:
    """The budget is exceeded: leave the most harmful layers uncompressed (or prune them less) until it holds."""
    quantize, baseline, max_drop, metric = ctx.plan.quantize, ctx.baseline, ctx.max_drop, outcome.metric
    if quantize:
        candidates = quant.quantizable_nodes(prepared, quantize)
    else:
        names = {n for n, _ in prune_pass.prunable_weights(prepared).values()}
        candidates = [n.name for n in prepared.graph.node if n.name in names]
    ctx.say(f"top-1 drop {100 * (baseline - metric):.2f} pts > {100 * max_drop:g}: ranking {len(candidates)} layers")
    evaluate = lambda p: accuracy.top1(p, ctx.data)  # noqa: E731
    if quantize:
        res = accuracy.control(runner.apply, candidates, evaluate, baseline, max_drop,
                               first=(result_path, metric), say=ctx.say)
    else:  # pruning alone: prune the harmful layers less before leaving them dense
        res = accuracy.relax(lambda fr: runner.apply(frozenset(), fr), candidates, evaluate, baseline,
                             max_drop, ctx.plan.prune, first=(result_path, metric), say=ctx.say)
    layers = runner.layers_of.get(Path(res.path), runner.layers)  # the chosen trial's, not the last one's
    chosen = dataclasses.replace(outcome, metric=res.metric, kept=res.kept, ranking=res.ranking, layers=layers,
                                 reduced=res.fractions, trials=res.trials)
    kept, ranking, reduced = res.kept, res.ranking, res.fractions
    if baseline - res.metric > max_drop:
        raise CheckFailedError(
            f"accuracy budget cannot be met: top-1 {100 * baseline:.2f}% -> {100 * res.metric:.2f}% "
            f"(drop {100 * (baseline - res.metric):.2f} pts > {100 * max_drop:g}) even with all "
            f"{len(kept)} layer(s) left uncompressed; nothing written", path=ctx.src)
    if candidates and len(kept) == len(candidates):
        raise CheckFailedError(
            f"accuracy budget cannot be met: top-1 drop {100 * (ranking[0].metric - baseline) * -1:.2f} pts "
            f"with only the most harmful layer ({ranking[0].node}) left uncompressed, and the budget of "
            f"{100 * max_drop:g} pts holds only with all {len(candidates)} layers left uncompressed "
            "(nothing compressed); nothing written", path=ctx.src)
    if not quantize and all(layer.sparsity_after <= layer.sparsity_before for layer in layers):
        raise CheckFailedError(
            f"accuracy budget cannot be met: the budget of {100 * max_drop:g} pts holds only with fractions "
            f"({', '.join(f'{n} {f:g}' for n, f in reduced)}) that prune no weight; nothing written", path=ctx.src)
    return Path(res.path), chosen


def _parity_verifier(ctx: _Context):
    """fp16 must match the original at fp16 tolerance; pruning alone is compared and reported, not enforced."""
    quantize = ctx.plan.quantize
    if quantize not in ("fp16", None):
        return None  # int8/int4 are judged on the task metric (--eval), not elementwise

    def verify(source: Artifact, result: Artifact, _tolerance) -> Verdict:
        parity = _parity(Path(source.path), Path(result.path), ctx.data, enforce=quantize == "fp16")
        return Verdict(parity.ok, f"fp16 model fails parity at fp16 tolerance: {parity.summary()}; nothing written",
                       parity, enforce=quantize == "fp16")

    return verify


def _report_steps(plan: _Plan, outcome: _Outcome) -> tuple[str, ...]:
    """What was applied, in order, with accuracy control's decisions."""
    steps = plan.steps()
    less = [(n, f) for n, f in outcome.reduced if f > 0]
    if less:
        steps += (f"accuracy control: pruned {len(less)} layer(s) less than {plan.prune:g}: "
                  + ", ".join(f"{n} at {f:g}" for n, f in less),)
    dense = [n for n, f in outcome.reduced if f == 0 and n not in outcome.kept]
    if dense:
        steps += (f"accuracy control: left {len(dense)} layer(s) unpruned: {', '.join(dense)}",)
    if outcome.kept:
        steps += (f"accuracy control: kept {len(outcome.kept)} layer(s) uncompressed: {', '.join(outcome.kept)}",)
    return steps
