"""The convert pipeline: plan a route, run each converter into a temp dir, verify, rename into place."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from modelport.artifact import Artifact, StepRecord, TensorSpec
from modelport.convert.registry import ConvertOptions, output_kind, plan
from modelport.errors import BadInputError, CheckFailedError
from modelport.formats import LoadOptions, detect, open_runner
from modelport.quiet import native_output
from modelport.verify import ParityReport, compare_runners

__all__ = ["ConvertReport", "convert", "default_output", "place"]


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
    ok: bool

    def __bool__(self) -> bool:
        return self.ok


def default_output(src: str, dst_format: str) -> str:
    from modelport.formats import split_module_spec

    parts = split_module_spec(src)
    base = Path(parts[0] if parts else src)
    stem = base.name if base.is_dir() else base.stem
    kind = output_kind(dst_format)
    name = f"{stem}_{dst_format.replace('-', '_')}" if kind == "/" else stem + kind
    return str(base.parent / name)


def place(tmp_path: Path, out: Path) -> None:
    """Move a finished output into place; an existing output is replaced only at the very end."""
    if out.is_dir() and not out.is_symlink():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, backup)
        os.replace(tmp_path, out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp_path, out)


# Formats whose example-input shapes are hints, not constraints: they run at any batch size.
_SHAPE_AGNOSTIC = {"torch-module", "torchscript", "torch-export", "torch"}


def _verify_specs(src_fmt: str, src_sig, dst_sig) -> tuple[TensorSpec, ...] | None:
    """Input specs (named as the source's) that both models accept, dynamic wherever both allow.

    A dim fixed in the converted model stays fixed; a dim dynamic in the converted model
    stays dynamic unless the source fixes it (and the source is not shape-agnostic).
    """
    if len(src_sig.inputs) != len(dst_sig.inputs):
        return None
    by_name = {s.name: s for s in dst_sig.inputs}
    out = []
    for i, s in enumerate(src_sig.inputs):
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


def _record_lineage(path: Path, fmt: str, steps: tuple[StepRecord, ...]) -> None:
    payload = json.dumps([dataclasses.asdict(s) for s in steps])
    if fmt == "onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        for prop in list(model.metadata_props):
            if prop.key == "modelport.lineage":
                model.metadata_props.remove(prop)
        model.metadata_props.add(key="modelport.lineage", value=payload)
        onnx.save(model, str(path))
    elif path.is_dir():
        (path / "modelport_lineage.json").write_text(payload)


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
    progress=None,
) -> ConvertReport:
    """Convert a model to another format through the route planner, verifying the result.

    Args:
        src: the model (path, or ``file.py:Name`` for a PyTorch module).
        to: the target format (``onnx``, ``torch``, …).
        out: output path; defaults to beside the source.
        options: converter options (opset, input specs, weights, dynamic batch).
        verify: compare the result with the source on the same inputs (default on).

    Raises:
        CheckFailedError: parity failed; nothing is written.
        UnsupportedError: no route, or an op the target lacks.
    """
    started = time.perf_counter()
    options = options or ConvertOptions()
    src = str(src)
    fmt = detect(src, src_format)
    route = plan(fmt, to)
    out_path = Path(out or default_output(src, to))
    if out_path.exists() and out_path.is_dir() != (output_kind(to) == "/"):
        raise BadInputError(f"output exists and is a {'directory' if out_path.is_dir() else 'file'}", path=out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    steps: list[StepRecord] = []
    warnings: list[str] = []
    tolerances: list[tuple[float, float]] = []
    try:
        current = src
        for i, edge in enumerate(route):
            kind = output_kind(edge.dst)
            step_out = tmp / (f"step{i}" + ("" if kind == "/" else kind))
            if progress:
                progress(f"{edge.src} -> {edge.dst} ({edge.name})")
            with native_output():  # converters' C++ INFO lines (TF, LiteRT, OpenVINO) stay off the terminal
                res = edge.fn(current, str(step_out), options if i == 0 else dataclasses.replace(options, weights=None, inputs=()))
            warnings.extend(res.warnings)
            if res.tolerance:
                tolerances.append(res.tolerance)
            steps.append(StepRecord("convert", edge.src, edge.dst, res.tool, res.versions, res.detail))
            current = str(step_out)
        parity = None
        if verify:
            if rtol is None and atol is None and tolerances:
                rtol, atol = max(t[0] for t in tolerances), max(t[1] for t in tolerances)
            if progress:
                progress("verifying parity")
            with open_runner(src, fmt, LoadOptions(weights=options.weights, inputs=options.inputs)) as ra, \
                    open_runner(current, to) as rb:
                parity = compare_runners(ra, rb, inputs=inputs, dims=dims, rtol=rtol, atol=atol, seed=seed,
                                         specs=None if inputs is not None else _verify_specs(fmt, ra.signature, rb.signature))
                sig = rb.signature
            last = steps[-1]
            steps[-1] = dataclasses.replace(last, verified=parity.ok)
            if not parity.ok:
                raise CheckFailedError(f"converted model does not match the source: {parity.summary()}", report=parity, path=src)
        else:
            with open_runner(current, to) as rb:
                sig = rb.signature
        digest = _sha256(src)
        if digest:
            steps[0] = dataclasses.replace(steps[0], detail=f"{steps[0].detail}; source sha256 {digest[:16]}")
        _record_lineage(Path(current), to, tuple(steps))
        place(Path(current), out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if parity is not None:
        parity = dataclasses.replace(parity, b=str(out_path))  # not the temporary file it was run from
    artifact = Artifact(str(out_path), to, sig, tuple(steps))
    return ConvertReport(src, fmt, to, artifact, tuple(e.name for e in route), parity, tuple(warnings),
                         time.perf_counter() - started, True)
