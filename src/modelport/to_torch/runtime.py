"""The torch functions a generated model.py may need, as real code.

When an op converter needs one, codegen copies the function's source text (``HELPERS``) into
model.py, which imports only ``torch``, ``F`` (torch.nn.functional) and ``math``. So a function
here may use only those three names and the other functions of this module (called by name;
codegen copies those too), never modelport or another package.

This module imports torch: codegen imports it on the first helper a model needs, so that
``import modelport`` stays free of torch.
"""

import inspect
import math

import torch
import torch.nn.functional as F


def _div(a, b):
    """ONNX Div: truncating for integers, true division for floats."""
    if isinstance(a, torch.Tensor) and not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _cast_f8_saturate(x, dtype):
    """Cast to float8, clamping to the type's finite range (ONNX saturate=1)."""
    big = torch.finfo(dtype).max
    return x.to(torch.float32).clamp(-big, big).to(dtype)


def _reshape(x, shape, allowzero=0):
    """ONNX Reshape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    shape = [int(d) for d in shape]
    if not allowzero:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _expand(x, shape):
    """ONNX Expand: bidirectional broadcast of x to shape."""
    return x.expand(torch.broadcast_shapes(x.shape, tuple(int(d) for d in shape)))


def _slice(x, starts, ends, axes=None, steps=None):
    """ONNX Slice with any signs of starts, ends and steps."""
    axes = list(range(len(starts))) if axes is None else [int(a) % x.dim() for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    for s, e, a, st in zip(starts, ends, axes, steps):
        n, s, e, st = x.shape[a], int(s), int(e), int(st)
        if st > 0:
            s = min(max(s + n if s < 0 else s, 0), n)
            e = min(max(e + n if e < 0 else e, 0), n)
            x = x.narrow(a, s, max(e - s, 0))[(slice(None),) * a + (slice(None, None, st),)]
        else:
            s = min(max(s + n if s < 0 else s, -1), n - 1)
            e = min(max(e + n if e < 0 else e, -1), n - 1)
            if s <= e:
                x = x.narrow(a, 0, 0)
            else:
                x = x.narrow(a, e + 1, s - e).flip(a)[(slice(None),) * a + (slice(None, None, -st),)]
    return x


def _same_pads(sizes, kernel, strides, dilations, upper):
    """ONNX auto_pad SAME_UPPER / SAME_LOWER: F.pad-order pads for the spatial dims."""
    pads = []
    for n, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        pads.append((small, big) if upper else (big, small))
    return [p for pair in reversed(pads) for p in pair]


def _unsqueeze(x, axes):
    """ONNX Unsqueeze with axes that may be negative (relative to the output rank)."""
    r = x.dim() + len(axes)
    for a in sorted(int(a) % r for a in axes):
        x = x.unsqueeze(a)
    return x


def _gather_nd(data, indices, batch_dims=0):
    """ONNX GatherND."""
    b = data.shape[:batch_dims]
    nb = math.prod(b)
    d = data.reshape((nb,) + tuple(data.shape[batch_dims:]))
    idx = indices.reshape((nb, -1, indices.shape[-1])).long()
    k = idx.shape[-1]
    idx = torch.where(idx < 0, idx + torch.tensor(d.shape[1:k + 1]), idx)
    batch = torch.arange(nb).reshape(nb, 1).expand(nb, idx.shape[1])
    out = d[(batch,) + tuple(idx[..., i] for i in range(k))]
    return out.reshape(tuple(indices.shape[:-1]) + tuple(data.shape[batch_dims + k:]))


def _scatter_nd(data, indices, updates, reduction="none"):
    """ONNX ScatterND."""
    out = data.clone()
    idx = tuple(indices.long()[..., i] for i in range(indices.shape[-1]))
    if reduction == "none":
        out[idx] = updates
    elif reduction == "add":
        out.index_put_(idx, updates, accumulate=True)
    else:
        flat = indices.long().reshape(-1, indices.shape[-1])
        upd = updates.reshape((flat.shape[0],) + tuple(updates.shape[indices.dim() - 1:]))
        for i in range(flat.shape[0]):
            key = tuple(flat[i].tolist())
            if reduction == "mul":
                out[key] = out[key] * upd[i]
            elif reduction == "max":
                out[key] = torch.maximum(out[key], upd[i])
            else:
                out[key] = torch.minimum(out[key], upd[i])
    return out


def _pad(x, pads, mode="constant", value=0.0, axes=None):
    """ONNX Pad: pads = [begin_0, ..., begin_n, end_0, ..., end_n] over axes."""
    pads = [int(p) for p in pads]
    r = x.dim()
    axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
    k = len(axes)
    full = [0] * (2 * r)
    for i, a in enumerate(axes):
        full[a], full[a + r] = pads[i], pads[i + k]
    if mode == "constant":
        tp = []
        for a in reversed(range(r)):
            tp += [full[a], full[a + r]]
        return F.pad(x, tp, value=value)
    for a in range(r):
        b, e = full[a], full[a + r]
        if b == 0 and e == 0:
            continue
        n = x.shape[a]
        if mode == "edge":
            idx = torch.arange(-b, n + e).clamp(0, n - 1)
        elif mode == "reflect":
            idx = torch.arange(-b, n + e).abs()
            idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx)
        else:
            idx = torch.arange(-b, n + e) % n
        x = x.index_select(a, idx)
    return x


def _cumsum(x, axis, exclusive=0, reverse=0):
    """ONNX CumSum."""
    axis = int(axis)
    if reverse:
        x = x.flip(axis)
    y = torch.cumsum(x, axis, dtype=x.dtype)
    if exclusive:
        y = y - x
    return y.flip(axis) if reverse else y


def _cumprod(x, axis, exclusive=0, reverse=0):
    """ONNX CumProd."""
    axis = int(axis)
    if reverse:
        x = x.flip(axis)
    if exclusive:
        x = torch.cat([torch.ones_like(x.narrow(axis, 0, 1)), x.narrow(axis, 0, x.shape[axis] - 1)], axis)
    y = torch.cumprod(x, axis, dtype=x.dtype)
    return y.flip(axis) if reverse else y


def _onehot(indices, depth, values, axis=-1):
    """ONNX OneHot."""
    depth = int(depth)
    idx = indices.long()
    idx = torch.where(idx < 0, idx + depth, idx)
    valid = (idx >= 0) & (idx < depth)
    hot = F.one_hot(torch.where(valid, idx, 0), depth) * valid.unsqueeze(-1)
    out = torch.where(hot.bool(), values[1], values[0])
    return out.movedim(-1, axis % out.dim())


def _reverse_sequence(x, lens, batch_axis=1, time_axis=0):
    """ONNX ReverseSequence."""
    out = x.clone()
    for b, n in enumerate(lens.tolist()):
        src = x.select(batch_axis, b)
        t = time_axis if time_axis < batch_axis else time_axis - 1
        dst = out.select(batch_axis, b)
        dst.narrow(t, 0, n).copy_(src.narrow(t, 0, n).flip(t))
    return out


def _unique(x, axis=None, sorted_=1):
    """ONNX Unique: values, first-occurrence indices, inverse indices, counts."""
    if axis is None:
        flat = x.reshape(-1)
        vals, inv, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)
        first = torch.full((vals.shape[0],), flat.shape[0], dtype=torch.int64)
        first = first.scatter_reduce(0, inv, torch.arange(flat.shape[0]), "amin")
    else:
        vals, inv, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True, dim=axis)
        n = x.shape[axis]
        first = torch.full((vals.shape[axis],), n, dtype=torch.int64)
        first = first.scatter_reduce(0, inv, torch.arange(n), "amin")
    if not sorted_:
        order = torch.argsort(first)
        remap = torch.argsort(order)
        vals = vals.index_select(0 if axis is None else axis, order)
        first, counts, inv = first[order], counts[order], remap[inv]
    return vals, first, inv.reshape(-1), counts


def _reduce_prod(x, dims, keepdim):
    """Product over several dims (torch.prod takes one)."""
    dims = [dims] if isinstance(dims, int) else sorted((d % max(x.dim(), 1) for d in dims), reverse=True)
    for d in dims:
        x = torch.prod(x, dim=d, keepdim=True, dtype=x.dtype)
    if not keepdim:
        for d in dims:
            x = x.squeeze(d)
    return x


def _pool_pads(x, kernel, strides, pads, dilations, ceil_mode, same):
    """F.pad-order pads for a pooling window, with ceil_mode turned into extra end padding."""
    k = len(kernel)
    sizes = x.shape[2:]
    if same is not None:
        tp = _same_pads(sizes, kernel, strides, dilations, same)
        begin = [tp[2 * (k - 1 - i)] for i in range(k)]
        end = [tp[2 * (k - 1 - i) + 1] for i in range(k)]
    else:
        begin, end = list(pads[:k]), list(pads[k:])
    extra = []
    for i in range(k):
        span = (kernel[i] - 1) * dilations[i] + 1
        total = sizes[i] + begin[i] + end[i]
        if ceil_mode:
            out = -(-(total - span) // strides[i]) + 1
            if (out - 1) * strides[i] >= sizes[i] + begin[i]:
                out -= 1
        else:
            out = (total - span) // strides[i] + 1
        extra.append(max((out - 1) * strides[i] + span - total, 0))
    tp = []
    for i in reversed(range(k)):
        tp += [begin[i], end[i] + extra[i]]
    inner = []
    for i in reversed(range(k)):
        inner += [0, extra[i]]
    return tp, inner


def _max_pool(x, kernel, strides, pads, dilations, ceil_mode, same):
    """ONNX MaxPool with any padding."""
    tp, _ = _pool_pads(x, kernel, strides, pads, dilations, ceil_mode, same)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(kernel) - 1]
    lowest = -math.inf if x.is_floating_point() else torch.iinfo(x.dtype).min
    xp = F.pad(x.to(torch.float64) if not x.is_floating_point() else x, tp, value=lowest)
    return fn(xp, kernel, strides, 0, dilations).to(x.dtype)


def _window_sum(x, kernel, strides, dilations):
    """Sum of each pooling window, per channel (a depthwise conv with all-ones weights)."""
    c = x.shape[1]
    k = len(kernel)
    w = torch.ones((c, 1) + tuple(kernel), dtype=x.dtype)
    fn = (F.conv1d, F.conv2d, F.conv3d)[k - 1]
    return fn(x, w, None, strides, 0, dilations, c)


def _avg_pool(x, kernel, strides, pads, dilations, ceil_mode, same, count_include_pad):
    """ONNX AveragePool with any padding: window sums divided by window counts."""
    tp, inner = _pool_pads(x, kernel, strides, pads, dilations, ceil_mode, same)
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
    if count_include_pad:
        mask = F.pad(F.pad(ones, [p - q for p, q in zip(tp, inner)], value=1.0), inner)
    else:
        mask = F.pad(ones, tp)
    s = _window_sum(F.pad(x, tp), kernel, strides, dilations)
    cnt = _window_sum(mask, kernel, strides, dilations)
    return s / cnt


def _lp_pool(x, kernel, strides, pads, dilations, ceil_mode, same, p):
    """ONNX LpPool."""
    tp, _ = _pool_pads(x, kernel, strides, pads, dilations, ceil_mode, same)
    s = _window_sum(F.pad(x.abs() ** p, tp), kernel, strides, dilations)
    return s ** (1.0 / p)


def _max_pool_with_indices(x, kernel, strides, pads, dilations, ceil_mode, storage_order):
    """ONNX MaxPool with its Indices output (flat offsets into the whole input)."""
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(kernel) - 1]
    y, idx = fn(x, kernel, strides, pads, dilations, ceil_mode, True)
    spatial = x.shape[2:]
    if storage_order and len(spatial) == 2:
        h, w = idx // spatial[1], idx % spatial[1]
        idx = w * spatial[0] + h
    plane = math.prod(spatial)
    base = torch.arange(x.shape[0] * x.shape[1]).reshape((x.shape[0], x.shape[1]) + (1,) * len(spatial))
    return y, idx + base * plane


def _layer_norm(x, scale, bias, axis, eps):
    """ONNX LayerNormalization: (y, mean, inv_std_dev), statistics in float32."""
    dims = tuple(range(axis % x.dim(), x.dim()))
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = xf.mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(((xf - mean) ** 2).mean(dim=dims, keepdim=True) + eps)
    y = ((xf - mean) * inv).to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv


def _rms_norm(x, scale, axis, eps):
    """ONNX RMSNormalization."""
    dims = tuple(range(axis % x.dim(), x.dim()))
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = xf * torch.rsqrt((xf * xf).mean(dim=dims, keepdim=True) + eps)
    return y.to(x.dtype) * scale


def _nll_loss(x, target, weight=None, reduction="mean", ignore_index=None):
    """ONNX NegativeLogLikelihoodLoss over (N, C, d1, ...) inputs."""
    t = target.long()
    valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    safe = torch.where(valid, t, 0)
    w = valid.to(x.dtype)
    if weight is not None:
        w = weight[safe] * w
    loss = -torch.gather(x, 1, safe.unsqueeze(1)).squeeze(1) * w
    if reduction == "mean":
        return loss.sum() / w.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


def _resize_matrix(n_in, n_out, scale, mode, ctm, a, exclude, nearest, antialias, roi):
    """(n_out, n_in) interpolation weights for one axis, and which outputs extrapolate."""
    o = torch.arange(n_out, dtype=torch.float64)
    if ctm == "half_pixel":
        c = (o + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        adj = n_out / (scale * n_in)
        c = n_in / 2 * (1 - adj) + (o + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        c = (o + 0.5) / scale - 0.5 if n_out > 1 else torch.zeros_like(o)
    elif ctm == "align_corners":
        c = o * (n_in - 1) / (n_out - 1) if n_out > 1 else torch.zeros_like(o)
    elif ctm == "asymmetric":
        c = o / scale
    else:
        s, e = roi
        c = (s * (n_in - 1) + o * (e - s) * (n_in - 1) / (n_out - 1) if n_out > 1
             else torch.full_like(o, 0.5 * (s + e) * (n_in - 1)))
    outside = (c < 0) | (c > n_in - 1)
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    if mode == "nearest":
        if nearest == "round_prefer_floor":
            i = torch.ceil(c - 0.5)
        elif nearest == "round_prefer_ceil":
            i = torch.floor(c + 0.5)
        elif nearest == "floor":
            i = torch.floor(c)
        else:
            i = torch.ceil(c)
        i = i.clamp(0, n_in - 1).long()
        w[torch.arange(n_out), i] = 1.0
        return w, outside
    s = min(scale, 1.0) if antialias else 1.0
    support = (2.0 if mode == "cubic" else 1.0) / s
    base = torch.floor(c)
    for j in range(-int(math.ceil(support)), int(math.ceil(support)) + 2):
        idx = base + j
        t = ((idx - c) * s).abs()
        if mode == "cubic":
            k = torch.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                            torch.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))
        else:
            k = (1 - t).clamp(min=0)
        if exclude:
            k = torch.where((idx < 0) | (idx > n_in - 1), 0.0, k)
        w.index_put_((torch.arange(n_out), idx.clamp(0, n_in - 1).long()), k, accumulate=True)
    return w / w.sum(1, keepdim=True), outside


def _resize(x, roi, scales, sizes, mode="nearest", ctm="half_pixel", a=-0.75, exclude=0,
            extrapolation=0.0, nearest="round_prefer_floor", antialias=0, axes=None,
            policy="stretch"):
    """ONNX Resize / Upsample: one interpolation matrix per resized axis."""
    r = x.dim()
    axes = list(range(r)) if axes is None else [int(ax) % r for ax in axes]
    n_in = [x.shape[ax] for ax in axes]
    if sizes is not None and len(sizes) > 0:
        sizes = [int(v) for v in sizes]
        scl = [v / n for v, n in zip(sizes, n_in)]
        if policy != "stretch":
            f = min(scl) if policy == "not_larger" else max(scl)
            sizes = [int(math.floor(n * f + 0.5)) for n in n_in]
            scl = [f] * len(axes)
    else:
        scl = [float(v) for v in scales]
        sizes = [int(math.floor(n * v)) for n, v in zip(n_in, scl)]
    dtype = x.dtype
    y = x.to(torch.float64)
    for i, ax in enumerate(axes):
        if ctm != "tf_crop_and_resize" and sizes[i] == n_in[i] and scl[i] == 1.0:
            continue
        box = (roi[i], roi[i + len(axes)]) if roi is not None and len(roi) else (0.0, 1.0)
        w, outside = _resize_matrix(n_in[i], sizes[i], scl[i], mode, ctm, a, exclude, nearest,
                                    antialias, box)
        y = torch.tensordot(y.movedim(ax, -1), w.T, dims=1).movedim(-1, ax)
        if ctm == "tf_crop_and_resize":
            shape = [1] * r
            shape[ax] = sizes[i]
            y = torch.where(outside.reshape(shape), extrapolation, y)
    if not dtype.is_floating_point:
        y = y.round().clamp(torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    return y.to(dtype)


def _q_param(p, x, axis, block):
    """Broadcasts a per-axis or blocked quantization parameter against x."""
    if p.dim() == 0 or p.numel() == 1 and block == 0:
        return p.reshape(())
    axis = axis % x.dim()
    if block:
        return p.repeat_interleave(block, axis).narrow(axis, 0, x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def _quantize(x, scale, zero_point, dtype, axis=1, block=0):
    """ONNX QuantizeLinear: saturate(round(x / scale) + zero_point)."""
    s = _q_param(scale, x, axis, block)
    if dtype.is_floating_point:
        big = torch.finfo(dtype).max
        return (x.to(torch.float32) / s.to(torch.float32)).clamp(-big, big).to(dtype)
    # divide in float32 for float inputs up to float32, as ONNX does: in float64 a quotient just
    # above a tie (0.25 / 0.02 = 12.50000028) rounds up where ONNX rounds it to even (12)
    wide = torch.float32 if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
    y = torch.round(x.to(wide) / s.to(wide)).to(torch.float64)
    if zero_point is not None:
        y = y + _q_param(zero_point, x, axis, block).to(torch.float64)
    info = torch.iinfo(dtype)
    return y.clamp(info.min, info.max).to(dtype)


def _dequantize(x, scale, zero_point=None, axis=1, block=0, dtype=None):
    """ONNX DequantizeLinear: (x - zero_point) * scale."""
    s = _q_param(scale, x, axis, block)
    y = x.to(torch.float64 if dtype is None else dtype)
    if zero_point is not None and not x.dtype.is_floating_point:
        y = y - _q_param(zero_point, x, axis, block).to(y.dtype)
    return (y * s.to(y.dtype)).to(scale.dtype if dtype is None else dtype)


def _dynamic_quantize(x):
    """ONNX DynamicQuantizeLinear: uint8 y, its scale and zero point."""
    hi = torch.clamp(x.max(), min=0)
    lo = torch.clamp(x.min(), max=0)
    scale = (hi - lo) / 255
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    y = torch.clamp(torch.round(x / scale) + zp, 0, 255)
    return y.to(torch.uint8), scale, zp.to(torch.uint8)


def _row_zp(zp):
    """MatMulInteger's A zero point as float64: a 1-D (per-row) one becomes a column."""
    zp = zp.double()
    return zp.unsqueeze(-1) if zp.dim() == 1 else zp


