"""Parity metrics between two models' outputs on the same inputs.

Per output: max abs error, max relative error (max |a - b| / max |ref|), mean abs error,
cosine similarity and, for class-score outputs (2-D, last dim > 1), top-1 agreement.
An output passes when ``max|a - b| <= atol + rtol * max|ref|``, its non-finite values agree
(NaN where the reference has NaN, the same infinities), and, for class scores, its top-1 agrees on
every row where the reference's top-2 margin exceeds the tolerance (disagreements on near-ties are
reported, not failed); integer and bool outputs must match exactly. Default tolerances by dtype: fp32 rtol 1e-4 / atol 1e-5, fp16
rtol 1e-2 / atol 1e-3.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modelport.errors import BadInputError

__all__ = ["OutputParity", "RunParity", "ParityReport", "default_tolerance", "compare_outputs", "match_names",
           "parse_tolerances"]

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
    failure_file: str | None = None  # the failing inputs and both outputs (.npz), when parity failed
    reproduce: str | None = None  # a command that reruns the failing comparison

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


def _float_metrics(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float, float | None]:
    """max abs, max rel, mean abs and cosine over the positions where both are finite; a position
    where exactly one side is non-finite, or the two are different infinities, counts as inf."""
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    both = np.isfinite(r) & np.isfinite(g)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(r - g)
    worst = float(diff[both].max()) if both.any() else 0.0
    same_special = (np.isnan(r) & np.isnan(g)) | (np.isinf(r) & (r == g))
    if not (both | same_special).all():
        worst = float("inf")
    scale = float(np.abs(r[np.isfinite(r)]).max()) if np.isfinite(r).any() else 0.0
    max_rel = worst / scale if scale > 0 else (0.0 if worst == 0 else float("inf"))
    mean_abs = float(diff[both].mean()) if both.any() else 0.0
    nr, ng = np.linalg.norm(r[both]), np.linalg.norm(g[both])
    cosine = float(np.dot(r[both], g[both]) / (nr * ng)) if nr > 0 and ng > 0 else (1.0 if nr == ng else 0.0)
    return worst, max_rel, mean_abs, cosine


def _non_finite_reason(ref: np.ndarray, got: np.ndarray) -> str:
    """Why the non-finite values of the two disagree ('' when they agree)."""
    r, g = ref.astype(np.float64), got.astype(np.float64)
    problems = []
    for what, mask in (("NaN where the reference is not NaN", np.isnan(g) & ~np.isnan(r)),
                       ("no NaN where the reference has NaN", np.isnan(r) & ~np.isnan(g)),
                       ("inf where the reference is finite", np.isinf(g) & np.isfinite(r)),
                       ("finite where the reference is inf", np.isfinite(g) & np.isinf(r)),
                       ("inf of the opposite sign", np.isinf(r) & np.isinf(g) & (r != g))):
        n = int(mask.sum())
        if n:
            first = tuple(int(i) for i in np.argwhere(mask)[0])
            problems.append(f"{what} at {n} position(s) (first {list(first)})")
    return "; ".join(problems)


def _top1(ref: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> tuple[float | None, int, int]:
    """(top-1 agreement, rows that disagree where the reference is decided, near-tie rows that disagree).

    A row is decided when the reference's top-2 margin exceeds the tolerance (atol + rtol * max|row|):
    there a different argmax is a real disagreement; within the margin it is a near-tie, reported only.
    """
    if ref.ndim != 2 or ref.shape[-1] < 2 or ref.shape[0] == 0:
        return None, 0, 0
    r, g = ref.astype(np.float64), got.astype(np.float64)
    differ = np.argmax(r, axis=-1) != np.argmax(g, axis=-1)
    top2 = np.sort(r, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    tol = atol + rtol * np.abs(r).max(axis=-1)
    decided = margin > tol
    return float(np.mean(~differ)), int((differ & decided).sum()), int((differ & ~decided).sum())


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
        max_abs, max_rel, mean_abs, cosine = _float_metrics(ref, got)
        top1, wrong, ties = _top1(ref, got, rtol, atol)
        scale = float(np.abs(ref[np.isfinite(ref)]).max()) if np.isfinite(ref).any() else 0.0
        reasons = [_non_finite_reason(ref, got)]
        within = max_abs <= atol + rtol * scale  # a plain tolerance failure: the summary states the figures
        if wrong:
            reasons.append(f"top-1 differs on {wrong} of {ref.shape[0]} row(s) where the reference's top-2 margin "
                           "exceeds the tolerance")
        if ties:
            reasons.append(f"note: top-1 differs on {ties} near-tie row(s) (top-2 margin within tolerance)")
        failing = [r for r in reasons if r and not r.startswith("note:")]
        ok = within and not failing
        reason = "; ".join(r for r in reasons if r)
        return OutputParity(name, shape, ref.dtype.name, max_abs, max_rel, mean_abs, cosine, top1, rtol, atol, ok, reason)
    # integers and booleans: exact, whatever the float tolerances say
    diff = np.abs(ref.astype(np.int64) - got.astype(np.int64)) if ref.size else np.zeros(0)
    max_abs = float(diff.max()) if diff.size else 0.0
    mismatched = int((diff > 0).sum()) if diff.size else 0
    ok = mismatched == 0
    reason = "" if ok else f"{mismatched} of {ref.size} integer values differ (integer outputs must match exactly)"
    return OutputParity(name, shape, ref.dtype.name, max_abs, 0.0 if ok else 1.0, float(diff.mean()) if diff.size else 0.0,
                        None, None, rtol, atol, ok, reason)


def compare_outputs(
    ref: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    *,
    rtol: float | None = None,
    atol: float | None = None,
    per_output: dict[str, tuple[float, float]] | None = None,
) -> tuple[OutputParity, ...]:
    """Compare B's outputs to A's (the reference), matched by name else by position.

    ``per_output`` gives (rtol, atol) for named outputs of A, over ``rtol``/``atol`` and the dtype defaults.
    """
    mapping = match_names(list(ref), list(got), "outputs")
    check_tolerance_names(per_output, list(ref))
    tol = per_output or {}
    return tuple(compare_output(n, ref[n], got[mapping[n]], *tol.get(n, (rtol, atol))) for n in ref)


def check_tolerance_names(per_output: dict[str, tuple[float, float]] | None, outputs: list[str]) -> None:
    unknown = sorted(set(per_output or {}) - set(outputs))
    if unknown:
        raise BadInputError(f"--tol names output(s) {unknown} that the reference does not have (its outputs: {outputs})")


def parse_tolerances(items: list[str] | None) -> dict[str, tuple[float, float]]:
    """``["logits=1e-3,1e-4", ...]`` (NAME=rtol,atol) -> {"logits": (1e-3, 1e-4)}."""
    out: dict[str, tuple[float, float]] = {}
    for item in items or ():
        name, _, values = item.rpartition("=")
        parts = values.split(",")
        try:
            if not name or len(parts) != 2:
                raise ValueError
            rtol, atol = float(parts[0]), float(parts[1])
        except ValueError:
            raise BadInputError(f"bad --tol {item!r}: expected NAME=rtol,atol (e.g. logits=1e-3,1e-5)") from None
        if rtol < 0 or atol < 0:
            raise BadInputError(f"bad --tol {item!r}: tolerances must be >= 0")
        out[name] = (rtol, atol)
    return out
