"""Elementwise math, comparison, logic and activation ops."""

from __future__ import annotations

from onnx import TensorProto as T

from modelport.to_torch import dtypes
from modelport.to_torch.codegen import Node, Value, lit
from modelport.to_torch.ops.quant import ort_exact
from modelport.to_torch.registry import register


_WIDE_UINTS = {T.UINT16, T.UINT32, T.UINT64}


def _binary(n: Node, fmt: str, result_same: bool = True, literals: bool = True) -> None:
    c0 = n.const(0)
    a_lit = (literals and fmt.startswith("{a} ") and c0 is not None and c0.ndim == 0
             and n.val(1).kind == "tensor")
    a = n.x(0, scalar_ok=a_lit)
    b = n.x(1, scalar_ok=literals and not a_lit)
    dt = n.dtype(0)
    if dt in _WIDE_UINTS:  # torch has few kernels for uint16/32/64: compute in int64
        expr = fmt.format(a=f"{a}.long()", b=f"{b}.long()")
        n.assign(f"({expr}).to({dtypes.torch_dtype(dt)})" if result_same else expr)
        return
    n.assign(fmt.format(a=a, b=b))


def _shape_arith(n: Node, op: str) -> bool:
    """Add/Sub/Mul/Div on shape scalars stays Python int arithmetic."""
    kinds = [n.val(i).kind for i in range(2)]
    if not any(k == "scalar" for k in kinds) or any(k not in ("scalar", "const") for k in kinds):
        return False
    for i in range(2):
        c = n.const(i)
        if c is not None and (c.size != 1 or c.dtype.kind not in "iu" or c.ndim > 0):
            return False
    a, b = n.scalar(0), n.scalar(1)
    n.assign(f"{a} {op} {b}", kind="scalar")
    return True


@register("Add", since=7)
def add_7(n: Node) -> None:
    if not _shape_arith(n, "+"):
        _binary(n, "{a} + {b}")


@register("Sub", since=7)
def sub_7(n: Node) -> None:
    if not _shape_arith(n, "-"):
        _binary(n, "{a} - {b}")


@register("Mul", since=7)
def mul_7(n: Node) -> None:
    if not _shape_arith(n, "*"):
        _binary(n, "{a} * {b}")


@register("Div", since=7)
def div_7(n: Node) -> None:
    dt = n.dtype(0)
    if dt in dtypes.INTS:
        if not _shape_arith(n, "//"):
            _binary(n, 'torch.div({a}, {b}, rounding_mode="trunc")')
    elif dt is None:
        _binary(n, n.helper("_div") + "({a}, {b})")
    else:
        _binary(n, "{a} / {b}")


@register("Mod", since=10)
def mod_10(n: Node) -> None:
    if n.attr("fmod", 0):
        _binary(n, "torch.fmod({a}, {b})")
    else:
        _binary(n, "torch.remainder({a}, {b})")


@register("Pow", since=7)
def pow_7(n: Node) -> None:
    a, b = n.x(0), n.x(1, scalar_ok=True)
    if n.dtype(1) is not None and n.dtype(0) != n.dtype(1) or n.dtype(0) in dtypes.INTS:
        n.assign(f"torch.pow({a}, {b}).to({a}.dtype)")
    else:
        n.assign(f"torch.pow({a}, {b})")


_COMPARE = {"Equal": "torch.eq", "Less": "torch.lt", "Greater": "torch.gt",
            "LessOrEqual": "torch.le", "GreaterOrEqual": "torch.ge", "And": "torch.logical_and",
            "Or": "torch.logical_or", "Xor": "torch.logical_xor",
            "BitwiseAnd": "torch.bitwise_and", "BitwiseOr": "torch.bitwise_or",
            "BitwiseXor": "torch.bitwise_xor"}


def _make_binary(op: str, fn: str, since: int) -> None:
    def conv(n: Node) -> None:
        _binary(n, fn + "({a}, {b})", result_same=fn.startswith("torch.bitwise"), literals=False)

    conv.__name__ = f"{op.lower()}_{since}"
    register(op, since)(conv)


for _op, _fn in _COMPARE.items():
    _make_binary(_op, _fn, 7)


@register("BitShift", since=11)
def bitshift_11(n: Node) -> None:
    sym = "<<" if n.attr("direction") == "LEFT" else ">>"
    _binary(n, "{a} %s {b}" % sym)


