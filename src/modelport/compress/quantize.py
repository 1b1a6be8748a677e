"""Int8 and int4 quantization of ONNX models with onnxruntime.quantization (used, not rewritten).

    dynamic: weights int8 ahead of time, activations quantized at run time (MatMulInteger, …)
    static:  weights and activations int8 (QDQ format), activation ranges from calibration
             data: w_q = round(w / s) with s = max|w| / 127 (per output channel if asked),
             x_q = round(x / s_x) + z_x with [min, max] of x from minmax, entropy or percentile
    int4:    weight-only blockwise 4-bit MatMulNBits for MatMuls with constant weights:
             w_q = round(w / s_b) + z_b per block of ``block_size`` values along K

Weights that nodes inside If/Loop/Scan bodies read (Silero VAD's two networks behind an If on ``sr``) are
out of onnxruntime's reach; int8 dynamic and static quantize them weight-only here (``quantize_subgraph_weights``:
int8 + DequantizeLinear in the body) and say so in a note.

Every function reads a model file and writes one; ``exclude`` names nodes left in float.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from modelport.errors import BadInputError, ModelportError, UnsupportedError

__all__ = [
    "MODES",
    "CALIBRATION_METHODS",
    "preprocess",
    "name_nodes",
    "quantizable_nodes",
    "quantized_ops",
    "check_quantizable",
    "check_quantized",
    "quantize_dynamic",
    "quantize_static",
    "quantize_int4",
    "batches",
    "SubgraphWeights",
    "quantize_subgraph_weights",
    "subgraph_weight_nodes",
]

MODES = ("dynamic", "static", "fp16", "int4")
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# The ops whose weights dominate size and compute: the layers accuracy control ranks.
# Dynamic also takes onnxruntime's IntegerOps LSTM (DynamicQuantizeLSTM) and Attention (QAttention).
WEIGHT_OPS = {"dynamic": ("Conv", "Gemm", "MatMul", "LSTM", "Attention"), "static": ("Conv", "Gemm", "MatMul"),
              "fp16": ("Conv", "Gemm", "MatMul"), "int4": ("MatMul",)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer prints and logs freely; keep the CLI's output ours."""
    import logging

    from modelport.quiet import native_output

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), native_output():  # onnxruntime's native warnings too
            yield
    finally:
        logging.getLogger().setLevel(level)


def _symbolic_shapes(model):
    """onnxruntime's symbolic shape inference, or (None, reason) when it cannot complete.

    ``SymbolicShapeInference.infer_shapes`` saves ``sym_shape_infer_temp.onnx`` (+ a UUID
    .data file) into the process's working directory when inference is incomplete, then
    raises. We drive the same inference loop ourselves, so a failure is a value and nothing
    is written anywhere; an onnxruntime without that loop means no symbolic shapes.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_opset
    except ImportError as exc:
        return None, f"symbolic shape inference unavailable ({exc})"
    opset = get_opset(model)
    if not opset or opset < 7:
        return None, "symbolic shape inference needs opset >= 7"
    try:
        inference = SymbolicShapeInference(2**31 - 1, False, False, 0)
        inference._preprocess(model)
        complete = False
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
    except AttributeError as exc:  # the loop's internals moved: this onnxruntime is newer than we know
        return None, f"symbolic shape inference not driven on this onnxruntime ({exc})"
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"{type(exc).__name__}: {text}"[:160]
    if not complete:
        return None, "Exception: Incomplete symbolic shape inference"
    return inference.out_mp_, ""


def preprocess(src: str | Path, dst: str | Path, scratch: str | Path) -> list[str]:
    """onnxruntime's quantization pre-processing (shape inference, graph optimization); notes.

    The steps of ``quant_pre_process``, in its order: symbolic shape inference (run here, see
    ``_symbolic_shapes``; on a graph it cannot complete, ONNX shape inference alone is used),
    then onnxruntime's basic graph optimization and ONNX shape inference
    (``quant_pre_process(skip_symbolic_shape=True)``, which writes only to ``dst`` and its own
    temporary directory). Every file goes to an explicit path: ``scratch`` (a directory the
    caller removes) or ``dst``; the process's working directory is neither read nor changed.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from modelport.security.loaders import read_onnx

    src, dst, scratch = Path(src), Path(dst), Path(scratch)
    notes: list[str] = []
    model = read_onnx(src)
    unused = drop_unused_initializers(model)
    if unused:
        notes.append(f"{unused} initializer(s) that no node reads removed")
    if not any(main_graph_quantizable(model, mode) for mode in ("dynamic", "static")) and subgraph_weight_nodes(model):
        # onnxruntime's graph optimizer would fold a copy of a weight into every branch that reads it (Silero VAD's
        # LSTM weights: 4 copies) while its quantizer reaches none of them; ours quantizes them where they are
        onnx.save(model, str(dst))
        notes.append("quantization pre-processing skipped: every weight sits inside If/Loop/Scan bodies, which "
                     "onnxruntime's quantizer does not reach")
        return notes
    with _quiet():
        inferred, reason = _symbolic_shapes(model)
        if inferred is None and unused:
            src = scratch / "cleaned.onnx"
            onnx.save(model, str(src))
        del model
        if inferred is not None:
            staged = scratch / "symbolic_shapes.onnx"
            large = inferred.ByteSize() > 1_800_000_000
            onnx.save_model(inferred, str(staged), save_as_external_data=large,
                            location=staged.name + ".data" if large else None)
            del inferred
            src = staged
        else:
            notes.append(f"quantization pre-processing without symbolic shape inference ({reason})")
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        except Exception as exc:
            raise UnsupportedError(f"onnxruntime's quantization pre-processing failed: {type(exc).__name__}: {exc}"[:400]) from None
    return notes


