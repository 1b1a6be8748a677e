"""Accuracy control: measure the task metric, and keep the layers that hurt it most uncompressed.

    drop(S) = metric(original) - metric(compressed with the layers in S left alone)

1. Compress everything; if drop({}) <= max_drop, done.
2. Rank each candidate layer l by the metric with only l left alone: metric(S={l}).
   The layers whose exclusion recovers most come first (ties: graph order).
3. Leave the top 1, 2, 3, … layers alone until drop <= max_drop. If the budget needs every
   layer left alone, it cannot be met: the caller reports that and writes nothing.

Pruning (unstructured, and structured on the PyTorch module) can do better than
all-or-nothing (``relax``): a harmful layer is first pruned
less, its fraction halved step by step, before it is left dense:

    f_l in  f, f/2, f/4, 0     for the most harmful layer, then the next, …

(a layer is dense before the next most harmful one is relieved), so the layers that hurt
least keep the full fraction. Once the budget holds, the layers relieved before the last
one get their fraction raised back, step by step, while it still holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from modelport.errors import BadInputError

__all__ = ["EvalData", "LayerSensitivity", "ControlResult", "RELAX_STEPS", "load_eval_data", "top1", "control", "relax"]

RELAX_STEPS = (0.5, 0.25, 0.0)  # a harmful layer's prune fraction: halved, quartered, then none


@dataclasses.dataclass(frozen=True)
class EvalData:
    """Inputs (checked against the model's signature) and integer class labels."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray
    source: str


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    """The metric with this one layer left uncompressed (higher: the layer hurts more)."""

    node: str
    metric: float


@dataclasses.dataclass(frozen=True)
class ControlResult:
    path: object  # the model chosen: a path (ONNX passes) or whatever ``apply`` returned
    metric: float
    kept: tuple[str, ...]
    ranking: tuple[LayerSensitivity, ...]
    trials: int
    fractions: tuple[tuple[str, float], ...] = ()  # relax: the layers pruned less, and their fraction


def load_eval_data(data: str | Path | dict[str, np.ndarray], specs, *, key: str = "labels") -> EvalData:
    """Eval inputs plus ``labels`` from an .npz or dict; names, shapes and label count checked."""
    from modelport.inputs import check_feeds, load_npz

    source = str(data) if not isinstance(data, dict) else "eval arrays"
    arrays = load_npz(data) if not isinstance(data, dict) else dict(data)
    if key not in arrays:
        raise BadInputError(f"no {key!r} array (give the inputs plus integer class labels)", path=source)
    labels = np.asarray(arrays.pop(key))
    feeds = check_feeds(arrays, specs, source)
    sizes = {k: v.shape[0] if v.ndim else 0 for k, v in feeds.items()}
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise BadInputError(f"{key!r} must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}", path=source)
    wrong = {k: n for k, n in sizes.items() if n != labels.shape[0]}
    if wrong:
        raise BadInputError(f"{labels.shape[0]} labels but {wrong} samples (first dim of the inputs)", path=source)
    if labels.shape[0] == 0:
        raise BadInputError("no samples to evaluate on", path=source)
    return EvalData(feeds, labels, source)


def _chunk_size(specs) -> int:
    first = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    return first.pop() if len(first) == 1 else 64


def predictions(path: str | Path, data: EvalData) -> np.ndarray:
    """Class predictions (argmax of the first output's last axis) over the eval set."""
    from modelport.formats import open_runner
    from modelport.compress.quantize import batches
    from modelport.inputs import check_feeds

    with open_runner(str(path), "onnx") as runner:
        specs = runner.signature.inputs
        feeds = check_feeds(data.feeds, specs, data.source)  # fp16 inputs take cast data
        first = runner.signature.output_names[0]
        outs = [np.asarray(runner.run(chunk)[first]) for chunk in batches(feeds, _chunk_size(specs))]
    scores = np.concatenate(outs, axis=0)
    if scores.ndim == 1 and scores.dtype.kind in "iu":
        return scores
    if scores.ndim != 2 or scores.shape[0] != data.labels.shape[0]:
        raise BadInputError(
            f"top-1 accuracy needs a (batch, classes) first output; {first!r} has shape {scores.shape}", path=path
        )
    return scores.argmax(axis=-1)


def top1(path: str | Path, data: EvalData) -> float:
    """Top-1 accuracy of an ONNX model on labelled data, in [0, 1]."""
    return float(np.mean(predictions(path, data) == data.labels))


def control(
    apply: Callable[[frozenset[str]], Path],
    candidates: Sequence[str],
    evaluate: Callable[[Path], float],
    baseline: float,
    max_drop: float,
    *,
    first: tuple[Path, float] | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> ControlResult:
    """Leave the most harmful layers uncompressed until ``baseline - metric <= max_drop``.

    Args:
        apply: compresses with the given node names left alone; returns the model written.
        candidates: node names that may be left alone, in graph order.
        evaluate: the metric of a written model.
        baseline: the metric of the original model.
        max_drop: the largest acceptable drop (same unit as the metric).
        first: (model, metric) of the run with nothing left alone, when already done.

    Returns the first result within budget; ``kept`` empty when none needed leaving alone.
    If even leaving all but nothing compressed misses, ``kept`` holds every candidate and
    ``metric`` the last measurement: the caller decides (compress raises CheckFailedError).
    """
    path, metric = first if first else (apply(frozenset()), None)
    if metric is None:
        metric = evaluate(path)
    trials = 1
    if baseline - metric <= max_drop or not candidates:
        return ControlResult(str(path), metric, (), (), trials)
    ranked = _rank(apply, candidates, evaluate, say)
    trials += len(ranked)
    for k in range(1, len(ranked) + 1):
        kept = tuple(r.node for r in ranked[:k])
        say(f"keeping {k} layer(s) uncompressed: {', '.join(kept)}")
        path = apply(frozenset(kept))
        metric = evaluate(path)
        trials += 1
        if baseline - metric <= max_drop:
            return ControlResult(str(path), metric, kept, ranked, trials)
    return ControlResult(str(path), metric, tuple(r.node for r in ranked), ranked, trials)


def _unlink(path) -> None:
    Path(path).unlink(missing_ok=True)


def _rank(apply, candidates: Sequence[str], evaluate, say, discard=_unlink) -> tuple[LayerSensitivity, ...]:
    """Each candidate's metric with only it left uncompressed, most harmful (highest) first."""
    ranking = []
    for i, node in enumerate(candidates):
        say(f"sensitivity {i + 1}/{len(candidates)}: {node}")
        trial = apply(frozenset({node}))
        ranking.append(LayerSensitivity(node, evaluate(trial)))
        discard(trial)
    order = sorted(range(len(ranking)), key=lambda i: (-ranking[i].metric, i))
    return tuple(ranking[i] for i in order)


def _tighten(apply, evaluate, baseline, max_drop, fraction, steps, reduced, best, say, discard):
    """Once the budget holds, raise the earlier relieved layers' fractions back while it still does.

    The greedy pass leaves a layer at its smallest step before relieving the next one; with
    the later layers relieved too, an earlier one may take more pruning again.
    """
    path, metric = best
    reduced = dict(reduced)
    trials = 0
    for node in list(reduced)[:-1]:
        for share in sorted({*steps, 1.0}):
            if fraction * share <= reduced[node]:
                continue
            trial = {**reduced, node: fraction * share}
            say(f"pruning {node} at {fraction * share:g} again")
            candidate = apply(trial)
            score = evaluate(candidate)
            trials += 1
            if baseline - score > max_drop:
                discard(candidate)
                break
            discard(path)
            path, metric, reduced = candidate, score, trial
    return path, metric, reduced, trials


def relax(
    apply: Callable[[dict[str, float]], Path],
    candidates: Sequence[str],
    evaluate: Callable[[Path], float],
    baseline: float,
    max_drop: float,
    fraction: float,
    *,
    first: tuple[Path, float] | None = None,
    steps: Sequence[float] = RELAX_STEPS,
    say: Callable[[str], None] = lambda _m: None,
    discard: Callable[[object], None] = _unlink,
) -> ControlResult:
    """Prune the most harmful layers less, step by step, until ``baseline - metric <= max_drop``.

    Args:
        apply: prunes with the given node -> fraction overrides (0: dense); returns the model written.
        candidates: the pruned layers' node names, in graph order.
        fraction: the fraction every layer is pruned at before relief.
        steps: the reduced fractions tried per layer, as shares of ``fraction``, largest first.
        discard: frees a trial that was not kept (default: deletes the file).

    Returns the first result within budget; ``fractions`` lists the layers pruned less with
    their fraction and ``kept`` those left dense (fraction 0). If every layer dense still
    misses, ``kept`` holds every candidate: the caller decides.
    """
    path, metric = first if first else (apply({}), None)
    if metric is None:
        metric = evaluate(path)
    trials = 1
    if baseline - metric <= max_drop or not candidates:
        return ControlResult(path, metric, (), (), trials)
    ranked = _rank(lambda kept: apply(dict.fromkeys(kept, 0.0)), candidates, evaluate, say, discard)
    trials += len(ranked)
    reduced: dict[str, float] = {}
    for r in ranked:
        for share in steps:
            reduced[r.node] = fraction * share
            say(f"pruning {r.node} at {reduced[r.node]:g} instead of {fraction:g}")
            discard(path)
            path = apply(dict(reduced))
            metric = evaluate(path)
            trials += 1
            if baseline - metric <= max_drop:
                path, metric, reduced, more = _tighten(apply, evaluate, baseline, max_drop, fraction, steps, reduced,
                                                       (path, metric), say, discard)
                return ControlResult(path, metric, tuple(n for n, f in reduced.items() if f == 0.0), ranked,
                                     trials + more, tuple((n, f) for n, f in reduced.items() if f < fraction))
    return ControlResult(path, metric, tuple(r.node for r in ranked), ranked, trials, tuple(reduced.items()))
