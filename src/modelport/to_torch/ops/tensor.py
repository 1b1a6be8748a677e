"""Indexing, scatter/gather, padding and other data-movement ops."""

from __future__ import annotations

import numpy as np

from modelport.to_torch import dtypes, naming
from modelport.to_torch.codegen import Node, Value, lit
from modelport.to_torch.registry import register


@register("Gather", since=1)
def gather_1(n: Node) -> None:
    axis = n.attr("axis", 0)
    v, ci = n.val(0), n.const(1)
    if v.kind == "shape" and axis == 0 and ci is not None:
        if ci.ndim == 0:
            i = int(ci)
            n.assign(f"{v.expr}[{i}]", kind="scalar", dtype=v.dtype)
            if v.items is not None and -len(v.items) <= i < len(v.items):
                n.set(0, Value(v.items[i], "scalar", dtype=v.dtype))
                n.g.lines.pop()
        else:
            items = [f"{v.expr}[{int(i)}]" for i in ci.reshape(-1)]
            n.assign("[" + ", ".join(items) + "]", kind="shape", items=items, dtype=v.dtype)
        return
    table = n.const(0)
    if (table is not None and axis == 0 and table.ndim == 2 and table.dtype.kind == "f"
            and n.val(1).kind == "tensor" and n.dtype(1) in (7, 6)):
        name = n.initializer_name(0)
        emb = n.layer(naming.identifier(name.removesuffix(".weight"), short=False),
                      f"nn.Embedding({table.shape[0]}, {table.shape[1]}"
                      f"{_dtype_kw(table)})", {"weight": table})
        n.assign(f"{emb}({n.x(1)})")
        return
    x = n.x(0)
    if ci is not None and ci.ndim == 0:
        n.assign(f"{x}.select({axis}, {int(ci)})")
        return
    idx = n.x(1)
    if n.dtype(1) == 6:
        idx = f"{idx}.long()"
    r = n.rank(0)
    if axis < 0 and r is not None:
        axis += r
    if axis >= 0:
        n.assign(f"{x}[{':, ' * axis}{idx}]")
    else:
        n.assign(f"{x}[(slice(None),) * ({x}.dim() + {axis}) + ({idx},)]")


def _dtype_kw(arr: np.ndarray) -> str:
    t = dtypes.onnx_type(arr)
    return "" if t == 1 else f", dtype={dtypes.torch_dtype(t)}"


def _wrap(n: Node, i: int, x: str, axis: int) -> str:
    idx = n.x(i)
    c = n.const(i)
    if c is not None and (c >= 0).all():
        return idx if n.dtype(i) == 7 else f"{idx}.long()"
    return f"torch.where({idx} < 0, {idx} + {x}.shape[{axis}], {idx}).long()"


@register("GatherElements", since=11)
def gatherelements_11(n: Node) -> None:
    x, axis = n.x(0), n.attr("axis", 0)
    n.assign(f"torch.gather({x}, {axis}, {_wrap(n, 1, x, axis)})")


@register("GatherND", since=11)
def gathernd_11(n: Node) -> None:
    n.assign(f"{n.helper('_gather_nd')}({n.x(0)}, {n.x(1)}, {n.attr('batch_dims', 0)})")


_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@register("ScatterElements", since=11)
def scatterelements_11(n: Node) -> None:
    x, axis = n.x(0), n.attr("axis", 0)
    idx, upd = _wrap(n, 1, x, axis), n.x(2)
    red = n.attr("reduction", "none")
    if red == "none":
        n.assign(f"torch.scatter({x}, {axis}, {idx}, {upd})")
    else:
        n.assign(f'torch.scatter_reduce({x}, {axis}, {idx}, {upd}, "{_REDUCE[red]}")')


@register("Scatter", since=9)
def scatter_9(n: Node) -> None:
    scatterelements_11(n)


@register("ScatterND", since=11)
def scatternd_11(n: Node) -> None:
    red = n.attr("reduction", "none")
    n.assign(f'{n.helper("_scatter_nd")}({n.x(0)}, {n.x(1)}, {n.x(2)}, "{red}")')


