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

Slices that keep their whole input (tf2onnx's ``x[..., 0]`` after a Keras Conv1D, Magika) are dropped
first (``modelport.convert.noop_slice``): onnx2tf applies their ONNX axes to the channels-last tensor
and cuts the channels.

onnx2tf also returns 3-5-D feature-map outputs channels-last (NHWC) where ONNX has them
channels-first. Which outputs it transposed is settled by running the converted SavedModel
and the ONNX model (onnxruntime) on one random input: an output whose shape is only the
channels-last permutation of the ONNX one is transposed; where both layouts fit the shape
(equal dims), the values decide, and a tie leaves it as it is. An output that fits neither
(silero-vad's LSTM state stack, [1, 2, 128] for ONNX's [2, 1, 128]) gets the axis order whose
values match best, when one order is strictly best. Those outputs get transposed
back in a wrapping serving function, re-saved as the SavedModel; the .tflite is then made
from that SavedModel with TF's converter, as onnx2tf makes it.

TFLite comes in float32 (default) or float16 weights (``ConvertOptions.extra``
``tflite_dtype="float16"``; inputs and outputs stay float32).

Quantized (QDQ) graphs, from tf2onnx's TFLite path or ``modelport compress --quantize static``,
are prepared first (``modelport.convert.qdq_prep``: weight ``DequantizeLinear`` folded, layout ops
moved past ``DequantizeLinear``, fake-quant pairs written as ``Clip``), which onnx2tf otherwise
mis-converts (digits CNN: top-1 0.924 -> 0.100). The result is a float model: float weights,
activations clipped to their int8 range but not rounded. It differs from the quantized source by the
rounding it drops, measured at about one quantum of the output (the output ``DequantizeLinear``'s
scale) on the zoo's digits CNN and MLP, so it is verified by default at ``atol`` = two output quanta,
``rtol`` 1e-2 (3e-2 where activations are quantized at run time, ``DynamicQuantizeLinear``). Integer
outputs are compared exactly, which a model that does not round cannot match everywhere: judge those
on the task (``--eval data.npz --max-drop``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from modelport.artifact import TensorSpec
from modelport.convert.if_fold import fold_ifs, given_values
from modelport.convert.noop_slice import drop_noop_slices
from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.convert.tflite_to_onnx import DYNAMIC_RANGE_TOLERANCE  # activations quantized at run time
from modelport.errors import BadInputError, ExportError
from modelport.formats.base import require
from modelport.formats.keras_format import quiet_tf_env

__all__ = ["CALIBRATION_FILE", "TFLITE_DTYPES", "onnx_to_savedmodel", "onnx_to_tflite", "unsupported_ops"]

CALIBRATION_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
TFLITE_DTYPES = ("float32", "float16")
FLOAT16_TOLERANCE = (1e-2, 1e-3)  # (rtol, atol) for float16 weights
# Quantized (QDQ) sources, see the module docstring: atol in quanta of the output's DequantizeLinear scale.
QDQ_RTOL, QDQ_QUANTA = 1e-2, 2.0
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


# ops a recurrent state may pass through between a graph input and an LSTM/GRU/RNN initial state
_STATE_PATH = {"Gather", "Slice", "Squeeze", "Unsqueeze", "Split", "Identity", "Reshape", "Cast", "Concat", "Constant",
               "Expand"}


def _state_inputs(model) -> list[str]:
    """Graph inputs that are recurrent state, no channels-first feature map: those that reach an
    LSTM/GRU/RNN's initial state (inputs 5 and 6) through data movement only (silero-vad's ``state``
    [2, batch, 128] -> Gather -> Unsqueeze -> initial_h), and stacks only ever indexed along their first
    axis (``Gather(state, i, axis=0)`` feeding an LSTM cell written as MatMuls). onnx2tf is told to keep
    their shape absolutely, else it transposes them to channels-last and the LSTM gets a [128, 1] state
    (``initial_state ... not compatible with cell.state_size``; a MatMul of [128, 1] and [128, 512])."""
    from modelport.formats.onnx_fold import find_cone

    inputs = {vi.name for vi in model.graph.input} - {t.name for t in model.graph.initializer}
    found: list[str] = []
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in set(node.input) & inputs:
            readers.setdefault(name, []).append(node)
    for name, nodes in readers.items():
        picks = [n for n in nodes if n.op_type in ("Gather", "Split") and n.domain in _STANDARD_DOMAINS
                 and next((a.i for a in n.attribute if a.name == "axis"), 0) == 0 and n.input[0] == name]
        if picks and all(n in picks or n.op_type == "Shape" for n in nodes):
            found.append(name)
    for node in model.graph.node:
        if node.op_type not in ("LSTM", "GRU", "RNN") or node.domain not in _STANDARD_DOMAINS:
            continue
        for name in node.input[5:7]:
            cone = find_cone(model.graph, name, ops=_STATE_PATH, limit=32) if name else None
            if cone is not None:
                found.extend(n for n in sorted(cone.leaves & inputs) if n not in found)
    return found


def _symbolic(d) -> bool:
    """A dim without a size: a name, nothing, or a negative size (paddle2onnx writes -1)."""
    return not d.HasField("dim_value") or d.dim_value <= 0


def _dim_key(name: str, pos: int, d) -> str:
    """A dim's name, shared by the dims that have it; ``x[2]`` for an unnamed one ("?" names none: paddle2onnx)."""
    return d.dim_param if d.dim_param and d.dim_param != "?" else f"{name}[{pos}]"


def _frozen_sizes(model, batch: int, other: int) -> dict[str, int]:
    """A size for each symbolic input dim: ``batch`` for leading dims, ``other`` elsewhere."""
    sizes: dict[str, int] = {}
    for vi in model.graph.input:
        for pos, d in enumerate(vi.type.tensor_type.shape.dim):
            if _symbolic(d):
                sizes.setdefault(_dim_key(vi.name, pos, d), batch if pos == 0 else other)
    return sizes


def _given_sizes(model, specs) -> dict[str, int]:
    """The sizes the user's ``--input`` specs give the graph's symbolic input dims (a recognizer's height 48)."""
    given = {s.name: s.shape for s in specs if s.shape is not None}
    sizes: dict[str, int] = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        shape = given.get(vi.name)
        if shape is None or len(shape) != len(dims):
            continue
        for pos, (d, n) in enumerate(zip(dims, shape)):
            if _symbolic(d) and isinstance(n, int) and n > 0:
                sizes[_dim_key(vi.name, pos, d)] = n
    return sizes


def _freeze_dims(model, sizes: dict[str, int]):
    """A copy of the model with symbolic input/output dims fixed, shapes re-inferred, constants folded.

    onnx2tf's NHWC rewriting loses the rank of tensors built from runtime shapes (e.g. the
    attention masks transformers builds with GatherND over broadcast index grids); with
    static shapes those subgraphs fold to constants.
    """
    import onnx
    import onnxscript.optimizer

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in [*model.graph.input, *model.graph.output]:
        for pos, d in enumerate(vi.type.tensor_type.shape.dim):
            key = _dim_key(vi.name, pos, d)
            if _symbolic(d) and key in sizes:
                d.Clear()
                d.dim_value = sizes[key]
    del model.graph.value_info[:]
    try:
        model = onnxscript.optimizer.optimize(model, input_size_limit=1 << 22, output_size_limit=1 << 22)
    except Exception:  # noqa: BLE001 - folding is an optimization; our own folder below still runs
        pass
    _fold_constants(model)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _fold_constants(model) -> None:
    """Evaluate nodes whose inputs are all constants (onnx's reference evaluator), in place."""
    import onnx
    from onnx import helper, numpy_helper
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    opsets = list(model.opset_import)
    keep = []
    for node in graph.node:
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if has_subgraph or node.domain not in _STANDARD_DOMAINS or not all(i == "" or i in consts for i in node.input):
            keep.append(node)
            continue
        used = [i for i in node.input if i]
        single = helper.make_model(
            helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in node.output],
                              [consts[i] for i in used]),
            opset_imports=opsets, ir_version=model.ir_version,
        )
        values = _evaluate(single)
        if values is None:
            keep.append(node)
            continue
        for name, value in zip(node.output, values):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            consts[name] = tensor
            graph.initializer.append(tensor)
    del graph.node[:]
    graph.node.extend(keep)


