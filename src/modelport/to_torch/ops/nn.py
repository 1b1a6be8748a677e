"""Linear algebra and normalization layers.

``MatMul`` with a constant 2-D weight (and a following ``Add`` of a constant bias) and
``Gemm`` with constant weights become ``nn.Linear`` (``weight = B.T``); BatchNormalization
and LayerNormalization with constant statistics become ``nn.BatchNormNd`` / ``nn.LayerNorm``.
"""

from __future__ import annotations

import numpy as np

from modelport.to_torch import naming
from modelport.to_torch.codegen import Node, lit
from modelport.to_torch.ops.tensor import _dtype_kw
from modelport.to_torch.registry import register


def _layer_name(n: Node, i: int) -> str:
    raw = n.initializer_name(i)
    for suf in (".weight", ".bias", "_weight"):
        raw = raw.removesuffix(suf)
    return naming.identifier(raw, short=False, fallback="linear")


def _linear(n: Node, x: str, w_t: np.ndarray, b: np.ndarray | None, j: int = 0) -> None:
    params = {"weight": w_t}  # made contiguous by ModuleState.layer (lazily for a memory-mapped weight)
    if b is not None:
        params["bias"] = b.reshape(-1)
    ctor = (f"nn.Linear({w_t.shape[1]}, {w_t.shape[0]}"
            f"{'' if b is not None else ', bias=False'}{_dtype_kw(w_t)})")
    n.assign(f"{n.layer(_layer_name(n, 1), ctor, params)}({x})", j)


@register("MatMul", since=1)
def matmul_1(n: Node) -> None:
    w = n.const(1)
    if w is not None and w.ndim == 2 and w.dtype.kind == "f" and n.val(0).kind == "tensor":
        add = n.sole_consumer(0)
        bias = None
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == n.node.output[0] else add.input[0]
            c = n.const_of(other)
            if c is not None and c.dtype == w.dtype and c.size == w.shape[1] and c.ndim <= 1:
                bias = c
        if bias is not None:
            n.fuse(add)
            n.node_out_alias = add.output[0]
            name = n.out(0)
            params = {"weight": w.T, "bias": bias.reshape(-1)}  # contiguous in ModuleState.layer
            ctor = f"nn.Linear({w.shape[0]}, {w.shape[1]}{_dtype_kw(w)})"
            layer = n.layer(_layer_name(n, 1), ctor, params)
            n.emit(f"{name} = {layer}({n.x(0)})", defines=(n.node.output[0], add.output[0]))
            from modelport.to_torch.codegen import Value
            n.set(0, Value(name))
            n.g.values[add.output[0]] = Value(name)
            return
        _linear(n, n.x(0), w.T, None)
        return
    n.assign(f"{n.x(0)} @ {n.x(1)}" if n.dtype(0) not in (2, 3, 6) else
             f"({n.x(0)}.double() @ {n.x(1)}.double()).to({n.x(0)}.dtype)")


@register("Gemm", since=7)
def gemm_7(n: Node) -> None:
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    ta, tb = n.attr("transA", 0), n.attr("transB", 0)
    b, c = n.const(1), n.const(2)
    if (b is not None and b.dtype.kind == "f" and not ta and alpha == 1.0
            and (not n.has(2) or (c is not None and beta == 1.0 and c.size == b.shape[0 if tb else 1]))):
        _linear(n, n.x(0), b if tb else b.T, c)
        return
    a = f"{n.x(0)}.T" if ta else n.x(0)
    bb = f"{n.x(1)}.T" if tb else n.x(1)
    expr = f"{a} @ {bb}"
    if alpha != 1.0:
        expr = f"{lit(alpha)} * ({expr})"
    if n.has(2):
        cc = n.x(2)
        expr = f"{expr} + {cc}" if beta == 1.0 else f"{expr} + {lit(beta)} * {cc}"
    n.assign(expr)


@register("BatchNormalization", since=7)
def batchnormalization_7(n: Node) -> None:
    eps, mom = n.attr("epsilon", 1e-5), n.attr("momentum", 0.9)
    training = n.attr("training_mode", 0) and n.opset >= 14
    x = n.x(0)
    if training:
        r = n.rank(0)
        dims = lit(tuple([0] + list(range(2, r)))) if r else f"(0,) + tuple(range(2, {x}.dim()))"
        shp = f"(1, -1) + (1,) * ({x}.dim() - 2)"
        mean, var = n.tmp("batch_mean"), n.tmp("batch_var")
        n.emit(f"{mean} = {x}.mean(dim={dims})")
        n.emit(f"{var} = {x}.var(dim={dims}, unbiased=False)")
        n.assign(f"({x} - {mean}.reshape({shp})) / torch.sqrt({var}.reshape({shp}) + {lit(eps)}) * "
                 f"{n.x(1)}.reshape({shp}) + {n.x(2)}.reshape({shp})")
        if n.has_out(1):
            n.assign(f"{n.x(3)} * {lit(mom)} + {mean} * {lit(1 - mom)}", 1)
        if n.has_out(2):
            n.assign(f"{n.x(4)} * {lit(mom)} + {var} * {lit(1 - mom)}", 2)
        return
    consts = [n.const(i) for i in range(1, 5)]
    r = n.rank(0)
    if all(c is not None and c.dtype.kind == "f" for c in consts) and r in (2, 3, 4, 5):
        scale, bias, mean, var = consts
        dim = {2: 1, 3: 1, 4: 2, 5: 3}[r]
        params = {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var,
                  "num_batches_tracked": np.zeros((), dtype=np.int64)}
        ctor = (f"nn.BatchNorm{dim}d({scale.shape[0]}{_kw_eps(eps)}, momentum={lit(round(1 - mom, 6))}"
                f"{_dtype_kw(scale)})")
        n.assign(f"{n.layer(_layer_name(n, 1), ctor, params)}({x})")
        return
    n.assign(f"F.batch_norm({x}, {n.x(3)}, {n.x(4)}, {n.x(1)}, {n.x(2)}, False, 0.0, {lit(eps)})")


