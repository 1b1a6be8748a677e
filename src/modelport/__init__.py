"""modelport: move trained models between frameworks and platforms, and prove they still do the same thing.

    >>> import modelport
    >>> report = modelport.convert("model.keras", "onnx")      # verified by default
    >>> modelport.verify("model.keras", report.artifact.path)  # any two formats

The public API is this module: load, convert, verify, inspect, bench, check, adapt, compress,
distill (the CLI is a thin layer over it). Each verb's implementation lives in the package of
the same name (modelport.convert, modelport.verify, ...). Those packages are imported here
first, and the functions bound after them: a later import of a submodule (``import
modelport.verify.parity``) finds its package loaded and cannot rebind ``modelport.verify``
(tests/test_layout.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import modelport.adapt  # noqa: F401  (the verb packages, before the functions of the same names)
import modelport.bench  # noqa: F401
import modelport.compress  # noqa: F401
import modelport.convert  # noqa: F401
import modelport.inspect  # noqa: F401
import modelport.verify  # noqa: F401
from modelport.adapt.run import adapt, check
from modelport.artifact import Artifact, Signature, StepRecord, TensorSpec
from modelport.compress.distill import distill
from modelport.compress.run import compress
from modelport.errors import (
    BadInputError,
    CheckFailedError,
    ExportError,
    MissingExtraError,
    ModelportError,
    UnsafeError,
    UnsupportedError,
)
from modelport.formats import LoadOptions, Runner, open_runner

from modelport.versions import __version__  # noqa: F401

__all__ = [
    "Artifact",
    "BadInputError",
    "CheckFailedError",
    "ExportError",
    "MissingExtraError",
    "ModelportError",
    "Signature",
    "StepRecord",
    "TensorSpec",
    "UnsafeError",
    "UnsupportedError",
    "adapt",
    "bench",
    "check",
    "compress",
    "convert",
    "distill",
    "inspect",
    "load",
    "verify",
]

SpecsLike = Sequence[str | TensorSpec] | None


def _specs(given: SpecsLike) -> tuple[TensorSpec, ...]:
    from modelport.inputs import parse_input_spec

    return tuple(s if isinstance(s, TensorSpec) else parse_input_spec(s) for s in given or ())


def _torch_source(src, src_format: str | None, weights: str | None) -> tuple[str, str, str | None] | None:
    """(file.py, class name, weights) when ``src`` is a PyTorch module spec: the litert-torch TFLite route
    converts the user's own module (``modelport.convert.litert_route``)."""
    from modelport.errors import ModelportError
    from modelport.formats import detect, split_module_spec

    parts = split_module_spec(str(src))
    try:
        if not parts or detect(src, src_format) != "torch-module":
            return None
    except ModelportError:  # convert itself says what is wrong with the source
        return None
    return str(Path(parts[0]).resolve()), parts[1], weights and str(Path(weights).resolve())


def _dims(dims: dict[str, int] | Sequence[str] | None) -> dict[str, int] | None:
    from modelport.inputs import parse_dims

    if dims is None or isinstance(dims, dict):
        return dims
    return parse_dims(list(dims))


Tolerances = dict[str, tuple[float, float]] | Sequence[str] | None


def _tolerances(tol: Tolerances) -> dict[str, tuple[float, float]] | None:
    """``{"logits": (1e-3, 1e-5)}`` or ``["logits=1e-3,1e-5"]``."""
    from modelport.verify.parity import parse_tolerances

    if tol is None or isinstance(tol, dict):
        return tol
    return parse_tolerances(list(tol))


def load(path: str | Path, *, format: str | None = None, weights: str | None = None,  # noqa: A002
         input_specs: SpecsLike = None, device: str = "cpu", threads: int | None = None) -> Runner:
    """Open any supported model as a Runner (a context manager; ``run(dict) -> dict``).

    A directory written by ``convert --to torch`` can also be loaded as a plain nn.Module
    with ``modelport.to_torch.load``.
    """
    return open_runner(path, format, LoadOptions(weights=weights, inputs=_specs(input_specs), device=device, threads=threads))


