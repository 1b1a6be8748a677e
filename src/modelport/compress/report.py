"""CompressReport: what a compression run did and what it cost, before vs after."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from modelport.artifact import Artifact
from modelport.compress.accuracy import LayerSensitivity
from modelport.compress.prune import LayerSparsity, weight_sparsity
from modelport.compress.structured import StructuredLayer

__all__ = ["ModelStats", "CompressReport", "comparison_rows", "model_stats", "any_model_stats", "measure_latency"]


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """One side of the before/after table; None where not measured.

    Attributes:
        file_bytes: size on disk.
        params: weight elements (int8 or fp16 elements count once each).
        sparsity: share of weight values that are exactly zero (see prune.weight_sparsity).
        macs: multiply-accumulates per sample (None where ops are not counted, e.g. MatMulNBits).
        p50_ms: median latency per batch size, same run for before and after.
        metric: top-1 accuracy on the eval data.
    """

    path: str
    file_bytes: int
    params: int | None
    sparsity: float | None
    macs: int | None
    p50_ms: dict[int, float | None]
    metric: float | None = None


@dataclasses.dataclass(frozen=True)
class CompressReport:
    """A compression run. ``bool(report)`` is the verdict: within budget and parity where checked.

    Attributes:
        steps: what was applied, in order (e.g. "prune 0.5 (layer)", "quantize static minmax per-channel").
        kept_float: nodes left uncompressed by accuracy control (float weights, no pruning).
        reduced_fractions: (layer, fraction) for the layers accuracy control pruned less than
            asked (0: left unpruned): ONNX node names (unstructured pruning) or PyTorch module
            names (structured pruning, as in ``structured_layers``).
        sensitivity: the metric with each layer alone left uncompressed, most harmful first
            (empty when the first try met the budget).
        layers: per-layer sparsity of pruned weights (unstructured pruning).
        structured_layers: per-layer widths before and after (structured pruning).
        parity: how far the outputs moved (fp16: at fp16 tolerance, enforced; others:
            informational, at fp32 tolerance, since int8 and pruning are judged on the metric).
    """

    src: str
    out: str
    artifact: Artifact
    steps: tuple[str, ...]
    before: ModelStats
    after: ModelStats
    metric_name: str | None
    max_drop: float | None
    kept_float: tuple[str, ...] = ()
    sensitivity: tuple[LayerSensitivity, ...] = ()
    layers: tuple[LayerSparsity, ...] = ()
    structured_layers: tuple[StructuredLayer, ...] = ()
    trials: int = 1
    parity: object | None = None
    parity_enforced: bool = False
    ok: bool = True
    seconds: float = 0.0
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()
    reduced_fractions: tuple[tuple[str, float], ...] = ()

    def __bool__(self) -> bool:
        return self.ok

    @property
    def drop(self) -> float | None:
        if self.before.metric is None or self.after.metric is None:
            return None
        return self.before.metric - self.after.metric

    @property
    def size_ratio(self) -> float:
        return self.after.file_bytes / self.before.file_bytes if self.before.file_bytes else float("nan")

    def latency_ratio(self, batch: int) -> float | None:
        """before p50 / after p50 at a batch size: > 1 means the compressed model is faster."""
        a, b = self.before.p50_ms.get(batch), self.after.p50_ms.get(batch)
        return a / b if a and b else None


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(v, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "bytes":
        return _fmt_bytes(v)
    if kind == "count":
        return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v:,}"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "ms":
        return f"{v:.3f} ms"
    return str(v)


def _ratio(a, b) -> str:
    return f"{b / a:.2f}x" if a and b is not None else "-"


def comparison_rows(report: CompressReport) -> list[tuple[str, str, str, str]]:
    """(quantity, before, after, after/before) rows for the table both the CLI and benchmarks print."""
    b, a = report.before, report.after
    rows = [
        ("file size", _fmt(b.file_bytes, "bytes"), _fmt(a.file_bytes, "bytes"), _ratio(b.file_bytes, a.file_bytes)),
        ("parameters", _fmt(b.params, "count"), _fmt(a.params, "count"), _ratio(b.params, a.params)),
        ("sparsity", _fmt(b.sparsity, "pct"), _fmt(a.sparsity, "pct"), ""),
        ("MACs / sample", _fmt(b.macs, "count"), _fmt(a.macs, "count"), _ratio(b.macs, a.macs)),
    ]
    for batch in sorted(set(b.p50_ms) | set(a.p50_ms)):
        pb, pa = b.p50_ms.get(batch), a.p50_ms.get(batch)
        rows.append((f"latency p50, batch {batch}", _fmt(pb, "ms"), _fmt(pa, "ms"), _ratio(pb, pa)))
    if b.metric is not None or a.metric is not None:
        drop = report.drop
        budget = f"{-100 * drop:+.2f} pts" if drop is not None else ""
        rows.append((report.metric_name or "metric", _fmt(b.metric, "pct"), _fmt(a.metric, "pct"), budget))
    return rows


def model_stats(path: Path, label: str, p50: dict[int, float | None], metric: float | None) -> ModelStats:
    from modelport.security.loaders import read_onnx

    model = read_onnx(path, load_external_data=False)  # external data memory-mapped, a tensor at a time
    sparsity = weight_sparsity(model, path.parent)
    try:
        from modelport.inspect.run import inspect

        rep = inspect(str(path), "onnx")
        size, params, macs = rep.file_bytes, rep.params, rep.macs
    except ImportError:  # inspection not there: file size only
        size, params, macs = path.stat().st_size, None, None
    return ModelStats(label, size, params, sparsity, macs, p50, metric)


def measure_latency(paths: Sequence[Path], batches: Sequence[int], runs: int, say) -> list[dict[int, float | None]]:
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


def any_model_stats(path: str, p50: dict[int, float | None], metric: float | None) -> ModelStats:
    """Stats of a model in any format (sparsity only for ONNX; MACs where inspect counts them)."""
    from modelport.inspect.run import inspect

    if path.endswith(".onnx"):
        return model_stats(Path(path), path, p50, metric)
    rep = inspect(path)
    return ModelStats(path, rep.file_bytes, rep.params, None, rep.macs, p50, metric)