@register("Pad", since=2)
def pad_2(n: Node) -> None:
    mode = n.attr("mode", "constant")
    pads = n.attr("pads") if n.opset < 11 else (n.const_ints(1) or n.ints(1))
    value = n.attr("value", 0.0) if n.opset < 11 else (n.scalar(2) if n.has(2) else "0")
    axes = None
    if n.opset >= 18 and n.has(3):
        axes = n.const_ints(3) or n.ints(3)
    x = n.x(0)
    r = n.rank(0)
    if mode == "constant" and isinstance(pads, list) and axes is None and r is not None:
        tp: list[int] = []
        for a in reversed(range(r)):
            tp += [pads[a], pads[a + r]]
        while tp and tp[-1] == 0 and tp[-2] == 0:
            tp = tp[:-2]
        val = "" if value in ("0", "0.0", 0.0, 0) else f", value={value if isinstance(value, str) else lit(value)}"
        n.assign(f"F.pad({x}, {lit(tp)}{val})" if tp else x)
        return
    pads_src = lit(pads) if isinstance(pads, list) else pads
    axes_src = "None" if axes is None else (lit(axes) if isinstance(axes, list) else axes)
    val_src = value if isinstance(value, str) else lit(value)
    n.assign(f'{n.helper("_pad")}({x}, {pads_src}, "{mode}", {val_src}, {axes_src})')


@register("TopK", since=1)
def topk_1(n: Node) -> None:
    x, axis = n.x(0), n.attr("axis", -1)
    k = n.attr("k") if n.opset < 10 else n.scalar(1)
    largest, srt = n.attr("largest", 1), n.attr("sorted", 1)
    n.assign_many(f"torch.topk({x}, {k}, dim={axis}, largest={bool(largest)}, sorted={bool(srt)})", [0, 1])


@register("NonZero", since=9)
def nonzero_9(n: Node) -> None:
    n.assign(f"torch.nonzero({n.x(0)}).T")


@register("OneHot", since=9)
def onehot_9(n: Node) -> None:
    n.assign(f"{n.helper('_onehot')}({n.x(0)}, {n.scalar(1)}, {n.x(2)}, {n.attr('axis', -1)})")


@register("CumSum", since=11)
def cumsum_11(n: Node) -> None:
    ex, rev = n.attr("exclusive", 0), n.attr("reverse", 0)
    x, axis = n.x(0), n.scalar(1)
    if not ex and not rev:
        n.assign(f"torch.cumsum({x}, {axis}, dtype={x}.dtype)")
    else:
        n.assign(f"{n.helper('_cumsum')}({x}, {axis}, {ex}, {rev})")


@register("CumProd", since=26)
def cumprod_26(n: Node) -> None:
    n.assign(f"{n.helper('_cumprod')}({n.x(0)}, {n.scalar(1)}, {n.attr('exclusive', 0)}, {n.attr('reverse', 0)})")


@register("Einsum", since=12)
def einsum_12(n: Node) -> None:
    n.assign(f'torch.einsum("{n.attr("equation").replace(" ", "")}", {", ".join(n.xs())})')


@register("Compress", since=9)
def compress_9(n: Node) -> None:
    x, c, axis = n.x(0), n.x(1), n.attr("axis")
    if axis is None:
        n.assign(f"{x}.reshape(-1)[torch.nonzero({c}).reshape(-1)]")
    else:
        n.assign(f"torch.index_select({x}, {axis}, torch.nonzero({c}).reshape(-1))")


@register("Unique", since=11)
def unique_11(n: Node) -> None:
    axis = n.attr("axis")
    n.assign_many(f"{n.helper('_unique')}({n.x(0)}, {lit(axis)}, {n.attr('sorted', 1)})",
                  list(range(4)))


@register("ReverseSequence", since=10)
def reversesequence_10(n: Node) -> None:
    n.assign(f"{n.helper('_reverse_sequence')}({n.x(0)}, {n.x(1)}, "
             f"{n.attr('batch_axis', 1)}, {n.attr('time_axis', 0)})")


@register("Det", since=11)
def det_11(n: Node) -> None:
    n.assign(f"torch.linalg.det({n.x(0)})")


@register("Dropout", since=7)
def dropout_7(n: Node) -> None:
    x = n.x(0)
    training = n.const(2) if n.opset >= 12 else None
    if n.opset >= 12 and n.has(2) and (training is None or bool(training)):
        ratio = n.scalar(1) if n.has(1) else "0.5"
        seed = n.attr("seed")
        n.assign(f"F.dropout({x}, {ratio}, training=bool({n.x(2)}))")
        if n.has_out(1):
            n.assign(f"{n.out(0)} != 0", 1)
        return
    n.assign(f"F.dropout({x}, {n.scalar(1) if n.opset >= 12 and n.has(1) else n.attr('ratio', 0.5)}, self.training)")
    if n.has_out(1):
        n.assign(f"torch.ones_like({x}, dtype=torch.bool)", 1)
