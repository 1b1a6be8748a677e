"""convert: plan a route, run one step per converter edge in a staging area, verify, place the result."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelport.artifact import Artifact, StepRecord, TensorSpec
from modelport.convert.registry import ConvertOptions, companions, output_kind, plan
from modelport.errors import BadInputError, UnsupportedError
from modelport.formats import LoadOptions, detect, open_runner
from modelport.inputs import ConstantSpec
from modelport.pipeline import Pipeline, Staging, StepResult, Verdict, read_lineage
from modelport.verify import ParityReport, compare_runners, failure_path
from modelport.verify.localize import localize_failure
from modelport.verify.metrics import TaskMetric, evaluate_pair
from modelport.verify.parity import match_names

__all__ = ["ConvertReport", "ConvertStep", "convert", "default_output", "parity_verifier"]


@dataclasses.dataclass(frozen=True)
class ConvertReport:
    """What convert did: the route, each step, the parity of the result against the source."""

    src: str
    src_format: str
    dst_format: str
    artifact: Artifact | None
    route: tuple[str, ...]
    parity: ParityReport | None
    warnings: tuple[str, ...]
    seconds: float
    ok: bool | None  # the verdict (parity, or the task budget with max_drop); None when not verified
    metric: TaskMetric | None = None  # source vs result on the eval data, when given
    scrub: Any = None  # a modelport.security.scrub.ScrubReport with scrub=True

    def __bool__(self) -> bool:
        return self.ok is True


def default_output(src: str, dst_format: str) -> str:
    from modelport.formats import split_module_spec

    parts = split_module_spec(src)
    base = Path(parts[0] if parts else src)
    stem = base.name if base.is_dir() else base.stem
    kind = output_kind(dst_format)
    name = f"{stem}_{dst_format.replace('-', '_')}" if kind == "/" else stem + kind
    return str(base.parent / name)


# Formats whose example-input shapes are hints, not constraints: they run at any batch size.
_SHAPE_AGNOSTIC = {"torch-module", "torchscript", "torch-export", "torch"}


def _verify_specs(src_fmt: str, src_sig, dst_sig, given: tuple[TensorSpec, ...] = ()) -> tuple[TensorSpec, ...] | None:
    """Input specs (named as the source's) that both models accept, dynamic wherever both allow.

    A dim fixed in the converted model stays fixed; a dim dynamic in the converted model
    stays dynamic unless the source fixes it (and the source is not shape-agnostic). An input
    of the source the user gave a value (``--input sr=16000``) is fed that value.
    """
    if len(src_sig.inputs) != len(dst_sig.inputs):
        return None
    by_name = {s.name: s for s in dst_sig.inputs}
    constants = {s.name: s for s in given if isinstance(s, ConstantSpec)}
    out = []
    for i, s in enumerate(src_sig.inputs):
        if s.name in constants:
            out.append(constants[s.name])
            continue
        d = by_name.get(s.name) or dst_sig.inputs[i]
        if d.shape is None or s.shape is None or len(d.shape) != len(s.shape):
            out.append(TensorSpec(s.name, s.dtype, d.shape if s.shape is None else s.shape))
            continue
        dims = tuple(
            dd if isinstance(dd, int) or src_fmt in _SHAPE_AGNOSTIC or not isinstance(sd, int) else sd
            for sd, dd in zip(s.shape, d.shape)
        )
        out.append(TensorSpec(s.name, s.dtype, dims))
    return tuple(out)


def _sha256(path: str) -> str:
    from modelport.formats import split_module_spec

    parts = split_module_spec(path)
    p = Path(parts[0] if parts else path)
    if not p.is_file():
        return ""
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ConvertStep:
    """One converter edge of a route: the previous artifact in, the edge's format out (in scratch)."""

    edge: Any
    options: ConvertOptions
    index: int
    name: str = "convert"
    kind: str | None = None  # the output kind the destination asks for (last step), else the format's default

    def describe(self) -> str:
        return f"{self.edge.src} -> {self.edge.dst} ({self.edge.name})"

    def run(self, artifact: Artifact, staging: Staging) -> StepResult:
        kind = self.kind or output_kind(self.edge.dst)
        out = staging.scratch(f"step{self.index}") / ("model" + ("" if kind == "/" else kind))
        try:
            res = self.edge.fn(artifact.path, str(out), self.options)
        finally:
            # a converter's framework objects (a torch module, an exported program) sit in reference cycles: their
            # weights are freed now, not while the parity check loads the source again (1.1B Llama: 8.8 -> 5 GB)
            gc.collect()
        detail = res.detail
        if self.index == 0 and (digest := _sha256(artifact.path)):
            detail = f"{detail}; source sha256 {digest[:16]}"
        record = StepRecord("convert", self.edge.src, self.edge.dst, res.tool, res.versions, detail)
        return StepResult(Artifact(str(out), self.edge.dst), record, tuple(res.warnings), res.tolerance)


def parity_verifier(fmt: str, options: ConvertOptions, inputs, dims, rtol, atol, seed, *,
                    tolerances: dict[str, tuple[float, float]] | None = None, keep_failure: Path | None = None,
                    reproduce: Callable[[str], str] | None = None, eval_data=None, metric: str | None = None,
                    max_drop: float | None = None):
    """Convert's verification: the result against the source on the same inputs (two shapes when dynamic).

    On a failure the failing inputs and both outputs go to ``keep_failure`` (.npz), and the verdict
    says where and how to rerun the comparison (``reproduce(failure_file)``). With ``eval_data``
    the task metric of both is measured too; with ``max_drop`` as well, the conversion is judged
    on the task (metric drop within the budget) and elementwise parity is reported, not enforced.
    """

    def verify(source: Artifact, result: Artifact, tolerance: tuple[float, float] | None) -> Verdict:
        r, a = (rtol, atol) if rtol is not None or atol is not None or tolerance is None else tolerance
        from modelport.formats import onnx_data

        if eval_data is None and ((fmt == "onnx" and onnx_data.is_large(source.path))
                                  or (result.format == "onnx" and onnx_data.is_large(result.path))):
            # weights above the external-data threshold (either side): the two sides run one after the other
            from modelport.verify import compare_in_turn

            src_options = LoadOptions(weights=options.weights, inputs=options.inputs)
            parity = compare_in_turn(lambda: open_runner(source.path, fmt, src_options),
                                     lambda: open_runner(result.path, result.format), inputs=inputs, dims=dims,
                                     rtol=r, atol=a, seed=seed, tolerances=tolerances,
                                     specs_of=lambda sa, sb: _verify_specs(fmt, sa, sb, options.inputs), keep_failure=keep_failure)
            summary = f"converted model does not match the source: {parity.summary()}"
            if parity.failure_file:
                command = reproduce(parity.failure_file) if reproduce else None
                parity = dataclasses.replace(parity, reproduce=command)
                summary += f"; failing inputs and both outputs kept in {parity.failure_file}" + (
                    f"; reproduce: {command}" if command else "")
            return Verdict(parity.ok, summary, parity, None)
        with open_runner(source.path, fmt, LoadOptions(weights=options.weights, inputs=options.inputs)) as ra, \
                open_runner(result.path, result.format) as rb:
            parity = compare_runners(ra, rb, inputs=inputs, dims=dims, rtol=r, atol=a, seed=seed, tolerances=tolerances,
                                     specs=None if inputs is not None else _verify_specs(fmt, ra.signature, rb.signature,
                                                                                     options.inputs),
                                     keep_failure=keep_failure if max_drop is None else None)
            task = None
            if eval_data is not None:
                mapping = match_names(ra.signature.input_names, rb.signature.input_names, "inputs")
                task = evaluate_pair(ra, rb, eval_data, metric, max_drop,
                                     rename=lambda f: {mapping[k]: v for k, v in f.items()})
        if task is not None and task.within_budget is not None:
            summary = (f"converted model misses the task budget: {task.metric} {task.before:.4f} -> {task.after:.4f} "
                       f"(drop {task.drop:.4f} > {task.max_drop:g})")
            return Verdict(bool(task.within_budget), summary, parity, task)
        summary = f"converted model does not match the source: {parity.summary()}"
        if not parity.ok and fmt == "onnx" and parity.failure_file:
            summary += f"; {localize_failure(source.path, result.path, parity.failure_file, rtol=r, atol=a)}"
        if parity.failure_file:
            command = reproduce(parity.failure_file) if reproduce else None
            parity = dataclasses.replace(parity, reproduce=command)
            summary += f"; failing inputs and both outputs kept in {parity.failure_file}" + (
                f"; reproduce: {command}" if command else "")
        return Verdict(parity.ok, summary, parity, task)

    return verify


def convert(
    src: str | Path,
    to: str,
    out: str | Path | None = None,
    *,
    src_format: str | None = None,
    options: ConvertOptions | None = None,
    verify: bool = True,
    inputs: str | Path | dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    tolerances: dict[str, tuple[float, float]] | None = None,
    report_dir: str | Path | None = None,
    eval_data: str | Path | dict[str, np.ndarray] | None = None,
    metric: str | None = None,
    max_drop: float | None = None,
    progress=None,
    scrub: bool = False,
) -> ConvertReport:
    """Convert a model to another format through the route planner, verifying the result.

    Args:
        src: the model (path, or ``file.py:Name`` for a PyTorch module).
        to: the target format (``onnx``, ``torch``, …).
        out: output path; defaults to beside the source.
        options: converter options (opset, input specs, weights, dynamic batch).
        verify: compare the result with the source on the same inputs (default on).
        tolerances: (rtol, atol) per output name, over rtol/atol.
        report_dir: where a failed verification keeps its inputs (default: beside ``out``).
        eval_data, metric, max_drop: the task metric (default top-1, or ``file.py:fn``) of source and result
            on labelled data; with ``max_drop`` the conversion is judged on the task, not elementwise.
        scrub: remove what the ONNX output leaks about this machine (paths, user, stack traces:
            ``modelport.security.scrub``) before it is placed.

    Raises:
        CheckFailedError: parity failed; nothing is written.
        UnsupportedError: no route, or an op the target lacks.
    """
    started = time.perf_counter()
    options, src = options or ConvertOptions(), str(src)
    if to == "safetensors":  # a pickled torch checkpoint's tensors, rebuilt without running it, verified bitwise
        from modelport.convert.pickle_to_safetensors import convert_checkpoint

        ignored = tuple(flag for flag, v in (("--inputs", inputs), ("--eval", eval_data), ("--max-drop", max_drop),
                                             ("--scrub", scrub or None)) if v is not None)
        return convert_checkpoint(src, out, src_format=src_format, verify=verify, progress=progress, ignored=ignored)
    fmt = detect(src, src_format)
    if scrub and to != "onnx":
        raise UnsupportedError(f"--scrub works on ONNX outputs; {to} has no scrubber (convert to onnx, scrub, then on)")
    if fmt == "onnx":  # external data that escapes the model's directory: refused before any converter opens it
        from modelport.security.loaders import check_onnx_file

        check_onnx_file(src)
    route = plan(fmt, to)
    out_path = Path(out or default_output(src, to))
    kind = output_kind(to, out_path)  # an OpenVINO IR: a directory, or model.xml with model.bin beside it
    beside = [(suffix, out_path.with_suffix(suffix)) for suffix in companions(to, kind)]
    if out_path.exists() and out_path.is_dir() != (kind == "/"):
        raise BadInputError(f"output exists and is a {'directory' if out_path.is_dir() else 'file'}", path=out_path)
    for _, dest in beside:
        if dest.is_dir():
            raise BadInputError("output exists and is a directory", path=dest)
    if inputs is not None and options.get("input_values") is None:  # a converter may specialise on them (and says so)
        options = dataclasses.replace(options, extra=(*options.extra, ("input_values", inputs)))
    later = dataclasses.replace(options, weights=None, inputs=())  # only the first edge reads the user's weights
    steps = [ConvertStep(edge, options if i == 0 else later, i, kind=kind if i == len(route) - 1 else None)
             for i, edge in enumerate(route)]
    def reproduce(failure: str) -> str:
        words = ["modelport", "convert", src, "--to", to, "-o", str(out_path), "--inputs", failure]
        if options.weights:
            words += ["--weights", str(options.weights)]
        words += [w for spec in options.inputs for w in ("--input", str(spec))]
        words += (["--rtol", repr(rtol)] if rtol is not None else []) + (["--atol", repr(atol)] if atol is not None else [])
        words += [w for name, (r, a) in (tolerances or {}).items() for w in ("--tol", f"{name}={r!r},{a!r}")]
        return shlex.join(words)

    if max_drop is not None and eval_data is None:
        raise BadInputError("a task budget (--max-drop) needs labelled eval data (--eval data.npz)")
    verifier = parity_verifier(fmt, options, inputs, dims, rtol, atol, seed, tolerances=tolerances, reproduce=reproduce,
                               keep_failure=failure_path(out_path, report_dir), eval_data=eval_data, metric=metric,
                               max_drop=max_drop) if verify else None
    with Staging(out_path) as staging:
        result = Pipeline(steps, verify=verifier, progress=progress).run(Artifact(src, fmt, lineage=read_lineage(src)), staging)
        scrubbed = None
        if scrub:  # metadata only: the graph's fingerprint is checked unchanged, so the verdict still holds
            from modelport.security.scrub import scrub_in_place

            scrubbed = scrub_in_place(result.artifact.path)
            result = dataclasses.replace(result, artifact=dataclasses.replace(
                result.artifact, lineage=read_lineage(result.artifact.path)))
        with open_runner(result.artifact.path, to) as rb:
            sig = rb.signature
        staging.place(result.artifact.path, out_path)
        if to == "onnx" and Path(result.artifact.path).resolve() != Path(src).resolve():
            from modelport.formats import onnx_data

            # external data an exporter named after the staged file: renamed for the destination, placed with it
            for data in onnx_data.name_data_for(result.artifact.path, out_path.name):
                staging.place(data, out_path.with_name(data.name))
        for suffix, dest in beside:  # placed with the main file, all or none
            staging.place(Path(result.artifact.path).with_suffix(suffix), dest)
    verdict = result.verdict
    parity = dataclasses.replace(verdict.parity, b=str(out_path)) if verdict else None  # not the temporary file
    artifact = dataclasses.replace(result.artifact, path=str(out_path), signature=sig)
    return ConvertReport(src, fmt, to, artifact, tuple(e.name for e in route), parity, result.warnings,
                         time.perf_counter() - started, verdict.ok if verdict else None, verdict.metric if verdict else None,
                         dataclasses.replace(scrubbed, src=str(out_path), out=str(out_path)) if scrubbed else None)