def _kw_eps(eps: float) -> str:
    return "" if abs(eps - 1e-5) < 1e-12 else f", eps={lit(eps)}"


@register("LayerNormalization", since=17)
def layernormalization_17(n: Node) -> None:
    axis, eps = n.attr("axis", -1), n.attr("epsilon", 1e-5)
    x, r = n.x(0), n.rank(0)
    scale, bias = n.const(1), n.const(2)
    nd = (r - axis) if (r is not None and axis >= 0) else (-axis if axis < 0 else None)
    if (not n.has_out(1) and not n.has_out(2) and scale is not None and scale.dtype.kind == "f"
            and nd is not None and scale.ndim == nd and (bias is not None or not n.has(2))
            and (bias is None or bias.shape == scale.shape) and n.dtype(0) in (1, 11)):
        params = {"weight": scale}
        if bias is not None:
            params["bias"] = bias
        ctor = (f"nn.LayerNorm({lit(list(scale.shape)) if scale.ndim > 1 else scale.shape[0]}"
                f"{_kw_eps(eps)}{'' if bias is not None else ', bias=False'}{_dtype_kw(scale)})")
        n.assign(f"{n.layer(_layer_name(n, 1), ctor, params)}({x})")
        return
    n.assign_many(f"{n.helper('_layer_norm')}({x}, {n.x(1)}, {n.x(2) or 'None'}, {axis}, {lit(eps)})",
                  [0, 1, 2])


@register("RMSNormalization", since=23)
def rmsnormalization_23(n: Node) -> None:
    axis, eps = n.attr("axis", -1), n.attr("epsilon", 1e-5)
    n.assign(f"{n.helper('_rms_norm')}({n.x(0)}, {n.x(1)}, {axis}, {lit(eps)})")


@register("InstanceNormalization", since=6)
def instancenormalization_6(n: Node) -> None:
    n.assign(f"F.instance_norm({n.x(0)}, weight={n.x(1)}, bias={n.x(2)}, eps={lit(n.attr('epsilon', 1e-5))})")


@register("GroupNormalization", since=18)
def groupnormalization_18(n: Node) -> None:
    g, eps = n.attr("num_groups"), n.attr("epsilon", 1e-5)
    x, s, b = n.x(0), n.x(1), n.x(2)
    if n.opset < 21:
        s = f"{s}.repeat_interleave({x}.shape[1] // {g})"
        b = f"{b}.repeat_interleave({x}.shape[1] // {g})"
    n.assign(f"F.group_norm({x}, {g}, {s}, {b}, {lit(eps)})")


@register("LRN", since=1)
def lrn_1(n: Node) -> None:
    size = n.attr("size")
    alpha, beta, bias = n.attr("alpha", 1e-4), n.attr("beta", 0.75), n.attr("bias", 1.0)
    n.assign(f"F.local_response_norm({n.x(0)}, {size}, alpha={lit(alpha)}, beta={lit(beta)}, k={lit(bias)})")


@register("MeanVarianceNormalization", since=9)
def meanvariancenormalization_9(n: Node) -> None:
    axes = tuple(n.attr("axes", [0, 2, 3]))
    x = n.x(0)
    mean = n.tmp("mean")
    n.emit(f"{mean} = {x}.mean(dim={lit(axes)}, keepdim=True)")
    n.assign(f"({x} - {mean}) / (torch.sqrt(({x} * {x}).mean(dim={lit(axes)}, keepdim=True) - {mean} * {mean}) + 1e-9)")


@register("LpNormalization", since=1)
def lpnormalization_1(n: Node) -> None:
    x, axis, p = n.x(0), n.attr("axis", -1), n.attr("p", 2)
    norm = n.tmp("norm")
    n.emit(f"{norm} = torch.linalg.vector_norm({x}, ord={p}, dim={axis}, keepdim=True)")
    n.assign(f"torch.where({norm} == 0, 0, {x} / {norm}).to({x}.dtype)")


@register("Attention", since=23)
def attention_23(n: Node) -> None:
    from modelport.to_torch import dtypes

    sp = n.attr("softmax_precision")
    args = [n.x(i) or "None" for i in range(3)] + [n.x(i) or "None" for i in range(3, 7)]
    kw = (f"{n.attr('is_causal', 0)}, {lit(n.attr('q_num_heads'))}, {lit(n.attr('kv_num_heads'))}, "
          f"{lit(n.attr('scale'))}, {lit(n.attr('softcap', 0.0))}, {n.attr('qk_matmul_output_mode', 0)}, "
          f"{dtypes.torch_dtype(sp) if sp else 'None'}")
    call = f"{n.helper('_attention')}({', '.join(args)}, {kw})"
    if n.n_out == 1:
        n.assign(f"{call}[0]")
    else:
        n.assign_many(f"{call}[:{n.n_out}]", list(range(n.n_out)))
