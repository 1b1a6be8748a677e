"""The ONNX -> TFLite edge's routes: onnx2tf, then litert-torch; the first whose output verifies is kept.

onnx2tf fails on many real graphs (dynamic dims, AveragePool, LSTM state). The second route
compiles the ONNX graph to a PyTorch module with modelport's own compiler (``modelport.to_torch``)
and converts that module with litert-torch (Google's PyTorch -> LiteRT converter, formerly
ai-edge-torch) in the ``litert`` toolchain (``modelport toolchain install litert``;
``toolchains/litert_ops.py``): ``litert_torch.convert(module.eval(), sample_inputs).export(path)``.
litert-torch traces at the sample inputs' shapes, so its ``.tflite`` has static shapes: those of
the user's ``--inputs`` arrays, else of ``--input`` specs, else the graph's static dims and defaults
(reported).

``tflite_route`` (``ConvertOptions.extra``; ``--tflite-route``): ``auto`` (default) tries onnx2tf, then
litert-torch, and keeps the first whose output matches the ONNX source (the parity check that
convert's verification runs, at the user's ``--inputs`` values / ``--input`` shapes); ``onnx2tf`` or
``litert`` runs that route only, and convert's own verification judges it. For a PyTorch source
(``file.py:Name``, ``torch_source`` in the extra) litert-torch converts the user's own module, not the
one generated from its ONNX export. In auto with the toolchain installed, each try is checked here
(also under ``--no-verify``: the check is how a route is chosen). In auto, a missing
``litert`` toolchain skips that route with a note naming the install command; asked for by name,
it is an UnsupportedError (exit 3) saying so. Every try (tool, outcome, error or max error, time)
is in the step's detail (the lineage and the convert report) and, for those that failed, the warnings.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelport.convert.registry import ConvertOptions, ConverterResult
from modelport.errors import BadInputError, ExportError, ModelportError, UnsupportedError

__all__ = ["ROUTES", "RouteTry", "litert_tflite", "route_names", "tflite_routes"]

ROUTES = ("onnx2tf", "litert", "auto")
TOOLCHAIN = "litert"
INSTALL_HINT = f"modelport toolchain install {TOOLCHAIN}"


@dataclasses.dataclass(frozen=True)
class RouteTry:
    """One try of a TFLite route: ``outcome`` is verified, mismatch, failed, unchecked or skipped."""

    tool: str
    outcome: str
    error: str = ""
    max_abs_error: float | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        if self.outcome in ("verified", "mismatch") and self.max_abs_error is not None:
            what = f"{self.outcome} (max abs error {self.max_abs_error:.3g}{'; ' + self.error if self.error else ''})"
        else:
            what = f"{self.outcome}{': ' + self.error if self.error else ''}"
        return f"{self.tool} {what}" + (f" [{self.seconds:.1f} s]" if self.seconds else "")

    def to_dict(self) -> dict:
        from modelport.artifact import to_jsonable

        return to_jsonable(self)


def route_names(options: ConvertOptions) -> tuple[str, list[str]]:
    """(the asked route, the routes to try in order); BadInputError (exit 2) for an unknown name."""
    choice = str(options.get("tflite_route") or "auto").strip().lower()
    if choice not in ROUTES:
        raise BadInputError(f"unknown TFLite route {choice!r}; choose one of {', '.join(ROUTES)}")
    return choice, ["onnx2tf", "litert"] if choice == "auto" else [choice]


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0] if isinstance(exc, ModelportError) and exc.args else exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _specs(options: ConvertOptions) -> tuple:
    """The user's --input specs: this step's, else those convert gave the first step (``tflite_input_specs``)."""
    return tuple(options.inputs) or tuple(options.get("tflite_input_specs") or ())


def _reference_feed(src: str, options: ConvertOptions) -> tuple[dict[str, np.ndarray], str]:
    """The sample inputs litert-torch traces at: the user's --inputs arrays, else random ones at the
    --input shapes / the graph's static dims (one set); and where they came from."""
    from modelport.formats import LoadOptions, open_runner
    from modelport.verify import feeds_for

    given = options.get("verify_inputs")
    with open_runner(src, "onnx", LoadOptions(inputs=_specs(options))) as ref:
        feeds, source = feeds_for(ref, inputs=given, seed=0)
        names = [s.name for s in ref.signature.inputs]
    feed = feeds[0]
    return {n: np.ascontiguousarray(feed[n]) for n in names if n in feed}, source


