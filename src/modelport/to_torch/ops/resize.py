"""Resize (all modes), Upsample and GridSample.

Common cases become ``F.interpolate``; the rest go through ``_resize``, which applies one
interpolation matrix per resized axis (``y = W @ x`` along that axis), with ``W`` built from
the ONNX coordinate transformation, nearest rounding, linear / cubic (with ``cubic_coeff_a``,
``exclude_outside``, ``antialias``) and ``extrapolation_value`` rules.
"""

from __future__ import annotations

from modelport.to_torch.codegen import Node, lit
from modelport.to_torch.registry import register


def _emit_resize(n: Node, scales: str, sizes: str, roi: str, opset: int) -> None:
    mode = n.attr("mode", "nearest")
    ctm = n.attr("coordinate_transformation_mode", "half_pixel" if opset >= 11 else "asymmetric")
    nearest = n.attr("nearest_mode", "round_prefer_floor" if opset >= 11 else "floor")
    x = n.x(0)
    axes = n.attr("axes")
    n.assign(f'{n.helper("_resize")}({x}, {roi}, {scales}, {sizes}, "{mode}", "{ctm}", '
             f'{lit(n.attr("cubic_coeff_a", -0.75))}, {n.attr("exclude_outside", 0)}, '
             f'{lit(n.attr("extrapolation_value", 0.0))}, "{nearest}", {n.attr("antialias", 0)}, '
             f'{lit(axes)}, "{n.attr("keep_aspect_ratio_policy", "stretch")}")')


def _list_or_none(n: Node, i: int, floats: bool) -> str:
    if not n.has(i):
        return "None"
    c = n.const(i)
    if c is not None:
        if c.size == 0:
            return "None"
        return lit([float(v) if floats else int(v) for v in c.reshape(-1)])
    if not floats:
        return n.ints(i)
    return f"{n.x(i)}.tolist()"


@register("Resize", since=10)
def resize_10(n: Node) -> None:
    _emit_resize(n, _list_or_none(n, 1, True), "None", "None", 10)


@register("Resize", since=11)
def resize_11(n: Node) -> None:
    _emit_resize(n, _list_or_none(n, 2, True), _list_or_none(n, 3, False),
                 _list_or_none(n, 1, True), n.opset)


@register("Upsample", since=7)
def upsample_7(n: Node) -> None:
    scales = lit([float(s) for s in n.attr("scales")]) if n.opset < 9 else _list_or_none(n, 1, True)
    mode = n.attr("mode", "nearest")
    n.assign(f'{n.helper("_resize")}({n.x(0)}, None, {scales}, None, "{mode}", "asymmetric", '
             f'-0.75, 0, 0.0, "floor")')


@register("GridSample", since=16)
def gridsample_16(n: Node) -> None:
    mode = {"linear": "bilinear", "cubic": "bicubic"}.get(n.attr("mode", "bilinear"),
                                                          n.attr("mode", "bilinear"))
    pad = n.attr("padding_mode", "zeros")
    ac = bool(n.attr("align_corners", 0))
    n.assign(f'F.grid_sample({n.x(0)}, {n.x(1)}, mode="{mode}", padding_mode="{pad}", align_corners={ac})')
