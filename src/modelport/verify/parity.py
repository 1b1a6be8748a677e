"""Parity metrics between two models' outputs on the same inputs.

Per output: max abs error, max relative error (max |a - b| / max |ref|), mean abs error,
cosine similarity and, for class-score outputs (2-D, last dim > 1), top-1 agreement.
An output passes when ``max|a - b| <= atol + rtol * max|ref|``; integer and bool outputs
must match exactly. Default tolerances by dtype: fp32 rtol 1e-4 / atol 1e-5, fp16
rtol 1e-2 / atol 1e-3.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modelport.errors import BadInputError

__all__ = ["OutputParity", "RunParity", "ParityReport", "default_tolerance", "compare_outputs", "match_names"]

TOLERANCES = {"float32": (1e-4, 1e-5), "float64": (1e-7, 1e-9), "float16": (1e-2, 1e-3), "bfloat16": (2e-2, 1e-2)}


def default_tolerance(*dtypes: str) -> tuple[float, float]:
    """(rtol, atol) for comparing tensors of these dtypes: the loosest applies."""
    tols = [TOLERANCES.get(d, (0.0, 0.0)) for d in dtypes]
    return max(t[0] for t in tols), max(t[1] for t in tols)


@dataclasses.dataclass(frozen=True)
class OutputParity:
    name: str
    shape: tuple[int, ...]
    dtype: str
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float | None
    top1: float | None
    rtol: float
    atol: float
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclasses.dataclass(frozen=True)
class RunParity:
    """One comparison run: the input shapes used and each output's parity."""

    input_shapes: dict[str, tuple[int, ...]]
    outputs: tuple[OutputParity, ...]

    def __bool__(self) -> bool:
        return all(self.outputs)


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """Does model B compute what model A computes? ``bool(report)`` is the verdict."""

    a: str
    b: str
    a_format: str
    b_format: str
    runs: tuple[RunParity, ...]
    ok: bool
    inputs_source: str

    def __bool__(self) -> bool:
        return self.ok

    @property
    def failures(self) -> list[OutputParity]:
        return [o for r in self.runs for o in r.outputs if not o.ok]

    def summary(self) -> str:
        if self.ok:
            worst = max((o.max_rel for r in self.runs for o in r.outputs), default=0.0)
            return f"parity ok over {len(self.runs)} input set(s), worst max rel err {worst:.2e}"
        bad = self.failures[0]
        return (
            f"parity failed on output {bad.name!r}: {bad.reason or f'max abs err {bad.max_abs:.3g}, max rel err {bad.max_rel:.3g} (rtol {bad.rtol:g}, atol {bad.atol:g})'}"
        )


def match_names(a: list[str], b: list[str], what: str) -> dict[str, str]:
    """Map names of A to names of B: by name when the sets agree, else by position."""
    if set(a) == set(b):
        return {n: n for n in a}
    if len(a) == len(b):
        return dict(zip(a, b))
    raise BadInputError(f"signatures don't match: {what} of A {a} vs of B {b}")


def _float_metrics(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float, float | None, float | None]:
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    diff = np.abs(r - g)
    finite = np.isfinite(diff)
    max_abs = float(diff[finite].max()) if finite.any() else 0.0
    scale = float(np.abs(r[np.isfinite(r)]).max()) if np.isfinite(r).any() and r.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    mean_abs = float(diff[finite].mean()) if finite.any() else 0.0
    nr, ng = np.linalg.norm(r[finite]), np.linalg.norm(g[finite])
    cosine = float(np.dot(r[finite], g[finite]) / (nr * ng)) if nr > 0 and ng > 0 else (1.0 if nr == ng else 0.0)
    top1 = None
    if ref.ndim == 2 and ref.shape[-1] > 1:
        top1 = float(np.mean(np.argmax(ref, axis=-1) == np.argmax(got, axis=-1)))
    return max_abs, max_rel, mean_abs, cosine, top1


def compare_output(name: str, ref: np.ndarray, got: np.ndarray, rtol: float | None, atol: float | None) -> OutputParity:
    ref, got = np.asarray(ref), np.asarray(got)
    d_rtol, d_atol = default_tolerance(ref.dtype.name, got.dtype.name)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    shape = tuple(int(n) for n in ref.shape)
    if ref.shape != got.shape:
        if ref.size == got.size and np.squeeze(ref).shape == np.squeeze(got).shape:
            got = got.reshape(ref.shape)
        else:
            return OutputParity(name, shape, ref.dtype.name, float("inf"), float("inf"), float("inf"), None, None, rtol, atol,
                                False, f"shape {got.shape} vs expected {ref.shape}")
    if ref.dtype.kind in "fc" or got.dtype.kind in "fc":
        max_abs, max_rel, mean_abs, cosine, top1 = _float_metrics(ref, got)
        nan_mismatch = bool(np.any(np.isnan(ref) != np.isnan(got)))
        scale = float(np.abs(ref[np.isfinite(ref)]).max()) if np.isfinite(ref).any() and ref.size else 0.0
        ok = not nan_mismatch and max_abs <= atol + rtol * scale
        reason = "NaN where the reference has none (or the reverse)" if nan_mismatch else ""
        return OutputParity(name, shape, ref.dtype.name, max_abs, max_rel, mean_abs, cosine, top1, rtol, atol, ok, reason)
    diff = np.abs(ref.astype(np.int64) - got.astype(np.int64)) if ref.size else np.zeros(0)
    max_abs = float(diff.max()) if diff.size else 0.0
    ok = max_abs <= atol
    mismatched = int((diff > atol).sum()) if diff.size else 0
    reason = "" if ok else f"{mismatched} of {ref.size} integer values differ"
    return OutputParity(name, shape, ref.dtype.name, max_abs, 0.0 if ok else 1.0, float(diff.mean()) if diff.size else 0.0,
                        None, None, rtol, atol, ok, reason)


def compare_outputs(
    ref: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> tuple[OutputParity, ...]:
    """Compare B's outputs to A's (the reference), matched by name else by position."""
    mapping = match_names(list(ref), list(got), "outputs")
    return tuple(compare_output(n, ref[n], got[mapping[n]], rtol, atol) for n in ref)
