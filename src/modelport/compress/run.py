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
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from modelport.artifact import Artifact, StepRecord
from modelport.errors import BadInputError, CheckFailedError, UnsupportedError
from modelport.compress import accuracy, fp16, prune as prune_pass, quantize as quant
from modelport.compress.report import CompressReport, ModelStats

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
        raise BadInputError("calibration inputs must share a non-empty first (sample) dim", path=source)
    first = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
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

    def apply(self, exclude: frozenset[str], fractions: dict[str, float] | None = None) -> Path:
        """Compress with ``exclude`` left alone and ``fractions`` (node -> prune fraction) overriding the plan's."""
        import onnx

        self.count += 1
        src = self.base
        if self.plan.prune and not self.plan.structured:
            model = onnx.load(str(src))
            self.layers = prune_pass.magnitude_prune(model, self.plan.prune, scope=self.plan.prune_scope, exclude=exclude,
                                                     fractions=fractions)
            src = self.work / f"trial{self.count}.pruned.onnx"
            onnx.save(model, str(src))
        dst = self.work / f"trial{self.count}.onnx"
        mode = self.plan.quantize
        if mode == "dynamic":
            quant.quantize_dynamic(src, dst, per_channel=self.plan.per_channel, exclude=exclude)
        elif mode == "static":
            quant.quantize_static(src, dst, self.plan.calibration, method=self.plan.calibrate_method,
                                  per_channel=self.plan.per_channel, exclude=exclude)
        elif mode == "int4":
            if quant.quantize_int4(src, dst, exclude=exclude) == 0 and not exclude:
                raise UnsupportedError("int4 found no MatMul with a constant 2-D weight to quantize (Conv/Gemm models: use static or dynamic)")
        elif mode == "fp16":
            fp16.convert_fp16(src, dst, keep_io_float32=self.plan.keep_io_float32, exclude=exclude)
        else:
            shutil.copyfile(src, dst)
        if src != self.base:
            src.unlink(missing_ok=True)
        self.layers_of[dst] = self.layers
        return dst


def _stats(path: Path, label: str, p50: dict[int, float | None], metric: float | None) -> ModelStats:
    import onnx

    model = onnx.load(str(path))
    sparsity = prune_pass.weight_sparsity(model)
    try:
        from modelport.inspect.run import inspect

        rep = inspect(str(path), "onnx")
        size, params, macs = rep.file_bytes, rep.params, rep.macs
    except ImportError:  # inspection not there: file size only
        size, params, macs = path.stat().st_size, None, None
    return ModelStats(label, size, params, sparsity, macs, p50, metric)


