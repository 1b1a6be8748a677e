"""Quantization: QuantizeLinear / DequantizeLinear (per-tensor, per-axis, blocked),
DynamicQuantizeLinear, and the integer ops MatMulInteger, ConvInteger, QLinearMatMul,
QLinearConv, computed in float64 (exact for 8-bit operands) and requantized.

onnxruntime's own quantized ops (domain com.microsoft) compute as its CPU kernels do, so that every
rounding step lands where it lands there: DynamicQuantizeMatMul and MatMulIntegerToFloat (what its
graph optimizer fuses quantize_dynamic's MatMuls into), QGemm and the QLinear* ops quantize_static
writes in QOperator format (Add, Mul, Sigmoid, LeakyRelu, Concat, GlobalAveragePool, AveragePool),
and MatMulNBits (blockwise 4/8-bit weights). In a graph that quantizes activations at run time the
float Sigmoid / Tanh use onnxruntime's approximations too (``ort_exact``).
"""

from __future__ import annotations

from onnx import TensorProto as T

from modelport.to_torch import dtypes
from modelport.to_torch.codegen import Node, lit
from modelport.to_torch.ops.conv import _pre_pad, _spatial
from modelport.to_torch.registry import register


def _qdtype(n: Node, zp_index: int) -> str:
    if n.has(zp_index):
        return f"{n.x(zp_index)}.dtype"
    return dtypes.torch_dtype(n.attr("output_dtype", 0) or T.UINT8)


@register("QuantizeLinear", since=10)
def quantizelinear_10(n: Node) -> None:
    n.assign(f"{n.helper('_quantize')}({n.x(0)}, {n.x(1)}, {n.x(2) or 'None'}, {_qdtype(n, 2)}, "
             f"{n.attr('axis', 1)}, {n.attr('block_size', 0)})")


@register("DequantizeLinear", since=10)
def dequantizelinear_10(n: Node) -> None:
    n.assign(f"{n.helper('_dequantize')}({n.x(0)}, {n.x(1)}, {n.x(2) or 'None'}, "
             f"{n.attr('axis', 1)}, {n.attr('block_size', 0)})")


@register("DynamicQuantizeLinear", since=11)
def dynamicquantizelinear_11(n: Node) -> None:
    n.assign_many(f"{n.helper('_dynamic_quantize')}({n.x(0)})", [0, 1, 2])


@register("MatMulInteger", since=10)
def matmulinteger_10(n: Node) -> None:
    a, b = n.x(0), n.x(1)
    az = f" - {n.helper('_row_zp')}({n.x(2)})" if n.has(2) else ""
    bz = f" - {n.x(3)}.double()" if n.has(3) else ""
    n.assign(f"(({a}.double(){az}) @ ({b}.double(){bz})).to(torch.int32)")


def _conv_expr(n: Node, x: str, w: str) -> str:
    wshape = n.shape(3 if n.node.op_type == "QLinearConv" else 1)
    k = len(wshape) - 2
    kernel = n.attr("kernel_shape") or list(wshape[2:])
    strides, dil, pads, auto = _spatial(n, k, kernel)
    xp, padding = _pre_pad(n, x, k, kernel, strides, dil, pads, auto)
    return (f"F.conv{k}d({xp}, {w}, None, stride={lit(strides)}, padding={lit(padding)}, "
            f"dilation={lit(dil)}, groups={n.attr('group', 1)})")


@register("ConvInteger", since=10)
def convinteger_10(n: Node) -> None:
    x = n.tmp("x_centered")
    xz = f" - {n.x(2)}.double()" if n.has(2) else ""
    n.emit(f"{x} = {n.x(0)}.double(){xz}")
    wz = f" - {n.helper('_channel_zp')}({n.x(3)}, {n.x(1)}.dim())" if n.has(3) else ""
    n.assign(f"{_conv_expr(n, x, f'({n.x(1)}.double(){wz})')}.to(torch.int32)")


@register("QLinearMatMul", since=10)
def qlinearmatmul_10(n: Node) -> None:
    a = f"{n.helper('_dequantize')}({n.x(0)}, {n.x(1)}, {n.x(2)}, 0, 0, torch.float64)"
    b = f"{n.helper('_dequantize')}({n.x(3)}, {n.x(4)}, {n.x(5)}, -1, 0, torch.float64)"
    n.assign(f"{n.helper('_quantize')}({a} @ {b}, {n.x(6)}.double(), {n.x(7)}, {n.x(7)}.dtype, 1, 0)")


@register("QLinearConv", since=10)
def qlinearconv_10(n: Node) -> None:
    x = n.tmp("x_real")
    n.emit(f"{x} = {n.helper('_dequantize')}({n.x(0)}, {n.x(1)}, {n.x(2)}, 1, 0, torch.float64)")
    w = f"{n.helper('_dequantize')}({n.x(3)}, {n.x(4)}, {n.x(5)}, 0, 0, torch.float64)"
    acc = _conv_expr(n, x, w)
    if n.has(8):
        acc = (f"{acc} + ({n.x(8)}.double() * {n.x(1)}.double() * {n.x(4)}.double())"
               f".reshape(1, -1, *([1] * ({n.x(0)}.dim() - 2)))")
    n.assign(f"{n.helper('_quantize')}({acc}, {n.x(6)}.double(), {n.x(7)}, {n.x(7)}.dtype, 1, 0)")