def drop_unused_initializers(model) -> int:
    """Remove the initializers nothing reads (no node of any graph, no graph output); how many were removed.

    onnxruntime warns about each one on every session it opens; removing them changes no result.
    """
    from modelport.formats.onnx_format import iter_nodes

    read = {i for n in iter_nodes(model.graph) for i in n.input}
    read.update(o.name for o in model.graph.output)
    read.update(i.name for i in model.graph.input)  # an input with a default (IR >= 4) stays
    unused = [t for t in model.graph.initializer if t.name not in read]
    for t in unused:
        model.graph.initializer.remove(t)
    return len(unused)


def name_nodes(model) -> int:
    """Give every unnamed node a unique name (nodes_to_exclude works by name), subgraphs' too; how many were named."""
    from modelport.formats.onnx_format import iter_nodes

    seen = {n.name for n in iter_nodes(model.graph) if n.name}
    named = 0
    for i, node in enumerate(iter_nodes(model.graph)):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)
            named += 1
    return named


def _constant_names(model) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return names


def quantizable_nodes(model, mode: str) -> list[str]:
    """Names of the weight-carrying nodes a mode quantizes, in graph order (then those inside subgraphs, int8)."""
    consts = _constant_names(model)
    ops = WEIGHT_OPS[mode]
    out = []
    for node in model.graph.node:
        if node.op_type in ops and any(i in consts for i in node.input[:2]):
            out.append(node.name)
    if mode in ("dynamic", "static"):
        out += [n for n in subgraph_weight_nodes(model) if n not in out]
    return out


_FLOAT_TYPES = {1, 10, 11, 16}  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
# Ops that only a quantized model holds (ONNX and onnxruntime's com.microsoft contrib ops).
_QUANTIZED_OPS = {"MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "MatMulNBits", "MatMulBnb4", "QGemm",
                  "QAttention", "QEmbedLayerNormalization"}


def _is_quantized_op(op_type: str) -> bool:
    return (op_type in _QUANTIZED_OPS or op_type.startswith(("QLinear", "QOrdered"))
            or "quantize" in op_type.lower())  # (Dynamic)QuantizeLinear, DequantizeLinear, DynamicQuantizeMatMul, ...


def quantized_ops(model) -> dict[str, int]:
    """Quantized ops already in a model (QLinearConv, MatMulInteger, QuantizeLinear, ...) -> count."""
    from modelport.formats.onnx_format import iter_nodes

    out: dict[str, int] = {}
    for node in iter_nodes(model.graph):  # a quantized subgraph counts too
        if _is_quantized_op(node.op_type):
            out[node.op_type] = out.get(node.op_type, 0) + 1
    return out