_UNARY = {
    "Abs": "torch.abs({x})", "Neg": "torch.neg({x})", "Exp": "torch.exp({x})",
    "Log": "torch.log({x})", "Sqrt": "torch.sqrt({x})", "Reciprocal": "torch.reciprocal({x})",
    "Floor": "torch.floor({x})", "Ceil": "torch.ceil({x})", "Round": "torch.round({x})",
    "Sign": "torch.sign({x})", "Erf": "torch.erf({x})", "Sin": "torch.sin({x})",
    "Cos": "torch.cos({x})", "Tan": "torch.tan({x})", "Asin": "torch.asin({x})",
    "Acos": "torch.acos({x})", "Atan": "torch.atan({x})", "Sinh": "torch.sinh({x})",
    "Cosh": "torch.cosh({x})", "Asinh": "torch.asinh({x})", "Acosh": "torch.acosh({x})",
    "Atanh": "torch.atanh({x})", "Tanh": "torch.tanh({x})", "Sigmoid": "torch.sigmoid({x})",
    "Relu": "torch.relu({x})", "Not": "torch.logical_not({x})",
    "BitwiseNot": "torch.bitwise_not({x})", "IsNaN": "torch.isnan({x})",
    "Softsign": "F.softsign({x})", "Softplus": "F.softplus({x})", "Mish": "F.mish({x})",
    "Identity": "{x}",
}


def _make_unary(op: str, fmt: str) -> None:
    def conv(n: Node) -> None:
        v = n.val(0)
        if op == "Identity" and v.kind in ("shape", "scalar", "seq", "none"):
            n.set(0, v)
            return
        x = n.x(0)
        if op in ("Sigmoid", "Tanh") and n.dtype(0) == T.FLOAT and ort_exact(n):
            # a graph that quantizes activations at run time: onnxruntime's own approximation (ops/quant.py)
            n.assign(f"{n.helper('_ort_' + op.lower())}({x})")
            return
        if n.dtype(0) in _WIDE_UINTS and op not in ("Identity",):
            n.assign(_wide(n, fmt.format(x=f"{x}.long()")))
            return
        n.assign(fmt.format(x=x))

    conv.__name__ = f"{op.lower()}_7"
    register(op, 1 if op in ("Identity", "Not") else 6)(conv)


for _op, _fmt in _UNARY.items():
    _make_unary(_op, _fmt)


@register("Sign", since=9)
def sign_9(n: Node) -> None:
    n.assign(f"torch.sign({n.x(0)})")


@register("LeakyRelu", since=6)
def leakyrelu_6(n: Node) -> None:
    n.assign(f"F.leaky_relu({n.x(0)}, {lit(n.attr('alpha', 0.01))})")


@register("Elu", since=6)
def elu_6(n: Node) -> None:
    n.assign(f"F.elu({n.x(0)}, {lit(n.attr('alpha', 1.0))})")


@register("Celu", since=12)
def celu_12(n: Node) -> None:
    n.assign(f"F.celu({n.x(0)}, {lit(n.attr('alpha', 1.0))})")


@register("Selu", since=6)
def selu_6(n: Node) -> None:
    a, g = n.attr("alpha", 1.67326319217681884765625), n.attr("gamma", 1.05070102214813232421875)
    n.assign(f"{lit(g)} * torch.where({n.x(0)} > 0, {n.x(0)}, {lit(a)} * torch.expm1({n.x(0)}))")


@register("HardSigmoid", since=6)
def hardsigmoid_6(n: Node) -> None:
    a, b = n.attr("alpha", 0.2), n.attr("beta", 0.5)
    n.assign(f"torch.clamp({lit(a)} * {n.x(0)} + {lit(b)}, 0, 1)")


@register("HardSwish", since=14)
def hardswish_14(n: Node) -> None:
    n.assign(f"F.hardswish({n.x(0)})")


@register("ThresholdedRelu", since=10)
def thresholdedrelu_10(n: Node) -> None:
    x = n.x(0)
    n.assign(f"torch.where({x} > {lit(n.attr('alpha', 1.0))}, {x}, 0)")


@register("Shrink", since=9)
def shrink_9(n: Node) -> None:
    x, lam, bias = n.x(0), lit(n.attr("lambd", 0.5)), lit(n.attr("bias", 0.0))
    n.assign(f"torch.where({x} < -{lam}, {x} + {bias}, torch.where({x} > {lam}, {x} - {bias}, "
             f"torch.zeros_like({x})))")


@register("Gelu", since=20)
def gelu_20(n: Node) -> None:
    approx = n.attr("approximate", "none")
    n.assign(f"F.gelu({n.x(0)})" if approx == "none" else f'F.gelu({n.x(0)}, approximate="tanh")')