# -- onnxruntime's contrib quantized ops (domain com.microsoft) -------------------------------------

MS = "com.microsoft"

#: ops whose float inputs onnxruntime quantizes at run time, each with the range it finds there
DYNAMIC_QUANT_OPS = {"DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul"}


def ort_exact(n: Node) -> bool:
    """Whether float activations should compute bit for bit as onnxruntime's do: in a graph that
    quantizes its activations at run time, a one-ulp difference upstream can move a value across a
    rounding step, which comes out as a whole quantization step at the output."""
    cached = getattr(n.ms, "_ort_exact", None)
    if cached is None:
        cached = any(c.op_type in DYNAMIC_QUANT_OPS for cs in n.ms.consumers.values() for c in cs)
        n.ms._ort_exact = cached  # type: ignore[attr-defined]  (one answer per module)
    return cached


def _per_column(n: Node, i: int, what: str, b: int = 1, trans: bool = False) -> None:
    """Refuses a B scale / zero point that is neither per tensor nor one per output column."""
    shape = n.shape(i)
    if shape is None or len(shape) == 0 or (len(shape) == 1 and shape[0] in (1, None)):
        return
    bshape = n.shape(b)
    if len(shape) == 1 and bshape is not None and shape[0] == bshape[0 if trans else -1]:
        return
    raise n.fail(f"{n.node.op_type} {what} of shape {list(shape)} (a scalar or one per column of B expected)")


def _float_a(n: Node, op: str) -> None:
    dt = n.dtype(0)
    if dt is not None and dt != T.FLOAT:
        raise n.fail(f"{op} on a non-float32 A")


@register("DynamicQuantizeMatMul", since=1, domain=MS)
def dynamicquantizematmul_ms_1(n: Node) -> None:
    _float_a(n, "DynamicQuantizeMatMul")
    _per_column(n, 2, "b_scale")
    if n.has(3):
        _per_column(n, 3, "b_zero_point")
    args = ", ".join(n.x(i) or "None" for i in range(5))
    n.assign(f"{n.helper('_dq_matmul')}({args})")


@register("MatMulIntegerToFloat", since=1, domain=MS)
def matmulintegertofloat_ms_1(n: Node) -> None:
    for i, what in ((2, "a_scale"), (3, "b_scale")):
        if not n.has(i):
            raise n.fail(f"MatMulIntegerToFloat without {what}")
    _per_column(n, 3, "b_scale")
    if n.has(5):
        _per_column(n, 5, "b_zero_point")
    a, b, a_scale, b_scale = n.x(0), n.x(1), n.x(2), n.x(3)
    a_zp, b_zp, bias = (n.x(i) or "None" for i in (4, 5, 6))
    n.assign(f"{n.helper('_mm_int_to_float')}({a}, {b}, {a_scale}, {b_scale}, {a_zp}, {b_zp}, {bias})")


def _scalar_params(n: Node, idx: tuple[int, ...]) -> None:
    """The QLinear* ops take one scale and zero point per tensor: anything else is refused."""
    for i in idx:
        shape = n.shape(i)
        if shape is not None and any(d not in (1, None) for d in shape):
            raise n.fail(f"{n.node.op_type} input {i} of shape {list(shape)}: only per-tensor scales and "
                         "zero points are supported")


def _zp(n: Node, i: int, like: int) -> str:
    """Zero point input ``i``, or a zero of input ``like``'s type when it is absent."""
    return n.x(i) if n.has(i) else f"{n.x(like)}.new_zeros(())"


@register("QGemm", since=1, domain=MS)
def qgemm_ms_1(n: Node) -> None:
    _scalar_params(n, (1, 2, 7, 8))
    trans_b = bool(n.attr("transB", 0))
    _per_column(n, 4, "b_scale", 3, trans_b)
    if n.has(5):
        _per_column(n, 5, "b_zero_point", 3, trans_b)
    if n.has(7) and not n.has(8):
        raise n.fail("QGemm with y_scale but no y_zero_point")
    for i in (0, 3):
        if n.rank(i) not in (None, 2):
            raise n.fail(f"QGemm input {i} of rank {n.rank(i)} (2 expected)")
    args = ", ".join(n.x(i) or "None" for i in range(9))
    n.assign(f"{n.helper('_qgemm')}({args}, {lit(float(n.attr('alpha', 1.0)))}, {n.attr('transA', 0)}, "
             f"{n.attr('transB', 0)})")


