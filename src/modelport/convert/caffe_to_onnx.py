"""Caffe (``.prototxt`` + ``.caffemodel``) -> ONNX, lowered layer by layer.

caffe2onnx 2.0.1 (the converter on PyPI) is not used: it pins ``onnx==1.6.0``, its generated
``caffe_pb2`` module cannot be imported with protobuf >= 4 unless protobuf runs in pure Python,
and it has had no release since 2021. Both files are parsed with the caffe.proto subset of
:mod:`modelport.formats.caffe_format`; each TEST-phase layer becomes a few ONNX nodes. Shapes are
tracked through the network (Caffe's shapes are static), with the batch dim left dynamic where
no layer bakes it into a constant.

The semantics that differ from ONNX's defaults, written out:

- **Pooling** rounds the output size up (``round_mode: CEIL``, the default):
  ``out = ceil((H + 2p - k) / s) + 1``, minus one if ``p > 0`` and the last window would start
  in the padding (``(out - 1) * s >= H + p``). Lowered with the padding that gives that size in
  floor mode: ``end_pad = p + max(0, (out - 1) * s + k - (H + 2p))``. MAX ignores padding (as
  ONNX's MaxPool does). AVE divides by the window clipped to the padded image, not beyond, so the
  input is zero-padded by ``p`` explicitly and the extra end padding is excluded from the count
  (``count_include_pad=0`` on the padded tensor).
- **BatchNorm** stores ``mean * f``, ``var * f`` and ``f`` (a moving-average factor):
  ``mean = blob0 / f``, ``var = blob1 / f`` (0 when ``f == 0``); it has no affine part (a
  following Scale layer has it).
- **LRN** across channels is ONNX's LRN (``bias = k``); within a channel it is
  ``x * (1 + alpha * avgpool(x^2, size, pad=(size-1)/2))^-beta``.
- **Dropout** is the identity at inference (Caffe scales while training).
- **Reshape** ``dim: 0`` copies the input dim, ``-1`` is inferred; **Permute** orders the
  listed axes first, the others after in their order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from modelport.artifact import TensorSpec
from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import BadInputError, UnsupportedError
from modelport.formats import caffe_format
from modelport.formats.onnx_names import NameAllocator

__all__ = ["LOWERED", "LoweredGraph", "caffe_to_onnx", "lower"]

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Split with a sizes input, single-axis Softmax

Shape = tuple[int, ...]


class _StaticBatch(Exception):
    """A layer bakes the batch dim into a constant (or moves it): lower again with a static batch."""


@dataclasses.dataclass(frozen=True)
class LoweredGraph:
    inputs: tuple[tuple[str, Shape], ...]
    outputs: tuple[tuple[str, Shape], ...]
    model: Any  # onnx.ModelProto
    dynamic_batch: bool
    dropped: tuple[str, ...]
    static_reason: str = ""  # the layer that made the batch dim static


class _Builder:
    """ONNX nodes and initializers, with each tensor's (concrete) shape and the blob -> tensor versions."""

    def __init__(self, caffe, net, names: dict[int, list[str]], dynamic: bool) -> None:
        self.caffe, self.net, self.dynamic = caffe, net, dynamic
        self.nodes: list = []
        self.inits: list = []
        self.shapes: dict[str, Shape] = {}
        self.current: dict[str, str] = {}
        self._names = names  # id(layer) -> ONNX name of each of its tops
        # the names the net gives (its inputs, every top) are taken before any layer is lowered
        self._values = NameAllocator([n for n, _ in net.inputs] + [t for tops in names.values() for t in tops])
        self._nodes = NameAllocator()

    # ---- tensors
    def fresh(self, hint: str) -> str:
        """A value name no blob of the net and no earlier value has."""
        return self._values.fresh(hint)

    def node_name(self, hint: str) -> str:
        return self._nodes.fresh(hint)

    def const(self, hint: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def shape_const(self, layer, dims: Shape) -> str:
        """A Reshape target: the batch dim as 0 (copy) when it stays the batch, else the graph is static."""
        return self.const(f"{layer.name}/shape", np.asarray(dims, dtype=np.int64))

    def node(self, op: str, inputs: list[str], output: str | None, layer, **attrs) -> str:
        from onnx import helper

        out = output or self.fresh(f"{layer.name}/{op}")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.node_name(layer.name), **attrs))
        return out

    # ---- blobs
    def read(self, layer, blob: str) -> tuple[str, Shape]:
        if blob not in self.current:
            raise BadInputError(f"layer {layer.name!r} ({layer.type}) reads blob {blob!r} that no layer before it "
                                "writes", path=self.caffe.prototxt)
        name = self.current[blob]
        return name, self.shapes[name]

    def top_names(self, layer) -> list[str]:
        return self._names[id(layer)]

    def write(self, blob: str, name: str, shape: Shape) -> None:
        self.shapes[name] = tuple(int(d) for d in shape)
        self.current[blob] = name

    def blobs(self, layer, shapes: list[Shape]) -> list[np.ndarray]:
        """The layer's weights, each reshaped to the expected shape (legacy 4-D blobs hold the same values)."""
        found = self.caffe.blobs.get(layer.name, ())
        if len(found) < len(shapes):
            raise BadInputError(f"layer {layer.name!r} ({layer.type}) has {len(found)} weight blob(s) in the "
                                f".caffemodel, expected {len(shapes)}", path=self.caffe.caffemodel)
        out = []
        for i, (array, shape) in enumerate(zip(found, shapes)):
            if array.size != int(np.prod(shape)):
                raise BadInputError(f"layer {layer.name!r} ({layer.type}) blob {i} has shape {list(array.shape)}, "
                                    f"expected {list(shape)}", path=self.caffe.caffemodel)
            out.append(array.reshape(shape))
        return out

    def batch_moves(self, layer, why: str) -> None:
        if self.dynamic:
            raise _StaticBatch(f"{layer.name} ({layer.type}) {why}")


