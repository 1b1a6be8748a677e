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

from modelport.errors import BadInputError, UnsupportedError

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


def quantize_static(
    src: str | Path,
    dst: str | Path,
    calibration: Sequence[dict[str, np.ndarray]],
    *,
    method: str = "minmax",
    per_channel: bool = True,
    exclude: Iterable[str] = (),
) -> None:
    """Int8 weights and activations in QDQ format, ranges calibrated on ``calibration`` chunks."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_static

    if method not in CALIBRATION_METHODS:
        raise BadInputError(f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}")
    with _quiet():
        ort_static(
            str(src), str(dst), _reader(calibration), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=sorted(exclude),
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )


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
