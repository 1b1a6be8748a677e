"""The functions of modelport.to_torch.runtime run as code: each one that implements an ONNX
op against ONNX's reference evaluator on a one-node model, the others against what their
docstrings promise; and their source texts (what codegen copies into model.py) stand alone.

Where onnx.reference contradicts the ONNX spec (and onnxruntime), the case runs on
onnxruntime instead (``ref(..., ort=True)``) and says why.
"""

from __future__ import annotations

import builtins
import inspect
import math
import symtable

import ml_dtypes
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose, assert_array_equal
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator

from modelport.to_torch import runtime as rt
from modelport.to_torch.codegen import ModuleState
from modelport.to_torch.runtime import HELPERS

I64_MAX, I64_MIN = 2**63 - 1, -(2**63)
_LOW_FLOATS = {"float8_e4m3fn", "float8_e5m2", "bfloat16"}


def ref(op: str, inputs: list, n_out: int = 1, opset: int = 21, ort: bool = False, **attrs) -> list[np.ndarray]:
    """Outputs of a one-node ONNX model run by the reference evaluator (by onnxruntime if ``ort``).

    ``inputs`` are arrays, lists of arrays (sequences) or None (a missing optional input).
    """
    names, infos, feeds = [], [], {}
    for i, a in enumerate(inputs):
        if a is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if isinstance(a, list):
            elem = oh.np_dtype_to_tensor_dtype(a[0].dtype)
            infos.append(oh.make_tensor_sequence_value_info(name, elem, None))
        else:
            a = np.asarray(a)
            infos.append(oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(a.dtype), a.shape))
        feeds[name] = a
    while names and not names[-1]:
        names.pop()
    outs = [f"out{j}" for j in range(n_out)]
    node = oh.make_node(op, names, outs, **attrs)
    graph = oh.make_graph([node], "g", infos, [oh.make_empty_tensor_value_info(o) for o in outs])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    if not ort:
        return list(ReferenceEvaluator(model).run(None, feeds))
    typed = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.output
    del model.graph.output[:]
    model.graph.output.extend(oh.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None) for o in typed)
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    sess = onnxruntime.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def t(a):
    """A numpy array (float8 included) as a torch tensor; None stays None, a list is mapped."""
    if a is None:
        return None
    if isinstance(a, list):
        return [t(x) for x in a]
    a = np.ascontiguousarray(a)
    if a.dtype.name in ("float8_e4m3fn", "float8_e5m2"):
        return torch.from_numpy(a.view(np.uint8)).view(getattr(torch, a.dtype.name))
    return torch.from_numpy(a.copy())


