"""Parity metrics between two models' outputs on the same inputs.

Per output: max abs error, max relative error (max |a - b| / max |ref|), mean abs error,
cosine similarity and, for class-score outputs (2-D, last dim > 1), top-1 agreement.
An output passes when ``max|a - b| <= atol + rtol * max|ref|``, its non-finite values agree
(NaN where the reference has NaN, the same infinities), and, for class scores, its top-1 agrees on
every row where the reference's top-2 margin exceeds the tolerance (disagreements on near-ties are
reported, not failed); integer and bool outputs must match exactly. Default tolerances by dtype: fp32 rtol 1e-4 / atol 1e-5, fp16
rtol 1e-2 / atol 1e-3.

Where the reference's own noise floor was measured (``modelport.verify.noise``: the reference
computed another legitimate way, e.g. onnxruntime without graph optimizations), the elementwise
bound becomes ``max(atol + rtol * max|ref|, NOISE_FACTOR * noise_floor)``: an output whose
reference is ill-conditioned (near zero, or the difference of large nearly equal values) is judged
against how much the reference itself moves, and the report says so. Non-finite values, top-1 and
integers are judged as before, and a negative tolerance (a comparison meant to fail) is never widened.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modelport.errors import BadInputError

__all__ = ["OutputParity", "RunParity", "ParityReport", "default_tolerance", "compare_outputs", "match_names",
           "parse_tolerances", "NOISE_FACTOR"]

# A candidate may differ from the reference by this many times the reference's own noise floor.
NOISE_FACTOR = 4.0

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
    noise_floor: float | None = None  # max |reference - the reference computed another way|, when measured
    noise_floor_rel: float | None = None  # the same over max |reference|
    noise_source: str = ""  # how it was measured, e.g. "onnxruntime optimized vs unoptimized"
    noise_factor: float | None = None  # the candidate may differ by this many noise floors
    noise_judged: bool = False  # passed only because the noise floor exceeds the tolerance

    def __bool__(self) -> bool:
        return self.ok

    def noise_line(self) -> str:
        """'output 'y': judged against the reference's own noise floor 1.7e-03 rel (...)', or '' when none was measured."""
        if self.noise_floor is None or self.noise_factor is None:
            return ""
        floor = (f"{self.noise_floor_rel:.1e} rel ({self.noise_floor:.1e} abs; {self.noise_source})"
                 if self.noise_floor_rel is not None else f"{self.noise_floor:.1e} abs ({self.noise_source})")
        allowed = self.noise_factor * self.noise_floor
        outcome = ("within it" if self.noise_judged else "within the tolerance anyway" if self.ok
                   else "beyond it" if self.max_abs > allowed else "within it, failed otherwise")
        return (f"output {self.name!r}: judged against the reference's own noise floor {floor}: "
                f"max abs err {self.max_abs:.1e} vs {self.noise_factor:g} x floor = {allowed:.1e}, {outcome}")


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

    @property
    def noise_judged(self) -> list[OutputParity]:
        """Outputs that passed only on the reference's own noise floor."""
        return [o for r in self.runs for o in r.outputs if o.noise_judged]

    def summary(self) -> str:
        if self.ok:
            worst = max((o.max_rel for r in self.runs for o in r.outputs), default=0.0)
            judged = sorted({o.name for o in self.noise_judged})
            noise = (f"; {', '.join(map(repr, judged))} judged against the reference's own noise floor"
                     if judged else "")
            return f"parity ok over {len(self.runs)} input set(s), worst max rel err {worst:.2e}{noise}"
        bad = self.failures[0]
        floor = (f"; reference noise floor {bad.noise_floor:.3g} ({bad.noise_source}), "
                 f"allowed {bad.noise_factor:g}x" if bad.noise_floor is not None else "")
        return (
            f"parity failed on output {bad.name!r}: {bad.reason or f'max abs err {bad.max_abs:.3g}, max rel err {bad.max_rel:.3g} (rtol {bad.rtol:g}, atol {bad.atol:g}{floor})'}"
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


def compare_output(name: str, ref: np.ndarray, got: np.ndarray, rtol: float | None, atol: float | None,
                   noise: tuple[float, str] | None = None) -> OutputParity:
    """One output's parity; ``noise`` is the reference's (noise floor, how measured), when measured."""
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
        floor = None
        if noise is not None and np.isfinite(noise[0]) and rtol >= 0 and atol >= 0:  # a negative one is meant to fail
            floor = float(noise[0])
            judged = not within and max_abs <= NOISE_FACTOR * floor
            within = within or judged
        if wrong:
            reasons.append(f"top-1 differs on {wrong} of {ref.shape[0]} row(s) where the reference's top-2 margin "
                           "exceeds the tolerance")
        if ties:
            reasons.append(f"note: top-1 differs on {ties} near-tie row(s) (top-2 margin within tolerance)")
        failing = [r for r in reasons if r and not r.startswith("note:")]
        ok = within and not failing
        reason = "; ".join(r for r in reasons if r)
        if floor is None:
            return OutputParity(name, shape, ref.dtype.name, max_abs, max_rel, mean_abs, cosine, top1, rtol, atol, ok, reason)
        return OutputParity(name, shape, ref.dtype.name, max_abs, max_rel, mean_abs, cosine, top1, rtol, atol, ok, reason,
                            floor, floor / scale if scale > 0 else None, noise[1], NOISE_FACTOR, judged and ok)
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
    noise_floors: dict[str, tuple[float, str]] | None = None,
) -> tuple[OutputParity, ...]:
    """Compare B's outputs to A's (the reference), matched by name else by position.

    ``per_output`` gives (rtol, atol) for named outputs of A, over ``rtol``/``atol`` and the dtype defaults.
    ``noise_floors`` gives the reference's own (noise floor, how measured) by output name of A.
    """
    mapping = match_names(list(ref), list(got), "outputs")
    check_tolerance_names(per_output, list(ref))
    tol, floors = per_output or {}, noise_floors or {}
    return tuple(compare_output(n, ref[n], got[mapping[n]], *tol.get(n, (rtol, atol)), floors.get(n)) for n in ref)


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
