"""Shape, layout and constant-creation ops.

Shape data (``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``) is kept as Python ints
(``x.shape[0]``), never frozen to the sizes seen at export time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T

from modelport.to_torch import dtypes
from modelport.to_torch.codegen import Node, Value, lit
from modelport.to_torch.registry import register


@register("Constant", since=1)
def constant_1(n: Node) -> None:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if n.has_attr(key):
            v = n.attr(key)
            if key == "value_float" or key == "value_floats":
                v = np.asarray(v, dtype=np.float32)
            elif key in ("value_int", "value_ints"):
                v = np.asarray(v, dtype=np.int64)
            n.set_const(0, np.asarray(v))
            return
    if n.has_attr("sparse_value"):
        from onnx import numpy_helper
        sp = n._attrs["sparse_value"].sparse_tensor
        vals = numpy_helper.to_array(sp.values)
        idx = numpy_helper.to_array(sp.indices)
        dense = np.zeros(int(np.prod(sp.dims)), dtype=vals.dtype)
        if idx.ndim == 1:
            dense[idx] = vals
        else:
            dense = dense.reshape(sp.dims)
            dense[tuple(idx.T)] = vals
        n.set_const(0, dense.reshape(tuple(sp.dims)))
        return
    raise n.fail("Constant with a string value")


@register("Shape", since=1)
def shape_1(n: Node) -> None:
    x = n.x(0)
    start, end = n.attr("start", 0), n.attr("end")
    sl = "" if start == 0 and end is None else f"[{start or ''}:{'' if end is None else end}]"
    r = n.rank(0)
    items = None
    if r is not None:
        idx = list(range(r))[slice(start, end)]
        items = [f"{n.out(0)}[{i}]" for i in range(len(idx))]
    n.assign(f"{x}.shape{sl}", kind="shape", items=items)


@register("Size", since=1)
def size_1(n: Node) -> None:
    n.assign(f"{n.x(0)}.numel()", kind="scalar")


def _shape_items_expr(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


@register("Reshape", since=5)
def reshape_5(n: Node) -> None:
    x = n.x(0)
    allowzero = n.attr("allowzero", 0)
    items = n.int_items(1)
    if items is not None:
        if not allowzero:
            items = [f"{x}.shape[{i}]" if d == "0" else d for i, d in enumerate(items)]
        n.assign(f"{x}.reshape({', '.join(items)})" if items else f"{x}.reshape(())")
        return
    v = n.val(1)
    if v.kind == "shape" and not allowzero:
        if v.zero_parts:  # [0, *y.shape[1:2], 3, 8, 15] (paddle2onnx): 0 copies x's dim there
            n.assign(f"{x}.reshape([{x}.shape[i] if d == 0 else d for i, d in enumerate({v.expr})])")
        else:
            n.assign(f"{x}.reshape({v.expr})")
        return
    n.assign(f"{n.helper('_reshape')}({x}, {n.ints(1)}, {allowzero})")


@register("Expand", since=8)
def expand_8(n: Node) -> None:
    x = n.x(0)
    c = n.const_ints(1)
    shape = lit(tuple(c)) if c is not None else f"tuple({n.ints(1)})"
    n.assign(f"{x}.expand(torch.broadcast_shapes({x}.shape, {shape}))")


def _is_shapeish(n: Node, i: int) -> bool:
    v = n.val(i)
    if v.kind in ("shape", "scalar"):
        return True
    return v.kind == "const" and v.const.dtype.kind in "iu" and v.const.ndim == 1 and v.const.size <= 8


@register("Concat", since=4)
def concat_4(n: Node) -> None:
    axis = n.attr("axis", 0)
    idx = [i for i in range(n.n_in) if n.has(i)]
    shapeish = any(n.val(i).kind == "shape" for i in idx) and all(_is_shapeish(n, i) for i in idx)
    if shapeish:
        items: list[str] | None = []
        parts = []
        for i in idx:
            it = n.int_items(i)
            if it is None:
                items = None
                parts.append(f"*{n.val(i).expr}")
            else:
                parts.extend(it)
                if items is not None:
                    items.extend(it)
        name = n.assign("[" + ", ".join(parts) + "]", kind="shape", items=items)
        if items is None and "0" in parts:
            n.set(0, Value(name, "shape", zero_parts=True))
        return
    xs = [n.x(i) for i in idx]
    n.assign(f"torch.cat([{', '.join(xs)}], dim={axis})")


def _axes(n: Node, attr_until: int, i: int = 1) -> list[int] | None | str:
    if n.opset < attr_until:
        return n.attr("axes")
    if not n.has(i):
        return None
    c = n.const_ints(i)
    return c if c is not None else n.ints(i)


def _squeeze(n: Node, axes) -> None:
    v = n.val(0)
    if v.kind == "shape" and v.items is not None and len(v.items) == 1:
        n.set(0, Value(v.items[0], "scalar", dtype=v.dtype))
        return
    if v.kind == "const" and v.const.size <= 64:
        n.set_const(0, np.squeeze(v.const, axis=tuple(axes)) if axes else np.squeeze(v.const))
        return
    x = n.x(0)
    if axes is None or axes == []:
        n.assign(f"{x}.squeeze()")
    elif isinstance(axes, str):
        n.assign(f"{x}.squeeze(tuple({axes}))")
    elif len(axes) == 1:
        n.assign(f"{x}.squeeze({axes[0]})")
    else:
        n.assign(f"{x}.squeeze({lit(tuple(axes))})")


@register("Squeeze", since=1)
def squeeze_1(n: Node) -> None:
    _squeeze(n, _axes(n, 13))


@register("Squeeze", since=13)
def squeeze_13(n: Node) -> None:
    _squeeze(n, _axes(n, 13))


def _unsqueeze(n: Node, axes) -> None:
    v = n.val(0)
    if v.kind == "scalar" and axes in ([0], [-1]):
        n.assign(f"[{v.expr}]", kind="shape", items=[v.expr], dtype=v.dtype)
        return
    if v.kind == "const" and v.const.size <= 64 and not isinstance(axes, str):
        out = v.const
        r = out.ndim + len(axes)
        for a in sorted(a % r for a in axes):
            out = np.expand_dims(out, a)
        n.set_const(0, out)
        return
    x = n.x(0)
    if isinstance(axes, str):
        n.assign(f"{n.helper('_unsqueeze')}({x}, {axes})")
        return
    r = n.rank(0)
    if r is None and any(a < 0 for a in axes):
        n.assign(f"{n.helper('_unsqueeze')}({x}, {lit(axes)})")
        return
    r = (r or 0) + len(axes)
    expr = x
    for a in sorted(a % r for a in axes):
        expr = f"{expr}.unsqueeze({a})"
    n.assign(expr)


@register("Unsqueeze", since=1)
def unsqueeze_1(n: Node) -> None:
    _unsqueeze(n, _axes(n, 13))


@register("Unsqueeze", since=13)
def unsqueeze_13(n: Node) -> None:
    _unsqueeze(n, _axes(n, 13))


@register("Flatten", since=1)
def flatten_1(n: Node) -> None:
    x, axis, r = n.x(0), n.attr("axis", 1), n.rank(0)
    if axis < 0 and r is not None:
        axis += r
    if axis == 0:
        n.assign(f"{x}.reshape(1, -1)")
    elif axis == 1 and r is not None and r >= 2:
        n.assign(f"{x}.flatten(1)")
    else:
        n.assign(f"{x}.reshape(math.prod({x}.shape[:{axis}]), math.prod({x}.shape[{axis}:]))")


@register("Transpose", since=1)
def transpose_1(n: Node) -> None:
    x, perm = n.x(0), n.attr("perm")
    if perm is None:
        r = n.rank(0)
        n.assign(f"{x}.permute({lit(list(range(r))[::-1])})" if r is not None else
                 f"{x}.permute(*reversed(range({x}.dim())))")
    else:
        n.assign(f"{x}.permute({', '.join(str(p) for p in perm)})" if perm else x)


def _slice(n: Node, starts, ends, axes, steps) -> None:
    v = n.val(0)
    consts = all(isinstance(a, list) or a is None for a in (starts, ends, axes, steps))
    if consts:
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        if v.kind == "shape" and axes in ([0], [-1]) and steps == [1] and not isinstance(ends[0], str):
            s, e = starts[0], ends[0]
            sl = f"{s if s else ''}:{'' if e >= 2**31 else e}"
            items = None
            if v.items is not None:
                items = v.items[s:None if e >= 2**31 else e]
            n.assign(f"{v.expr}[{sl}]", kind="shape", items=items, dtype=v.dtype)
            return
        r = n.rank(0)
        if all(st > 0 for st in steps) and (r is not None or all(a >= 0 for a in axes)):
            x = n.x(0)
            axes = [a % r if r else a for a in axes]
            idx = [":"] * (max(axes) + 1)
            for s, e, a, st in zip(starts, ends, axes, steps):
                s_txt = "" if s == 0 else str(max(s, -2**62))
                e_txt = e if isinstance(e, str) else ("" if e >= 2**31 else str(e))
                idx[a] = f"{s_txt}:{e_txt}" + (f":{st}" if st != 1 else "")
            while idx and idx[-1] == ":":
                idx.pop()
            n.assign(f"{x}[{', '.join(idx)}]" if idx else x)
            return
    x = n.x(0)
    def src(a):
        if isinstance(a, list) and a and isinstance(a[0], str):
            return "[" + ", ".join(a) + "]"
        return "None" if a is None else (lit(a) if isinstance(a, list) else a)
    n.assign(f"{n.helper('_slice')}({x}, {src(starts)}, {src(ends)}, {src(axes)}, {src(steps)})")


@register("Slice", since=1)
def slice_1(n: Node) -> None:
    _slice(n, n.attr("starts"), n.attr("ends"), n.attr("axes"), None)


@register("Slice", since=10)
def slice_10(n: Node) -> None:
    def get(i):
        if not n.has(i):
            return None
        c = n.const_ints(i)
        if c is None and i == 2 and n.int_items(i) is not None:
            return n.int_items(i)
        return c if c is not None else n.ints(i)
    _slice(n, get(1), get(2), get(3), get(4))


@register("Split", since=2)
def split_2(n: Node) -> None:
    axis = n.attr("axis", 0)
    split = None
    if n.opset >= 13 and n.has(1):
        split = n.const_ints(1)
        if split is None:
            split = n.ints(1)
    elif n.opset < 13:
        split = n.attr("split")
    x = n.x(0)
    outs = list(range(n.n_out))
    num = n.attr("num_outputs")
    if split is not None and split != []:
        n.assign_many(f"torch.split({x}, {lit(split) if isinstance(split, list) else split}, dim={axis})", outs)
    elif num is not None:
        n.assign_many(f"torch.split({x}, math.ceil({x}.shape[{axis}] / {num}), dim={axis})", outs)
    else:
        n.assign_many(f"torch.tensor_split({x}, {n.n_out}, dim={axis})", outs)
    if n.n_out == 1:
        n.g.lines[-1].text = n.g.lines[-1].text.replace(" = ", ", = ", 1)


@register("Tile", since=6)
def tile_6(n: Node) -> None:
    n.assign(f"{n.x(0)}.repeat({n.ints(1)})")


@register("ConstantOfShape", since=9)
def constantofshape_9(n: Node) -> None:
    v = n.attr("value")
    if v is None:
        v = np.zeros(1, dtype=np.float32)
    dt = dtypes.torch_dtype(dtypes.onnx_type(v))
    n.assign(f"torch.full({n.ints(0)}, {lit(v.reshape(-1)[0].item())}, dtype={dt})")


@register("Range", since=11)
def range_11(n: Node) -> None:
    dt = n.dtype(0)
    n.assign(f"torch.arange({n.scalar(0)}, {n.scalar(1)}, {n.scalar(2)}, "
             f"dtype={dtypes.torch_dtype(dt or T.INT64)})")


@register("Trilu", since=14)
def trilu_14(n: Node) -> None:
    k = n.scalar(1) if n.has(1) else "0"
    fn = "torch.triu" if n.attr("upper", 1) else "torch.tril"
    n.assign(f"{fn}({n.x(0)}, {k})")


@register("EyeLike", since=9)
def eyelike_9(n: Node) -> None:
    x, k = n.x(0), n.attr("k", 0)
    dt = n.attr("dtype")
    dts = dtypes.torch_dtype(dt) if dt is not None else f"{x}.dtype"
    n.assign(f"torch.ones({x}.shape[0], {x}.shape[1], dtype={dts}).triu({k}).tril({k})")


@register("DepthToSpace", since=1)
def depthtospace_1(n: Node) -> None:
    x, b = n.x(0), n.attr("blocksize")
    if n.attr("mode", "DCR") == "CRD":
        n.assign(f"F.pixel_shuffle({x}, {b})")
        return
    n.assign(f"{x}.reshape({x}.shape[0], {b}, {b}, {x}.shape[1] // {b * b}, {x}.shape[2], {x}.shape[3])"
             f".permute(0, 3, 4, 1, 5, 2).reshape({x}.shape[0], {x}.shape[1] // {b * b}, "
             f"{x}.shape[2] * {b}, {x}.shape[3] * {b})")


@register("SpaceToDepth", since=1)
def spacetodepth_1(n: Node) -> None:
    x, b = n.x(0), n.attr("blocksize")
    n.assign(f"{x}.reshape({x}.shape[0], {x}.shape[1], {x}.shape[2] // {b}, {b}, {x}.shape[3] // {b}, {b})"
             f".permute(0, 3, 5, 1, 2, 4).reshape({x}.shape[0], {x}.shape[1] * {b * b}, "
             f"{x}.shape[2] // {b}, {x}.shape[3] // {b})")