def same(got: torch.Tensor, want: np.ndarray, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """got (torch) equals want (numpy) in shape and dtype; exactly for integers, else closely."""
    want = np.asarray(want)
    assert tuple(got.shape) == want.shape
    assert str(got.dtype).removeprefix("torch.") == want.dtype.name
    if want.dtype.name in _LOW_FLOATS:
        assert_array_equal(got.float().numpy(), want.astype(np.float32))
    elif want.dtype.kind in "iub":
        assert_array_equal(got.numpy(), want)
    else:
        assert_allclose(got.numpy(), want, rtol=rtol, atol=atol)


def rand(*shape, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# -- the source texts ------------------------------------------------------------------------


def test_helpers_are_the_functions_of_runtime():
    functions = {n: f for n, f in vars(rt).items() if inspect.isfunction(f) and f.__module__ == rt.__name__}
    assert list(HELPERS) == list(functions)
    for name, src in HELPERS.items():
        assert src == inspect.getsource(functions[name])
        assert src.startswith(f"def {name}(") and src.endswith("\n")


def _globals_read(src: str) -> set[str]:
    """Names a function's source reads from module scope (nested scopes included)."""
    out, tables = set(), [symtable.symtable(src, "<helper>", "exec")]
    while tables:
        tab = tables.pop()
        out |= {s.get_name() for s in tab.get_symbols() if s.is_global() and s.is_referenced()}
        tables += tab.get_children()
    return out


@pytest.mark.parametrize("name", list(HELPERS))
def test_helper_source_stands_alone(name):
    """What codegen copies for a helper defines it in a namespace of only torch, F and math."""
    ms = ModuleState(types={}, opsets={}, trainable=set())
    ms.helper(name)
    assert ms.helpers[-1] == name
    ns = {"torch": torch, "F": F, "math": math}
    for h in ms.helpers:
        exec(HELPERS[h], ns)  # noqa: S102  (our own source, as model.py runs it)
    assert inspect.isfunction(ns[name]) and ns[name].__name__ == name
    unresolved = {g for h in ms.helpers for g in _globals_read(HELPERS[h])} - set(ns) - set(dir(builtins))
    assert not unresolved, unresolved


def test_codegen_copies_callees_first_and_only_them():
    ms = ModuleState(types={}, opsets={}, trainable=set())
    ms.helper("_avg_pool")
    assert ms.helpers == ["_same_pads", "_pool_pads", "_window_sum", "_avg_pool"]
    ms = ModuleState(types={}, opsets={}, trainable=set())
    ms.helper("_dynamic_quantize")  # "_quantize(" is part of its own name, not a call
    assert ms.helpers == ["_dynamic_quantize"]


def test_copied_source_computes_what_runtime_does():
    ns = {"torch": torch, "F": F, "math": math}
    for h in ("_same_pads", "_pool_pads", "_window_sum", "_avg_pool"):
        exec(HELPERS[h], ns)  # noqa: S102
    x = t(rand(1, 2, 5, 6))
    args = ([3, 2], [2, 2], [1, 0, 0, 1], [1, 1], True, None, 0)
    assert torch.equal(ns["_avg_pool"](x, *args), rt._avg_pool(x, *args))


# -- elementwise -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_div(dtype):
    a = np.array([7, -7, 7, -7, 0, 9], dtype)
    b = np.array([2, 2, -2, -2, 3, 4], dtype)
    (want,) = ref("Div", [a, b], opset=14)
    same(rt._div(t(a), t(b)), want)


def test_div_truncates_integers_toward_zero():
    got = rt._div(torch.tensor([-7, 7]), torch.tensor([2, -2]))
    assert got.tolist() == [-3, -3]


@pytest.mark.parametrize("to", [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2])
def test_cast_f8_saturate(to):
    x = np.array([0.0, 0.3, -1.7, 300.0, 1e5, -1e6, np.inf, -np.inf, 57344.0], np.float32)
    (want,) = ref("Cast", [x], opset=21, to=to, saturate=1)
    dtype = getattr(torch, oh.tensor_dtype_to_np_dtype(to).name)
    got = rt._cast_f8_saturate(t(x), dtype)
    same(got, want)
    assert got.float().abs().max().item() == torch.finfo(dtype).max  # infinities clamp to the max


# -- shapes and indexing ---------------------------------------------------------------------


@pytest.mark.parametrize(("shape_in", "shape", "allowzero"), [
    ((2, 3, 4), [0, -1], 0),
    ((2, 3, 4), [4, 0, -1], 0),
    ((2, 3, 4), [-1, 0, 2], 0),
    ((0, 3), [3, 0], 1),
    ((2, 0, 4), [4, 0, 2], 1),
    ((2, 3, 4), [6, 4], 1),
])
def test_reshape(shape_in, shape, allowzero):
    x = rand(*shape_in)
    (want,) = ref("Reshape", [x, np.array(shape, np.int64)], opset=21, allowzero=allowzero)
    same(rt._reshape(t(x), shape, allowzero), want)


@pytest.mark.parametrize(("shape_in", "shape"), [
    ((3, 1), [2, 1, 4]),
    ((2, 3), [3]),
    ((1, 3), [4, 1]),
    ((2, 1, 3), [1, 5, 1]),
])
def test_expand(shape_in, shape):
    x = rand(*shape_in)
    (want,) = ref("Expand", [x, np.array(shape, np.int64)], opset=13)
    same(rt._expand(t(x), shape), want)


@pytest.mark.parametrize(("starts", "ends", "axes", "steps"), [
    ([1], [4], None, None),
    ([-4], [-1], [1], [1]),
    ([4], [0], [-1], [-1]),
    ([-1], [-100], [2], [-2]),
    ([10], [20], [2], None),
    ([5], [I64_MIN], [2], [-1]),
    ([0], [I64_MAX], [1], [2]),
    ([0, 1], [2, -1], [0, 2], [1, 3]),
    ([1], [3], [2], [-1]),
    ([-100], [100], [0], [1]),
    ([3, -1], [-6, I64_MIN], [1, 0], [-2, -1]),
])
def test_slice(starts, ends, axes, steps):
    x = np.arange(2 * 5 * 6, dtype=np.int64).reshape(2, 5, 6)
    arr = [np.array(v, np.int64) if v is not None else None for v in (starts, ends, axes, steps)]
    (want,) = ref("Slice", [x, *arr], opset=13)
    same(rt._slice(t(x), starts, ends, axes, steps), want)


@pytest.mark.parametrize("axes", [[0], [-1], [0, -1], [1, 3], [-4, 2]])
def test_unsqueeze(axes):
    x = rand(2, 3)
    (want,) = ref("Unsqueeze", [x, np.array(axes, np.int64)], opset=21)
    same(rt._unsqueeze(t(x), axes), want)


@pytest.mark.parametrize(("indices", "batch_dims"), [
    ([[0, 1], [1, -1]], 0),
    ([[1], [0], [-2]], 0),
    ([[0, 2, 3], [1, -3, -1]], 0),
    ([[[1], [2]], [[0], [-1]]], 1),
    ([[[1, 3]], [[2, 0]]], 1),
])
def test_gather_nd(indices, batch_dims):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    idx = np.array(indices, np.int64)
    (want,) = ref("GatherND", [data, idx], opset=13, batch_dims=batch_dims)
    same(rt._gather_nd(t(data), t(idx), batch_dims), want)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize(("indices", "upd_shape"), [([[0], [2]], (2, 3)), ([[1, 2], [3, 0], [0, 0]], (3,))])
def test_scatter_nd(reduction, indices, upd_shape):
    data = rand(4, 3, seed=1)
    idx = np.array(indices, np.int64)
    upd = rand(*upd_shape, seed=2)
    (want,) = ref("ScatterND", [data, idx, upd], opset=18, reduction=reduction)
    same(rt._scatter_nd(t(data), t(idx), t(upd), reduction), want)


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
def test_scatter_nd_repeated_indices_reduce(reduction):
    data = rand(4, 3, seed=1)
    idx = np.array([[1], [3], [1]], np.int64)
    upd = rand(3, 3, seed=2)
    (want,) = ref("ScatterND", [data, idx, upd], opset=18, reduction=reduction)
    same(rt._scatter_nd(t(data), t(idx), t(upd), reduction), want)


@pytest.mark.parametrize(("mode", "pads", "axes"), [
    ("constant", [1, 0, 2, 3], None),
    ("constant", [2, 1], [-1]),
    ("edge", [1, 2, 2, 1], None),
    ("reflect", [2, 3, 1, 2], None),
    ("wrap", [1, 4, 2, 3], None),
    ("edge", [3, 0], [0]),
    ("reflect", [0, 2], [1]),
])
def test_pad(mode, pads, axes):
    x = rand(3, 4)
    value = np.array(1.5, np.float32) if mode == "constant" else None
    arr_axes = None if axes is None else np.array(axes, np.int64)
    (want,) = ref("Pad", [x, np.array(pads, np.int64), value, arr_axes], opset=21, mode=mode)
    got = rt._pad(t(x), pads, mode, 1.5 if mode == "constant" else 0.0, axes)
    same(got, want)


def test_pad_integers():
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    (want,) = ref("Pad", [x, np.array([0, 1, 1, 2], np.int64), np.array(-7, np.int32)], opset=21)
    same(rt._pad(t(x), [0, 1, 1, 2], "constant", -7), want)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize(("axis", "dtype"), [(0, np.float32), (1, np.int64), (-1, np.int32)])
def test_cumsum(exclusive, reverse, axis, dtype):
    x = np.array([[1, 2, 3, 4], [-5, 6, 0, 2], [3, -1, 2, 2]], dtype)
    (want,) = ref("CumSum", [x, np.array(axis, np.int64)], opset=14, exclusive=exclusive, reverse=reverse)
    same(rt._cumsum(t(x), axis, exclusive, reverse), want)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize(("axis", "dtype"), [(0, np.float32), (1, np.int64), (-1, np.float64)])
def test_cumprod(exclusive, reverse, axis, dtype):
    x = np.array([[1, 2, 3, 4], [-5, 6, 0, 2], [3, -1, 2, 2]], dtype)
    (want,) = ref("CumProd", [x, np.array(axis, np.int64)], opset=26, exclusive=exclusive, reverse=reverse)
    same(rt._cumprod(t(x), axis, exclusive, reverse), want)


@pytest.mark.parametrize(("shape", "axis"), [((6,), -1), ((2, 3), -1), ((2, 3), 0), ((2, 3), 1)])
def test_onehot(shape, axis):
    indices = np.array([0, 2, -1, 5, -4, 3], np.int64).reshape(shape)  # 5 and -5 are out of range
    depth, values = np.array(4, np.int64), np.array([-1.0, 3.0], np.float32)
    (want,) = ref("OneHot", [indices, depth, values], opset=11, axis=axis)
    same(rt._onehot(t(indices), 4, t(values), axis), want)


@pytest.mark.parametrize(("shape", "batch_axis", "time_axis", "lens"), [
    ((4, 2, 3), 1, 0, [3, 1]),
    ((2, 4, 3), 0, 1, [4, 2]),
    ((3, 3), 1, 0, [1, 2, 3]),
])
def test_reverse_sequence(shape, batch_axis, time_axis, lens):
    x = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    lens = np.array(lens, np.int64)
    (want,) = ref("ReverseSequence", [x, lens], opset=10, batch_axis=batch_axis, time_axis=time_axis)
    same(rt._reverse_sequence(t(x), t(lens), batch_axis, time_axis), want)


_UNIQUE_INPUTS = {
    "flat": (np.array([2.0, 1.0, 1.0, 3.0, 4.0, 3.0], np.float32), None),
    "2d-flattened": (np.array([[1, 3], [4, 3]], np.int64), None),
    "rows": (np.array([[1, 0, 0], [1, 0, 0], [2, 3, 4], [0, 1, 1], [2, 3, 4]], np.float32), 0),
    "columns": (np.array([[1, 0, 1, 2], [2, 3, 2, 0]], np.int64), 1),
    "columns-negative": (np.array([[1, 0, 1, 2], [2, 3, 2, 0]], np.int64), -1),
}


# onnx.reference's unsorted Unique takes its rows along axis 0 of the unflattened input, so
# sorted=0 runs here on 1-D input and axis 0 only (the others: test_unique_unsorted)
@pytest.mark.parametrize(("name", "sorted_"), [(n, 1) for n in _UNIQUE_INPUTS] + [("flat", 0), ("rows", 0)])
def test_unique(name, sorted_):
    x, axis = _UNIQUE_INPUTS[name]
    kw = {} if axis is None else {"axis": axis}
    want = ref("Unique", [x], n_out=4, opset=11, sorted=sorted_, **kw)
    for got, w in zip(rt._unique(t(x), axis, sorted_), want, strict=True):
        same(got, w)


@pytest.mark.parametrize(("x", "axis", "want"), [
    ([[1, 3], [4, 3]], None, ([1, 3, 4], [0, 1, 2], [0, 1, 2, 1], [1, 2, 1])),
    ([[1, 0, 1, 2], [2, 3, 2, 0]], 1, ([[1, 0, 2], [2, 3, 0]], [0, 1, 3], [0, 1, 0, 2], [2, 1, 1])),
    ([[1, 0, 1, 2], [2, 3, 2, 0]], -1, ([[1, 0, 2], [2, 3, 0]], [0, 1, 3], [0, 1, 0, 2], [2, 1, 1])),
])
def test_unique_unsorted(x, axis, want):
    """sorted=0: values in order of first occurrence (by hand, from the ONNX spec)."""
    got = rt._unique(torch.tensor(x), axis, 0)
    for g, w in zip(got, want, strict=True):
        assert g.tolist() == w


@pytest.mark.parametrize(("dims", "keepdim"), [(1, 1), ([0, 2], 0), ([-1, 0], 1), ([0, 1, 2], 0), ([-2], 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_reduce_prod(dims, keepdim, dtype):
    x = np.array([[[1, 2, -1], [3, 1, 2]], [[2, 2, 1], [-1, 3, 1]]], dtype)
    axes = np.array([dims] if isinstance(dims, int) else dims, np.int64)
    (want,) = ref("ReduceProd", [x, axes], opset=18, keepdims=keepdim)
    same(rt._reduce_prod(t(x), dims, keepdim), want)


@pytest.mark.parametrize("pos", [0, 1, -1, -3])
def test_seq_insert(pos):
    seq = [rand(2, seed=i) for i in range(3)]
    new = rand(2, seed=9)
    (want,) = ref("SequenceInsert", [seq, new, np.array(pos, np.int64)], opset=11)
    before = t(seq)
    got = rt._seq_insert(before, t(new), pos)
    assert len(got) == len(want) == 4 and len(before) == 3  # a new list; the input stays
    for g, w in zip(got, want, strict=True):
        same(g, w)


def test_seq_insert_at_length_appends():
    """position == len(seq) appends (ONNX accepts [-n, n]; onnx.reference wraps n to 0)."""
    seq = [torch.tensor([0.0]), torch.tensor([1.0])]
    got = rt._seq_insert(seq, torch.tensor([2.0]), 2)
    assert [g.item() for g in got] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("pos", [0, 1, -1, -3])
def test_seq_erase(pos):
    seq = [rand(2, seed=i) for i in range(3)]
    (want,) = ref("SequenceErase", [seq, np.array(pos, np.int64)], opset=11)
    before = t(seq)
    got = rt._seq_erase(before, pos)
    assert len(got) == len(want) == 2 and len(before) == 3
    for g, w in zip(got, want, strict=True):
        same(g, w)


# -- convolution padding and pooling ---------------------------------------------------------


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize(("size", "kernel", "strides", "dilations"), [
    ((7, 6), [3, 2], [2, 2], [1, 1]),
    ((5, 8), [2, 4], [1, 3], [1, 1]),
    ((6, 6), [3, 3], [1, 2], [2, 1]),
])
def test_same_pads_match_conv_auto_pad(auto_pad, size, kernel, strides, dilations):
    x, w = rand(1, 2, *size), rand(3, 2, *kernel, seed=1)
    (want,) = ref("Conv", [x, w], opset=11, auto_pad=auto_pad, strides=strides, dilations=dilations)
    pads = rt._same_pads(size, kernel, strides, dilations, auto_pad == "SAME_UPPER")
    got = F.conv2d(F.pad(t(x), pads), t(w), None, strides, 0, dilations)
    same(got, want)


def test_same_pads_puts_the_odd_pad_at_the_end_for_upper():
    # size 5, kernel 2, stride 1: one pad in all; F.pad order is (last dim begin, end, ...)
    assert rt._same_pads([5], [2], [1], [1], True) == [0, 1]
    assert rt._same_pads([5], [2], [1], [1], False) == [1, 0]
    assert rt._same_pads([6, 5], [1, 3], [2, 1], [1, 1], True) == [1, 1, 0, 0]


def test_pool_pads():
    x = torch.zeros(1, 1, 5)
    # ceil_mode adds the end padding that makes the last, partial window whole
    assert rt._pool_pads(x, [2], [2], [0, 0], [1], True, None) == ([0, 1], [0, 1])
    assert rt._pool_pads(x, [2], [2], [0, 0], [1], False, None) == ([0, 0], [0, 0])
    # SAME_UPPER: total 2 split evenly; explicit pads come back in F.pad order
    assert rt._pool_pads(x, [3], [2], [0, 0], [1], False, True) == ([1, 1], [0, 0])
    assert rt._pool_pads(torch.zeros(1, 1, 4, 6), [2, 2], [1, 1], [1, 2, 3, 4], [1, 1], False, None) == (
        [2, 4, 1, 3], [0, 0, 0, 0])
    # a ceil window that would start inside the end padding is dropped
    assert rt._pool_pads(torch.zeros(1, 1, 3), [1], [2], [0, 1], [1], True, None) == ([0, 1], [0, 0])


def test_window_sum():
    x = t(rand(1, 2, 7))
    got = rt._window_sum(x, [3], [2], [2])
    want = torch.stack([x[..., i:i + 5:2].sum(-1) for i in range(0, 3, 2)], -1)
    assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    x2 = t(rand(2, 3, 4, 5))
    assert_allclose(rt._window_sum(x2, [4, 5], [1, 1], [1, 1]).numpy(),
                    x2.sum((2, 3), keepdim=True).numpy(), rtol=1e-5)


POOLS = [
    dict(kernel_shape=[3], strides=[2], pads=[1, 0]),
    dict(kernel_shape=[3], strides=[2], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 1], pads=[0, 1, 2, 1]),
    dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[2, 2], strides=[2, 1], dilations=[2, 1], pads=[1, 0, 0, 1], ceil_mode=1),
    dict(kernel_shape=[2, 3], strides=[3, 2], pads=[1, 1, 1, 1], ceil_mode=1),
]


def _pool_input(attrs, dtype=np.float32):
    shape = (2, 3, 7) if len(attrs["kernel_shape"]) == 1 else (2, 3, 7, 6)
    return rand(*shape, dtype=dtype)


def _pool_args(attrs):
    k = len(attrs["kernel_shape"])
    auto = attrs.get("auto_pad", "NOTSET")
    same_ = None if auto == "NOTSET" else auto == "SAME_UPPER"
    return (attrs["kernel_shape"], attrs.get("strides", [1] * k), attrs.get("pads", [0] * 2 * k),
            attrs.get("dilations", [1] * k), bool(attrs.get("ceil_mode", 0)), same_)


@pytest.mark.parametrize("attrs", POOLS)
def test_max_pool(attrs):
    x = _pool_input(attrs)
    # onnx.reference's MaxPool makes SAME_LOWER output ceil(n / s) - 1 long for odd n: 7 -> 3
    wrong = attrs.get("auto_pad") == "SAME_LOWER"
    (want,) = ref("MaxPool", [x], opset=21, ort=wrong, **attrs)
    same(rt._max_pool(t(x), *_pool_args(attrs)), want)


def test_max_pool_integers():
    attrs = dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1)
    x = np.random.default_rng(0).integers(-128, 127, (1, 2, 5, 5)).astype(np.int8)
    (want,) = ref("MaxPool", [x], opset=21, **attrs)
    same(rt._max_pool(t(x), *_pool_args(attrs)), want)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("attrs", POOLS)
def test_avg_pool(attrs, count_include_pad):
    x = _pool_input(attrs)
    (want,) = ref("AveragePool", [x], opset=21, count_include_pad=count_include_pad, **attrs)
    same(rt._avg_pool(t(x), *_pool_args(attrs), count_include_pad), want)


@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("attrs", POOLS)
def test_lp_pool(attrs, p):
    x = _pool_input(attrs)
    # onnx.reference's LpPool is its AveragePool times the kernel size: wrong for windows cut by ceil_mode
    (want,) = ref("LpPool", [x], opset=21, ort=bool(attrs.get("ceil_mode")), p=p, **attrs)
    same(rt._lp_pool(t(x), *_pool_args(attrs), p), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 1], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3], strides=[2], pads=[1, 1]),
])
def test_max_pool_with_indices(attrs, storage_order):
    x = _pool_input(attrs)
    want_y, want_i = ref("MaxPool", [x], n_out=2, opset=21, storage_order=storage_order, **attrs)
    k = len(attrs["kernel_shape"])
    kernel, strides, pads, dil, ceil, _ = _pool_args(attrs)
    y, idx = rt._max_pool_with_indices(t(x), kernel, strides, pads[:k], dil, ceil, storage_order)
    same(y, want_y)
    same(idx, want_i)