# --------------------------------------------------------------------------- layer lowerings
# Each: (builder, layer, [(tensor, shape)] of its bottoms) -> [(tensor, shape)] of its tops, in order.
Lowering = Callable[[_Builder, Any, list[tuple[str, Shape]]], list[tuple[str, Shape]]]
LOWERED: dict[str, Lowering] = {}


def _lowers(*types: str) -> Callable[[Lowering], Lowering]:
    def deco(fn: Lowering) -> Lowering:
        for t in types:
            LOWERED[t] = fn
        return fn

    return deco


def _axis(axis: int, rank: int, layer) -> int:
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < rank:
        raise BadInputError(f"layer {layer.name!r} ({layer.type}): axis {axis} out of range for rank {rank}")
    return a


def _spatial(layer, values, h: str, w: str, n: int, default: int | None, what: str, p) -> list[int]:
    """Caffe's per-dim values: `kernel_h`/`kernel_w` (2-D), else the repeated field (one value for every dim)."""
    if p.HasField(h) or p.HasField(w):
        if n != 2:
            raise BadInputError(f"layer {layer.name!r}: {h}/{w} need a 2-D input")
        return [int(getattr(p, h)), int(getattr(p, w))]
    vals = [int(v) for v in values]
    if len(vals) == 1:
        return vals * n
    if len(vals) == n:
        return vals
    if not vals and default is not None:
        return [default] * n
    raise BadInputError(f"layer {layer.name!r} ({layer.type}): {what} has {len(vals)} values for {n} spatial dims")


def _conv_params(layer, shape: Shape):
    p = layer.convolution_param
    if _axis(p.axis, len(shape), layer) != 1:
        raise UnsupportedError(f"layer {layer.name!r} (Convolution): channel axis {p.axis} (only 1 is lowered)")
    n = len(shape) - 2
    k = _spatial(layer, p.kernel_size, "kernel_h", "kernel_w", n, None, "kernel_size", p)
    s = _spatial(layer, p.stride, "stride_h", "stride_w", n, 1, "stride", p)
    pad = _spatial(layer, p.pad, "pad_h", "pad_w", n, 0, "pad", p)
    d = [int(v) for v in p.dilation] or [1]
    d = d * n if len(d) == 1 else d
    if not p.HasField("num_output"):
        raise BadInputError(f"layer {layer.name!r} ({layer.type}) has no num_output")
    return p, k, s, pad, d