def _float_constants(model) -> set[str]:
    names = {t.name for t in model.graph.initializer if t.data_type in _FLOAT_TYPES}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and value.data_type in _FLOAT_TYPES:
                names.update(node.output)
    return names


def _nothing_reason(model, mode: str) -> str:
    found = quantized_ops(model)
    if found:
        listed = ", ".join(f"{n} {op}" for op, n in sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))
        return (f"already quantized ({sum(found.values())} quantized nodes: {listed}); "
                f"--quantize {mode} has nothing left to quantize; nothing written")
    hint = " (Conv/Gemm models: use static or dynamic)" if mode == "int4" else ""
    where = "" if mode == "int4" else (" in the main graph, and Conv/ConvTranspose/MatMul/Gemm/LSTM/GRU/RNN float32 "
                                       "weights inside If/Loop/Scan bodies")
    return (f"no weights that {mode} quantizes (it quantizes {'/'.join(WEIGHT_OPS[mode])} with constant "
            f"weights{where}){hint}; nothing written")


def check_quantizable(model, mode: str, original=None) -> None:
    """Raise UnsupportedError when no node holds a float constant weight that ``mode`` quantizes.

    ``original``: the user's model, described in the message (``model`` may be its pre-processed form).
    """
    if not main_graph_quantizable(model, mode) and not (mode in ("dynamic", "static") and subgraph_weight_nodes(model)):
        raise UnsupportedError(_nothing_reason(model if original is None else original, mode))


def main_graph_quantizable(model, mode: str) -> bool:
    """Whether a main-graph node holds a float constant weight that ``mode`` (onnxruntime's quantizer) quantizes."""
    floats = _float_constants(model)
    ops = WEIGHT_OPS[mode]
    return any(n.op_type in ops and any(i in floats for i in n.input[:2]) for n in model.graph.node)


def check_quantized(before, after, mode: str, original=None) -> int:
    """How many quantized nodes quantizing added; UnsupportedError when none (nothing was quantized)."""
    added = sum(quantized_ops(after).values()) - sum(quantized_ops(before).values())
    if added <= 0:
        raise UnsupportedError(_nothing_reason(before if original is None else original, mode))
    return added