def convert(
    src: str | Path,
    to: str,
    out: str | Path | None = None,
    *,
    src_format: str | None = None,
    weights: str | None = None,
    input_specs: SpecsLike = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    tflite_dtype: str | None = None,
    static_dims: str | None = None,
    tflite_route: str | None = None,
    verify: bool = True,
    inputs: str | Path | dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | Sequence[str] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    tol: Tolerances = None,
    report_dir: str | Path | None = None,
    eval_data: str | Path | dict[str, np.ndarray] | None = None,
    metric: str | None = None,
    max_drop: float | None = None,
    progress: Callable[[str], None] | None = None,
    scrub: bool = False,
):
    """Convert ``src`` to format ``to`` (through ONNX where needed) and verify the result.

    ``tflite_dtype`` (``float32`` or ``float16`` weights) and ``static_dims``
    (``batch=1,sequence=128``: sizes for dims the TF/TFLite converter must freeze) concern
    the ONNX -> savedmodel/tflite step; ``tflite_route`` (``auto``, ``onnx2tf`` or ``litert``) picks the
    TFLite converter (auto: onnx2tf, then litert-torch, the first that verifies).

    ``tol`` gives (rtol, atol) per output name. When parity fails, nothing is written but the
    failing inputs and both outputs (``NAME.parity-failure.npz`` beside ``out``, or in ``report_dir``),
    and the error says how to rerun the comparison. ``eval_data`` (inputs + ``labels``) measures the
    task metric (top-1, or ``metric="file.py:fn"``) of source and result; with ``max_drop`` the
    conversion is judged on the task (for approximate routes such as float16 TFLite).

    ``scrub`` removes what an ONNX output leaks about this machine (``modelport.security.scrub``).
    A SavedModel with file, network or Python ops is refused unless the call runs inside
    ``modelport.security.loaders.trusting()``.

    Returns a ConvertReport; raises CheckFailedError (nothing written) when parity fails.
    """
    from modelport.convert.run import convert as run_pipeline
    from modelport.convert.registry import ConvertOptions

    # the TFLite edge verifies each of its routes as convert will (``modelport.convert.litert_route``)
    route_check = (("tflite_route", tflite_route), ("verify_inputs", str(inputs) if isinstance(inputs, (str, Path)) else None),
                   ("verify_rtol", rtol), ("verify_atol", atol), ("tflite_input_specs", _specs(input_specs) or None),
                   ("torch_source", _torch_source(src, src_format, weights))) if to == "tflite" else ()
    extra = tuple((k, v) for k, v in (("tflite_dtype", tflite_dtype), ("static_dims", static_dims), *route_check)
                  if v is not None)
    options = ConvertOptions(opset=opset, inputs=_specs(input_specs), weights=weights, dynamic_batch=dynamic_batch,
                             extra=extra)
    return run_pipeline(src, to, out, src_format=src_format, options=options, verify=verify, inputs=inputs,
                        dims=_dims(dims), rtol=rtol, atol=atol, tolerances=_tolerances(tol), report_dir=report_dir,
                        eval_data=eval_data, metric=metric, max_drop=max_drop, progress=progress, scrub=scrub)


def verify(
    a: str | Path,
    b: str | Path,
    *,
    a_format: str | None = None,
    b_format: str | None = None,
    weights: str | None = None,
    b_weights: str | None = None,
    input_specs: SpecsLike = None,
    inputs: str | Path | dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | Sequence[str] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    tol: Tolerances = None,
    keep_failure: str | Path | None = None,
    report: str | Path | None = None,
):
    """Compare two models of any formats on the same inputs; returns a ParityReport.

    ``tol`` gives (rtol, atol) per output name; ``keep_failure`` is where the failing inputs and
    both outputs go (.npz) when parity fails (the CLI keeps them beside B); ``report`` writes the
    self-contained HTML report there (parity table, error histograms, B's lineage).
    """
    from modelport.verify import verify as run_verify

    specs = _specs(input_specs)
    captured: list = []
    parity = run_verify(
        a, b, a_format=a_format, b_format=b_format,
        a_options=LoadOptions(weights=weights, inputs=specs, device=device),
        b_options=LoadOptions(weights=b_weights, inputs=specs, device=device),
        inputs=inputs, dims=_dims(dims), rtol=rtol, atol=atol, seed=seed, tolerances=_tolerances(tol),
        keep_failure=keep_failure, capture=captured,
    )
    if report is not None:
        from modelport.pipeline import read_lineage
        from modelport.verify.html import output_diffs, write_report

        _, ref, got = captured[0]
        write_report(report, parity, diffs=output_diffs(ref, got), route=read_lineage(b))
    return parity


def inspect(path: str | Path, *, fmt: str | None = None, weights: str | None = None, input_specs: SpecsLike = None) -> Any:
    """Describe a model: format, signature, opset, op histogram, parameters, MACs, size."""
    from modelport.inspect.run import inspect as run_inspect

    return run_inspect(str(path), fmt, LoadOptions(weights=weights, inputs=_specs(input_specs)))


def bench(
    models: Sequence[str | Path],
    *,
    batches: Sequence[int] = (1, 8),
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 20,
    weights: str | None = None,
    input_specs: SpecsLike = None,
    dims: dict[str, int] | Sequence[str] | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> Any:
    """Latency p50/p90 and throughput per batch size for several models, measured interleaved."""
    from modelport.bench.run import bench as run_bench

    specs = _specs(input_specs)
    options = [LoadOptions(weights=weights, inputs=specs, device=device, threads=threads) for _ in models]
    return run_bench([str(m) for m in models], batches=tuple(batches), threads=threads, warmup=warmup, runs=runs,
                     options=options, dims=_dims(dims), progress=progress)