@_lowers("Convolution")
def _convolution(g: _Builder, layer, ins):
    (x, shape), = ins
    p, k, s, pad, d = _conv_params(layer, shape)
    group, cout, cin = int(p.group), int(p.num_output), shape[1]
    if cin % group or cout % group:
        raise BadInputError(f"layer {layer.name!r}: group {group} does not divide channels {cin} -> {cout}")
    want = [(cout, cin // group, *k)] + ([(cout,)] if p.bias_term else [])
    weights = g.blobs(layer, want)
    inputs = [x] + [g.const(f"{layer.name}/w{i}", w) for i, w in enumerate(weights)]
    out = [(h + 2 * pp - (dd * (kk - 1) + 1)) // ss + 1 for h, kk, ss, pp, dd in zip(shape[2:], k, s, pad, d)]
    y = g.node("Conv", inputs, g.top_names(layer)[0], layer, kernel_shape=k, strides=s, pads=pad + pad,
               dilations=d, group=group)
    return [(y, (shape[0], cout, *out))]


@_lowers("Deconvolution")
def _deconvolution(g: _Builder, layer, ins):
    (x, shape), = ins
    p, k, s, pad, d = _conv_params(layer, shape)
    group, cout, cin = int(p.group), int(p.num_output), shape[1]
    if cin % group or cout % group:
        raise BadInputError(f"layer {layer.name!r}: group {group} does not divide channels {cin} -> {cout}")
    want = [(cin, cout // group, *k)] + ([(cout,)] if p.bias_term else [])
    weights = g.blobs(layer, want)
    inputs = [x] + [g.const(f"{layer.name}/w{i}", w) for i, w in enumerate(weights)]
    out = [ss * (h - 1) + dd * (kk - 1) + 1 - 2 * pp for h, kk, ss, pp, dd in zip(shape[2:], k, s, pad, d)]
    y = g.node("ConvTranspose", inputs, g.top_names(layer)[0], layer, kernel_shape=k, strides=s, pads=pad + pad,
               dilations=d, group=group)
    return [(y, (shape[0], cout, *out))]


@_lowers("InnerProduct")
def _inner_product(g: _Builder, layer, ins):
    (x, shape), = ins
    p = layer.inner_product_param
    axis = _axis(p.axis, len(shape), layer)
    if axis == 0:
        g.batch_moves(layer, "flattens the batch dim (axis 0)")
    k, n = int(np.prod(shape[axis:])), int(p.num_output)
    (w, *b) = g.blobs(layer, [(k, n) if p.transpose else (n, k)] + ([(n,)] if p.bias_term else []))
    top = g.top_names(layer)[0]
    if axis == 1:
        flat = g.node("Flatten", [x], None, layer, axis=1) if len(shape) > 2 else x
        inputs = [flat, g.const(f"{layer.name}/w", w)] + ([g.const(f"{layer.name}/b", b[0])] if b else [])
        y = g.node("Gemm", inputs, top, layer, transB=0 if p.transpose else 1)
    else:
        lead = (0,) + shape[1:axis] if g.dynamic else shape[:axis]
        flat = g.node("Reshape", [x, g.shape_const(layer, (*lead, k))], None, layer)
        mat = w if p.transpose else w.T
        y = g.node("MatMul", [flat, g.const(f"{layer.name}/w", np.ascontiguousarray(mat))], None if b else top, layer)
        if b:
            y = g.node("Add", [y, g.const(f"{layer.name}/b", b[0])], top, layer)
    return [(y, (*shape[:axis], n))]


def _pool_size(h: int, k: int, s: int, p: int, ceil: bool) -> int:
    q = (h + 2 * p - k) / s
    out = (math.ceil(q) if ceil else math.floor(q)) + 1
    if p > 0 and (out - 1) * s >= h + p:
        out -= 1
    return out


@_lowers("Pooling")
def _pooling(g: _Builder, layer, ins):
    (x, shape), = ins
    p = layer.pooling_param
    top = g.top_names(layer)[0]
    if len(shape) != 4:
        raise UnsupportedError(f"layer {layer.name!r} (Pooling): input of rank {len(shape)} (Caffe pools 2-D)")
    method = caffe_format.messages()["PoolingParameter"].PoolMethod.Name(p.pool)
    if method not in ("MAX", "AVE"):
        raise UnsupportedError(f"layer {layer.name!r} of type 'Pooling' uses pool: {method}, which modelport does "
                               "not lower (MAX and AVE are)")
    if p.global_pooling:
        y = g.node("GlobalMaxPool" if method == "MAX" else "GlobalAveragePool", [x], top, layer)
        return [(y, (*shape[:2], 1, 1))]
    k = _spatial(layer, [p.kernel_size] if p.HasField("kernel_size") else [], "kernel_h", "kernel_w", 2, None,
                 "kernel_size", p)
    s = _spatial(layer, [p.stride] if p.HasField("stride") else [], "stride_h", "stride_w", 2, 1, "stride", p)
    pad = _spatial(layer, [p.pad] if p.HasField("pad") else [], "pad_h", "pad_w", 2, 0, "pad", p)
    ceil = p.round_mode == 0  # CEIL
    out = [_pool_size(h, kk, ss, pp, ceil) for h, kk, ss, pp in zip(shape[2:], k, s, pad)]
    extra = [max(0, (o - 1) * ss + kk - (h + 2 * pp)) for o, h, kk, ss, pp in zip(out, shape[2:], k, s, pad)]
    if method == "MAX":
        y = g.node("MaxPool", [x], top, layer, kernel_shape=k, strides=s, pads=pad + [pp + e for pp, e in zip(pad, extra)])
    else:
        src = x
        if any(pad):
            zeros = g.const(f"{layer.name}/pads", np.asarray((0, 0, *pad, 0, 0, *pad), dtype=np.int64))
            src = g.node("Pad", [x, zeros], None, layer, mode="constant")
        y = g.node("AveragePool", [src], top, layer, kernel_shape=k, strides=s, pads=[0, 0, *extra],
                   count_include_pad=0)
    return [(y, (*shape[:2], *out))]


@_lowers("ReLU")
def _relu(g: _Builder, layer, ins):
    (x, shape), = ins
    slope = float(layer.relu_param.negative_slope)
    top = g.top_names(layer)[0]
    y = g.node("LeakyRelu", [x], top, layer, alpha=slope) if slope else g.node("Relu", [x], top, layer)
    return [(y, shape)]


def _unary(op: str, **attrs):
    def lower(g: _Builder, layer, ins):
        (x, shape), = ins
        return [(g.node(op, [x], g.top_names(layer)[0], layer, **attrs), shape)]

    return lower


LOWERED.update({"Sigmoid": _unary("Sigmoid"), "TanH": _unary("Tanh"), "AbsVal": _unary("Abs"),
                "BNLL": _unary("Softplus"), "Dropout": _unary("Identity")})


@_lowers("ELU")
def _elu(g: _Builder, layer, ins):
    return _unary("Elu", alpha=float(layer.elu_param.alpha))(g, layer, ins)


@_lowers("Power")
def _power(g: _Builder, layer, ins):
    """y = (shift + scale * x) ^ power"""
    (x, shape), = ins
    p, top = layer.power_param, g.top_names(layer)[0]
    steps = [("Mul", p.scale, 1.0), ("Add", p.shift, 0.0), ("Pow", p.power, 1.0)]
    steps = [(op, v) for op, v, neutral in steps if v != neutral]
    if not steps:
        return [(g.node("Identity", [x], top, layer), shape)]
    for i, (op, v) in enumerate(steps):
        x = g.node(op, [x, g.const(f"{layer.name}/{op}", np.float32(v))], top if i == len(steps) - 1 else None, layer)
    return [(x, shape)]


@_lowers("PReLU")
def _prelu(g: _Builder, layer, ins):
    (x, shape), = ins
    n = 1 if layer.prelu_param.channel_shared else shape[1]
    (slope,) = g.blobs(layer, [(n,)])
    slope = slope.reshape((n,) + (1,) * (len(shape) - 2))
    return [(g.node("PRelu", [x, g.const(f"{layer.name}/slope", slope)], g.top_names(layer)[0], layer), shape)]


@_lowers("BatchNorm")
def _batch_norm(g: _Builder, layer, ins):
    (x, shape), = ins
    p = layer.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise UnsupportedError(f"layer {layer.name!r} (BatchNorm) has use_global_stats: false, normalizing with each "
                               "batch's own statistics at inference; modelport lowers the stored statistics only")
    c = shape[1]
    mean, var, factor = g.blobs(layer, [(c,), (c,), (1,)])
    f = float(factor[0])
    scale = 0.0 if f == 0 else 1.0 / f
    names = [g.const(f"{layer.name}/{n}", a.astype(np.float32)) for n, a in
             (("gamma", np.ones(c)), ("beta", np.zeros(c)), ("mean", mean * scale), ("var", var * scale))]
    y = g.node("BatchNormalization", [x, *names], g.top_names(layer)[0], layer, epsilon=float(p.eps))
    return [(y, shape)]


def _broadcast_shape(shape: Shape, axis: int, n_axes: int) -> Shape:
    """The shape of a per-axis parameter over dims [axis, axis + n_axes), padded with ones to the right."""
    return shape[axis:axis + n_axes] + (1,) * (len(shape) - axis - n_axes)


def _affine(g: _Builder, layer, ins, p, op: str, with_bias: bool):
    (x, shape), *rest = ins
    axis = _axis(p.axis, len(shape), layer)
    top = g.top_names(layer)[0]
    if rest:  # the factor is the second bottom
        (f, fshape), = rest
        if axis == 0:
            g.batch_moves(layer, "takes its factor along the batch dim (axis 0)")
        n_axes = len(fshape)
        target = _broadcast_shape(shape, axis, n_axes)
        factor = g.node("Reshape", [f, g.shape_const(layer, target)], None, layer)
        extra = g.blobs(layer, [shape[axis:axis + n_axes]]) if with_bias else []
    else:
        n_axes = len(shape) - axis if p.num_axes == -1 else int(p.num_axes)
        want = [shape[axis:axis + n_axes]] + ([shape[axis:axis + n_axes]] if with_bias else [])
        factor_w, *extra = g.blobs(layer, want)
        if axis == 0 and n_axes > 0:
            g.batch_moves(layer, "has a weight per batch row (axis 0)")
        factor = g.const(f"{layer.name}/{op.lower()}", factor_w.reshape(_broadcast_shape(shape, axis, n_axes)))
    y = g.node(op, [x, factor], None if extra else top, layer)
    if extra:
        bias = g.const(f"{layer.name}/bias", extra[0].reshape(_broadcast_shape(shape, axis, n_axes)))
        y = g.node("Add", [y, bias], top, layer)
    return [(y, shape)]


@_lowers("Scale")
def _scale(g: _Builder, layer, ins):
    return _affine(g, layer, ins, layer.scale_param, "Mul", bool(layer.scale_param.bias_term))


@_lowers("Bias")
def _bias(g: _Builder, layer, ins):
    return _affine(g, layer, ins, layer.bias_param, "Add", False)


@_lowers("Eltwise")
def _eltwise(g: _Builder, layer, ins):
    p = layer.eltwise_param
    op = caffe_format.messages()["EltwiseParameter"].EltwiseOp.Name(p.operation)
    names, shape, top = [n for n, _ in ins], ins[0][1], g.top_names(layer)[0]
    if any(s != shape for _, s in ins):
        raise BadInputError(f"layer {layer.name!r} (Eltwise): bottoms of different shapes {[list(s) for _, s in ins]}")
    if op == "SUM":
        coeff = [float(c) for c in p.coeff]
        if coeff and len(coeff) != len(names):
            raise BadInputError(f"layer {layer.name!r} (Eltwise): {len(coeff)} coeff for {len(names)} bottoms")
        if any(c != 1.0 for c in coeff):
            names = [n if c == 1.0 else g.node("Mul", [n, g.const(f"{layer.name}/coeff", np.float32(c))], None, layer)
                     for n, c in zip(names, coeff)]
        return [(g.node("Sum", names, top, layer), shape)]
    if op == "PROD":
        y = names[0]
        for i, n in enumerate(names[1:]):
            y = g.node("Mul", [y, n], top if i == len(names) - 2 else None, layer)
        return [(y if len(names) > 1 else g.node("Identity", [y], top, layer), shape)]
    return [(g.node("Max", names, top, layer), shape)]


@_lowers("Concat")
def _concat(g: _Builder, layer, ins):
    p = layer.concat_param
    rank = len(ins[0][1])
    axis = _axis(p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim, rank, layer)
    if axis == 0:
        g.batch_moves(layer, "concatenates along the batch dim")
    shape = list(ins[0][1])
    shape[axis] = sum(s[axis] for _, s in ins)
    return [(g.node("Concat", [n for n, _ in ins], g.top_names(layer)[0], layer, axis=axis), tuple(shape))]


@_lowers("Slice")
def _slice(g: _Builder, layer, ins):
    from onnx import helper

    (x, shape), = ins
    p = layer.slice_param
    axis = _axis(p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim, len(shape), layer)
    if axis == 0:
        g.batch_moves(layer, "slices the batch dim")
    n, tops = shape[axis], g.top_names(layer)
    points = [int(v) for v in p.slice_point]
    if points:
        if len(points) != len(tops) - 1 or points != sorted(points) or not 0 < points[0] or points[-1] >= n:
            raise BadInputError(f"layer {layer.name!r} (Slice): slice_point {points} for {len(tops)} tops over "
                                f"dim {n}")
        sizes = [b - a for a, b in zip([0, *points], [*points, n])]
    else:
        if n % len(tops):
            raise BadInputError(f"layer {layer.name!r} (Slice): dim {n} does not split into {len(tops)} equal parts")
        sizes = [n // len(tops)] * len(tops)
    split = g.const(f"{layer.name}/split", np.asarray(sizes, dtype=np.int64))
    g.nodes.append(helper.make_node("Split", [x, split], tops, name=g.node_name(layer.name), axis=axis))
    outs = []
    for t, size in zip(tops, sizes):
        s = list(shape)
        s[axis] = size
        outs.append((t, tuple(s)))
    return outs


@_lowers("Split")
def _split(g: _Builder, layer, ins):
    (x, shape), = ins
    return [(g.node("Identity", [x], t, layer), shape) for t in g.top_names(layer)]


@_lowers("Softmax")
def _softmax(g: _Builder, layer, ins):
    (x, shape), = ins
    axis = _axis(layer.softmax_param.axis, len(shape), layer)
    return [(g.node("Softmax", [x], g.top_names(layer)[0], layer, axis=axis), shape)]


@_lowers("LRN")
def _lrn(g: _Builder, layer, ins):
    (x, shape), = ins
    p, top = layer.lrn_param, g.top_names(layer)[0]
    size = int(p.local_size)
    if size % 2 == 0:
        raise BadInputError(f"layer {layer.name!r} (LRN): local_size {size} must be odd (as Caffe requires)")
    if p.norm_region == 0:  # ACROSS_CHANNELS
        y = g.node("LRN", [x], top, layer, size=size, alpha=float(p.alpha), beta=float(p.beta), bias=float(p.k))
        return [(y, shape)]
    pad = (size - 1) // 2
    sq = g.node("Mul", [x, x], None, layer)
    avg = g.node("AveragePool", [sq], None, layer, kernel_shape=[size, size], strides=[1, 1],
                 pads=[pad, pad, pad, pad], count_include_pad=1)
    scaled = g.node("Mul", [avg, g.const(f"{layer.name}/alpha", np.float32(p.alpha))], None, layer)
    shifted = g.node("Add", [scaled, g.const(f"{layer.name}/one", np.float32(1.0))], None, layer)
    factor = g.node("Pow", [shifted, g.const(f"{layer.name}/beta", np.float32(-p.beta))], None, layer)
    return [(g.node("Mul", [x, factor], top, layer), shape)]


@_lowers("Flatten")
def _flatten(g: _Builder, layer, ins):
    (x, shape), = ins
    p = layer.flatten_param
    a, e = _axis(p.axis, len(shape), layer), _axis(p.end_axis, len(shape), layer)
    out = (*shape[:a], int(np.prod(shape[a:e + 1])), *shape[e + 1:])
    return [(_reshape_to(g, layer, x, shape, out, keeps_batch=a > 0), out)]


def _reshape_to(g: _Builder, layer, x: str, shape: Shape, out: Shape, *, keeps_batch: bool) -> str:
    if not keeps_batch:
        g.batch_moves(layer, "reshapes the batch dim")
    target = (0, *out[1:]) if g.dynamic else out
    return g.node("Reshape", [x, g.shape_const(layer, target)], g.top_names(layer)[0], layer)


@_lowers("Reshape")
def _reshape(g: _Builder, layer, ins):
    (x, shape), = ins
    p = layer.reshape_param
    spec = [int(d) for d in p.shape.dim]
    start = _axis(p.axis, len(shape) + 1, layer)  # -1: after the last dim
    end = len(shape) if p.num_axes == -1 else start + int(p.num_axes)
    if end > len(shape):
        raise BadInputError(f"layer {layer.name!r} (Reshape): axis {p.axis} + num_axes {p.num_axes} > rank {len(shape)}")
    dims = [shape[start + i] if d == 0 else d for i, d in enumerate(spec)]
    if dims.count(-1) > 1:
        raise BadInputError(f"layer {layer.name!r} (Reshape): more than one -1 in shape {spec}")
    known = int(np.prod([d for d in dims if d != -1])) * int(np.prod(shape[:start])) * int(np.prod(shape[end:]))
    if -1 in dims:
        dims[dims.index(-1)] = int(np.prod(shape)) // max(known, 1)
    out = (*shape[:start], *dims, *shape[end:])
    if int(np.prod(out)) != int(np.prod(shape)):
        raise BadInputError(f"layer {layer.name!r} (Reshape): cannot reshape {list(shape)} to {list(out)}")
    keeps = start > 0 or (bool(spec) and spec[0] == 0)
    return [(_reshape_to(g, layer, x, shape, out, keeps_batch=keeps), out)]


@_lowers("Permute")
def _permute(g: _Builder, layer, ins):
    (x, shape), = ins
    order = [int(v) for v in layer.permute_param.order]
    if sorted(set(order)) != sorted(order) or any(not 0 <= o < len(shape) for o in order):
        raise BadInputError(f"layer {layer.name!r} (Permute): order {order} for rank {len(shape)}")
    perm = order + [i for i in range(len(shape)) if i not in order]
    if perm[0] != 0:
        g.batch_moves(layer, "moves the batch dim")
    y = g.node("Transpose", [x], g.top_names(layer)[0], layer, perm=perm)
    return [(y, tuple(shape[i] for i in perm))]


# --------------------------------------------------------------------------- the whole net

_NEEDS_WEIGHTS = ("Convolution", "Deconvolution", "InnerProduct", "PReLU", "BatchNorm")


def _weight_layers(layers) -> list:
    """Layers whose parameters live in the .caffemodel."""
    return [layer for layer in layers if layer.type in _NEEDS_WEIGHTS
            or (layer.type in ("Scale", "Bias") and len(layer.bottom) == 1)
            or (layer.type == "Scale" and layer.scale_param.bias_term)]


def _check(caffe, net) -> None:
    unknown = [layer for layer in net.layers if layer.type not in LOWERED]
    if unknown:
        names = ", ".join(f"{layer.name!r} of type {layer.type!r}" for layer in unknown[:5])
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise UnsupportedError(f"Caffe layer {names}{more} is not lowered to ONNX (modelport lowers: "
                               f"{', '.join(sorted(LOWERED))})", path=caffe.prototxt)
    if caffe.strict_error:
        raise BadInputError(f"not a Caffe network definition modelport reads: {caffe.strict_error}",
                            path=caffe.prototxt)
    missing = [layer.name for layer in _weight_layers(net.layers) if layer.name not in caffe.blobs]
    if missing:
        have = sorted(caffe.blobs)
        raise BadInputError(f"the .caffemodel has no weights for layer(s) {', '.join(missing)} of the .prototxt "
                            f"(its layers with weights: {', '.join(have) or 'none'})", path=caffe.caffemodel)


def _top_names(net) -> dict[int, list[str]]:
    """The ONNX name of each layer's tops: a blob's last version keeps the blob's name, earlier in-place
    versions are named `blob:layer`."""
    last: dict[str, int] = {}
    for layer in net.layers:
        for t in layer.top:
            last[t] = id(layer)
    inputs = {n for n, _ in net.inputs}
    return {id(layer): [t if last[t] == id(layer) and t not in inputs else f"{t}:{layer.name}" for t in layer.top]
            for layer in net.layers}


def _input_shapes(net, specs: tuple[TensorSpec, ...], path: str) -> list[tuple[str, Shape]]:
    given = {s.name: s for s in specs}
    out = []
    for name, shape in net.inputs:
        spec = given.get(name)
        if spec is not None and spec.shape is not None:
            dims = [d if isinstance(d, int) else (shape[i] if shape and i < len(shape) else 1)
                    for i, d in enumerate(spec.shape)]
            shape = tuple(dims)
        if shape is None:
            raise BadInputError(f"input {name!r} comes from a data layer that gives no shape: give --input "
                                f"{name}:1x3x224x224 (its shape)", path=path)
        out.append((name, tuple(int(d) for d in shape)))
    return out


def _build(caffe, net, shapes: list[tuple[str, Shape]], dynamic: bool, opset: int):
    from onnx import TensorProto, helper

    g = _Builder(caffe, net, _top_names(net), dynamic)
    for name, shape in shapes:
        g.write(name, name, shape)
    for layer in net.layers:
        ins = [g.read(layer, b) for b in layer.bottom]
        outs = LOWERED[layer.type](g, layer, ins)
        for blob, (name, shape) in zip(layer.top, outs):
            g.write(blob, name, shape)

    def value_info(name: str, shape: Shape):
        dims = ["batch", *shape[1:]] if dynamic else list(shape)
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    graph_in = [value_info(n, s) for n, s in shapes]
    outputs = [(g.current[b], g.shapes[g.current[b]]) for b in net.outputs]
    graph_out = [value_info(n, s) for n, s in outputs]
    graph = helper.make_graph(g.nodes, caffe.net.name or "caffe", graph_in, graph_out, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="modelport")
    return model, outputs


def lower(caffe, specs: tuple[TensorSpec, ...] = (), *, dynamic_batch: bool = True,
          opset: int = DEFAULT_OPSET) -> LoweredGraph:
    """The ONNX model of a parsed Caffe net (:func:`modelport.formats.caffe_format.load`).

    The batch dim stays dynamic unless ``dynamic_batch`` is off or a layer bakes it into a
    constant (a Reshape or Flatten over it, a Concat/Slice along it, a Permute that moves it).
    """
    net = caffe_format.network(caffe)
    _check(caffe, net)
    shapes = _input_shapes(net, specs, caffe.prototxt)
    try:
        model, outputs = _build(caffe, net, shapes, dynamic_batch, opset)
        return LoweredGraph(tuple(shapes), tuple(outputs), model, dynamic_batch, net.dropped)
    except _StaticBatch as why:
        model, outputs = _build(caffe, net, shapes, False, opset)
        return LoweredGraph(tuple(shapes), tuple(outputs), model, False, net.dropped, str(why))


@register("caffe", "onnx", "modelport caffe lowering")
def caffe_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    import google.protobuf
    import onnx

    opset = options.opset or DEFAULT_OPSET
    if opset < MIN_OPSET:
        raise UnsupportedError(f"the Caffe lowering needs ONNX opset >= {MIN_OPSET} (asked for {opset})", path=src)
    caffe = caffe_format.load(src, options.weights)
    graph = lower(caffe, options.inputs, dynamic_batch=options.dynamic_batch, opset=opset)
    try:
        onnx.checker.check_model(graph.model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise BadInputError(f"the lowered network is not valid ONNX: {str(exc).splitlines()[0][:200]}",
                            path=src) from None
    onnx.save(graph.model, out)
    warnings = [f"left out training-only layers: {', '.join(graph.dropped)}"] if graph.dropped else []
    if options.dynamic_batch and not graph.dynamic_batch:
        warnings.append(f"the batch dim is static: layer {graph.static_reason}")
    return ConverterResult(
        tool="modelport caffe lowering",
        versions=(("protobuf", google.protobuf.__version__), ("onnx", onnx.__version__)),
        detail=f"opset {opset}; {len(caffe_format.network(caffe).layers)} layers; weights {caffe.caffemodel}",
        warnings=tuple(warnings),
    )