def _channel_zp(zp, rank):
    """ConvInteger's W zero point as float64: a 1-D (per output channel) one shaped to broadcast
    over a weight of rank ``rank``."""
    zp = zp.double()
    return zp.reshape((-1,) + (1,) * (rank - 1)) if zp.dim() == 1 else zp


def _seq_insert(seq, t, pos):
    """A new list: seq with t inserted at pos (ONNX SequenceInsert); seq is unchanged."""
    out = list(seq)
    out.insert(pos, t)
    return out


def _seq_erase(seq, pos):
    """A new list: seq without the item at pos (ONNX SequenceErase); seq is unchanged."""
    out = list(seq)
    out.pop(pos)
    return out


def _attention(q, k, v, mask=None, past_k=None, past_v=None, nonpad=None, is_causal=0,
               q_heads=None, kv_heads=None, scale=None, softcap=0.0, qk_mode=0,
               softmax_dtype=None):
    """ONNX Attention (opset 23): (y, present_key, present_value, qk_matmul_output)."""
    three_d = q.dim() == 3
    b = q.shape[0]
    if three_d:
        q = q.reshape(b, q.shape[1], q_heads, -1).transpose(1, 2)
        k = k.reshape(b, k.shape[1], kv_heads, -1).transpose(1, 2)
        v = v.reshape(b, v.shape[1], kv_heads, -1).transpose(1, 2)
    s = math.sqrt(scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if past_k is not None:
        k = torch.cat([past_k, k], 2)
        v = torch.cat([past_v, v], 2)
    present_k, present_v = k, v
    ql, kl = q.shape[2], k.shape[2]
    bias = torch.zeros(ql, kl, dtype=q.dtype)
    if mask is not None:
        pad = kl - mask.shape[-1]
        if pad > 0:
            mask = F.pad(mask, [0, pad], value=False if mask.dtype == torch.bool else -math.inf)
        if mask.dtype == torch.bool:
            mask = torch.where(mask, 0.0, -math.inf).to(q.dtype)
        bias = bias + mask
    if is_causal:
        if past_k is None and nonpad is not None:
            offset = (nonpad.reshape(-1) - ql).reshape(-1, 1, 1, 1)
        else:
            offset = past_k.shape[2] if past_k is not None else 0
        i = torch.arange(ql).reshape(-1, 1)
        j = torch.arange(kl).reshape(1, -1)
        bias = torch.where(j <= i + offset, bias, -math.inf)
    if nonpad is not None:
        keep = torch.arange(kl).reshape(1, -1) < nonpad.reshape(-1, 1)
        bias = bias + torch.where(keep, 0.0, -math.inf).to(q.dtype).reshape(b, 1, 1, kl)
    if q.shape[1] != k.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    qk = (q * s) @ (k * s).transpose(-1, -2)
    if softcap > 0:
        qk = softcap * torch.tanh(qk / softcap)
    with_bias = qk + bias
    out_qk = with_bias if qk_mode == 2 else qk
    if softmax_dtype is not None:
        with_bias = with_bias.to(softmax_dtype)
    row_max = with_bias.amax(-1, keepdim=True)
    masked = torch.isneginf(row_max)
    e = torch.exp(with_bias - torch.where(masked, 0.0, row_max))
    tot = e.sum(-1, keepdim=True)
    p = e / torch.where(tot == 0, 1.0, tot)
    p = torch.where(torch.isneginf(bias.amax(-1, keepdim=True)), 0.0, p)
    if qk_mode == 3:
        out_qk = p
    p = p.to(q.dtype)
    y = p @ v
    if three_d:
        y = y.transpose(1, 2).reshape(b, ql, -1)
    return y, present_k, present_v, out_qk.to(q.dtype)


def _rnn(kind, x, w, r, b=None, lens=None, h0=None, c0=None, p=None, hidden=None,
         direction="forward", layout=0, acts=None, clip=None, lbr=0, input_forget=0):
    """ONNX RNN / GRU / LSTM: (Y, Y_h[, Y_c]) with Y as [seq, dirs, batch, hidden]."""
    fns = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}
    if layout:
        x = x.transpose(0, 1)
        h0 = None if h0 is None else h0.transpose(0, 1)
        c0 = None if c0 is None else c0.transpose(0, 1)
    seq, batch = x.shape[0], x.shape[1]
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    hs = r.shape[-1]
    dirs = 2 if direction == "bidirectional" else 1
    ys, yh, yc = [], [], []
    for d in range(dirs):
        f = fns[acts[d * len(acts) // dirs]] if acts else torch.sigmoid
        g = fns[acts[d * len(acts) // dirs + 1]] if acts and len(acts) // dirs > 1 else torch.tanh
        hfn = fns[acts[d * len(acts) // dirs + 2]] if acts and len(acts) // dirs > 2 else torch.tanh
        if kind == "RNN":
            f = fns[acts[d * len(acts) // dirs]] if acts else torch.tanh
        wb = b[d, : gates * hs] if b is not None else 0
        rb = b[d, gates * hs:] if b is not None else 0
        h = h0[d] if h0 is not None else x.new_zeros(batch, hs)
        c = c0[d] if c0 is not None else x.new_zeros(batch, hs)
        out = [None] * seq
        reverse = direction == "reverse" or d == 1
        for step in range(seq):
            t = seq - 1 - step if reverse else step
            xw = x[t] @ w[d].T + wb
            hr = h @ r[d].T + rb
            if kind == "RNN":
                a = xw + hr
                a = a.clamp(-clip, clip) if clip else a
                nh, nc = f(a), c
            elif kind == "GRU":
                xz, xr, xh = xw.chunk(3, -1)
                hz, hr_, hh = hr.chunk(3, -1)
                rb_h = rb[2 * hs:] if b is not None else 0
                z = f(xz + hz if not clip else (xz + hz).clamp(-clip, clip))
                rr = f(xr + hr_ if not clip else (xr + hr_).clamp(-clip, clip))
                if lbr:
                    a = xh + rr * hh
                else:
                    a = xh + (rr * h) @ r[d][2 * hs:].T + rb_h
                a = a.clamp(-clip, clip) if clip else a
                nh, nc = (1 - z) * g(a) + z * h, c
            else:
                a = xw + hr
                a = a.clamp(-clip, clip) if clip else a
                ai, ao, af, ac = a.chunk(4, -1)
                if p is not None:
                    ai = ai + p[d, :hs] * c
                    af = af + p[d, 2 * hs:] * c
                i = f(ai)
                fg = 1 - i if input_forget else f(af)
                nc = fg * c + i * g(ac)
                if p is not None:
                    ao = ao + p[d, hs: 2 * hs] * nc
                nh = f(ao) * hfn(nc)
            if lens is not None:
                live = (t < lens).reshape(-1, 1)
                nh, nc = torch.where(live, nh, h), torch.where(live, nc, c)
                out[t] = torch.where(live, nh, torch.zeros_like(nh))
            else:
                out[t] = nh
            h, c = nh, nc
        ys.append(torch.stack(out))
        yh.append(h)
        yc.append(c)
    y, y_h, y_c = torch.stack(ys, 1), torch.stack(yh), torch.stack(yc)
    if layout:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return y, y_h, y_c


def _fma32(a, b, c):
    """float32 a * b + c rounded once, as an FMA instruction computes it (a * b is exact in float64)."""
    return (a.double() * b.double() + c.double()).float()


def _ort_poly(x2, coeffs):
    """Horner's rule in float32 FMA steps, as onnxruntime's FMA3 kernels evaluate their polynomials."""
    y = _fma32(x2, torch.tensor(coeffs[0]), torch.tensor(coeffs[1]))
    for k in coeffs[2:]:
        y = _fma32(x2, y, torch.tensor(k))
    return y


def _ort_sigmoid(x):
    """onnxruntime's float32 logistic (MLAS, FMA3 kernel): a rational approximation on [-18, 18]."""
    v = x.float().clamp(-18.0, 18.0)
    x2 = v * v
    p = _ort_poly(x2, [4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                       8.51377133304701e-03, 2.48287947061529e-01])
    q = _ort_poly(x2, [6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
                       1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01])
    return torch.clamp(v * p / q + 0.5, min=0)


def _ort_tanh(x):
    """onnxruntime's float32 tanh (MLAS, FMA3 kernel): a rational approximation on [-9, 9]."""
    v = x.float().clamp(-9.0, 9.0)
    x2 = v * v
    p = _ort_poly(x2, [-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                       5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                       4.89352455891786e-03])
    q = _ort_poly(x2, [1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                       4.89352518554385e-03])
    return v * p / q


def _ort_qparams(x):
    """onnxruntime's dynamic uint8 quantization of a float tensor (GetQuantizationParameter): the range
    [min(x, 0), max(x, 0)] over 255 steps (scale 1 when x is all zeros), zero point rounded half to even."""
    lo = torch.clamp(x.min(), max=0).float()
    hi = torch.clamp(x.max(), min=0).float()
    scale = torch.where(hi == lo, torch.ones_like(hi), (hi - lo) / 255)
    return scale, torch.round(torch.clamp(-lo / scale, 0, 255))


def _ort_dyn_gemm(a, b_centered, b_scale):
    """A float matrix times int8/uint8 weights as onnxruntime's quantized GEMM computes it: A quantized
    to uint8 over all its elements, exact integer products, then float32 acc * (a_scale * b_scale)."""
    s, zp = _ort_qparams(a)
    q = torch.clamp(torch.round(a.float() / s) + zp, 0, 255)
    acc = (q - zp).double() @ b_centered
    return acc.float() * (s * b_scale.float())


def _centered(q, zp=None):
    """Integer weights (or activations) minus their zero point, as float64 (exact)."""
    y = q.double()
    return y if zp is None else y - zp.double()


def _dq_matmul(a, b, b_scale, b_zp=None, bias=None):
    """com.microsoft DynamicQuantizeMatMul: A quantized on the fly (uint8), B per tensor or per column."""
    y = _ort_dyn_gemm(a, _centered(b, b_zp), b_scale)
    return y if bias is None else y + bias


def _mm_int_to_float(a, b, a_scale, b_scale, a_zp=None, b_zp=None, bias=None):
    """com.microsoft MatMulIntegerToFloat: exact integer products times a_scale * b_scale, plus bias."""
    acc = _centered(a, a_zp) @ _centered(b, b_zp)
    y = acc.float() * (a_scale.float() * b_scale.float())
    return y if bias is None else y + bias


def _reverse_rows(x, lens):
    """Each batch column's first lens[b] time steps reversed, the rest as they are (onnxruntime's
    ReverseSequence in its RNN kernels)."""
    seq = x.shape[0]
    cols = []
    for b, n in enumerate(lens):
        n = min(n, seq)
        idx = torch.cat([torch.arange(n - 1, -1, -1), torch.arange(n, seq)]).long()
        cols.append(x[:, b].index_select(0, idx))
    return torch.stack(cols, 1)


def _qlstm(x, w, r, b=None, lens=None, h0=None, c0=None, p=None, w_scale=None, w_zp=None,
           r_scale=None, r_zp=None, direction="forward", acts=None, clip=None, input_forget=0,
           want_y=1, threads=None):
    """com.microsoft DynamicQuantizeLSTM as onnxruntime's CPU kernel computes it: (Y, Y_h, Y_c).

    W [dirs, input, 4*hidden] and R [dirs, hidden, 4*hidden] are int8/uint8 (gates i, o, f, c),
    scales per direction or per gate column, one zero point per direction. Per direction, X's
    live steps are quantized together once and each step's hidden state (per batch part) again,
    each with its own range; gates are computed in float32 with onnxruntime's own sigmoid and tanh
    approximations, so that a rounding step of a later dynamic quantization lands where it does there.
    """
    fns = {"Sigmoid": lambda v: _ort_sigmoid(v), "Tanh": lambda v: _ort_tanh(v), "Relu": torch.relu}
    seq, batch = x.shape[0], x.shape[1]
    hs = r.shape[1]
    dirs = 2 if direction == "bidirectional" else 1
    steps = [seq] * batch if lens is None else [min(int(v), seq) for v in lens.tolist()]
    max_len = max(steps) if steps else 0
    live_len = torch.tensor(steps).reshape(-1, 1)
    # onnxruntime splits the batch across its intra-op threads (when batch > 4, or batch >= 2 with
    # hidden <= 256) and quantizes each part's hidden state on its own. Its default pool has one
    # thread per physical core, as torch's has: ``threads`` defaults to torch's.
    threads = torch.get_num_threads() if threads is None else threads
    split = threads > 1 and (batch > 4 or (batch >= 2 and hs <= 256))
    rows = -(-batch // threads) if split else max(batch, 1)
    ys, yh, yc = [], [], []
    for d in range(dirs):
        names = acts[3 * d: 3 * d + 3] if acts else ["Sigmoid", "Tanh", "Tanh"]
        f, g, hfn = fns[names[0]], fns[names[1]], fns[names[2]]
        reverse = direction == "reverse" or d == 1
        xd = _reverse_rows(x, steps) if reverse else x
        wc = _centered(w[d], w_zp.reshape(dirs, -1)[d, 0] if w_zp is not None else None)
        rc = _centered(r[d], r_zp.reshape(dirs, -1)[d, 0] if r_zp is not None else None)
        ws, rs = w_scale.reshape(dirs, -1)[d], r_scale.reshape(dirs, -1)[d]
        xw = _ort_dyn_gemm(xd[:max_len].reshape(-1, xd.shape[2]), wc, ws).reshape(max_len, batch, 4 * hs)
        bias = b[d, : 4 * hs] + b[d, 4 * hs:] if b is not None else None
        h = h0[d] if h0 is not None else x.new_zeros(batch, hs)
        c = c0[d] if c0 is not None else x.new_zeros(batch, hs)
        fin_h, fin_c = x.new_zeros(batch, hs), x.new_zeros(batch, hs)
        out = x.new_zeros(seq, batch, hs)
        for t in range(max_len):
            a = torch.cat([xw[t, k: k + rows] + _ort_dyn_gemm(h[k: k + rows], rc, rs)
                           for k in range(0, batch, rows)])
            ai, ao, af, ac = a.chunk(4, -1)
            bi, bo, bf, bc = bias.chunk(4, -1) if bias is not None else (0, 0, 0, 0)
            if p is not None:
                ai = ai + c * p[d, :hs]
            ai = ai + bi
            ai = ai.clamp(-clip, clip) if clip else ai
            i = f(ai)
            if input_forget:
                fg = 1 - i
            else:
                if p is not None:
                    af = af + c * p[d, 2 * hs:]
                af = af + bf
                fg = f(af.clamp(-clip, clip) if clip else af)
            ac = ac + bc
            nc = c * fg + i * g(ac.clamp(-clip, clip) if clip else ac)
            if p is not None:
                ao = ao + nc * p[d, hs: 2 * hs]
            ao = ao + bo
            o = f(ao.clamp(-clip, clip) if clip else ao)
            nh = hfn(nc) * o
            live = t < live_len
            c = torch.where(live, nc, c)
            fin_h, fin_c = torch.where(live, nh, fin_h), torch.where(live, nc, fin_c)
            out[t] = torch.where(live, nh, torch.zeros_like(nh))
            h = out[t] if want_y else torch.where(live, nh, h)
        ys.append(_reverse_rows(out, steps) if reverse else out)
        yh.append(fin_h)
        yc.append(fin_c)
    return torch.stack(ys, 1), torch.stack(yh), torch.stack(yc)


def _q_store(v, zp):
    """float32 values already divided by their scale -> zp's int8/uint8 type: rounded half to even,
    plus the zero point, saturated (MLAS's requantization)."""
    info = torch.iinfo(zp.dtype)
    return torch.clamp(torch.round(v) + zp.float(), info.min, info.max).to(zp.dtype)


def _q_deq(x, scale, zp):
    """onnxruntime's dequantization of a per-tensor int8/uint8 tensor: float32 (x - zp) * scale."""
    return (x.int() - zp.int()).float() * scale.float()


def _qgemm(a, a_s, a_zp, b, b_s, b_zp, c=None, y_s=None, y_zp=None, alpha=1.0, trans_a=0, trans_b=0):
    """com.microsoft QGemm: exact integer products (+ int32 C), times alpha * a_scale * b_scale
    [/ y_scale] in float32; requantized when y_scale is given, else float32."""
    ac = _centered(a, a_zp)
    ac = ac.T if trans_a else ac
    bz = None if b_zp is None else (b_zp.reshape(-1, 1) if trans_b and b_zp.dim() == 1 else b_zp)
    bc = _centered(b, bz)
    bc = bc.T if trans_b else bc
    acc = ac @ bc
    if c is not None:
        acc = acc + c.double()
    scale = torch.tensor(alpha, dtype=torch.float32) * a_s.float() * b_s.float()
    if y_s is None:
        return acc.float() * scale
    return _q_store(acc.float() * (scale / y_s.float()), y_zp)


def _qlinear_binary(a, a_s, a_zp, b, b_s, b_zp, c_s, c_zp, op):
    """com.microsoft QLinearAdd / QLinearMul as MLAS computes them: both sides dequantized in float32,
    added or multiplied, divided by C's scale, requantized."""
    fa, fb = _q_deq(a, a_s, a_zp), _q_deq(b, b_s, b_zp)
    v = fa + fb if op == "Add" else fa * fb
    return _q_store(v / c_s.float(), c_zp)


def _qlinear_lookup(x, x_s, x_zp, y_s, y_zp, op, alpha=0.01):
    """QLinearSigmoid / QLinearLeakyRelu / a requantizing copy: onnxruntime's 256-entry lookup table
    (each code dequantized, mapped in float32, quantized again), then a gather."""
    lo = -128 if x.dtype == torch.int8 else 0
    codes = torch.arange(lo, lo + 256, dtype=torch.int32)
    v = x_s.float() * (codes - x_zp.int()).float()
    if op == "Sigmoid":
        v = _ort_sigmoid(v)
    elif op == "LeakyRelu":
        v = torch.where(v >= 0, v, v * alpha)
    zp = y_zp if y_zp is not None else torch.zeros((), dtype=x.dtype)
    table = _q_store(v / y_s.float(), zp.to(x.dtype))
    return table[x.long() - lo]


def _qlinear_concat(axis, y_s, y_zp, *parts):
    """com.microsoft QLinearConcat: each (x, scale, zero point) requantized to Y's, then concatenated."""
    outs = []
    for i in range(0, len(parts), 3):
        x, s, zp = parts[i], parts[i + 1], parts[i + 2]
        same = bool((s.float() == y_s.float()).all()) and bool((zp.int() == y_zp.int()).all())
        outs.append(x if same else _qlinear_lookup(x, s, zp, y_s, y_zp, "Identity"))
    return torch.cat(outs, axis)


def _qlinear_global_avg(x, x_s, x_zp, y_s, y_zp, channels_last=0):
    """com.microsoft QLinearGlobalAveragePool (MLAS): integer sums over the image minus the zero point,
    times x_scale / (y_scale * image size) in float32, requantized."""
    dims = tuple(range(1, x.dim() - 1)) if channels_last else tuple(range(2, x.dim()))
    size = 1
    for d in dims:
        size *= x.shape[d]
    acc = x.int().sum(dims, keepdim=True) - x_zp.int() * size
    scale = x_s.float() / (y_s.float() * float(size))
    return _q_store(acc.float() * scale, y_zp)


def _qlinear_avg_pool(x, x_s, x_zp, y_s, y_zp, kernel, strides, pads, count_include_pad=0,
                      channels_last=0):
    """com.microsoft QLinearAveragePool as onnxruntime computes it: float32 dequantized values summed
    window by window in row-major order, divided by the count, then round(v / y_scale + y_zp)."""
    if channels_last:
        x = x.movedim(-1, 1)
    k = len(kernel)
    xf = _q_deq(x, x_s, x_zp)
    sizes = list(x.shape[2:])
    outs = [(sizes[i] + pads[i] + pads[i + k] - kernel[i]) // strides[i] + 1 for i in range(k)]
    tp = []
    for i in reversed(range(k)):
        tp += [pads[i], max((outs[i] - 1) * strides[i] + kernel[i] - sizes[i] - pads[i], 0)]
    xp = F.pad(xf, tp)
    acc = torch.zeros(tuple(x.shape[:2]) + tuple(outs), dtype=torch.float32)
    total = 1
    for kk in kernel:
        total *= kk
    for flat in range(total):
        offs, rest = [], flat
        for kk in reversed(kernel):
            offs.insert(0, rest % kk)
            rest //= kk
        win = xp
        for i in range(k):
            win = win.narrow(2 + i, offs[i], (outs[i] - 1) * strides[i] + 1)
        acc = acc + win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]
    if count_include_pad:
        count = torch.full(tuple(outs), float(total))
    else:
        count = torch.ones(tuple(outs))
        for i in range(k):
            start = torch.arange(outs[i]) * strides[i] - pads[i]
            n = torch.clamp(start + kernel[i], max=sizes[i]) - torch.clamp(start, min=0)
            shape = [1] * k
            shape[i] = -1
            count = count * n.float().reshape(shape)
    y = acc / count
    info = torch.iinfo(y_zp.dtype)
    out = torch.clamp(torch.round(y / y_s.float() + y_zp.float()), info.min, info.max).to(y_zp.dtype)
    return out.movedim(1, -1) if channels_last else out


def _ms_attention(x, w, b=None, mask=None, attn_bias=None, heads=1, sizes=None, causal=0,
                  filter_value=-10000.0, scale=None):
    """com.microsoft Attention (what onnxruntime's transformer optimizer writes for BERT): one QKV
    projection, then ``_attention_heads``."""
    qkv = x @ w
    if b is not None:
        qkv = qkv + b
    return _attention_heads(qkv, mask, attn_bias, heads, sizes or (w.shape[1] // 3,) * 3, causal,
                            filter_value, scale)


def _qattention(xq, wq, b, x_s, w_s, mask=None, x_zp=None, w_zp=None, heads=1, causal=0,
                filter_value=-10000.0, scale=None):
    """com.microsoft QAttention (quantize_dynamic's Attention): the QKV projection as exact integer
    products times x_scale * w_scale plus the bias, then the float attention of ``_attention_heads``."""
    qkv = _mm_int_to_float(xq, wq, x_s, w_s, x_zp, w_zp, b)
    return _attention_heads(qkv, mask, None, heads, (wq.shape[1] // 3,) * 3, causal, filter_value, scale)


def _attention_heads(qkv, mask, attn_bias, heads, sizes, causal, filter_value, scale):
    """Per-head scaled dot products plus the mask (masked keys get ``filter_value`` added, not -inf),
    softmax, weighted sum of V. ``mask``: 1-D key end positions [B] (or ends then starts [2B]),
    2-D [B, T] or 3-D [B, S, T] 0/1 masks."""
    q, k, v = qkv.split(list(sizes), -1)
    bsz, seq = qkv.shape[0], qkv.shape[1]
    q = q.reshape(bsz, seq, heads, -1).transpose(1, 2)
    k = k.reshape(bsz, seq, heads, -1).transpose(1, 2)
    v = v.reshape(bsz, seq, heads, -1).transpose(1, 2)
    s = scale if scale else 1.0 / math.sqrt(q.shape[-1])
    logits = (q @ k.transpose(-1, -2)) * s
    add = torch.zeros(bsz, 1, seq, seq, dtype=qkv.dtype)
    j = torch.arange(seq).reshape(1, 1, 1, -1)
    if mask is not None:
        m = mask.long()
        if m.dim() == 1:
            end = m[:bsz].reshape(-1, 1, 1, 1)
            off = (j >= end) | ((j < m[bsz:].reshape(-1, 1, 1, 1)) if m.shape[0] == 2 * bsz else False)
            add = torch.where(off, filter_value, add)
        else:
            keep = (m > 0).reshape(bsz, 1, -1 if m.dim() == 2 else seq, seq)
            add = torch.where(keep, add, filter_value)
    if causal:
        add = add + torch.where(j > torch.arange(seq).reshape(1, 1, -1, 1), filter_value, 0.0)
    logits = logits + add
    if attn_bias is not None:
        logits = logits + attn_bias
    y = torch.softmax(logits, -1) @ v
    return y.transpose(1, 2).reshape(bsz, seq, -1)


def _embed_layer_norm(ids, segments, word, pos, seg, gamma, beta, mask=None, position_ids=None, eps=1e-12):
    """com.microsoft EmbedLayerNormalization: word + position (+ segment) embeddings, layer-normalized;
    the mask index is each row's count of ones in the mask (zeros without a mask)."""
    bsz, seq = ids.shape
    positions = torch.arange(seq).reshape(1, -1) if position_ids is None else position_ids.long()
    e = word[ids.long()] + pos[positions.expand(bsz, seq)]
    if segments is not None and seg is not None:
        e = e + seg[segments.long()]
    y = F.layer_norm(e, e.shape[-1:], gamma, beta, eps)
    if mask is None:
        index = torch.zeros(bsz, dtype=torch.int32)
    else:
        index = (mask == 1).sum(-1).to(torch.int32)
    return y, index, e


def _matmul_nbits(a, b, scales, zp=None, bias=None, k=0, n=0, bits=4, block=32):
    """com.microsoft MatMulNBits: A times blockwise 4/8-bit weights. B [N, blocks, block*bits/8] holds
    the codes low bits first; w = (q - zero point) * scale per block (zero point 2^(bits-1) when absent,
    else packed like the codes)."""
    blocks = b.shape[1]
    per = 8 // bits
    mask = (1 << bits) - 1

    def unpack(packed, count):
        q = packed.to(torch.int32).reshape(n, -1)
        q = torch.stack([(q >> (bits * j)) & mask for j in range(per)], -1)
        return q.reshape(n, -1)[:, :count]

    q = unpack(b, blocks * block)[:, :k]
    z = torch.full((n, blocks), float(1 << (bits - 1))) if zp is None else unpack(zp, blocks).float()
    s = scales.float().reshape(n, blocks)
    w = (q.float() - z.repeat_interleave(block, 1)[:, :k]) * s.repeat_interleave(block, 1)[:, :k]
    y = a @ w.T.to(a.dtype)
    return y if bias is None else y + bias


def _qembed_layer_norm(ids, segments, word, pos, seg, gamma, beta, mask, word_s, pos_s, seg_s, gamma_s, beta_s,
                       word_zp, pos_zp, seg_zp, gamma_zp, beta_zp, eps=1e-12):
    """com.microsoft QEmbedLayerNormalization: the uint8 tables and LayerNorm weights dequantized
    ((q - zero point) * scale), then ``_embed_layer_norm`` (outputs: y, mask index)."""
    seg_f = _q_deq(seg, seg_s, seg_zp) if seg is not None else None
    y, index, _ = _embed_layer_norm(ids, segments, _q_deq(word, word_s, word_zp), _q_deq(pos, pos_s, pos_zp), seg_f,
                                    _q_deq(gamma, gamma_s, gamma_zp), _q_deq(beta, beta_s, beta_zp), mask, None, eps)
    return y, index


#: name -> source text of each function above, in definition order (codegen copies them).
HELPERS: dict[str, str] = {
    name: inspect.getsource(fn)
    for name, fn in list(globals().items())
    if inspect.isfunction(fn) and fn.__module__ == __name__
}