def litert_tflite(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    """ONNX -> our generated PyTorch module -> litert-torch -> ``out`` (.tflite, float32, static shapes)."""
    from modelport import toolchains
    from modelport.convert.onnx_to_torch import onnx_to_torch
    from modelport.formats.torch_dir import read_meta

    env = toolchains.require(TOOLCHAIN)  # ToolchainMissingError (exit 3) names the install command
    dtype = str(options.get("tflite_dtype", "float32"))
    if dtype != "float32":
        raise UnsupportedError(f"the litert-torch route writes float32 weights only, not {dtype}")
    dest = Path(out)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.litert-", dir=dest.parent))
    user = options.get("torch_source")  # (file.py, Name, weights): a PyTorch source's own module
    try:
        feed, source = _reference_feed(src, options)
        if user:
            module = {"module_file": user[0], "class_name": user[1], "weights": user[2]}
            names, how, notes = list(feed), f"the source module {Path(user[0]).name}:{user[1]}", ()
        else:
            module_dir = work / "torch"
            compiled = onnx_to_torch(src, str(module_dir), options)
            order = [e["name"] if isinstance(e, dict) else e for e in read_meta(module_dir).get("inputs", [])]
            names = [n for n in order if n in feed]
            module = {"module_dir": str(module_dir)}
            how, notes = f"modelport onnx2torch ({compiled.detail})", tuple(compiled.warnings)
        samples = work / "inputs.npz"
        np.savez(samples, **{f"i{k}": feed[n] for k, n in enumerate(names)})
        driver = toolchains.DriverProcess.shared(TOOLCHAIN, "litert_ops.py")
        result = driver.call("convert", out=str(dest.resolve()), inputs=str(samples),
                             names=[f"i{k}" for k in range(len(names))], **module)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shapes = ", ".join(f"{n}:{'x'.join(map(str, s))}" for n, s in zip(names, result["shapes"].values()))
    versions = tuple((k, env.version(k) or "?") for k in ("litert-torch", "torch", "ai-edge-litert"))
    return ConverterResult(tool="litert-torch", versions=versions,
                           detail=f"{how} -> litert-torch; static shapes {shapes} (traced at the sample inputs: {source})",
                           warnings=notes)


def _check(src: str, tflite: str, options: ConvertOptions, tolerance) -> tuple[bool, float | None, str]:
    """Does the .tflite match the ONNX source? (ok, max abs error, why it could not be checked)."""
    from modelport.convert.run import _verify_specs
    from modelport.formats import LoadOptions, open_runner
    from modelport.verify import compare_runners

    rtol, atol = options.get("verify_rtol"), options.get("verify_atol")
    if rtol is None and atol is None and tolerance is not None:
        rtol, atol = tolerance
    given = options.get("verify_inputs")
    try:
        with open_runner(src, "onnx", LoadOptions(inputs=_specs(options))) as ra, open_runner(tflite, "tflite") as rb:
            specs = None if given is not None else _verify_specs("onnx", ra.signature, rb.signature)
            report = compare_runners(ra, rb, inputs=given, rtol=rtol, atol=atol, seed=0, specs=specs)
    except ModelportError as exc:
        return False, None, _first_line(exc)
    except Exception as exc:  # noqa: BLE001 - a runtime that cannot run the file: this route does not verify
        return False, None, f"{type(exc).__name__}: {_first_line(exc)}"
    worst = max((o.max_abs for r in report.runs for o in r.outputs), default=0.0)
    return report.ok, worst, "" if report.ok else report.summary()


Converter = Callable[[str, str, ConvertOptions], ConverterResult]


def tflite_routes(src: str, out: str, options: ConvertOptions, onnx2tf: Converter) -> ConverterResult:
    """Try the TFLite routes in order (see the module docstring); the kept one's result, with every try."""
    choice, order = route_names(options)
    dtype = str(options.get("tflite_dtype", "float32"))
    if dtype not in ("float32", "float16"):
        raise BadInputError(f"tflite dtype must be one of float32, float16, not {dtype!r}")
    dest = Path(out)
    converters = {"onnx2tf": ("onnx2tf", onnx2tf), "litert": ("litert-torch", litert_tflite)}
    tries: list[RouteTry] = []
    if choice == "auto":
        from modelport import toolchains

        try:
            toolchains.require(TOOLCHAIN)
            if dtype != "float32":
                tries.append(RouteTry("litert-torch", "skipped", f"it writes float32 weights only, not {dtype}"))
                order = ["onnx2tf"]
        except toolchains.ToolchainMissingError as exc:
            tries.append(RouteTry("litert-torch", "skipped", _first_line(exc)))
            order = ["onnx2tf"]
    kept: tuple[Path, ConverterResult] | None = None  # the first route that converted but did not verify
    for name in order:
        tool, fn = converters[name]
        tmp = dest.with_name(f".{dest.name}.{name}-{os.getpid()}.tflite")
        started = time.perf_counter()
        try:
            res = fn(src, str(tmp), options)
        except ModelportError as exc:
            tmp.unlink(missing_ok=True)
            # the only route, or bad input (not a route's limit): its own error and exit code, any skipped route named
            if len(order) == 1 or (name == "onnx2tf" and not isinstance(exc, UnsupportedError)):
                if tries and exc.args and isinstance(exc.args[0], str):
                    exc.args = (f"{exc.args[0]} (TFLite route {tries[0].describe()})",) + exc.args[1:]
                raise
            tries.append(RouteTry(tool, "failed", _first_line(exc), seconds=round(time.perf_counter() - started, 1)))
            continue
        if len(order) == 1:  # one route: convert's own verification judges it
            os.replace(tmp, dest)
            if choice != "auto":
                return res
            tries.insert(0, RouteTry(tool, "converted", "verified by convert",
                                     seconds=round(time.perf_counter() - started, 1)))
            return _with_tries(res, tries, choice)
        ok, worst, why = _check(src, str(tmp), options, res.tolerance)
        seconds = round(time.perf_counter() - started, 1)
        if ok:
            tries.append(RouteTry(tool, "verified", max_abs_error=worst, seconds=seconds))
            os.replace(tmp, dest)
            if kept is not None:
                kept[0].unlink(missing_ok=True)
            return _with_tries(res, tries, choice)
        tries.append(RouteTry(tool, "mismatch" if worst is not None else "unchecked", why, worst, seconds))
        if kept is None:
            kept = (tmp, res)
        else:
            tmp.unlink(missing_ok=True)
    if kept is not None:  # converted, not verified: placed, and convert's verification says how it differs
        os.replace(kept[0], dest)
        return _with_tries(kept[1], tries, choice)
    failed = "; ".join(t.describe() for t in tries)
    raise ExportError(f"no TFLite route converted the model: {failed}"[:900], path=src)


def _with_tries(res: ConverterResult, tries: list[RouteTry], choice: str) -> ConverterResult:
    routes = f"tflite routes ({choice}): " + "; ".join(t.describe() for t in tries)
    notes = tuple(f"TFLite route {t.describe()}" for t in tries if t.outcome not in ("verified", "converted", "skipped"))
    return dataclasses.replace(res, detail=f"{res.detail}; {routes}", warnings=tuple(res.warnings) + notes)