# -- normalization and losses ----------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(("axis", "dtype"), [(-1, np.float32), (1, np.float32), (2, np.float64), (-1, np.float16)])
def test_layer_norm(axis, dtype, with_bias):
    x = rand(2, 3, 4, dtype=dtype)
    norm_shape = x.shape[axis % 3:]
    scale, bias = rand(*norm_shape, seed=1, dtype=dtype), rand(*norm_shape, seed=2, dtype=dtype)
    # Mean and InvStdDev are float32 (stash_type); onnx.reference returns them in float16
    want = ref("LayerNormalization", [x, scale, bias if with_bias else None], n_out=3, opset=17,
               ort=dtype == np.float16, axis=axis, epsilon=1e-5)
    got = rt._layer_norm(t(x), t(scale), t(bias) if with_bias else None, axis, 1e-5)
    tol = 2e-3 if dtype == np.float16 else 1e-5
    for g, w in zip(got, want, strict=True):
        same(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_rms_norm(axis):
    x = rand(2, 3, 4)
    scale = rand(*x.shape[axis % 3:], seed=1)
    (want,) = ref("RMSNormalization", [x, scale], opset=23, axis=axis, epsilon=1e-5)
    same(rt._rms_norm(t(x), t(scale), axis, 1e-5), want)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize(("shape", "ignore_index"), [((4, 3), None), ((4, 3), 1), ((2, 3, 4), 2), ((2, 3, 4), None)])
def test_nll_loss(reduction, with_weight, shape, ignore_index):
    x = rand(*shape)
    rng = np.random.default_rng(3)
    target = rng.integers(0, shape[1], (shape[0],) + shape[2:]).astype(np.int64)
    weight = rand(shape[1], seed=4) ** 2 if with_weight else None
    kw = {} if ignore_index is None else {"ignore_index": ignore_index}
    (want,) = ref("NegativeLogLikelihoodLoss", [x, target, weight], opset=22, reduction=reduction, **kw)
    got = rt._nll_loss(t(x), t(target), t(weight), reduction, ignore_index)
    same(got, want)


# -- resize ----------------------------------------------------------------------------------


RESIZES = [
    dict(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor"),
    dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    dict(mode="nearest", coordinate_transformation_mode="align_corners", nearest_mode="round_prefer_ceil"),
    dict(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="ceil"),
    dict(mode="linear", coordinate_transformation_mode="half_pixel"),
    dict(mode="linear", coordinate_transformation_mode="align_corners"),
    dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"),
    dict(mode="linear", coordinate_transformation_mode="asymmetric"),
    dict(mode="cubic", coordinate_transformation_mode="half_pixel"),
    dict(mode="cubic", coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.5, exclude_outside=1),
    dict(mode="cubic", coordinate_transformation_mode="align_corners"),
]


def _resize_args(attrs):
    return (attrs["mode"], attrs["coordinate_transformation_mode"], attrs.get("cubic_coeff_a", -0.75),
            attrs.get("exclude_outside", 0), attrs.get("extrapolation_value", 0.0),
            attrs.get("nearest_mode", "round_prefer_floor"), attrs.get("antialias", 0),
            attrs.get("axes"), attrs.get("keep_aspect_ratio_policy", "stretch"))


@pytest.mark.parametrize("scales", [[1.0, 1.0, 2.0, 1.5], [1.0, 1.0, 0.6, 0.5]])
@pytest.mark.parametrize("attrs", RESIZES)
def test_resize_scales(attrs, scales):
    x = rand(1, 2, 4, 5)
    # align_corners divides by the output length; onnx.reference uses n * scale unrounded (7.5, not 7)
    wrong = attrs["coordinate_transformation_mode"] == "align_corners" and scales[3] * 5 != int(scales[3] * 5)
    (want,) = ref("Resize", [x, None, np.array(scales, np.float32)], opset=19, ort=wrong, **attrs)
    same(rt._resize(t(x), None, scales, None, *_resize_args(attrs)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", [
    dict(mode="linear", coordinate_transformation_mode="half_pixel"),
    dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    dict(mode="linear", coordinate_transformation_mode="half_pixel", keep_aspect_ratio_policy="not_larger"),
    dict(mode="cubic", coordinate_transformation_mode="half_pixel", keep_aspect_ratio_policy="not_smaller"),
    dict(mode="linear", coordinate_transformation_mode="half_pixel", axes=[-1, 2]),
    dict(mode="linear", coordinate_transformation_mode="half_pixel", antialias=1),
    dict(mode="cubic", coordinate_transformation_mode="half_pixel", antialias=1),
])
def test_resize_sizes(attrs):
    x = rand(1, 2, 6, 9)
    sizes = [3, 4] if "axes" in attrs else [1, 2, 3, 4]
    wrong = any(a < 0 for a in attrs.get("axes", []))  # onnx.reference fails on negative axes
    (want,) = ref("Resize", [x, None, None, np.array(sizes, np.int64)], opset=19, ort=wrong, **attrs)
    same(rt._resize(t(x), None, None, sizes, *_resize_args(attrs)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_resize_tf_crop_and_resize(mode):
    attrs = dict(mode=mode, coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-3.0)
    x = rand(1, 1, 4, 5)
    roi = [0, 0, -0.2, 0.3, 1, 1, 0.8, 1.4]  # partly outside the image: extrapolated
    sizes = [1, 1, 3, 4]
    (want,) = ref("Resize", [x, np.array(roi, np.float32), None, np.array(sizes, np.int64)], opset=19, **attrs)
    same(rt._resize(t(x), roi, None, sizes, *_resize_args(attrs)), want, rtol=1e-5, atol=1e-5)


def test_resize_integers_round_and_saturate():
    x = np.array([[[[0, 255, 10], [200, 3, 250]]]], np.uint8)
    attrs = dict(mode="cubic", coordinate_transformation_mode="half_pixel")
    (want,) = ref("Resize", [x, None, np.array([1, 1, 2, 2], np.float32)], opset=19, **attrs)
    same(rt._resize(t(x), None, [1, 1, 2, 2], None, *_resize_args(attrs)), want)


def test_resize_matrix_rows_are_weights():
    w, outside = rt._resize_matrix(3, 5, 5 / 3, "linear", "align_corners", -0.75, 0, "round_prefer_floor",
                                   0, (0.0, 1.0))
    assert_allclose(w.numpy(), [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1]])
    assert not outside.any()
    w, _ = rt._resize_matrix(4, 2, 0.5, "nearest", "asymmetric", -0.75, 0, "floor", 0, (0.0, 1.0))
    assert_array_equal(w.numpy(), [[1, 0, 0, 0], [0, 0, 1, 0]])


# -- quantization ----------------------------------------------------------------------------


def test_q_param():
    x = torch.zeros(2, 6, 4)
    assert rt._q_param(torch.tensor(0.5), x, 1, 0).shape == ()
    assert rt._q_param(torch.tensor([0.5]), x, 1, 0).shape == ()
    per_axis = rt._q_param(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), x, 1, 0)
    assert per_axis.shape == (1, 6, 1) and per_axis[0, :, 0].tolist() == [1, 2, 3, 4, 5, 6]
    assert rt._q_param(torch.tensor([1.0, 2.0, 3.0, 4.0]), x, -1, 0).shape == (1, 1, 4)
    blocked = rt._q_param(torch.tensor([[[1.0], [2.0], [3.0]]] * 2), x, 1, 2)  # blocks of 2 along axis 1
    assert blocked.shape == (2, 6, 1) and blocked[0, :, 0].tolist() == [1, 1, 2, 2, 3, 3]
    ragged = rt._q_param(torch.tensor([[[1.0], [2.0], [3.0]]] * 2), torch.zeros(2, 5, 4), 1, 2)
    assert ragged[0, :, 0].tolist() == [1, 1, 2, 2, 3]  # the last block is cut to the axis


QUANTS = [  # (x shape, scale, zero point, attrs)
    ((2, 3), np.float32(0.1), np.uint8(128), {}),
    ((2, 3), np.float32(0.05), np.int8(-3), {}),
    ((2, 3), np.float32(0.02), None, {}),
    ((2, 3), np.float32(1e-3), np.int16(7), {}),
    ((2, 3, 4), np.array([0.1, 0.2, 0.05], np.float32), np.array([1, -2, 0], np.int8), {"axis": 1}),
    ((2, 3, 4), np.array([0.1, 0.2, 0.05, 0.3], np.float32), np.array([9, 0, 250, 3], np.uint8), {"axis": -1}),
    ((2, 6), np.array([[0.1, 0.2, 0.05], [0.3, 0.02, 0.1]], np.float32),
     np.array([[0, 1, 2], [3, 4, 5]], np.int8), {"axis": 1, "block_size": 2}),
    ((2, 5), np.array([[0.1, 0.2, 0.05], [0.3, 0.02, 0.1]], np.float32), None, {"axis": 1, "block_size": 2}),
]


@pytest.mark.parametrize(("shape", "scale", "zp", "attrs"), QUANTS)
def test_quantize(shape, scale, zp, attrs):
    x = rand(*shape) * 4
    x.reshape(-1)[:3] = [0.25, -0.15, 1000.0]  # ties round to even; far values saturate
    scale = np.asarray(scale)
    (want,) = ref("QuantizeLinear", [x, scale, None if zp is None else np.asarray(zp)], opset=21, **attrs)
    dtype = torch.uint8 if zp is None else getattr(torch, np.asarray(zp).dtype.name)
    got = rt._quantize(t(x), t(scale), None if zp is None else t(np.asarray(zp)), dtype,
                       attrs.get("axis", 1), attrs.get("block_size", 0))
    same(got, want)


def test_quantize_rounds_the_float32_quotient():
    """0.25 / 0.02 is 12.5 in float32 (ties to even: 12), 12.50000028 in float64 (13)."""
    got = rt._quantize(torch.tensor([0.25, 0.75]), torch.tensor(0.02), None, torch.uint8)
    assert got.tolist() == [12, 38]
    (want,) = ref("QuantizeLinear", [np.array([0.25, 0.75], np.float32), np.array(0.02, np.float32)])
    assert want.tolist() == [12, 38]


@pytest.mark.parametrize("f8", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2])
def test_quantize_to_float8_saturates(f8):
    x = np.array([0.0, 0.3, -1.7, 300.0, 1e5, -1e6], np.float32)
    scale, zp = np.array(0.5, np.float32), np.array(0, f8)
    (want,) = ref("QuantizeLinear", [x, scale, zp], opset=21, saturate=1)
    same(rt._quantize(t(x), t(scale), t(zp), getattr(torch, np.dtype(f8).name)), want)


@pytest.mark.parametrize(("shape", "scale", "zp", "attrs"), QUANTS)
def test_dequantize(shape, scale, zp, attrs):
    rng = np.random.default_rng(5)
    dt = np.uint8 if zp is None else np.asarray(zp).dtype
    info = np.iinfo(dt)
    x = rng.integers(info.min, info.max, shape, endpoint=True).astype(dt)
    scale = np.asarray(scale)
    (want,) = ref("DequantizeLinear", [x, scale, None if zp is None else np.asarray(zp)], opset=21, **attrs)
    got = rt._dequantize(t(x), t(scale), None if zp is None else t(np.asarray(zp)),
                         attrs.get("axis", 1), attrs.get("block_size", 0))
    same(got, want)


def test_dequantize_int32_and_float8():
    x = np.array([-70000, 0, 3, 2**31 - 1], np.int32)
    scale = np.array(0.5, np.float32)
    (want,) = ref("DequantizeLinear", [x, scale], opset=21)
    same(rt._dequantize(t(x), t(scale)), want)
    x8 = np.array([0.5, -3.0, 448.0, 0.015625], ml_dtypes.float8_e4m3fn)
    zp8 = np.array(0, ml_dtypes.float8_e4m3fn)
    (want,) = ref("DequantizeLinear", [x8, scale, zp8], opset=21)
    same(rt._dequantize(t(x8), t(scale), t(zp8)), want)


def test_dequantize_to_a_given_dtype():
    x, scale, zp = np.array([3, 200, 17], np.uint8), np.array(0.1, np.float32), np.array(10, np.uint8)
    got = rt._dequantize(t(x), t(scale), t(zp), 1, 0, torch.float64)
    assert got.dtype == torch.float64
    assert_allclose(got.numpy(), (x.astype(np.float64) - 10) * np.float64(np.float32(0.1)))


@pytest.mark.parametrize("x", [
    np.array([[0.5, -1.25, 3.0], [2.0, -0.7, 0.0]], np.float32),
    np.array([1.0, 2.5, 7.0, 0.3], np.float32),
    np.array([-1.0, -2.5, -7.0, -0.3], np.float32),
    np.array([-128.5, 17.0, 0.01, 64.2], np.float32),
])
def test_dynamic_quantize(x):
    want = ref("DynamicQuantizeLinear", [x], n_out=3, opset=11)
    for got, w in zip(rt._dynamic_quantize(t(x)), want, strict=True):
        same(got, w)


def _matmul_integer(a, b, a_zp, b_zp):
    """The expression codegen emits for MatMulInteger."""
    return ((t(a).double() - rt._row_zp(t(a_zp))) @ (t(b).double() - t(b_zp).double())).to(torch.int32)


def test_row_zp_in_matmul_integer():
    rng = np.random.default_rng(6)
    a, b = rng.integers(0, 255, (3, 4)).astype(np.uint8), rng.integers(0, 255, (4, 2)).astype(np.uint8)
    a_zp, b_zp = np.array(200, np.uint8), np.array(9, np.uint8)
    (want,) = ref("MatMulInteger", [a, b, a_zp, b_zp], opset=10)
    same(_matmul_integer(a, b, a_zp, b_zp), want)
    # per-row zero points (in the spec; neither onnx.reference nor onnxruntime takes them)
    a_zp = np.array([1, 100, 255], np.uint8)
    row = rt._row_zp(t(a_zp))
    assert row.dtype == torch.float64 and row.shape == (3, 1)
    want = ((a.astype(np.int64) - a_zp[:, None]) @ (b.astype(np.int64) - 9)).astype(np.int32)
    same(_matmul_integer(a, b, a_zp, b_zp), want)


def test_channel_zp_in_conv_integer():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 255, (1, 2, 5, 5)).astype(np.uint8)
    w = rng.integers(0, 255, (3, 2, 3, 3)).astype(np.uint8)
    x_zp, w_zp = np.array(4, np.uint8), np.array([0, 128, 255], np.uint8)
    (want,) = ref("ConvInteger", [x, w, x_zp, w_zp], opset=10)
    zp = rt._channel_zp(t(w_zp), 4)
    assert zp.dtype == torch.float64 and zp.shape == (3, 1, 1, 1)
    got = F.conv2d(t(x).double() - t(x_zp).double(), t(w).double() - zp).to(torch.int32)
    same(got, want)
    assert rt._channel_zp(torch.tensor(5, dtype=torch.uint8), 4).shape == ()


