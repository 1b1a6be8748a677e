"""ONNX -> TensorFlow SavedModel and ONNX -> TFLite with onnx2tf.

onnx2tf rewrites NCHW graphs into NHWC. At the model boundary we keep the ONNX layout:
every 3-D, 4-D and 5-D input is named in ``keep_ncw_or_nchw_or_ncdhw_input_names``, so the
converted model takes the very arrays the ONNX model takes (onnx2tf transposes inside)
and verification can feed both the same inputs.

Two things onnx2tf does that we do not let it do:

- For models whose inputs are all static-batch 3-channel images it downloads a
  calibration file (``calibration_image_sample_data_20x128x128x3_float32.npy``) unless a
  file of that name is in its working directory. It runs in a scratch directory where we
  write one made locally from a seeded generator; nothing is fetched.
- It stops with ``sys.exit(1)`` or a bare traceback on an op it cannot convert. Ops are
  checked up front against its op modules, and any failure becomes an ExportError
  naming the op and node.

TFLite comes in float32 (default) or float16 weights (``ConvertOptions.extra``
``tflite_dtype="float16"``; inputs and outputs stay float32).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import BadInputError, ExportError
from modelport.formats.base import require
from modelport.formats.keras_format import quiet_tf_env

__all__ = ["CALIBRATION_FILE", "TFLITE_DTYPES", "onnx_to_savedmodel", "onnx_to_tflite", "unsupported_ops"]

CALIBRATION_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
TFLITE_DTYPES = ("float32", "float16")
_STANDARD_DOMAINS = ("", "ai.onnx")

quiet_tf_env()


def _nodes(graph) -> Iterator:
    """Every node of a graph, subgraphs (If/Loop/Scan bodies) included."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def unsupported_ops(model) -> dict[str, list[str]]:
    """Ops onnx2tf has no converter for: ``{op: [node names]}``; custom domains count as unsupported."""
    found: dict[str, list[str]] = {}
    for node in _nodes(model.graph):
        op = node.op_type if node.domain in _STANDARD_DOMAINS else f"{node.domain}::{node.op_type}"
        ok = node.domain in _STANDARD_DOMAINS and op.isidentifier() and importlib.util.find_spec(f"onnx2tf.ops.{op}")
        if not ok:
            found.setdefault(op, []).append(node.name or "<unnamed>")
    return found


def _check_ops(model, src: str) -> None:
    bad = unsupported_ops(model)
    if bad:
        parts = [f"{op} (node {', '.join(names[:3])}{', …' if len(names) > 3 else ''})" for op, names in sorted(bad.items())]
        raise ExportError(f"onnx2tf cannot convert op(s): {'; '.join(parts)}", path=src)


def _kept_layout_inputs(model) -> list[str]:
    """Graph inputs of rank 3-5, whose ONNX (channels-first) layout is kept at the boundary."""
    inits = {i.name for i in model.graph.initializer}
    return [
        vi.name for vi in model.graph.input
        if vi.name not in inits and vi.type.HasField("tensor_type") and 3 <= len(vi.type.tensor_type.shape.dim) <= 5
    ]


def write_calibration_file(directory: Path) -> Path:
    """The calibration images onnx2tf would download: 20 seeded uniform [0, 1) 128x128 RGB images."""
    path = directory / CALIBRATION_FILE
    data = np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)
    np.save(path, data)
    return path


@contextlib.contextmanager
def _scratch_cwd() -> Iterator[Path]:
    """A scratch working directory holding the calibration file; the old cwd comes back after."""
    old = os.getcwd()
    scratch = Path(tempfile.mkdtemp(prefix="modelport-onnx2tf-"))
    try:
        write_calibration_file(scratch)
        os.chdir(scratch)
        yield scratch
    finally:
        os.chdir(old)
        shutil.rmtree(scratch, ignore_errors=True)


def _last_error(log: str) -> str:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in log.splitlines()]
    errors = [ln for ln in lines if "ERROR" in ln and ln.strip("ERROR: ").strip()]
    return errors[-1] if errors else ""


def _run_onnx2tf(src: str, folder: Path) -> list[str]:
    """Convert with onnx2tf into ``folder`` (SavedModel + float32/float16 .tflite); returns kept inputs."""
    require("tensorflow", "tf", "ONNX -> TensorFlow")
    require("onnx2tf", "tf", "ONNX -> TensorFlow")
    import onnx

    try:
        model = onnx.load(src)
    except Exception as exc:
        raise BadInputError(f"cannot read ONNX model ({type(exc).__name__})", path=src) from None
    _check_ops(model, src)
    kept = _kept_layout_inputs(model)
    src_abs, folder = os.path.abspath(src), folder.resolve()  # it runs in a scratch cwd
    sink = io.StringIO()
    with _scratch_cwd():
        import onnx2tf

        try:
            with redirect_stdout(sink), redirect_stderr(sink):
                onnx2tf.convert(
                    input_onnx_file_path=src_abs,
                    output_folder_path=str(folder),
                    keep_ncw_or_nchw_or_ncdhw_input_names=kept or None,
                    output_signaturedefs=True,
                    copy_onnx_input_output_names_to_tflite=True,
                    not_use_onnxsim=True,
                    non_verbose=True,
                    verbosity="error",
                )
        except (Exception, SystemExit) as exc:
            node = getattr(exc, "onnx_op_name", None)
            why = _last_error(sink.getvalue()) or f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            where = f" at node {node}" if node else ""
            raise ExportError(f"onnx2tf failed{where}: {why}"[:400], path=src) from None
    return kept


def _versions() -> tuple[tuple[str, str], ...]:
    import onnx2tf
    import tensorflow as tf

    return (("onnx2tf", onnx2tf.__version__), ("tensorflow", tf.__version__))


def _detail(kept: list[str], extra: str = "") -> str:
    layout = f"inputs kept in ONNX layout: {', '.join(kept)}" if kept else "no input layout change"
    return f"{layout}{'; ' + extra if extra else ''}"


@register("onnx", "savedmodel", "onnx2tf")
def onnx_to_savedmodel(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    folder = Path(out)
    kept = _run_onnx2tf(src, folder)
    for extra in folder.glob("*.tflite"):
        extra.unlink()
    return ConverterResult(tool="onnx2tf", versions=_versions(), detail=_detail(kept))


@register("onnx", "tflite", "onnx2tf")
def onnx_to_tflite(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    dtype = str(options.get("tflite_dtype", "float32"))
    if dtype not in TFLITE_DTYPES:
        raise BadInputError(f"tflite dtype must be one of {', '.join(TFLITE_DTYPES)}, not {dtype!r}")
    dest = Path(out)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.onnx2tf-", dir=dest.parent))
    try:
        kept = _run_onnx2tf(src, work / "saved_model")
        found = sorted((work / "saved_model").glob(f"*_{dtype}.tflite"))
        if not found:
            raise ExportError(f"onnx2tf wrote no {dtype} .tflite file", path=src)
        os.replace(found[0], dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ConverterResult(tool="onnx2tf", versions=_versions(), detail=_detail(kept, f"tflite {dtype}"))
