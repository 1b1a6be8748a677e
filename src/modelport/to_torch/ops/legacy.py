"""Opsets 1-6 versions of ops whose later versions are converted elsewhere.

Until opset 7, binary element-wise ops broadcast only when ``broadcast=1``, and then B
aligns with A starting at ``axis`` rather than at the trailing dims (numpy). So B gains
trailing unit dims,

    B' = B.reshape(B.shape + (1,) * (rank(A) - axis - rank(B)))

after which the opset-7 converter computes the same thing. BatchNormalization-6 is the
inference form when ``is_test=1``; PRelu-6 applies a 1-D slope per channel (dim 1);
Max/Min/Sum-6 take equal shapes, a special case of opset 8's broadcasting; Gemm-6's
``broadcast`` only permits what opset 7 always permits.
"""

from __future__ import annotations

import onnx

from modelport.to_torch.codegen import Node, Value
from modelport.to_torch.ops import elementwise, nn
from modelport.to_torch.registry import register


def _aligned(n: Node) -> Node:
    """``n`` itself, or a copy whose input B is reshaped for legacy ``broadcast``/``axis``."""
    if not n.attr("broadcast", 0) or not n.has_attr("axis"):
        return n
    ra, rb = n.rank(0), n.rank(1)
    if ra is None or rb is None:
        raise n.fail("legacy broadcast (opset < 7) with an axis needs the inputs' ranks")
    axis = n.attr("axis")
    axis = axis + ra if axis < 0 else axis
    k = ra - axis - rb
    if k <= 0:
        return n
    name = f"{n.node.input[1]}__aligned_{n.node.name or id(n.node)}"
    c = n.const(1)
    if c is not None:
        n.g.values[name] = Value(None, "const", c.reshape(c.shape + (1,) * k))
    else:
        tmp = n.tmp(f"{n.node.input[1]}_aligned")
        n.emit(f"{tmp} = {n.x(1)}.reshape({n.x(1)}.shape + {(1,) * k})")
        n.g.values[name] = Value(tmp)
    t = n.ms.types.get(n.node.input[1])
    if t is not None:
        n.ms.types[name] = (t[0], None if t[1] is None else list(t[1]) + [1] * k)
    node = onnx.NodeProto()
    node.CopyFrom(n.node)
    node.input[1] = name
    return Node(n.g, node)


def _binary(fn):
    def convert(n: Node) -> None:
        fn(_aligned(n))

    convert.__name__ = fn.__name__.rsplit("_", 1)[0] + "_1"
    return convert


add_1 = register("Add", since=1)(_binary(elementwise.add_7))
sub_1 = register("Sub", since=1)(_binary(elementwise.sub_7))
mul_1 = register("Mul", since=1)(_binary(elementwise.mul_7))
div_1 = register("Div", since=1)(_binary(elementwise.div_7))
pow_1 = register("Pow", since=1)(_binary(elementwise.pow_7))
max_1 = register("Max", since=1)(elementwise.max_8)
min_1 = register("Min", since=1)(elementwise.min_8)
sum_1 = register("Sum", since=1)(elementwise.sum_8)
gemm_1 = register("Gemm", since=1)(nn.gemm_7)


@register("BatchNormalization", since=1)
def batchnormalization_1(n: Node) -> None:
    if not n.attr("is_test", 0) and n.n_out > 1 and any(n.has_out(j) for j in range(1, n.n_out)):
        raise n.fail("BatchNormalization before opset 7 in training mode (is_test=0)")
    if n.attr("spatial", 1) == 0:
        raise n.fail("BatchNormalization with spatial=0")
    nn.batchnormalization_7(n)


@register("PRelu", since=1)
def prelu_1(n: Node) -> None:
    x, s = n.x(0), n.x(1)
    rs, rx = n.rank(1), n.rank(0)
    slope = n.const(1)
    if rs == 1 and (slope is None or slope.size > 1) and rx is not None and rx > 2:
        s = f"{s}.reshape(-1{', 1' * (rx - 2)})"  # one slope per channel
    n.assign(f"torch.where({x} < 0, {x} * {s}, {x})")