# -- attention -------------------------------------------------------------------------------


def _attention_inputs(case):
    b, hq, hkv, sq, skv, d = 2, case.get("hq", 2), case.get("hkv", 2), 3, 4, 8
    three_d = case.get("three_d", False)
    if three_d:
        q, k, v = rand(b, sq, hq * d, seed=1), rand(b, skv, hkv * d, seed=2), rand(b, skv, hkv * d, seed=3)
    else:
        q, k, v = rand(b, hq, sq, d, seed=1), rand(b, hkv, skv, d, seed=2), rand(b, hkv, skv, d, seed=3)
    past = case.get("past", 0)
    pk = rand(b, hkv, past, d, seed=4) if past else None
    pv = rand(b, hkv, past, d, seed=5) if past else None
    total = skv + past
    mask = None
    if case.get("mask") == "bool":
        mask = np.random.default_rng(6).random((sq, total)) > 0.3
        mask[:, 0] = True
    elif case.get("mask") == "float":
        mask = rand(b, 1, sq, total, seed=7)
    return q, k, v, mask, pk, pv


ATTENTIONS = [
    {},
    {"mask": "bool"},
    {"mask": "float", "qk_matmul_output_mode": 1},
    {"is_causal": 1},
    {"is_causal": 1, "past": 2, "qk_matmul_output_mode": 2},
    {"past": 2, "mask": "float"},
    {"hq": 4, "hkv": 2, "qk_matmul_output_mode": 3},
    {"three_d": True, "hq": 3, "hkv": 1},
    {"three_d": True, "hq": 2, "hkv": 2, "is_causal": 1, "scale": 0.3},
    {"softcap": 2.0, "mask": "bool"},
    {"scale": 0.1, "softcap": 0.5, "qk_matmul_output_mode": 3},
    {"mask": "float", "softmax_precision": True, "qk_matmul_output_mode": 3},
]


