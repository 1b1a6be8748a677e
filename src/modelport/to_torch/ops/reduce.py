"""Reductions, arg-reductions and softmax-like ops.

Axes moved from an attribute to an input at opset 13 (ReduceSum) and 18 (the others);
Softmax / LogSoftmax / Hardmax coerce the input to 2-D at ``axis`` before opset 13.
"""

from __future__ import annotations

from modelport.to_torch import dtypes
from modelport.to_torch.codegen import Node, lit
from modelport.to_torch.registry import register

_REDUCE = {
    "ReduceSum": "torch.sum({x}, dim={d}, keepdim={k}{dt})",
    "ReduceMean": "torch.mean({x}, dim={d}, keepdim={k})",
    "ReduceMax": "torch.amax({x}, dim={d}, keepdim={k})",
    "ReduceMin": "torch.amin({x}, dim={d}, keepdim={k})",
    "ReduceProd": "{prod}({x}, {d}, {k})",
    "ReduceL1": "torch.sum(torch.abs({x}), dim={d}, keepdim={k}{dt})",
    "ReduceL2": "torch.sqrt(torch.sum({x} * {x}, dim={d}, keepdim={k}{dt}))",
    "ReduceLogSum": "torch.log(torch.sum({x}, dim={d}, keepdim={k}))",
    "ReduceLogSumExp": "torch.logsumexp({x}, dim={d}, keepdim={k})",
    "ReduceSumSquare": "torch.sum({x} * {x}, dim={d}, keepdim={k}{dt})",
}


def _reduce(n: Node, op: str, axes_input: bool) -> None:
    x = n.x(0)
    keep = bool(n.attr("keepdims", 1))
    noop = n.attr("noop_with_empty_axes", 0)
    if axes_input:
        axes = n.const_ints(1) if n.has(1) else []
        if axes is None:
            axes = n.ints(1)
    else:
        axes = n.attr("axes") or []
    if axes == [] and noop:
        n.assign(x)
        return
    if isinstance(axes, str):
        d = f"tuple({axes}) or tuple(range({x}.dim()))"
        d = f"({d})"
    elif axes == []:
        r = n.rank(0)
        d = lit(tuple(range(r))) if r is not None else f"tuple(range({x}.dim()))"
    else:
        d = lit(tuple(axes)) if len(axes) > 1 else str(axes[0])
    dt = n.dtype(0)
    dt_kw = f", dtype={dtypes.torch_dtype(dt)}" if dt in dtypes.INTS - {7} else ""
    if op in ("ReduceMax", "ReduceMin") and dt == 9:
        x = f"{x}.to(torch.uint8)"
    expr = _REDUCE[op].format(x=x, d=d, k=keep, dt=dt_kw,
                              prod=n.helper("_reduce_prod") if op == "ReduceProd" else "")
    if op in ("ReduceMax", "ReduceMin") and dt == 9:
        expr = f"{expr}.bool()"
    n.assign(expr)


def _make(op: str, since: int, axes_input: bool) -> None:
    def conv(n: Node) -> None:
        _reduce(n, op, axes_input)

    conv.__name__ = f"{op.lower()}_{since}"
    register(op, since)(conv)


for _op in _REDUCE:
    _make(_op, 1, False)
    _make(_op, 13 if _op == "ReduceSum" else 18, True)


def _arg(n: Node, fn: str) -> None:
    x, axis, keep = n.x(0), n.attr("axis", 0), bool(n.attr("keepdims", 1))
    if n.attr("select_last_index", 0):
        n.assign(f"{x}.shape[{axis}] - 1 - {fn}(torch.flip({x}, [{axis}]), dim={axis}, keepdim={keep})")
    else:
        n.assign(f"{fn}({x}, dim={axis}, keepdim={keep})")


@register("ArgMax", since=1)
def argmax_1(n: Node) -> None:
    _arg(n, "torch.argmax")


@register("ArgMin", since=1)
def argmin_1(n: Node) -> None:
    _arg(n, "torch.argmin")


def _softmax(n: Node, fn: str, default_axis: int, coerce: bool) -> None:
    x, axis = n.x(0), n.attr("axis", default_axis)
    if fn == "hardmax":
        core = "F.one_hot(torch.argmax({v}, dim={a}), {v}.shape[{a}]).movedim(-1, {a}).to({v}.dtype)"
    else:
        core = f"torch.{fn}({{v}}, dim={{a}})"
    r = n.rank(0)
    if not coerce or (r is not None and (axis % r == r - 1 if r else True)):
        n.assign(core.format(v=x, a=axis if coerce is False else -1))
        return
    flat = f"{x}.reshape(math.prod({x}.shape[:{axis}]), -1)"
    tmp = n.tmp("flat")
    n.emit(f"{tmp} = {flat}")
    n.assign(f"{core.format(v=tmp, a=1)}.reshape({x}.shape)")


@register("Softmax", since=1)
def softmax_1(n: Node) -> None:
    _softmax(n, "softmax", 1, True)


@register("Softmax", since=13)
def softmax_13(n: Node) -> None:
    _softmax(n, "softmax", -1, False)


@register("LogSoftmax", since=1)
def logsoftmax_1(n: Node) -> None:
    _softmax(n, "log_softmax", 1, True)


@register("LogSoftmax", since=13)
def logsoftmax_13(n: Node) -> None:
    _softmax(n, "log_softmax", -1, False)


@register("Hardmax", since=1)
def hardmax_1(n: Node) -> None:
    _softmax(n, "hardmax", 1, True)


@register("Hardmax", since=13)
def hardmax_13(n: Node) -> None:
    _softmax(n, "hardmax", -1, False)