def _qlinear_binary_op(n: Node, op: str) -> None:
    _scalar_params(n, (1, 2, 4, 5, 6, 7))
    a, b = n.x(0), n.x(3)
    n.assign(f"{n.helper('_qlinear_binary')}({a}, {n.x(1)}, {_zp(n, 2, 0)}, {b}, {n.x(4)}, {_zp(n, 5, 3)}, "
             f"{n.x(6)}, {_zp(n, 7, 0)}, {op!r})")


@register("QLinearAdd", since=1, domain=MS)
def qlinearadd_ms_1(n: Node) -> None:
    _qlinear_binary_op(n, "Add")


@register("QLinearMul", since=1, domain=MS)
def qlinearmul_ms_1(n: Node) -> None:
    _qlinear_binary_op(n, "Mul")


def _qlinear_unary(n: Node, op: str, extra: str = "") -> None:
    _scalar_params(n, (1, 2, 3, 4))
    n.assign(f"{n.helper('_qlinear_lookup')}({n.x(0)}, {n.x(1)}, {_zp(n, 2, 0)}, {n.x(3)}, {_zp(n, 4, 0)}, "
             f"{op!r}{extra})")


@register("QLinearSigmoid", since=1, domain=MS)
def qlinearsigmoid_ms_1(n: Node) -> None:
    _qlinear_unary(n, "Sigmoid")


@register("QLinearLeakyRelu", since=1, domain=MS)
def qlinearleakyrelu_ms_1(n: Node) -> None:
    _qlinear_unary(n, "LeakyRelu", f", {lit(float(n.attr('alpha', 0.01)))}")


@register("QLinearConcat", since=1, domain=MS)
def qlinearconcat_ms_1(n: Node) -> None:
    if n.n_in < 5 or (n.n_in - 2) % 3:
        raise n.fail(f"QLinearConcat with {n.n_in} inputs (Y_scale, Y_zero_point, then triples)")
    _scalar_params(n, tuple(i for i in range(n.n_in) if i < 2 or (i - 2) % 3))
    parts = []
    for i in range(2, n.n_in, 3):
        if not (n.has(i) and n.has(i + 1) and n.has(i + 2)):
            raise n.fail("QLinearConcat with an input lacking its scale or zero point")
        parts += [n.x(i), n.x(i + 1), n.x(i + 2)]
    n.assign(f"{n.helper('_qlinear_concat')}({n.attr('axis')}, {n.x(0)}, {n.x(1)}, {', '.join(parts)})")


@register("QLinearGlobalAveragePool", since=1, domain=MS)
def qlinearglobalaveragepool_ms_1(n: Node) -> None:
    _scalar_params(n, (1, 2, 3, 4))
    n.assign(f"{n.helper('_qlinear_global_avg')}({n.x(0)}, {n.x(1)}, {_zp(n, 2, 0)}, {n.x(3)}, "
             f"{_zp(n, 4, 0)}, {n.attr('channels_last', 0)})")


@register("QLinearAveragePool", since=1, domain=MS)
def qlinearaveragepool_ms_1(n: Node) -> None:
    _scalar_params(n, (1, 2, 3, 4))
    kernel = list(n.attr("kernel_shape") or [])
    if not kernel:
        raise n.fail("QLinearAveragePool without kernel_shape")
    k = len(kernel)
    if n.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise n.fail(f"QLinearAveragePool auto_pad {n.attr('auto_pad')!r} (NOTSET and VALID are supported)")
    if n.attr("ceil_mode", 0):
        raise n.fail("QLinearAveragePool with ceil_mode=1")
    pads = list(n.attr("pads") or [0] * (2 * k)) if n.attr("auto_pad", "NOTSET") == "NOTSET" else [0] * (2 * k)
    strides = list(n.attr("strides") or [1] * k)
    n.assign(f"{n.helper('_qlinear_avg_pool')}({n.x(0)}, {n.x(1)}, {_zp(n, 2, 0)}, {n.x(3)}, {_zp(n, 4, 0)}, "
             f"{lit(kernel)}, {lit(strides)}, {lit(pads)}, {n.attr('count_include_pad', 0)}, "
             f"{n.attr('channels_last', 0)})")


@register("MatMulNBits", since=1, domain=MS)
def matmulnbits_ms_1(n: Node) -> None:
    bits, block = n.attr("bits", 4), n.attr("block_size")
    k, cols = n.attr("K"), n.attr("N")
    if bits not in (4, 8):
        raise n.fail(f"MatMulNBits with bits={bits} (4 and 8 are supported)")
    if not block or not k or not cols:
        raise n.fail("MatMulNBits without K, N and block_size")
    if n.has(4):
        raise n.fail("MatMulNBits with g_idx (act-order) is not supported")
    if n.has(3) and n.dtype(3) not in (None, T.UINT8):
        raise n.fail("MatMulNBits with float zero points is not supported (packed uint8 ones are)")
    if n.dtype(0) not in (None, T.FLOAT):
        raise n.fail("MatMulNBits on a non-float32 A")
    args = ", ".join(n.x(i) or "None" for i in (0, 1, 2, 3, 5))
    n.assign(f"{n.helper('_matmul_nbits')}({args}, {k}, {cols}, {bits}, {block})")
