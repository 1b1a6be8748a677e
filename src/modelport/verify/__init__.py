"""Verification: run two models on the same inputs and measure how far apart they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelport.artifact import TensorSpec
from modelport.errors import BadInputError
from modelport.formats import LoadOptions, Runner, detect, open_runner
from modelport.inputs import check_feeds, load_npz, make_inputs
from modelport.verify.parity import OutputParity, ParityReport, RunParity, compare_outputs, match_names

__all__ = ["verify", "compare_runners", "compare_in_turn", "ParityReport", "RunParity", "OutputParity", "feeds_for", "failure_path",
           "keep_failure_file", "FAILURE_KEYS"]

# Keys of a kept failure file besides the inputs: both models' outputs.
FAILURE_KEYS = ("reference/", "candidate/")


def failure_path(near: str | Path, report_dir: str | Path | None = None) -> Path:
    """``NAME.parity-failure.npz`` beside ``near`` (the requested output or model B), or in ``report_dir``."""
    p = Path(str(near).split(":")[0] if ":" in Path(str(near)).name else near)
    stem = p.name if p.is_dir() else p.stem
    return Path(report_dir or p.parent) / f"{stem}.parity-failure.npz"


def keep_failure_file(path: Path, feed: dict[str, np.ndarray], ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    """The failing inputs and both outputs, written whole or not at all."""
    import os
    import tempfile

    arrays = dict(feed)
    arrays.update({f"reference/{k}": v for k, v in ref.items()})
    arrays.update({f"candidate/{k}": v for k, v in got.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def feeds_for(
    runner: Runner,
    *,
    inputs: str | Path | dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | None = None,
    seed: int = 0,
    bounds: dict[str, int] | None = None,
    specs: tuple[TensorSpec, ...] | None = None,
) -> tuple[list[dict[str, np.ndarray]], str]:
    """The feed dicts to compare on, and where they came from.

    ``bounds`` are table sizes for integer inputs the runner cannot bound itself.
    """
    specs = specs or runner.signature.inputs
    if inputs is not None:
        data = load_npz(inputs) if not isinstance(inputs, dict) else inputs
        data = {k: v for k, v in data.items() if not k.startswith(FAILURE_KEYS)}  # a kept failure file's outputs
        source = str(inputs) if not isinstance(inputs, dict) else "given arrays"
        return [check_feeds(data, specs, source, extra_ok=("labels",))], source
    merged = {**(bounds or {}), **runner.index_bounds()}  # the runner's own bounds win
    return make_inputs(specs, seed=seed, dims=dims, bounds=merged), f"random (seed {seed})"


def _rename(feed: dict[str, np.ndarray], mapping: dict[str, str], specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    out = {mapping[k]: v for k, v in feed.items() if k in mapping}
    dtypes = {s.name: s.dtype for s in specs}
    for k, v in out.items():  # e.g. int64 token ids into a model that takes int32
        want = dtypes.get(k)
        if want and want != "bfloat16" and v.dtype != np.dtype(want) and v.dtype.kind == np.dtype(want).kind:
            out[k] = v.astype(want)
    return out


def compare_runners(
    a: Runner,
    b: Runner,
    *,
    inputs: str | Path | dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    specs: tuple[TensorSpec, ...] | None = None,
    tolerances: dict[str, tuple[float, float]] | None = None,
    keep_failure: Path | None = None,
    capture: list | None = None,
    noise_floor: bool | None = None,
) -> ParityReport:
    """Run A and B on the same inputs; A is the reference.

    ``specs`` overrides the input specs that random inputs are drawn from (named as A's
    inputs): convert passes the converted model's, which may have more dynamic dims.
    ``tolerances``: (rtol, atol) per output name of A. ``keep_failure``: where to write the
    first failing input set and both outputs (.npz) when parity fails. ``capture``: a list that
    receives ``(feed, A's outputs, B's outputs)`` of the first failing run, else of the first run.
    ``noise_floor``: where A is ONNX and a float output misses the tolerance, judge it against A's own
    noise floor too (``modelport.verify.noise``); None follows ``noise.enabled`` (on by default).
    """
    from modelport.verify.noise import NoiseJudge

    mapping = match_names(a.signature.input_names, b.signature.input_names, "inputs")
    bounds_b = b.index_bounds()  # a fallback where A cannot tell (e.g. a torch module vs its ONNX)
    bounds = {name_a: bounds_b[name_b] for name_a, name_b in mapping.items() if name_b in bounds_b}
    feeds, source = feeds_for(a, inputs=inputs, dims=dims, seed=seed, bounds=bounds, specs=specs)
    judge = NoiseJudge(a, noise_floor)
    runs, kept = [], None
    for feed in feeds:
        ref = a.run(feed)
        got = b.run(_rename(feed, mapping, b.signature.inputs))
        shapes = {k: tuple(int(n) for n in v.shape) for k, v in feed.items()}
        outputs = compare_outputs(ref, got, rtol=rtol, atol=atol, per_output=tolerances)
        outputs = judge(feed, ref, got, outputs, rtol=rtol, atol=atol, per_output=tolerances)
        runs.append(RunParity(shapes, outputs))
        if capture is not None and (not capture or (not runs[-1] and all(runs[:-1]))):
            capture[:] = [(feed, ref, got)]
        if not runs[-1] and keep_failure is not None and kept is None:
            keep_failure_file(keep_failure, feed, ref, got)
            kept = str(keep_failure)
    judge.close()
    ok = all(runs)
    return ParityReport(a.path, b.path, a.format, b.format, tuple(runs), ok, source, failure_file=kept)


def compare_in_turn(
    open_a,
    open_b,
    *,
    inputs: str | Path | dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    specs_of=None,
    tolerances: dict[str, tuple[float, float]] | None = None,
    keep_failure: Path | None = None,
    capture: list | None = None,
) -> ParityReport:
    """:func:`compare_runners` for models whose weights fill memory: the two sides one after the other.

    ``open_a``/``open_b``: callables returning a runner context (``open_runner(...)``). B is opened first
    for its signature only (cheap where its weights are memory-mapped, as a generated torch directory's
    are), then A runs every feed and is closed before B opens again and runs them; only inputs and
    outputs stay in memory. ``specs_of(a_signature, b_signature)``: the input specs to draw from.
    The noise-floor judge (it reruns A) is not applied here.
    """
    import gc

    with open_b() as rb:
        b_sig, bounds_b = rb.signature, rb.index_bounds()
        del rb  # nothing may keep B's runner (an onnxruntime session holds its weights) while A runs
    gc.collect()
    with open_a() as ra:
        if not ra.signature.inputs:
            raise BadInputError("model has no inputs to feed", path=ra.path)
        mapping = match_names(ra.signature.input_names, b_sig.input_names, "inputs")
        bounds = {name_a: bounds_b[name_b] for name_a, name_b in mapping.items() if name_b in bounds_b}
        specs = specs_of(ra.signature, b_sig) if specs_of is not None and inputs is None else None
        feeds, source = feeds_for(ra, inputs=inputs, dims=dims, seed=seed, bounds=bounds, specs=specs)
        refs = [ra.run(feed) for feed in feeds]
        a_path, a_format = ra.path, ra.format
        del ra
    gc.collect()
    with open_b() as rb:
        gots = [rb.run(_rename(feed, mapping, rb.signature.inputs)) for feed in feeds]
        b_path, b_format = rb.path, rb.format
        del rb
    gc.collect()
    runs, kept = [], None
    for feed, ref, got in zip(feeds, refs, gots):
        shapes = {k: tuple(int(n) for n in v.shape) for k, v in feed.items()}
        runs.append(RunParity(shapes, compare_outputs(ref, got, rtol=rtol, atol=atol, per_output=tolerances)))
        if capture is not None and (not capture or (not runs[-1] and all(runs[:-1]))):
            capture[:] = [(feed, ref, got)]
        if not runs[-1] and keep_failure is not None and kept is None:
            keep_failure_file(keep_failure, feed, ref, got)
            kept = str(keep_failure)
    return ParityReport(a_path, b_path, a_format, b_format, tuple(runs), all(runs), source, failure_file=kept)


def verify(
    a: str | Path,
    b: str | Path,
    *,
    a_format: str | None = None,
    b_format: str | None = None,
    a_options: LoadOptions | None = None,
    b_options: LoadOptions | None = None,
    inputs: str | Path | dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    tolerances: dict[str, tuple[float, float]] | None = None,
    keep_failure: str | Path | None = None,
    capture: list | None = None,
    noise_floor: bool | None = None,
) -> ParityReport:
    """Compare two artifacts of any formats on the same inputs.

    Args:
        a: the reference model (a path, or ``file.py:Name`` for a PyTorch module).
        b: the model under test.
        inputs: an .npz whose keys are A's input names, or a dict of arrays; seeded
            random inputs from A's signature when omitted (dynamic dims at two sizes).
        dims: sizes for symbolic dims by name, e.g. ``{"batch": 4}``.
        rtol, atol: tolerances; defaults depend on the output dtype.
        tolerances: (rtol, atol) per output name of A, over rtol/atol.
        keep_failure: where to write the failing inputs and both outputs (.npz) if parity fails.
        noise_floor: judge A's ill-conditioned outputs against A's own noise floor (A ONNX; default on).

    Python constants among the input specs (``sr=16000``: forward parameters of a PyTorch side)
    reach only the PyTorch sides; an exported model has them baked in.

    Returns:
        A ParityReport; ``bool(report)`` is the verdict.
    """
    if a_options is None:
        a_options = LoadOptions()
    if b_options is None:
        b_options = LoadOptions(inputs=a_options.inputs)
    a_format, b_format = detect(a, a_format), detect(b, b_format)
    a_options, b_options = _constants_for(a_format, a_options), _constants_for(b_format, b_options)
    from modelport.formats import onnx_data

    if onnx_data.is_large(a) or onnx_data.is_large(b):
        # weights above the external-data threshold: one model in memory at a time
        return compare_in_turn(lambda: open_runner(a, a_format, a_options), lambda: open_runner(b, b_format, b_options),
                               inputs=inputs, dims=dims, rtol=rtol, atol=atol, seed=seed, tolerances=tolerances,
                               keep_failure=Path(keep_failure) if keep_failure is not None else None, capture=capture)
    with open_runner(a, a_format, a_options) as ra, open_runner(b, b_format, b_options) as rb:
        if not ra.signature.inputs:
            raise BadInputError("model has no inputs to feed", path=a)
        return compare_runners(ra, rb, inputs=inputs, dims=dims, rtol=rtol, atol=atol, seed=seed, tolerances=tolerances,
                               keep_failure=Path(keep_failure) if keep_failure is not None else None, capture=capture,
                               noise_floor=noise_floor)


# Formats whose forward takes Python constants (--input sr=16000); the others have them baked in.
_TAKES_CONSTANTS = ("torch-module", "torchscript")


def _constants_for(fmt: str, options: LoadOptions) -> LoadOptions:
    """The options without Python constants, for a side whose format cannot take them."""
    import dataclasses

    from modelport.inputs import split_constants

    tensors, constants = split_constants(options.inputs)
    if not constants or fmt in _TAKES_CONSTANTS:
        return options
    return dataclasses.replace(options, inputs=tensors)