def _evaluate(single) -> list | None:
    """Outputs of a constant-input model: onnx's reference evaluator, else onnxruntime, else None."""
    from onnx.reference import ReferenceEvaluator

    try:
        return ReferenceEvaluator(single).run(None, {})
    except Exception:  # noqa: BLE001 - its GatherElements fails on valid broadcasts; try onnxruntime
        pass
    try:
        import onnx
        import onnxruntime as ort

        typed = onnx.shape_inference.infer_shapes(single, strict_mode=True)  # types the graph outputs
        sess = ort.InferenceSession(typed.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run([o.name for o in typed.graph.output], {})
    except Exception:  # noqa: BLE001 - leave the node to onnx2tf
        return None


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


def _last_error(log: str, default: str) -> str:
    """onnx2tf's own reason: the first ERROR line that is not one of its generic hints."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in log.splitlines()]
    errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")]
    generic = ("input_onnx_file_path", "onnx_op_name", "Read this", "Alternatively", "If the input OP", "Also, for",
               "The trace log")
    errors = [e for e in errors if e and not e.startswith(generic)]
    return errors[0] if errors else default


@dataclasses.dataclass(frozen=True)
class _Run:
    kept: list[str]
    frozen: dict[str, int]
    note: str = ""
    prep: Any = None  # a modelport.convert.qdq_prep.QdqPrep when the source is a QDQ graph
    folds: tuple = ()  # modelport.convert.if_fold.Fold: Ifs replaced by the branch the user's values/shapes take
    whole: tuple = ()  # names of the Slices that keep their whole input, dropped (modelport.convert.noop_slice)


def _convert_file(src: str, folder: Path, kept: list[str], pseudo: list[str]) -> None:
    """One onnx2tf run in the current (scratch) cwd; failures become ExportError. Inputs in ``kept`` that
    feed a recurrent state (``_state_inputs``) keep their shape absolutely instead of being transposed inside."""
    import onnx
    import onnx2tf  # undeclared-ok: its == pins conflict with ours; installed --no-deps from locks/nodeps.txt

    try:
        states = [n for n in _state_inputs(onnx.load(src, load_external_data=False)) if n in kept]
    except Exception:  # noqa: BLE001 - unreadable here: onnx2tf's own error names it below
        states = []
    sink = io.StringIO()
    try:
        with redirect_stdout(sink), redirect_stderr(sink):
            onnx2tf.convert(
                input_onnx_file_path=src,
                output_folder_path=str(folder),
                keep_ncw_or_nchw_or_ncdhw_input_names=[n for n in kept if n not in states] or None,
                keep_shape_absolutely_input_names=states or None,
                replace_to_pseudo_operators=pseudo,
                output_signaturedefs=True,
                copy_onnx_input_output_names_to_tflite=True,
                not_use_onnxsim=True,
                non_verbose=True,
                verbosity="error",
            )
    except (Exception, SystemExit) as exc:
        node = getattr(exc, "onnx_op_name", None)
        text = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        if isinstance(exc, SystemExit) or not text:
            why = _last_error(sink.getvalue(), type(exc).__name__)
        else:
            why = f"{type(exc).__name__}: {text[0] if len(text[0]) > 20 else text[-1]}"
        where = f" at node {node}" if node else ""
        raise ExportError(f"onnx2tf failed{where}: {why}"[:400]) from None


def _private_copy(src: str, scratch: Path) -> str:
    """A copy of ``src`` (and its external data files, which keep their relative places) in ``scratch``.

    onnx2tf writes node names and shapes back into the ONNX file it converts; the source must not change.
    """
    import onnx

    where = scratch / "source"
    where.mkdir()
    dest = where / Path(src).name
    shutil.copyfile(src, dest)
    header = onnx.load(src, load_external_data=False)
    tensors = list(header.graph.initializer) + [a.t for n in header.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in t.external_data if e.key == "location"), None)
            if location and not (where / location).exists():  # paths already checked by read_onnx
                (where / location).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(src).parent / location, where / location)
    return str(dest)


def _prepared_copy(model, src: str, scratch: Path) -> str:
    """The QDQ-prepared model (``modelport.convert.qdq_prep``) written in ``scratch``, its weights beside it when large."""
    import onnx

    where = scratch / "source"
    where.mkdir()
    dest = where / Path(src).name
    large = model.ByteSize() > 1_800_000_000
    onnx.save_model(model, str(dest), save_as_external_data=large, location=dest.name + ".data" if large else None)
    return str(dest)


def _run_onnx2tf(src: str, folder: Path, options: ConvertOptions, *, pseudo: tuple[str, ...] = ()) -> _Run:
    """Convert with onnx2tf into ``folder`` (SavedModel + float32/float16 .tflite).

    A graph with dynamic dims that onnx2tf cannot convert is retried once with those dims
    frozen (``static_dims`` in the options' extra, else 1 for leading dims and 16 elsewhere).
    """
    require("tensorflow", "tf", "ONNX -> TensorFlow")
    require("onnx2tf", "tf", "ONNX -> TensorFlow")
    import onnx

    from modelport.convert import qdq_prep
    from modelport.security.loaders import read_onnx

    model = read_onnx(src)  # external data checked first; unreadable input is a one-line BadInputError
    _check_ops(model, src)
    prep, skipped = None, ""
    if qdq_prep.is_qdq(model):  # quantized: weights folded, layout ops moved past DequantizeLinear, pairs clipped
        try:
            model, prep = qdq_prep.prepare(model)
        except Exception as exc:  # noqa: BLE001 - a graph the rewrites do not know: onnx2tf gets it as it is
            why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            skipped = f"quantized graph converted without its QDQ preparation ({type(exc).__name__}: {why})"
    # a Slice that keeps everything is an Identity onnx2tf can mis-apply channels-last (Magika): dropped
    model, whole = drop_noop_slices(model)
    kept = _kept_layout_inputs(model)
    sizes = _frozen_sizes(model, 1, 16)
    sizes.update(_given_sizes(model, options.inputs))  # where a freeze is needed, at the user's shapes
    asked = _parse_dims(options.get("static_dims"))
    sizes.update(asked)
    values = given_values([v.name for v in model.graph.input], options.inputs, options.get("input_values"))
    given_shapes = bool(_given_sizes(model, options.inputs))
    folder = folder.resolve()  # onnx2tf runs in a scratch cwd: paths resolved before it changes
    absolute = os.path.abspath(src)
    with _scratch_cwd() as scratch:
        # onnx2tf rewrites the file it is given: never the user's
        source = _prepared_copy(model, src, scratch) if prep or whole else _private_copy(absolute, scratch)
        if asked:
            first = "asked for"
        else:
            try:
                _convert_file(source, folder, kept, list(pseudo))
                # a dynamic graph can convert and still not run at the user's shapes (ppocrv4-det: an Add of
                # [1,20,20,96] and [1,10,20,96] after a Resize): then it is converted frozen at those shapes
                failing = _fails_at_given_shapes(folder, options) if given_shapes else None
                if failing is None:
                    return _Run(kept, {}, skipped, prep, whole=tuple(whole))
                first = f"the dynamic conversion fails at the given input shapes: {failing}"
            except ExportError as exc:
                first = exc.args[0]
            shutil.rmtree(folder, ignore_errors=True)
            # an If the user's values decide (silero-vad's If on sr=16000): folded, tried with its dynamic dims
            folded, folds = fold_ifs(model, values)
            if not sizes and not folds:
                raise ExportError(first, path=src) from None
            if folds:
                path = scratch / (Path(src).stem + ".folded.onnx")
                onnx.save(folded, str(path))
                try:
                    _convert_file(str(path), folder, kept, list(pseudo))
                    failing = _fails_at_given_shapes(folder, options) if given_shapes else None
                    if failing is None:
                        note = "; ".join(n for n in (f"as given, onnx2tf failed: {first}"[:300], skipped) if n)
                        return _Run(kept, {}, note, prep, tuple(folds), tuple(whole))
                    first = f"{first}; after folding, the conversion fails at the given input shapes: {failing}"
                except ExportError as exc:
                    if not sizes:
                        raise ExportError(f"{exc.args[0]} (after folding {len(folds)} If(s); as given: {first})"[:500],
                                          path=src) from None
                    first = f"{first}; after folding: {exc.args[0]}"
                shutil.rmtree(folder, ignore_errors=True)
        frozen = scratch / (Path(src).stem + ".onnx")
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):  # onnxscript's folder chatters
            frozen_model, folds, silent = _freeze_and_fold(model, sizes, values)
            onnx.save(frozen_model, str(frozen))
        try:
            _convert_file(str(frozen), folder, kept, list(pseudo))
        except ExportError as exc:
            raise ExportError(f"{exc.args[0]}{_if_hint(frozen_model, values)} (dynamic graph: {first})"[:600],
                              path=src) from None
    dims = ", ".join(f"{k}={v}" for k, v in sizes.items())
    constant = f"{silent} If(s) with a constant condition at those dims folded" if silent else ""
    note = "; ".join(n for n in (f"dynamic dims frozen ({dims}): {first}"[:300], constant, skipped) if n)
    return _Run(kept, sizes, note, prep, tuple(folds), tuple(whole))


def _if_hint(model, values: dict[str, np.ndarray]) -> str:
    """How to fold an If left whose condition reads a small graph input the user gave no value for
    (silero-vad's ``If(sr == 16000)`` without ``--input sr=16000``); "" when there is none."""
    from modelport.formats.onnx_fold import find_cone

    small = {vi.name for vi in model.graph.input if vi.type.HasField("tensor_type")
             and vi.type.tensor_type.HasField("shape") and len(vi.type.tensor_type.shape.dim) <= 1}
    small -= set(values) | {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        cone = find_cone(model.graph, node.input[0]) if node.op_type == "If" and node.input else None
        read = sorted(cone.leaves & small) if cone is not None else []
        if read:
            names = ", ".join(f"'{n}'" for n in read)
            return (f"; If '{node.name}' reads input {names}: it folds to one branch once the input is fixed "
                    f"(--input {read[0]}=VALUE, or {read[0]} in --inputs)")
    return ""


def _if_count(model) -> int:
    return sum(n.op_type == "If" for n in model.graph.node)


def _freeze_and_fold(model, sizes: dict[str, int], values: dict[str, np.ndarray]) -> tuple[Any, list, int]:
    """The model frozen at ``sizes`` (``_freeze_dims``) with the Ifs that the user's values or the frozen
    shapes decide folded (``modelport.convert.if_fold``), those folds, and how many Ifs onnxscript's
    optimizer folded on top (a condition it found constant at those dims, e.g. after our folds)."""
    dims = {vi.name: [d.dim_value if not _symbolic(d) else sizes.get(_dim_key(vi.name, pos, d), 0)
                      for pos, d in enumerate(vi.type.tensor_type.shape.dim)]
            for vi in model.graph.input if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}
    shapes = {n: tuple(s) for n, s in dims.items() if all(d > 0 for d in s) or not s}
    folded, folds = fold_ifs(model, values, shapes)  # before onnxscript's optimizer: each fold is reported
    frozen, silent = folded, 0
    for _ in range(8):  # folded branches can make further shapes static once constants are folded
        before = _if_count(frozen)
        frozen = _freeze_dims(frozen, sizes)
        silent += max(0, before - _if_count(frozen))
        frozen, more = fold_ifs(frozen, values, shapes)
        folds.extend(more)
        if not more:
            break
    return frozen, folds, silent


def _fails_at_given_shapes(folder: Path, options: ConvertOptions) -> str | None:
    """Why the SavedModel onnx2tf wrote in ``folder`` cannot run at the user's ``--input`` shapes (on
    their ``--inputs`` values where given), or None when it runs (or when not every input has a shape)."""
    from modelport.formats import open_runner
    from modelport.inputs import load_npz, make_inputs

    given = {s.name: s for s in options.inputs
             if s.shape is not None and all(isinstance(d, int) and d >= 0 for d in s.shape)}
    values = options.get("input_values")
    values = (load_npz(values) if not isinstance(values, dict) else values) if values is not None else {}
    try:
        with open_runner(folder, "savedmodel") as conv:
            names = [s.name for s in conv.signature.inputs]
            if not all(n in given for n in names):
                return None
            specs = tuple(TensorSpec(s.name, s.dtype, given[s.name].shape) for s in conv.signature.inputs)
            ints = {s.name: 1 for s in specs if np.dtype(s.dtype).kind in "iub"}  # index inputs: zeros
            feeds = make_inputs(specs, seed=0, bounds=ints)[0]
            for s in specs:
                v = values.get(s.name)
                if v is not None and tuple(np.shape(v)) == tuple(s.shape):
                    feeds[s.name] = np.asarray(v).astype(s.dtype, copy=False)
            conv.run(feeds)
    except Exception as exc:  # noqa: BLE001 - any failure to run there is the reason to freeze
        text = " ".join(str(exc).split())
        return text[-240:] if len(text) > 240 else text or type(exc).__name__
    return None


def _parse_dims(value) -> dict[str, int]:
    """``{"batch": 1}`` or ``"batch=1,sequence=128"``."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(k): int(v) for k, v in value.items()}
    try:
        return {k.strip(): int(v) for k, v in (part.split("=") for part in str(value).split(",") if part.strip())}
    except ValueError:
        raise BadInputError(f"static_dims must look like batch=1,sequence=128, not {value!r}") from None


def _versions() -> tuple[tuple[str, str], ...]:
    import onnx2tf  # undeclared-ok: its == pins conflict with ours; installed --no-deps from locks/nodeps.txt
    import tensorflow as tf

    return (("onnx2tf", onnx2tf.__version__), ("tensorflow", tf.__version__))


def _tolerance(run: _Run, dtype: str = "float32") -> tuple[float, float] | None:
    """(rtol, atol) to verify the result at: float16 weights, or a quantized source (see the module docstring)."""
    tols = [FLOAT16_TOLERANCE] if dtype == "float16" else []
    if run.prep:
        scale = run.prep.output_scale
        tols.append((QDQ_RTOL, QDQ_QUANTA * scale if scale else FLOAT16_TOLERANCE[1]))
        if run.prep.dynamic:
            tols.append(DYNAMIC_RANGE_TOLERANCE)
    return (max(t[0] for t in tols), max(t[1] for t in tols)) if tols else None


def _detail(run: _Run, extra: str = "", restored: list[str] = ()) -> str:
    parts = [f"inputs kept in ONNX layout: {', '.join(run.kept)}" if run.kept else "no input layout change"]
    if restored:
        parts.append(f"outputs transposed back to ONNX layout: {', '.join(restored)}")
    if run.frozen:
        parts.append("static dims " + ", ".join(f"{k}={v}" for k, v in run.frozen.items()))
    parts.extend(f.describe() for f in run.folds)
    if run.whole:
        parts.append(f"{len(run.whole)} Slice(s) keeping their whole input removed (an Identity): "
                     f"{', '.join(run.whole[:3])}{', …' if len(run.whole) > 3 else ''}")
    if run.prep:
        rtol, atol = _tolerance(run)
        parts.append(f"{run.prep.describe()} (a float model of the quantized graph: verified at rtol {rtol:g}, "
                     f"atol {atol:.3g}{'; integer outputs exactly' if run.prep.integer else ''})")
    return "; ".join(parts + ([extra] if extra else []))


def _warnings(run: _Run, layout_notes: tuple[str, ...]) -> tuple[str, ...]:
    notes = ((run.note,) if run.note else ()) + layout_notes
    notes += tuple(f"{f.describe()}: the converted model holds only for these "
                   f"{'values' if f.frozen else 'input shapes'}" for f in run.folds)
    if run.prep and run.prep.integer:
        notes += ("the quantized graph has integer outputs, compared exactly; the converted model does not round its "
                  "activations and can be one quantum off: judge the conversion on the task with --eval data.npz "
                  "--max-drop",)
    return notes


def _to_channels_first(rank: int) -> list[int]:
    """The permutation taking a channels-last tensor back to channels-first: [0, 3, 1, 2] for 4-D."""
    return [0, rank - 1, *range(1, rank - 1)]


def _transposed_outputs(src: str, folder: Path, given: dict | None = None) -> tuple[dict[str, list[int]], str]:
    """Outputs of the SavedModel in ``folder`` that onnx2tf left channels-last: ``({its name: perm back}, note)``.

    Both models run on the same random input. An output whose shape fits only the
    channels-last permutation of the ONNX output is transposed; where both layouts fit
    (equal dims), the layout with the smaller max abs difference to onnxruntime wins, and a
    tie (values symmetric under the permutation) leaves it as it is. When the models cannot be
    run here, every output is left as it is and the note says why (verification judges the result).
    ``given``: input values used instead of random ones (the user's; an If was folded at ``sr=16000``).
    """
    from modelport.formats import open_runner
    from modelport.inputs import make_inputs
    from modelport.verify.parity import match_names

    with open_runner(src, "onnx") as ref:
        if not any(o.shape is not None and 3 <= len(o.shape) <= 5 for o in ref.signature.outputs):
            return {}, ""
        with open_runner(folder, "savedmodel") as conv:
            feeds = make_inputs(conv.signature.inputs, seed=0, bounds=ref.index_bounds())[0]
            shapes = {i.name: i.shape for i in conv.signature.inputs}
            feeds.update({k: np.asarray(v) for k, v in (given or {}).items()  # switches, and data that fits
                          if k in feeds and (np.size(v) <= 16 or _fits(np.shape(v), shapes[k]))})
            try:
                # onnx2tf names SavedModel outputs output_0, ...: paired as verification pairs them
                pairs = match_names([o.name for o in ref.signature.outputs], [o.name for o in conv.signature.outputs],
                                    "outputs")
                want = ref.run(feeds)
                got = conv.run(feeds)
            except Exception as exc:  # noqa: BLE001 - the check cannot run; verification judges the model
                why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                return {}, (f"output layouts were not checked (the models could not be run on one input: "
                            f"{type(exc).__name__}: {why}); feature-map outputs may be channels-last")
    found: dict[str, list[int]] = {}
    for name, a in want.items():
        b = got.get(pairs.get(name, ""))
        if b is None or not 3 <= a.ndim <= 5 or a.ndim != b.ndim:
            continue
        perm = _to_channels_first(a.ndim)
        back = np.transpose(b, perm)
        if back.shape != a.shape:
            if b.shape != a.shape:  # another order (an LSTM state stack [1, 2, 128] for [2, 1, 128]): values decide
                perm = _fitting_permutation(a, b)
                if perm is not None:
                    found[pairs[name]] = perm
            continue
        if b.shape == a.shape:  # both layouts fit: the values decide
            if not np.issubdtype(a.dtype, np.number):
                continue
            a64 = a.astype(np.float64)
            same, swapped = (float(np.max(np.abs(x.astype(np.float64) - a64), initial=0.0)) for x in (b, back))
            if not swapped < same:
                continue
        found[pairs[name]] = perm
    return found, ""


def _fits(shape: tuple, spec) -> bool:
    """``shape`` fits a signature shape whose dynamic dims are None (or names)."""
    return spec is not None and len(shape) == len(spec) and all(
        not isinstance(d, int) or d < 0 or d == n for n, d in zip(shape, spec))


def _fitting_permutation(a: np.ndarray, b: np.ndarray) -> list[int] | None:
    """The axis order taking ``b`` to ``a``'s shape that matches ``a`` best, when it is the only best one."""
    import itertools

    if not np.issubdtype(a.dtype, np.number) or sorted(a.shape) != sorted(b.shape):
        return None
    a64 = a.astype(np.float64)
    scored = sorted((float(np.max(np.abs(np.transpose(b, p).astype(np.float64) - a64), initial=0.0)), list(p))
                    for p in itertools.permutations(range(b.ndim)) if np.transpose(b, p).shape == a.shape)
    if not scored or (len(scored) > 1 and not scored[0][0] < scored[1][0]):
        return None
    return scored[0][1]


def _wrap_outputs(folder: Path, perms: dict[str, list[int]]) -> None:
    """Re-save the SavedModel in ``folder`` with a serving function that transposes ``perms``' outputs."""
    import tensorflow as tf

    from modelport.formats.savedmodel import load_signature_fn

    loaded, fn = load_signature_fn(str(folder))
    _, kw = fn.structured_input_signature
    names = sorted(kw)
    specs = [tf.TensorSpec(kw[n].shape, kw[n].dtype, name=n) for n in names]

    def serve(*args):
        out = fn(**dict(zip(names, args)))
        return {k: tf.transpose(v, perms[k]) if k in perms else v for k, v in out.items()}

    module = tf.Module()
    module.model = loaded  # keeps the variables
    module.serve = tf.function(serve, input_signature=specs)
    fresh = folder.with_name(folder.name + ".wrapped")
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        tf.saved_model.save(module, str(fresh), signatures={"serving_default": module.serve.get_concrete_function()})
    shutil.rmtree(folder)
    os.replace(fresh, folder)


def _saved_model_to_tflite(folder: Path, dest: Path, dtype: str) -> None:
    """A .tflite from a SavedModel with TF's converter, with onnx2tf's settings."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    if dtype == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        dest.write_bytes(converter.convert())


def _user_values(options: ConvertOptions) -> dict:
    """The user's ``--inputs`` arrays (first sample) and ``--input NAME=VALUE`` constants."""
    from modelport.inputs import ConstantSpec, load_npz

    values = options.get("input_values")
    out = dict((load_npz(values) if not isinstance(values, dict) else values) if values is not None else {})
    out.update({s.name: np.asarray(s.value, dtype=s.dtype) for s in options.inputs if isinstance(s, ConstantSpec)})
    return out


def _restore_output_layout(src: str, folder: Path, options: ConvertOptions) -> tuple[list[str], tuple[str, ...]]:
    """Transpose channels-last outputs of the SavedModel back to the ONNX layout; (their names, warnings)."""
    perms, note = _transposed_outputs(src, folder, _user_values(options))
    if perms:
        _wrap_outputs(folder, perms)
    return sorted(perms), (note,) if note else ()


def _flex_ops(path: Path) -> list[str]:
    """TensorFlow (Flex) ops left in a .tflite: TFLite's builtin interpreter cannot run them."""
    from ai_edge_litert.interpreter import Interpreter

    ops = {op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()}
    return sorted(o.removeprefix("Flex") for o in ops if o.startswith("Flex"))


@register("onnx", "savedmodel", "onnx2tf")
def onnx_to_savedmodel(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    folder = Path(out)
    run = _run_onnx2tf(src, folder, options)
    for extra in folder.glob("*.tflite"):
        extra.unlink()
    restored, layout_notes = _restore_output_layout(src, folder, options)
    return ConverterResult(tool="onnx2tf", versions=_versions(), detail=_detail(run, restored=restored),
                           warnings=_warnings(run, layout_notes), tolerance=_tolerance(run))


@register("onnx", "tflite", "onnx2tf")
def onnx_to_tflite(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    """The TFLite edge: onnx2tf, then litert-torch on our generated PyTorch module
    (``modelport.convert.litert_route``; ``tflite_route`` in the options' extra picks one)."""
    from modelport.convert.litert_route import tflite_routes
    from modelport.formats import onnx_data

    onnx_data.check_flatbuffer_limit(src)  # above 2 GiB of weights: exit 3 before either route runs
    return tflite_routes(src, out, options, onnx2tf_tflite)


def onnx2tf_tflite(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    """ONNX -> TFLite with onnx2tf alone."""
    dtype = str(options.get("tflite_dtype", "float32"))
    if dtype not in TFLITE_DTYPES:
        raise BadInputError(f"tflite dtype must be one of {', '.join(TFLITE_DTYPES)}, not {dtype!r}")
    dest = Path(out)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.onnx2tf-", dir=dest.parent))
    try:
        # Erf is no TFLite builtin: onnx2tf writes it as Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7).
        saved = work / "saved_model"
        run = _run_onnx2tf(src, saved, options, pseudo=("erf",))
        found = sorted(saved.glob(f"*_{dtype}.tflite"))
        if not found:
            raise ExportError(f"onnx2tf wrote no {dtype} .tflite file", path=src)
        restored, layout_notes = _restore_output_layout(src, saved, options)
        if restored:  # onnx2tf's .tflite has them channels-last: made again from the wrapped SavedModel
            tflite = work / f"restored_{dtype}.tflite"
            try:
                _saved_model_to_tflite(saved, tflite, dtype)
            except Exception as exc:  # noqa: BLE001 - TF's converter raises many types
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"TFLite conversion of the layout-restored model failed: {msg}"[:400], path=src) from None
            found = [tflite]
        flex = _flex_ops(found[0])
        if flex:
            raise ExportError(f"the TFLite model needs TensorFlow ops that are no TFLite builtins: {', '.join(flex)}", path=src)
        os.replace(found[0], dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ConverterResult(tool="onnx2tf", versions=_versions(), detail=_detail(run, f"tflite {dtype}", restored),
                           warnings=_warnings(run, layout_notes),
                           tolerance=_tolerance(run, dtype))