@pytest.mark.parametrize("case", ATTENTIONS)
def test_attention(case):
    q, k, v, mask, pk, pv = _attention_inputs(case)
    attrs = {key: case[key] for key in ("is_causal", "scale", "softcap", "qk_matmul_output_mode") if key in case}
    if case.get("three_d"):
        attrs.update(q_num_heads=case["hq"], kv_num_heads=case["hkv"])
    if "softmax_precision" in case:
        attrs["softmax_precision"] = TensorProto.DOUBLE
    want = ref("Attention", [q, k, v, mask, pk, pv], n_out=4, opset=23, **attrs)
    got = rt._attention(t(q), t(k), t(v), t(mask), t(pk), t(pv), None, case.get("is_causal", 0),
                        attrs.get("q_num_heads"), attrs.get("kv_num_heads"), case.get("scale"),
                        case.get("softcap", 0.0), case.get("qk_matmul_output_mode", 0),
                        torch.float64 if "softmax_precision" in case else None)
    for g, w in zip(got, want, strict=True):  # y, present_key, present_value, qk_matmul_output
        same(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_nonpad_kv_seqlen(is_causal):
    """Opset 24: keys past each batch's nonpad_kv_seqlen are masked out."""
    q, k, v, *_ = _attention_inputs({})
    nonpad = np.array([2, 4], np.int64)
    (want,) = ref("Attention", [q, k, v, None, None, None, nonpad], opset=24, is_causal=is_causal)
    same(rt._attention(t(q), t(k), t(v), None, None, None, t(nonpad), is_causal)[0], want, rtol=1e-5, atol=1e-5)


def test_attention_short_mask_is_padded_with_masked_keys():
    q, k, v, *_ = _attention_inputs({})
    mask = np.array([[True, False], [True, True], [False, True]])  # 2 of the 4 keys
    (want,) = ref("Attention", [q, k, v, mask], opset=23)
    same(rt._attention(t(q), t(k), t(v), t(mask))[0], want, rtol=1e-5, atol=1e-5)


def test_attention_fully_masked_row_is_zero():
    q, k, v, *_ = _attention_inputs({})
    mask = np.ones((3, 4), bool)
    mask[1] = False
    y = rt._attention(t(q), t(k), t(v), t(mask))[0]
    assert torch.isfinite(y).all()
    assert torch.equal(y[:, :, 1], torch.zeros_like(y[:, :, 1]))
    assert not torch.equal(y[:, :, 0], torch.zeros_like(y[:, :, 0]))


# -- recurrent layers ------------------------------------------------------------------------


def _rnn_inputs(kind, dirs, layout, with_b=True, with_h0=True, with_p=False, seed=0):
    gates, hs, inp, seq, batch = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind], 5, 3, 4, 2
    x = rand(*((batch, seq, inp) if layout else (seq, batch, inp)), seed=seed) * 0.5
    w = rand(dirs, gates * hs, inp, seed=seed + 1) * 0.5
    r = rand(dirs, gates * hs, hs, seed=seed + 2) * 0.5
    b = rand(dirs, 2 * gates * hs, seed=seed + 3) * 0.5 if with_b else None
    st = (batch, dirs, hs) if layout else (dirs, batch, hs)
    h0 = rand(*st, seed=seed + 4) * 0.5 if with_h0 else None
    c0 = rand(*st, seed=seed + 5) * 0.5 if with_h0 and kind == "LSTM" else None
    p = rand(dirs, 3 * hs, seed=seed + 6) * 0.5 if with_p else None
    return x, w, r, b, h0, c0, p, hs


