"""Int8 and int4 quantization of ONNX models with onnxruntime.quantization (used, not rewritten).

    dynamic: weights int8 ahead of time, activations quantized at run time (MatMulInteger, …)
    static:  weights and activations int8 (QDQ format), activation ranges from calibration
             data: w_q = round(w / s) with s = max|w| / 127 (per output channel if asked),
             x_q = round(x / s_x) + z_x with [min, max] of x from minmax, entropy or percentile
    int4:    weight-only blockwise 4-bit MatMulNBits for MatMuls with constant weights:
             w_q = round(w / s_b) + z_b per block of ``block_size`` values along K

Every function reads a model file and writes one; ``exclude`` names nodes left in float.
"""

from __future__ import annotations

import contextlib
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
]

MODES = ("dynamic", "static", "fp16", "int4")
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# The ops whose weights dominate size and compute: the layers accuracy control ranks.
WEIGHT_OPS = {"dynamic": ("Conv", "Gemm", "MatMul"), "static": ("Conv", "Gemm", "MatMul"),
              "fp16": ("Conv", "Gemm", "MatMul"), "int4": ("MatMul",)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer prints and logs freely; keep the CLI's output ours."""
    import logging

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
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
    with _quiet():
        inferred, reason = _symbolic_shapes(read_onnx(src))
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


def name_nodes(model) -> int:
    """Give every unnamed node a unique name (nodes_to_exclude works by name); how many were named."""
    seen = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, node in enumerate(model.graph.node):
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
    """Names of the weight-carrying nodes a mode quantizes, in graph order."""
    consts = _constant_names(model)
    ops = WEIGHT_OPS[mode]
    out = []
    for node in model.graph.node:
        if node.op_type in ops and any(i in consts for i in node.input[:2]):
            out.append(node.name)
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
    out: dict[str, int] = {}
    for node in model.graph.node:
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
    return (f"no weights that {mode} quantizes (it quantizes {'/'.join(WEIGHT_OPS[mode])} with constant "
            f"weights){hint}; nothing written")


def check_quantizable(model, mode: str, original=None) -> None:
    """Raise UnsupportedError when no node holds a float constant weight that ``mode`` quantizes.

    ``original``: the user's model, described in the message (``model`` may be its pre-processed form).
    """
    floats = _float_constants(model)
    ops = WEIGHT_OPS[mode]
    if not any(n.op_type in ops and any(i in floats for i in n.input[:2]) for n in model.graph.node):
        raise UnsupportedError(_nothing_reason(model if original is None else original, mode))


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


def quantize_dynamic(src: str | Path, dst: str | Path, *, per_channel: bool = True, exclude: Iterable[str] = ()) -> None:
    """Int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    with _quiet():
        ort_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8,
                    nodes_to_exclude=sorted(exclude))


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
    raises on some per-channel weights, e.g. Magika's) and per tensor is used instead; a failure per
    tensor too is an UnsupportedError naming it.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_static

    if per_channel and not per_axis_opset(onnx.load(str(src), load_external_data=False)):
        per_channel = False

    if method not in CALIBRATION_METHODS:
        raise BadInputError(f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}")

    def run(per_channel: bool) -> None:
        with _quiet():
            ort_static(
                str(src), str(dst), _reader(calibration), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude),
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )

    try:
        run(per_channel)
        return None
    except ModelportError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer failing is reported, never an internal error
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        if not per_channel:
            raise UnsupportedError(f"onnxruntime's static quantizer fails on this model ({why})", path=src) from None
    try:
        run(False)
    except ModelportError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedError(f"onnxruntime's static quantizer fails on this model per channel ({why}) and per tensor "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})", path=src) from None
    return f"weight scales per tensor: onnxruntime's static quantizer fails per channel ({why[:160]})"


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