def _latency(paths: Sequence[Path], batches: Sequence[int], runs: int, say) -> list[dict[int, float | None]]:
    """p50 per batch for each model, measured side by side in one run."""
    out: list[dict[int, float | None]] = [{} for _ in paths]
    if runs <= 0 or not batches:
        return out
    from modelport.bench.run import bench

    report = bench([str(p) for p in paths], batches=batches, runs=runs, warmup=3, progress=say)
    index = {name: i for i, name in enumerate(report.models)}
    for row in report.rows:
        i = index.get(row.model)
        if i is not None:
            out[i][row.batch] = row.p50_ms
    return out


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
    import onnx

    from modelport.formats.onnx_format import graph_signature, load_model

    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    _check_args(quantize, calibration, calibrate_method, prune, structured, eval_data, max_drop)
    src = Path(model)
    if not src.is_file():
        raise BadInputError("no such ONNX file", path=src)
    source = load_model(src)
    specs = graph_signature(source).inputs
    plan = _Plan(quantize, calibrate_method, per_channel, keep_io_float32, float(prune) if prune else None,
                 prune_scope, _calibration_chunks(calibration, specs) if calibration is not None else (), structured)
    data = accuracy.load_eval_data(eval_data, specs) if eval_data is not None else None
    if plan.prune and not structured and not prune_pass.prunable_weights(source):
        prune_pass.magnitude_prune(source, plan.prune, scope=prune_scope)  # raises the clear error
    dest = Path(out) if out is not None else default_output(src, quantize, plan.prune)
    if dest.resolve() == src.resolve():
        raise BadInputError("the output would overwrite the input model", path=dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    notes: list[str] = []
    structured_layers: tuple = ()
    reduced: tuple[tuple[str, float], ...] = ()
    s_ranking, s_trials = (), 0
    try:
        base = work / "base.onnx"
        start = src
        baseline = None
        if data is not None:
            say("measuring the original's top-1 accuracy")
            baseline = accuracy.top1(src, data)
        if structured:
            feeds = _example_feeds(specs, data, plan.calibration, source)
            start, structured_layers, more, reduced, s_ranking, s_trials = _structured(
                src, work, plan.prune, feeds, data, baseline, max_drop, say)
            notes += more
        if quantize in ("dynamic", "static"):
            say("quantization pre-processing")
            scratch = work / "preprocess"
            scratch.mkdir()
            notes += quant.preprocess(start, base, scratch)
            prepared = onnx.load(str(base))
        else:
            prepared = onnx.load(str(start)) if structured else source
        if quant.name_nodes(prepared):
            notes.append("unnamed nodes were given names (accuracy control refers to nodes by name)")
        onnx.save(prepared, str(base))
        runner = _Work(base, plan, work)
        say(" -> ".join(plan.steps()))
        result_path = runner.apply(frozenset())
        metric = accuracy.top1(result_path, data) if data is not None else None
        kept: tuple[str, ...] = ()
        ranking: tuple = s_ranking
        trials = 1 + s_trials
        if data is not None and max_drop is not None and baseline - metric > max_drop and structured and not quantize:
            raise CheckFailedError(  # the exported model scores differently from the trial that met the budget
                f"accuracy budget not met: top-1 {100 * baseline:.2f}% -> {100 * metric:.2f}% after structured pruning "
                f"(drop {100 * (baseline - metric):.2f} pts > {100 * max_drop:g}); nothing written", path=src)
        if data is not None and max_drop is not None and baseline - metric > max_drop:
            if quantize:
                candidates = quant.quantizable_nodes(prepared, quantize)
            else:
                names = {n for n, _ in prune_pass.prunable_weights(prepared).values()}
                candidates = [n.name for n in prepared.graph.node if n.name in names]
            say(f"top-1 drop {100 * (baseline - metric):.2f} pts > {100 * max_drop:g}: ranking {len(candidates)} layers")
            evaluate = lambda p: accuracy.top1(p, data)  # noqa: E731
            if quantize:
                res = accuracy.control(runner.apply, candidates, evaluate, baseline, max_drop,
                                               first=(result_path, metric), say=say)
            else:  # pruning alone: prune the harmful layers less before leaving them dense
                res = accuracy.relax(lambda fr: runner.apply(frozenset(), fr), candidates, evaluate, baseline,
                                             max_drop, plan.prune, first=(result_path, metric), say=say)
            result_path, metric, kept, ranking = Path(res.path), res.metric, res.kept, res.ranking
            runner.layers = runner.layers_of.get(result_path, runner.layers)  # the chosen trial's, not the last one's
            trials += res.trials - 1
            reduced += res.fractions
            if baseline - metric > max_drop:
                raise CheckFailedError(
                    f"accuracy budget cannot be met: top-1 {100 * baseline:.2f}% -> {100 * metric:.2f}% "
                    f"(drop {100 * (baseline - metric):.2f} pts > {100 * max_drop:g}) even with all "
                    f"{len(kept)} layer(s) left uncompressed; nothing written", path=src)
            if candidates and len(kept) == len(candidates):
                raise CheckFailedError(
                    f"accuracy budget cannot be met: top-1 drop {100 * (ranking[0].metric - baseline) * -1:.2f} pts "
                    f"with only the most harmful layer ({ranking[0].node}) left uncompressed, and the budget of "
                    f"{100 * max_drop:g} pts holds only with all {len(candidates)} layers left uncompressed "
                    "(nothing compressed); nothing written", path=src)
            if not quantize and all(layer.sparsity_after <= layer.sparsity_before for layer in runner.layers):
                raise CheckFailedError(
                    f"accuracy budget cannot be met: the budget of {100 * max_drop:g} pts holds only with fractions "
                    f"({', '.join(f'{n} {f:g}' for n, f in reduced)}) that prune no weight; nothing written", path=src)
        parity = None
        if quantize == "fp16" or (quantize is None):
            say("parity")
            parity = _parity(src, result_path, data, enforce=quantize == "fp16")
            if quantize == "fp16" and not parity:
                raise CheckFailedError(f"fp16 model fails parity at fp16 tolerance: {parity.summary()}; nothing written", path=src)
        say("latency")
        p50 = _latency([src, result_path], bench_batches, bench_runs, say)
        before = _stats(src, str(src), p50[0], baseline)
        after = _stats(result_path, str(dest), p50[1], metric)
        steps = plan.steps()
        less = [(n, f) for n, f in reduced if f > 0]
        if less:
            steps += (f"accuracy control: pruned {len(less)} layer(s) less than {plan.prune:g}: "
                      + ", ".join(f"{n} at {f:g}" for n, f in less),)
        dense = [n for n, f in reduced if f == 0 and n not in kept]
        if dense:
            steps += (f"accuracy control: left {len(dense)} layer(s) unpruned: {', '.join(dense)}",)
        if kept:
            steps += (f"accuracy control: kept {len(kept)} layer(s) uncompressed: {', '.join(kept)}",)
        detail = "; ".join(steps)
        if baseline is not None:
            detail += f"; top-1 {100 * baseline:.2f}% -> {100 * metric:.2f}%"
        record = StepRecord("compress", "onnx", "onnx", "onnxruntime.quantization" if quantize in ("dynamic", "static", "int4")
                            else ("onnxconverter-common" if quantize == "fp16" else "modelport.compress.prune"),
                            tuple(_versions().items()), detail,
                            verified=(bool(parity) if quantize == "fp16" else (True if max_drop is not None else None)))
        artifact = Artifact(str(dest), "onnx", graph_signature(onnx.load(str(result_path), load_external_data=False)), (record,))
        os.replace(result_path, dest)
        return CompressReport(
            str(src), str(dest), artifact, steps, before, after, "top-1" if data is not None else None, max_drop,
            kept, ranking, runner.layers, structured_layers, trials, parity, quantize == "fp16", True, time.perf_counter() - t0, _versions(), tuple(notes),
            reduced_fractions=reduced,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