RNNS = [
    ("RNN", dict(dirs=1, layout=0), {}),
    ("RNN", dict(dirs=1, layout=1, with_b=False), {}),
    ("GRU", dict(dirs=2, layout=0), {"linear_before_reset": 0}),
    ("GRU", dict(dirs=1, layout=1, with_h0=False), {"linear_before_reset": 1}),
    ("GRU", dict(dirs=1, layout=0), {"linear_before_reset": 0, "direction": "reverse"}),
    ("LSTM", dict(dirs=2, layout=0), {}),
    ("LSTM", dict(dirs=1, layout=1, with_p=True), {}),
    ("LSTM", dict(dirs=1, layout=0, with_b=False, with_h0=False), {"direction": "reverse"}),
]


@pytest.mark.parametrize(("kind", "shape", "extra"), RNNS)
def test_rnn(kind, shape, extra):
    x, w, r, b, h0, c0, p, hs = _rnn_inputs(kind, **shape)
    direction = extra.get("direction", "bidirectional" if shape["dirs"] == 2 else "forward")
    inputs = [x, w, r, b, None, h0] + ([c0, p] if kind == "LSTM" else [])
    attrs = {"hidden_size": hs, "direction": direction, "layout": shape["layout"]}
    if kind == "GRU":
        attrs["linear_before_reset"] = extra["linear_before_reset"]
    n_out = 3 if kind == "LSTM" else 2
    want = ref(kind, inputs, n_out=n_out, opset=22, **attrs)
    got = rt._rnn(kind, t(x), t(w), t(r), t(b), None, t(h0), t(c0), t(p), hs, direction,
                  shape["layout"], None, None, extra.get("linear_before_reset", 0), 0)
    for g, wnt in zip(got[:n_out], want, strict=True):
        same(g, wnt, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_rnn_sequence_lens(kind, direction):
    """Past its length a sequence's outputs are zero and its last state is the one at its end,
    the same as running that sequence alone, cut to its length."""
    x, w, r, b, h0, c0, _, hs = _rnn_inputs(kind, 1, 0)
    lens = torch.tensor([4, 2])
    y, yh, yc = rt._rnn(kind, t(x), t(w), t(r), t(b), lens, t(h0), t(c0), None, hs, direction)
    assert torch.equal(y[2:, :, 1], torch.zeros_like(y[2:, :, 1]))
    cut = rt._rnn(kind, t(x[:2, 1:]), t(w), t(r), t(b), None, t(h0[:, 1:]),
                  None if c0 is None else t(c0[:, 1:]), None, hs, direction)
    assert_allclose(y[:2, :, 1:].numpy(), cut[0].numpy(), rtol=1e-6, atol=1e-6)
    assert_allclose(yh[:, 1:].numpy(), cut[1].numpy(), rtol=1e-6, atol=1e-6)
    full = rt._rnn(kind, t(x[:, :1]), t(w), t(r), t(b), None, t(h0[:, :1]),
                   None if c0 is None else t(c0[:, :1]), None, hs, direction)
    assert_allclose(y[:, :, :1].numpy(), full[0].numpy(), rtol=1e-6, atol=1e-6)
    if kind == "LSTM":
        assert_allclose(yc[:, 1:].numpy(), cut[2].numpy(), rtol=1e-6, atol=1e-6)


def test_rnn_activation_and_clip():
    """RNN with activations=[Relu] and clip: H = Relu(clip(X W^T + H R^T + Wb + Rb))."""
    x, w, r, b, h0, _, _, hs = _rnn_inputs("RNN", 1, 0)
    y, yh, _ = rt._rnn("RNN", t(x), t(w), t(r), t(b), None, t(h0), None, None, hs,
                       acts=["Relu"], clip=0.4)
    h = h0[0].astype(np.float64)
    for step in range(x.shape[0]):
        a = x[step] @ w[0].T + h @ r[0].T + b[0, :hs] + b[0, hs:]
        h = np.maximum(np.clip(a, -0.4, 0.4), 0)
        assert_allclose(y[step, 0].numpy(), h, rtol=1e-5, atol=1e-6)
    assert_allclose(yh[0].numpy(), h, rtol=1e-5, atol=1e-6)


def test_lstm_input_forget_couples_the_gates():
    """input_forget=1: the forget gate is 1 - input gate, whatever the forget weights are."""
    x, w, r, b, h0, c0, _, hs = _rnn_inputs("LSTM", 1, 0)
    w2, r2, b2 = w.copy(), r.copy(), b.copy()
    for a in (w2, r2):
        a[0, 2 * hs:3 * hs] = 7.0  # forget-gate rows (gate order i, o, f, c)
    b2[0, 2 * hs:3 * hs] = -7.0
    one = rt._rnn("LSTM", t(x), t(w), t(r), t(b), None, t(h0), t(c0), None, hs, input_forget=1)
    two = rt._rnn("LSTM", t(x), t(w2), t(r2), t(b2), None, t(h0), t(c0), None, hs, input_forget=1)
    plain = rt._rnn("LSTM", t(x), t(w), t(r), t(b), None, t(h0), t(c0), None, hs)
    for a, c in zip(one, two, strict=True):
        assert torch.equal(a, c)
    assert not torch.allclose(one[0], plain[0])


def test_value_to_line_points_at_the_statement_when_runtime_functions_are_embedded(tmp_path):
    """value_to_line counts model.py's lines; a multi-line runtime function above forward must not shift it."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from modelport import to_torch

    graph = helper.make_graph(  # a Reshape to a runtime shape needs the embedded _reshape
        [helper.make_node("Reshape", ["a", "b"], ["q"], name="reshape"), helper.make_node("Neg", ["q"], ["y"], name="neg")],
        "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
              helper.make_tensor_value_info("b", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    to_torch.convert(model, tmp_path)
    lines = (tmp_path / "model.py").read_text().splitlines()
    meta = json.loads((tmp_path / "modelport_torch.json").read_text())
    assert "def _reshape(" in "\n".join(lines)
    for value, node in (("q", "reshape"), ("y", "neg")):
        statement = lines[meta["value_to_line"][value] - 1]
        comment = lines[meta["value_to_line"][value] - 2]
        assert node in comment and "=" in statement, (value, comment, statement)
