"""Quantization: QuantizeLinear / DequantizeLinear (per-tensor, per-axis, blocked),
DynamicQuantizeLinear, and the integer ops MatMulInteger, ConvInteger, QLinearMatMul,
QLinearConv, computed in float64 (exact for 8-bit operands) and requantized."""

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
