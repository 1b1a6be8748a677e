"""Convolutions and pooling.

Conv / ConvTranspose with constant weights become ``nn.ConvNd`` / ``nn.ConvTransposeNd``.
Padding that torch cannot express in the layer (asymmetric, ``auto_pad=SAME_*``) is applied
with ``F.pad`` first; SAME pads are computed from the runtime input size.
"""

from __future__ import annotations

from modelport.to_torch import naming
from modelport.to_torch.codegen import Node, lit
from modelport.to_torch.ops.tensor import _dtype_kw
from modelport.to_torch.registry import register


def _compact(vals: list[int]) -> str:
    return str(vals[0]) if len(set(vals)) == 1 else lit(tuple(vals))


def _kw(**kw) -> str:
    return "".join(f", {k}={v}" for k, v in kw.items() if v is not None)


def _spatial(n: Node, k: int, kernel: list[int]) -> tuple[list[int], list[int], list[int], str]:
    strides = n.attr("strides") or [1] * k
    dil = n.attr("dilations") or [1] * k
    pads = n.attr("pads") or [0] * (2 * k)
    auto = n.attr("auto_pad", "NOTSET")
    if auto == "VALID":
        pads = [0] * (2 * k)
    return strides, dil, pads, auto


def _pre_pad(n: Node, x: str, k: int, kernel, strides, dil, pads, auto, value: str = "") -> tuple[str, list[int]]:
    """Applies pads torch layers cannot take; returns (input source, symmetric padding)."""
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if all(s == 1 for s in strides) and all((kk - 1) * d % 2 == 0 for kk, d in zip(kernel, dil)):
            return x, [(kk - 1) * d // 2 for kk, d in zip(kernel, dil)]
        t = n.tmp("padded")
        n.emit(f"{t} = F.pad({x}, {n.helper('_same_pads')}({x}.shape[2:], {lit(kernel)}, "
               f"{lit(strides)}, {lit(dil)}, {auto == 'SAME_UPPER'}){value})")
        return t, [0] * k
    if pads[:k] == pads[k:]:
        return x, pads[:k]
    tp: list[int] = []
    for i in reversed(range(k)):
        tp += [pads[i], pads[i + k]]
    t = n.tmp("padded")
    n.emit(f"{t} = F.pad({x}, {lit(tp)}{value})")
    return t, [0] * k


@register("Conv", since=1)
def conv_1(n: Node) -> None:
    w = n.const(1)
    wshape = n.shape(1)
    if wshape is None:
        raise n.fail("Conv weight rank unknown")
    k = len(wshape) - 2
    if k not in (1, 2, 3):
        raise n.fail(f"Conv{k}d has no torch equivalent")
    kernel = n.attr("kernel_shape") or list(wshape[2:])
    strides, dil, pads, auto = _spatial(n, k, kernel)
    group = n.attr("group", 1)
    x, padding = _pre_pad(n, n.x(0), k, kernel, strides, dil, pads, auto)
    b = n.const(2)
    if w is not None and (b is not None or not n.has(2)) and w.dtype.kind == "f":
        name = naming.identifier(n.initializer_name(1).removesuffix(".weight"), short=False)
        params = {"weight": w}
        if b is not None:
            params["bias"] = b
        ctor = (f"nn.Conv{k}d({w.shape[1] * group}, {w.shape[0]}, kernel_size={_compact(kernel)}"
                + _kw(stride=_compact(strides) if set(strides) != {1} else None,
                      padding=_compact(padding) if set(padding) != {0} else None,
                      dilation=_compact(dil) if set(dil) != {1} else None,
                      groups=group if group != 1 else None,
                      bias=None if b is not None else "False") + _dtype_kw(w) + ")")
        n.assign(f"{n.layer(name, ctor, params)}({x})")
        return
    n.assign(f"F.conv{k}d({x}, {n.x(1)}, {n.x(2) or 'None'}, stride={lit(strides)}, "
             f"padding={lit(padding)}, dilation={lit(dil)}, groups={group})")


@register("ConvTranspose", since=1)
def convtranspose_1(n: Node) -> None:
    wshape = n.shape(1)
    if wshape is None:
        raise n.fail("ConvTranspose weight rank unknown")
    k = len(wshape) - 2
    kernel = n.attr("kernel_shape") or list(wshape[2:])
    strides = n.attr("strides") or [1] * k
    dil = n.attr("dilations") or [1] * k
    group = n.attr("group", 1)
    outpad = n.attr("output_padding") or [0] * k
    pads = n.attr("pads") or [0] * (2 * k)
    auto = n.attr("auto_pad", "NOTSET")
    out_shape = n.attr("output_shape")
    if out_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        in_sp = (n.shape(0) or [None] * (k + 2))[2:]
        if any(not isinstance(d, int) or not d for d in in_sp):
            raise n.fail("ConvTranspose output_shape/auto_pad needs static spatial sizes")
        target = out_shape[-k:] if out_shape is not None else [d * s for d, s in zip(in_sp, strides)]
        pads = [0] * (2 * k)
        for i in range(k):
            total = strides[i] * (in_sp[i] - 1) + outpad[i] + (kernel[i] - 1) * dil[i] + 1 - target[i]
            if total < 0:
                outpad[i] -= total
                total = 0
            small, big = total // 2, total - total // 2
            pads[i], pads[i + k] = (small, big) if auto != "SAME_LOWER" else (big, small)
            if out_shape is not None and auto == "NOTSET":
                pads[i], pads[i + k] = small, big
    sym = pads[:k] == pads[k:]
    padding = pads[:k] if sym else [0] * k
    w, b = n.const(1), n.const(2)
    x = n.x(0)
    if w is not None and (b is not None or not n.has(2)) and w.dtype.kind == "f":
        name = naming.identifier(n.initializer_name(1).removesuffix(".weight"), short=False)
        params = {"weight": w}
        if b is not None:
            params["bias"] = b
        ctor = (f"nn.ConvTranspose{k}d({w.shape[0]}, {w.shape[1] * group}, kernel_size={_compact(kernel)}"
                + _kw(stride=_compact(strides) if set(strides) != {1} else None,
                      padding=_compact(padding) if set(padding) != {0} else None,
                      output_padding=_compact(outpad) if set(outpad) != {0} else None,
                      groups=group if group != 1 else None,
                      dilation=_compact(dil) if set(dil) != {1} else None,
                      bias=None if b is not None else "False") + _dtype_kw(w) + ")")
        expr = f"{n.layer(name, ctor, params)}({x})"
    else:
        expr = (f"F.conv_transpose{k}d({x}, {n.x(1)}, {n.x(2) or 'None'}, stride={lit(strides)}, "
                f"padding={lit(padding)}, output_padding={lit(outpad)}, groups={group}, dilation={lit(dil)})")
    if sym:
        n.assign(expr)
        return
    t = n.tmp("full")
    n.emit(f"{t} = {expr}")
    idx = ", ".join(f"{pads[i]}:{t}.shape[{i + 2}] - {pads[i + k]}" for i in range(k))
    n.assign(f"{t}[:, :, {idx}]")


def _pool(n: Node, kind: str) -> None:
    kernel = n.attr("kernel_shape")
    k = len(kernel)
    strides, dil, pads, auto = _spatial(n, k, kernel)
    ceil = n.attr("ceil_mode", 0)
    x = n.x(0)
    simple = (auto in ("NOTSET", "VALID") and pads[:k] == pads[k:]
              and all(p <= kk // 2 for p, kk in zip(pads, kernel)) and k <= 3)
    if kind == "max":
        if n.has_out(1):
            if not simple:
                raise n.fail("MaxPool indices with asymmetric padding")
            n.assign_many(f"{n.helper('_max_pool_with_indices')}({x}, {lit(kernel)}, {lit(strides)}, "
                          f"{lit(pads[:k])}, {lit(dil)}, {bool(ceil)}, {n.attr('storage_order', 0)})", [0, 1])
            return
        if simple:
            n.assign(f"F.max_pool{k}d({x}, {_compact(kernel)}"
                     + _kw(stride=_compact(strides), padding=_compact(pads[:k]) if any(pads) else None,
                           dilation=_compact(dil) if set(dil) != {1} else None,
                           ceil_mode="True" if ceil else None) + ")")
            return
    cip = n.attr("count_include_pad", 0)
    if kind == "avg" and simple and set(dil) == {1} and not ceil:
        n.assign(f"F.avg_pool{k}d({x}, {_compact(kernel)}"
                 + _kw(stride=_compact(strides), padding=_compact(pads[:k]) if any(pads) else None,
                       count_include_pad="False" if not cip and any(pads) else None) + ")")
        return
    same = "None" if auto not in ("SAME_UPPER", "SAME_LOWER") else repr(auto == "SAME_UPPER")
    extra = f", {cip}" if kind == "avg" else (f", {n.attr('p', 2)}" if kind == "lp" else "")
    n.assign(f"{n.helper('_' + kind + '_pool')}({x}, {lit(kernel)}, {lit(strides)}, {lit(pads)}, "
             f"{lit(dil)}, {bool(ceil)}, {same}{extra})")


@register("MaxPool", since=1)
def maxpool_1(n: Node) -> None:
    _pool(n, "max")


@register("AveragePool", since=1)
def averagepool_1(n: Node) -> None:
    _pool(n, "avg")


@register("LpPool", since=2)
def lppool_2(n: Node) -> None:
    _pool(n, "lp")


@register("GlobalAveragePool", since=1)
def globalaveragepool_1(n: Node) -> None:
    x, r = n.x(0), n.rank(0)
    dims = lit(tuple(range(2, r))) if r else f"tuple(range(2, {x}.dim()))"
    n.assign(f"{x}.mean(dim={dims}, keepdim=True)")


@register("GlobalMaxPool", since=1)
def globalmaxpool_1(n: Node) -> None:
    x, r = n.x(0), n.rank(0)
    dims = lit(tuple(range(2, r))) if r else f"tuple(range(2, {x}.dim()))"
    n.assign(f"{x}.amax(dim={dims}, keepdim=True)")


@register("GlobalLpPool", since=2)
def globallppool_2(n: Node) -> None:
    x, r, p = n.x(0), n.rank(0), n.attr("p", 2)
    dims = lit(tuple(range(2, r))) if r else f"tuple(range(2, {x}.dim()))"
    n.assign(f"torch.linalg.vector_norm({x}, ord={p}, dim={dims}, keepdim=True)")