@register("Swish", since=24)
def swish_24(n: Node) -> None:
    x = n.x(0)
    n.assign(f"{x} * torch.sigmoid({lit(n.attr('alpha', 1.0))} * {x})")


@register("PRelu", since=7)
def prelu_7(n: Node) -> None:
    x, s = n.x(0), n.x(1)
    n.assign(f"torch.where({x} < 0, {x} * {s}, {x})")


@register("IsInf", since=10)
def isinf_10(n: Node) -> None:
    x, neg, pos = n.x(0), n.attr("detect_negative", 1), n.attr("detect_positive", 1)
    expr = "torch.isinf({x})" if neg and pos else ("torch.isposinf({x})" if pos else (
        "torch.isneginf({x})" if neg else "torch.zeros_like({x}, dtype=torch.bool)"))
    n.assign(expr.format(x=x))


@register("Where", since=9)
def where_9(n: Node) -> None:
    n.assign(f"torch.where({n.x(0)}, {n.x(1, scalar_ok=True)}, {n.x(2)})")


@register("Clip", since=6)
def clip_6(n: Node) -> None:
    lo, hi = n.attr("min"), n.attr("max")
    args = ", ".join(f"{k}={lit(v)}" for k, v in (("min", lo), ("max", hi)) if v is not None)
    n.assign(f"torch.clamp({n.x(0)}, {args})" if args else n.x(0))


@register("Clip", since=11)
def clip_11(n: Node) -> None:
    x = n.x(0)
    lo = n.x(1, scalar_ok=True) if n.has(1) else None
    hi = n.x(2, scalar_ok=True) if n.has(2) else None
    if lo is None and hi is None:
        n.assign(x)
        return
    args = ", ".join(f"{k}={v}" for k, v in (("min", lo), ("max", hi)) if v is not None)
    n.assign(f"torch.clamp({x}, {args})")


def _variadic(n: Node, fn: str) -> str:
    xs = n.xs()
    if n.dtype(0) in _WIDE_UINTS:
        xs = [f"{x}.long()" for x in xs]
    expr = xs[0]
    for x in xs[1:]:
        expr = f"{fn}({expr}, {x})"
    return expr


def _wide(n: Node, expr: str) -> str:
    dt = n.dtype(0)
    return f"({expr}).to({dtypes.torch_dtype(dt)})" if dt in _WIDE_UINTS else expr


@register("Max", since=8)
def max_8(n: Node) -> None:
    n.assign(_wide(n, _variadic(n, "torch.maximum")))


@register("Min", since=8)
def min_8(n: Node) -> None:
    n.assign(_wide(n, _variadic(n, "torch.minimum")))


@register("Sum", since=8)
def sum_8(n: Node) -> None:
    n.assign(" + ".join(n.xs()))


@register("Mean", since=8)
def mean_8(n: Node) -> None:
    xs = n.xs()
    n.assign(f"({' + '.join(xs)}) / {len(xs)}" if len(xs) > 1 else xs[0])


@register("Cast", since=6)
def cast_6(n: Node) -> None:
    to = n.attr("to")
    v = n.val(0)
    if v.kind in ("shape", "scalar") and to in dtypes.INTS:
        n.set(0, Value(v.expr, v.kind, items=v.items, dtype=to))
        return
    if v.kind == "const" and v.const.size <= 64 and to in dtypes.INTS | {T.FLOAT, T.DOUBLE, T.BOOL}:
        import onnx
        n.set_const(0, v.const.astype(onnx.helper.tensor_dtype_to_np_dtype(to)))
        return
    x = n.x(0)
    if to not in dtypes.TORCH:
        raise n.fail(f"cast to {to} has no torch dtype")
    sat = n.attr("saturate", 1)
    if to in dtypes.FLOAT8 and sat:
        n.assign(f"{n.helper('_cast_f8_saturate')}({x}, {dtypes.torch_dtype(to)})")
        return
    if to in dtypes.INTS and n.dtype(0) in dtypes.FLOATS:
        n.assign(f"{x}.to({dtypes.torch_dtype(to)})")
        return
    n.assign(f"{x}.to({dtypes.torch_dtype(to)})")


@register("CastLike", since=15)
def castlike_15(n: Node) -> None:
    to = n.dtype(1)
    x = n.x(0)
    if to in dtypes.FLOAT8 and n.attr("saturate", 1):
        n.assign(f"{n.helper('_cast_f8_saturate')}({x}, {n.x(1)}.dtype)")
    else:
        n.assign(f"{x}.to({n.x(1)}.dtype)")