def batches(feeds: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    """Split feed dicts along axis 0 into chunks of at most ``size`` samples."""
    n = len(next(iter(feeds.values())))
    return [{k: v[i:i + size] for k, v in feeds.items()} for i in range(0, n, size)]


def _reader(chunks: Sequence[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class _Chunks(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(chunks)

        def get_next(self):
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(chunks)

    return _Chunks()


def quantize_dynamic(src: str | Path, dst: str | Path, *, per_channel: bool = True,
                     exclude: Iterable[str] = ()) -> str | None:
    """Int8 weights, activations quantized at run time; weights inside subgraphs weight-only (a note says so).

    onnxruntime's quantizer runs where the main graph holds weights it quantizes; the weights that nodes inside
    If/Loop/Scan bodies read are then quantized by ``quantize_subgraph_weights``.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    def ort(a: str, b: str) -> None:
        with _quiet():
            ort_dynamic(a, b, per_channel=per_channel, weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude))

    return _with_subgraphs(src, dst, "dynamic", ort, per_channel, exclude)


def _with_subgraphs(src, dst, mode: str, ort, per_channel: bool, exclude: Iterable[str]) -> str | None:
    """onnxruntime's quantizer (``ort(src, dst)``) where the main graph has weights for it, then the subgraphs'."""
    import onnx

    from modelport.security.loaders import read_onnx

    from modelport.formats.onnx_format import validate_model

    src, dst = Path(src), Path(dst)
    model = read_onnx(src)
    inside = bool(subgraph_weight_nodes(model, exclude))
    bodies = len(_all_graphs(model)) > 1
    if main_graph_quantizable(model, mode) or not inside:
        del model
        ort(str(src), str(dst))
        if not bodies:
            return None
        model = read_onnx(dst)
        # onnxruntime's topological sort ignores what If/Loop/Scan bodies read from the main graph (Silero VAD's
        # op15 file comes back with an If before the If whose output its branch reads): sorted again
        try:
            resorted = validate_model(model) is not None
        except BadInputError as exc:
            raise UnsupportedError(f"onnxruntime's {mode} quantizer wrote an invalid model ({exc})", path=src) from None
        if not inside:
            if resorted:
                onnx.save(model, str(dst))
            return None
    done = quantize_subgraph_weights(model, per_channel=per_channel, exclude=exclude)
    onnx.save(model, str(dst))
    if not done.weights:
        return None
    if mode == "static":
        return done.note() + " (activations inside those bodies stay float: onnxruntime calibrates the main graph)"
    return done.note()


def per_axis_opset(model) -> bool:
    """Whether QDQ can carry per-channel scales: DequantizeLinear's ``axis`` is opset 13's."""
    return any(o.domain in ("", "ai.onnx") and o.version >= 13 for o in model.opset_import)


def quantize_static(
    src: str | Path,
    dst: str | Path,
    calibration: Sequence[dict[str, np.ndarray]],
    *,
    method: str = "minmax",
    per_channel: bool = True,
    exclude: Iterable[str] = (),
) -> str | None:
    """Int8 weights and activations in QDQ format, ranges calibrated on ``calibration`` chunks.

    Below opset 13 the weight scales are per tensor whatever ``per_channel`` says: onnxruntime's
    quantizer would write DequantizeLinear with an ``axis`` those opsets do not have (an invalid model).
    Returns a note when onnxruntime's quantizer fails per channel (its int32-bias scale adjustment
    raises on some per-channel weights, e.g. Magika's) and per tensor is used instead, or when weights
    inside If/Loop/Scan bodies were quantized weight-only; a failure per tensor too is an
    UnsupportedError naming it.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_static

    if per_channel and not per_axis_opset(onnx.load(str(src), load_external_data=False)):
        per_channel = False

    if method not in CALIBRATION_METHODS:
        raise BadInputError(f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}")

    def run(per_channel: bool) -> str | None:
        def ort(a: str, b: str) -> None:
            with _quiet():
                ort_static(
                    a, b, _reader(calibration), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude),
                    calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                )

        return _with_subgraphs(src, dst, "static", ort, per_channel, exclude)

    try:
        return run(per_channel)
    except ModelportError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer failing is reported, never an internal error
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        if not per_channel:
            raise UnsupportedError(f"onnxruntime's static quantizer fails on this model ({why})", path=src) from None
    try:
        inside = run(False)
    except ModelportError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedError(f"onnxruntime's static quantizer fails on this model per channel ({why}) and per tensor "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})", path=src) from None
    note = f"weight scales per tensor: onnxruntime's static quantizer fails per channel ({why[:160]})"
    return f"{note}; {inside}" if inside else note


def quantize_int4(src: str | Path, dst: str | Path, *, block_size: int = 32, exclude: Iterable[str] = ()) -> int:
    """Blockwise int4 weight-only MatMulNBits; returns how many MatMuls were quantized."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from modelport.security.loaders import read_onnx

    model = read_onnx(src)
    with _quiet():
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True,
                                         nodes_to_exclude=sorted(exclude))
        quantizer.process()
    out = quantizer.model.model
    count = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")
    onnx.save(out, str(dst))
    return count


_ROWS = 1024  # rows of a weight quantized at a time (8192 columns of float32: 32 MiB)


def _column_scales(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """max|w| / 127 per column (per_channel) or over the whole weight, read a block of rows at a time."""
    from modelport.formats import onnx_data

    peak = np.zeros(w.shape[1], np.float32)
    for i in range(0, w.shape[0], _ROWS):
        np.maximum(peak, np.abs(np.asarray(w[i:i + _ROWS], dtype=np.float32)).max(axis=0), out=peak)
    onnx_data.release(w)
    if not per_channel:
        peak = np.full_like(peak, peak.max(initial=0.0))
    scale = peak / 127.0
    scale[scale == 0] = 1.0  # an all-zero column: any scale gives zeros
    return scale.astype(np.float32)


def _int8_writer(w: np.ndarray, scale: np.ndarray):
    """A writer (see ``onnx_data.save``) of round(w / scale) clipped to [-127, 127], a block of rows at a time."""
    from modelport.formats import onnx_data

    def write(out) -> int:
        n = 0
        for i in range(0, w.shape[0], _ROWS):
            q = np.clip(np.rint(np.asarray(w[i:i + _ROWS], dtype=np.float32) / scale), -127, 127).astype(np.int8)
            out.write(q.tobytes())
            n += q.nbytes
        onnx_data.release(w)
        return n

    return write


def quantize_dynamic_large(src: str | Path, dst: str | Path, *, per_channel: bool = True,
                           exclude: Iterable[str] = ()) -> int:
    """Int8 dynamic quantization of a model whose weights exceed protobuf's limit, a block of rows at a time.

    onnxruntime's quantizer holds the whole model in a protobuf (and several copies of its weights);
    this writes the same QOperator form it writes for MatMul, tensor by tensor: every main-graph MatMul
    whose second input is a 2-D float32 initializer becomes DynamicQuantizeLinear(x) ->
    MatMulInteger(x_q, W_q, x_zp, W_zp) -> Cast -> Mul(x_scale * W_scale), with W_q = round(W / s)
    (int8, symmetric, s = max|W| / 127 per output column when ``per_channel``). The weights are read
    from their memory-mapped external data and written to ``dst``'s external data chunk by chunk; other
    tensors are copied from their files. Gemm and Conv stay float. Returns how many MatMuls were quantized.
    """
    import onnx
    from onnx import TensorProto, helper

    from modelport.formats import onnx_data
    from modelport.security.loaders import read_onnx

    src, dst = Path(src), Path(dst)
    model = read_onnx(src, load_external_data=False)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    uses: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    skip = set(exclude)
    writers: dict[str, object] = {}
    nodes: list = []
    dq: dict[str, tuple[str, str, str]] = {}  # activation -> its DynamicQuantizeLinear outputs
    dropped: set[str] = set()
    count = 0
    for node in g.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if (w is None or node.name in skip or w.data_type != TensorProto.FLOAT or len(w.dims) != 2
                or node.domain not in ("", "ai.onnx")):
            nodes.append(node)
            continue
        x, base = node.input[0], node.name or f"MatMul_{count}"
        arr = onnx_data.array(w, src.parent)
        scale = _column_scales(arr, per_channel)
        qname, zname, sname = f"{w.name}_quantized", f"{w.name}_zero_point", f"{w.name}_scale"
        if qname not in writers:
            q = TensorProto(name=qname, data_type=TensorProto.INT8, dims=list(w.dims))  # bytes: the writer's
            writers[qname] = _int8_writer(arr, scale)
            g.initializer.append(q)
            zp = np.zeros(scale.shape if per_channel else (), np.int8)
            g.initializer.append(onnx.numpy_helper.from_array(zp, zname))
            g.initializer.append(onnx.numpy_helper.from_array(scale if per_channel else scale[:1].reshape(()), sname))
        uses[w.name] -= 1
        if uses[w.name] == 0:
            dropped.add(w.name)
        if x not in dq:
            dq[x] = (f"{x}_quantized", f"{x}_scale", f"{x}_zero_point")
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(dq[x]), name=f"{x}_QuantizeLinear"))
        xq, xs, xz = dq[x]
        nodes.append(helper.make_node("MatMulInteger", [xq, qname, xz, zname], [f"{base}_int32"], name=f"{base}_quant"))
        nodes.append(helper.make_node("Cast", [f"{base}_int32"], [f"{base}_float"], to=TensorProto.FLOAT,
                                      name=f"{base}_cast"))
        nodes.append(helper.make_node("Mul", [xs, sname], [f"{base}_scale"], name=f"{base}_scale_mul"))
        nodes.append(helper.make_node("Mul", [f"{base}_float", f"{base}_scale"], list(node.output),
                                      name=f"{base}_output_mul"))
        count += 1
    if not count:
        return 0
    del g.node[:]
    g.node.extend(nodes)
    kept = [t for t in g.initializer if t.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(kept)
    if not any(o.domain in ("", "ai.onnx") and o.version >= 11 for o in model.opset_import):
        raise UnsupportedError("dynamic int8 quantization needs opset >= 11 (DynamicQuantizeLinear)")
    onnx_data.save(model, dst, base_dir=src.parent, arrays=writers, external=True)
    return count


# ---------------------------------------------------------------------------------------------------------------
# Weights read inside If / Loop / Scan bodies. onnxruntime's quantizers leave them: its subgraph support
# (extra option EnableSubgraph) expects each weight as an initializer of the subgraph itself, and fails on weights
# that are Constant nodes of the body or initializers of an enclosing graph ("Expected ... to be an initializer").
# modelport quantizes them itself, weight-only: w -> int8 q = round(w / s) with s = max|w| / 127 per output channel
# (per tensor below opset 13), stored as initializers of the body that reads it, and one DequantizeLinear(q, s, 0)
# there, right before its first reader (a weight several bodies read: both where it was defined).
# The ops compute in float as before; the weights are a quarter of their float32 size.

# op -> the input positions that carry its weights (the ops that hold nearly all of a model's weight bytes)
SUBGRAPH_WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "MatMul": (1,), "Gemm": (1,),
                          "LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2)}
# ops that only move a weight's values (LSTM gates reordered by Slice + Concat, a Conv weight reshaped)
_MOVES = {"Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Identity", "Flatten"}
_MIN_WEIGHT = 16  # smaller tensors gain nothing from int8 (their scale costs as much)


@dataclasses.dataclass(frozen=True)
class SubgraphWeights:
    """What ``quantize_subgraph_weights`` did: the weights replaced, the nodes reading them, the bytes."""

    weights: tuple[str, ...]
    nodes: tuple[str, ...]
    float_bytes: int
    int8_bytes: int  # int8 values + scales + zero points
    per_channel: bool
    reason: str = ""  # why nothing was done, when nothing was

    def note(self) -> str:
        if not self.weights:
            return self.reason
        ops = f"{len(self.weights)} weight(s) of {len(self.nodes)} node(s) inside If/Loop/Scan bodies"
        return (f"{ops} quantized weight-only int8 by modelport (DequantizeLinear in the body, "
                f"{'per output channel' if self.per_channel else 'per tensor'}; onnxruntime's quantizer does not reach "
                f"them): {self.float_bytes} -> {self.int8_bytes} bytes; those nodes compute in float")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Graph:
    graph: object  # onnx.GraphProto
    parent: int | None


def _all_graphs(model) -> list[_Graph]:
    import onnx

    out = [_Graph(model.graph, None)]
    i = 0
    while i < len(out):
        for node in out[i].graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    out.append(_Graph(a.g, i))
                for g in a.graphs:
                    out.append(_Graph(g, i))
        i += 1
    return out


def _float_constant(node):
    """The float32 tensor of a ``Constant`` node's ``value``, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    return a.t if a.name == "value" and a.t.data_type == 1 else None


def _weight_axis(node, rank: int) -> int | None | bool:
    """The output-channel axis of ``node``'s weight (None: per tensor only); False: not a weight of this rank."""
    op = node.op_type
    if op in _MOVES:  # rearranged before its op (torch.onnx reorders an LSTM's [4H, I] gates): scales per row of the
        return 0 if rank >= 2 else None  # stored tensor, which the DequantizeLinear applies before the moves
    if op == "Conv":
        return 0 if rank >= 3 else False
    if op == "ConvTranspose":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return (1 if group == 1 else None) if rank >= 3 else False
    if op == "MatMul":
        return rank - 1 if rank >= 2 else False
    if op == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return (0 if trans_b else 1) if rank == 2 else False
    return 1 if rank == 3 else False  # LSTM / GRU / RNN: [num_directions, gates * hidden, size]


def _subgraph_weights(model, exclude: Iterable[str] = ()):
    """The float32 constant weights that nodes inside subgraphs read: name -> (def graph, def, [(graph, node, i)])."""
    graphs = _all_graphs(model)
    defs: dict[str, tuple[int, str, object]] = {}
    blocked: set[str] = set()  # graph inputs (overridable) and graph outputs are no weights
    for gi, g in enumerate(graphs):
        for t in g.graph.initializer:
            if t.data_type == 1:
                defs[t.name] = (gi, "init", t)
        for node in g.graph.node:
            value = _float_constant(node)
            if value is not None:
                defs[node.output[0]] = (gi, "const", node)
        blocked.update(i.name for i in g.graph.input)
        blocked.update(o.name for o in g.graph.output)
    skip = set(exclude)
    readers: dict[str, list] = {}  # every value -> (graph, node, input position) reading it
    for gi, g in enumerate(graphs):
        for node in g.graph.node:
            for i, name in enumerate(node.input):
                readers.setdefault(name, []).append((gi, node, i))

    def weight_use(gi: int, node, i: int) -> bool:
        positions = SUBGRAPH_WEIGHT_INPUTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
        return gi != 0 and i in positions and node.name not in skip

    def moves_to_weights(gi: int, node, i: int, depth: int = 0) -> bool:
        # Slice/Concat/... of a weight (an LSTM's gates reordered) that only ever reaches weight positions
        if gi == 0 or node.domain not in ("", "ai.onnx") or node.name in skip or depth > 8:
            return False
        if node.op_type not in _MOVES or (node.op_type != "Concat" and i != 0):
            return False
        for out in node.output:
            if out in blocked or not readers.get(out):
                return False
            for u, reader, j in readers[out]:
                if not (weight_use(u, reader, j) or moves_to_weights(u, reader, j, depth + 1)):
                    return False
        return True

    uses: dict[str, list] = {}
    other: set[str] = set()  # read by something that is not an (eligible) weight position
    for gi, g in enumerate(graphs):
        for k, node in enumerate(g.graph.node):
            for i, name in enumerate(node.input):
                if name not in defs:
                    continue
                if weight_use(gi, node, i) or moves_to_weights(gi, node, i):
                    uses.setdefault(name, []).append((gi, k, i))
                else:
                    other.add(name)
    found = {}
    for name, where in uses.items():
        if name in other or name in blocked:
            continue
        gi, kind, obj = defs[name]
        tensor = obj if kind == "init" else _float_constant(obj)
        numel = int(np.prod(list(tensor.dims))) if len(tensor.dims) else 1
        if numel < _MIN_WEIGHT or tensor.data_location == 1:  # EXTERNAL without its data: left as is
            continue
        rank = len(tensor.dims)
        if any(_weight_axis(graphs[u].graph.node[k], rank) is False for u, k, _ in where):
            continue
        found[name] = (gi, kind, obj, where)
    return graphs, found


def subgraph_weight_nodes(model, exclude: Iterable[str] = ()) -> list[str]:
    """Names of the nodes inside If/Loop/Scan bodies whose weights ``quantize_subgraph_weights`` would quantize."""
    graphs, found = _subgraph_weights(model, exclude)
    names: list[str] = []
    for *_, where in found.values():
        for gi, k, _ in where:
            name = graphs[gi].graph.node[k].name
            if name and name not in names:
                names.append(name)
    return names


def _int8(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    if axis is None:
        scale = np.array(np.abs(w).max(initial=0.0) / 127.0, np.float32)
        scale = np.float32(1.0) if scale == 0 else scale
        shaped = scale
    else:
        others = tuple(d for d in range(w.ndim) if d != axis)
        scale = (np.abs(w).max(axis=others) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        shape = [1] * w.ndim
        shape[axis] = -1
        shaped = scale.reshape(shape)
    q = np.clip(np.rint(w / shaped), -127, 127).astype(np.int8)
    return q, np.asarray(scale, np.float32)


def quantize_subgraph_weights(model, *, per_channel: bool = True, exclude: Iterable[str] = ()) -> SubgraphWeights:
    """Weight-only int8 of the Conv/ConvTranspose/MatMul/Gemm/LSTM/GRU/RNN weights read inside subgraphs, in place.

    A weight qualifies when it is a float32 initializer or ``Constant`` of the body or of an enclosing graph and every
    reader is such a weight position inside a body (a weight also read elsewhere stays float). Needs opset >= 10
    (DequantizeLinear); scales per output channel need opset >= 13 (its ``axis``).
    """
    from onnx import helper, numpy_helper

    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 10:
        return SubgraphWeights((), (), 0, 0, False, f"opset {opset} has no DequantizeLinear (opset 10)")
    per_channel = per_channel and opset >= 13
    graphs, found = _subgraph_weights(model, exclude)
    if not found:
        return SubgraphWeights((), (), 0, 0, per_channel, "no float32 weights inside If/Loop/Scan bodies")
    from modelport.formats.onnx_names import NameAllocator

    taken = {t.name for g in graphs for t in g.graph.initializer}
    taken.update(o for g in graphs for n in g.graph.node for o in n.output)
    taken.update(v.name for g in graphs for v in (*g.graph.input, *g.graph.output))
    fresh = NameAllocator(taken).fresh

    # One reading graph: q/s/zp become initializers of that graph, the DequantizeLinear sits before its first reader
    # (onnxruntime fuses DequantizeLinear -> MatMul and looks the weight up in the DequantizeLinear's own graph).
    # Several: q/s/zp and one DequantizeLinear where the weight was defined, read from the bodies as the float was.
    removed: dict[int, set[str]] = {}  # graph -> the float weights (initializers or Constant outputs) it loses
    added: dict[int, list] = {}  # graph -> initializers to add
    insert_before: dict[tuple[int, int], list] = {}  # (graph, node index) -> DequantizeLinear nodes before it
    weights, nodes, fbytes, qbytes = [], [], 0, 0
    for name, (gi, kind, obj, where) in found.items():
        tensor = obj if kind == "init" else _float_constant(obj)
        w = numpy_helper.to_array(tensor).astype(np.float32)
        axes = {_weight_axis(graphs[u].graph.node[k], w.ndim) for u, k, _ in where}
        axis = axes.pop() if per_channel and len(axes) == 1 else None
        q, scale = _int8(w, axis)
        zp = np.zeros(scale.shape, np.int8)
        qn, sn, zn = fresh(f"{name}_quantized"), fresh(f"{name}_scale"), fresh(f"{name}_zero_point")
        readers = {u for u, _, _ in where}
        home = readers.pop() if len(readers) == 1 else gi
        added.setdefault(home, []).extend(
            [numpy_helper.from_array(q, qn), numpy_helper.from_array(scale, sn), numpy_helper.from_array(zp, zn)])
        removed.setdefault(gi, set()).add(name)
        out = fresh(f"{name}_dequantized")
        attrs = {"axis": axis} if axis is not None else {}
        dq = helper.make_node("DequantizeLinear", [qn, sn, zn], [out], name=fresh(f"{name}_DequantizeLinear"), **attrs)
        if home == gi and len({u for u, _, _ in where}) > 1:
            at = next((k for k, n in enumerate(graphs[gi].graph.node) if n.output and n.output[0] == name), 0)
        else:
            at = min(k for u, k, _ in where if u == home)
        insert_before.setdefault((home, at), []).append(dq)
        for u, k, i in where:
            node = graphs[u].graph.node[k]
            node.input[i] = out
            label = node.name or f"{node.op_type} reading {name}"
            if label not in nodes:
                nodes.append(label)
        weights.append(name)
        fbytes += w.nbytes
        qbytes += q.nbytes + scale.nbytes + zp.nbytes
    gone = {n for names in removed.values() for n in names}
    # Children before their parents: rebuilding a graph's node list copies its nodes, subgraphs included.
    for gi in reversed(range(len(graphs))):
        g = graphs[gi].graph
        stale = [v for v in g.value_info if v.name in gone]
        for v in stale:
            g.value_info.remove(v)
        drop = removed.get(gi, set())
        if drop or any(key[0] == gi for key in insert_before):
            rebuilt = []
            for k, node in enumerate(g.node):
                rebuilt.extend(insert_before.get((gi, k), ()))
                if not (node.op_type == "Constant" and node.output and node.output[0] in drop):
                    rebuilt.append(node)
            del g.node[:]
            g.node.extend(rebuilt)
        if drop:
            kept = [t for t in g.initializer if t.name not in drop]
            del g.initializer[:]
            g.initializer.extend(kept)
        g.initializer.extend(added.get(gi, ()))
    return SubgraphWeights(tuple(weights), tuple(nodes), fbytes, qbytes, per_channel)
