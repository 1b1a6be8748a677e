"""Quantized (QDQ) ONNX graphs prepared for onnx2tf: ONNX -> ONNX rewrites of the private copy it converts.

onnx2tf 1.29 converts a ``QuantizeLinear`` whose readers are all ``DequantizeLinear`` (a fake-quant
pair) into the identity, and any other ``QuantizeLinear`` into quantize-dequantize arithmetic whose
float result it marks "already dequantized", which a later ``DequantizeLinear`` passes through. The
patterns below, all in ordinary QDQ graphs (tf2onnx's TFLite path, onnxruntime's ``quantize_static``),
come out computing something else (the zoo's digits CNN: top-1 0.924 -> 0.100; onnxruntime's static
int8 of a torch CNN: 0.927 -> 0.098); each is rewritten here into an equivalent the converter gets right:

- ``DequantizeLinear`` of constant weights: onnx2tf mis-applies per-axis scales (a MatMul weight with an
  ``axis=1`` scale: max abs error 5.2 on outputs up to 9; per tensor still 0.7%). Folded into float weights:

      w = (q - zero_point) * scale       (scale, zero_point broadcast along ``axis``, or repeated in
                                          blocks of ``block_size`` along it)

  in the scale's float type, which is what ``DequantizeLinear`` computes.
- layout ops (``Reshape``, ``Transpose``, ``Squeeze``, ``Unsqueeze``, ``Flatten``) on int8 tensors
  between a ``QuantizeLinear`` and its ``DequantizeLinear``: the ``DequantizeLinear`` scales an already
  dequantized float a second time. A per-tensor ``DequantizeLinear`` is elementwise affine, so it
  commutes with an op that only moves elements, and the layout op moves past it:

      DequantizeLinear(L(q), s, z) = L(DequantizeLinear(q, s, z))        (s, z scalars)

  repeated, ``Q -> Transpose -> Reshape -> DQ`` becomes ``Q -> DQ -> Transpose -> Reshape``.
- fake-quant pairs ``DequantizeLinear(QuantizeLinear(x, s, z), s, z)``: as the identity they lose the
  pair's saturation, which quantized graphs rely on (onnxruntime's quantizer drops a ``Relu`` before a
  pair whose range starts at 0: the pair clamps). Per tensor, a pair is

      s * (clip(round(x / s) + z, qmin, qmax) - z) = clip(x, s * (qmin - z), s * (qmax - z)) + r,
      |r| <= s / 2

  and is written as that ``Clip``: the saturation kept, the rounding ``r`` dropped.
- a ``QuantizeLinear`` with no pair (an int8 graph output): onnx2tf gives its dequantized float, not the
  integers. Written as ``Cast(Clip(Round(x / s) + z, qmin, qmax))``, which is what it computes.

The prepared graph computes the same values up to that rounding. The TF model onnx2tf makes of it is a
float model (float weights, activations clipped but not rounded to int8); it is judged against the
quantized source at a tolerance of its own (``modelport.convert.onnx_to_tf``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

from modelport.formats.onnx_names import NameAllocator

__all__ = ["LAYOUT_OPS", "QdqPrep", "FoldWeightDequantizePass", "LayoutPastDequantizePass", "FakeQuantToClipPass",
           "QuantizeAsIntegerPass", "dequantize", "is_qdq", "prepare"]

# Ops that only move the elements of their first input, whatever their other inputs say.
LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")
_STANDARD = ("", "ai.onnx")


def _is_op(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in _STANDARD


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The value's array when it is a constant (an initializer that is no graph input, or a Constant's output)."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.value)


def _per_tensor(node: ir.Node) -> tuple[float, int, np.dtype, np.dtype] | None:
    """(scale, zero point, scale dtype, integer dtype) of a per-tensor, integer Q/DQ node with constant parameters."""
    if _attr(node, "block_size", 0) or (_is_op(node, "DequantizeLinear") and _attr(node, "output_dtype", 0)):
        return None
    scale = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    has_zero = len(node.inputs) > 2 and node.inputs[2] is not None
    zero = _constant(node.inputs[2]) if has_zero else None
    if scale is None or scale.size != 1 or scale.dtype.kind != "f" or (has_zero and (zero is None or zero.size != 1)):
        return None
    if zero is None:  # no zero point: uint8 (or QuantizeLinear-21's output_dtype, which this does not read)
        if _is_op(node, "QuantizeLinear") and _attr(node, "output_dtype", 0):
            return None
        zero = np.zeros((), np.uint8)
    if zero.dtype.kind not in "iu":  # float8 and packed 4-bit types are left to onnx2tf
        return None
    return float(scale.reshape(())), int(zero.reshape(())), scale.dtype, zero.dtype


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    """``DequantizeLinear``: ``(q - zero) * scale`` with a per-tensor, per-axis or blocked scale."""
    def spread(v: np.ndarray) -> np.ndarray:
        v = v.astype(np.float32)
        if v.ndim == 0 or q.ndim == 0:
            return v
        ax = axis % q.ndim
        if block > 0:  # blocked: each scale covers `block` consecutive elements along the axis
            return np.repeat(v, block, axis=ax).take(range(q.shape[ax]), axis=ax)
        return v.reshape([-1 if i == ax else 1 for i in range(q.ndim)])

    shifted = q.astype(np.float32) - (spread(zero) if zero is not None else np.float32(0))
    return (shifted * spread(scale)).astype(scale.dtype if scale.dtype.kind == "f" else np.float32)


def _names(graph: ir.Graph) -> NameAllocator:
    """Fresh value names for a graph: every name its nodes, inputs and initializers use is taken."""
    taken = {v.name for n in graph for v in [*n.inputs, *n.outputs] if v is not None and v.name}
    return NameAllocator(taken | {v.name for v in graph.inputs if v.name} | set(graph.initializers))


def _only_readers(value: ir.Value) -> list[ir.Node] | None:
    """The DequantizeLinear nodes reading ``value``, when they are all its readers (and it is no graph output).

    At most one of them may give a graph output: they all become one value, which takes that output's name.
    """
    readers = [use.node for use in value.uses()]
    if not readers or value.is_graph_output():
        return None
    if any(not _is_op(r, "DequantizeLinear") or r.inputs[0] is not value for r in readers):
        return None
    return readers if sum(r.outputs[0].is_graph_output() for r in readers) <= 1 else None


def _typed(value: ir.Value, dtype: ir.DataType, shape: ir.Shape | None) -> None:
    """Type and shape for a new value, where the shape is known (a type without one is no valid value_info)."""
    if shape is not None:
        value.type, value.shape = ir.TensorType(dtype), shape.copy()


def _take_place(graph: ir.Graph, readers: list[ir.Node], result: ir.Value, gone: list[ir.Node]) -> None:
    """``result`` replaces the readers' outputs (a graph output among them too, keeping its name); ``gone`` removed."""
    outputs = [r.outputs[0] for r in readers]
    name = next((v.name for v in outputs if v.is_graph_output()), outputs[0].name)
    known = next((v for v in outputs if v.shape is not None and v.dtype is not None), None)
    if known is not None:
        _typed(result, known.dtype, known.shape)
    for v in outputs:
        v.replace_all_uses_with(result, replace_graph_outputs=True)
    graph.remove(gone, safe=True)
    result.name = name


def _scalar(graph: ir.Graph, names: NameAllocator, base: str, value: np.ndarray) -> ir.Value:
    """A new scalar initializer."""
    v = ir.Value(name=names.fresh(base), shape=ir.Shape([]), type=ir.TensorType(ir.DataType.from_numpy(value.dtype)),
                 const_value=ir.tensor(value))
    v.const_value.name = v.name
    graph.register_initializer(v)
    return v


class FoldWeightDequantizePass(ir.passes.InPlacePass):
    """Replace each ``DequantizeLinear`` of constants (int8 weights, int32 biases) by its float result."""

    def __init__(self) -> None:
        self.folded = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for node in list(graph):
            if not _is_op(node, "DequantizeLinear") or node.outputs[0].is_graph_output() or _attr(node, "output_dtype", 0):
                continue
            has_zero = len(node.inputs) > 2 and node.inputs[2] is not None
            q, scale = _constant(node.inputs[0]), _constant(node.inputs[1])
            zero = _constant(node.inputs[2]) if has_zero else None
            if q is None or scale is None or (has_zero and zero is None):
                continue
            weights = dequantize(q, scale, zero, _attr(node, "axis", 1), _attr(node, "block_size", 0))
            out = node.outputs[0]
            name = out.name
            folded = ir.Value(shape=ir.Shape(weights.shape), type=ir.TensorType(ir.DataType.from_numpy(weights.dtype)),
                              const_value=ir.tensor(weights))
            out.replace_all_uses_with(folded)
            graph.remove(node, safe=True)
            folded.name = folded.const_value.name = name  # the weight keeps the name its readers knew
            graph.register_initializer(folded)
            self.folded += 1
        if self.folded:
            onnx_ir.passes.common.RemoveUnusedNodesPass()(model)  # the int8 weights, scales and zero points
        return ir.passes.PassResult(model, self.folded > 0)


class LayoutPastDequantizePass(ir.passes.InPlacePass):
    """Move layout ops on quantized tensors past their per-tensor ``DequantizeLinear`` (to a fixed point)."""

    def __init__(self) -> None:
        self.moved: dict[str, int] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = _names(graph)
        changed = True
        while changed:
            changed = False
            for node in list(graph):
                readers = self._readers(node)
                if readers:
                    self._move(graph, node, readers, names)
                    self.moved[node.op_type] = self.moved.get(node.op_type, 0) + 1
                    changed = True
        return ir.passes.PassResult(model, bool(self.moved))

    @staticmethod
    def _readers(node: ir.Node) -> list[ir.Node] | None:
        """The DequantizeLinear nodes reading the layout op ``node``, all per-tensor with the same scale and zero point."""
        if node.op_type not in LAYOUT_OPS or node.domain not in _STANDARD or len(node.outputs) != 1:
            return None
        readers = _only_readers(node.outputs[0])
        if not readers:
            return None
        params = {_per_tensor(r) for r in readers}
        return readers if len(params) == 1 and None not in params else None

    @staticmethod
    def _move(graph: ir.Graph, layout: ir.Node, readers: list[ir.Node], names: NameAllocator) -> None:
        first = readers[0]
        x = layout.inputs[0]
        floats = first.inputs[1].dtype or ir.DataType.FLOAT  # DequantizeLinear gives the scale's type
        dq = ir.Node(first.domain, "DequantizeLinear", [x, *first.inputs[1:]], attributes=list(first.attributes.values()),
                     name=names.fresh((first.name or "DequantizeLinear") + "_moved"))
        dq.outputs[0].name = names.fresh(x.name + "_dequantized")
        _typed(dq.outputs[0], floats, x.shape)
        moved = ir.Node(layout.domain, layout.op_type, [dq.outputs[0], *layout.inputs[1:]],
                        attributes=list(layout.attributes.values()), name=layout.name)
        _typed(moved.outputs[0], floats, layout.outputs[0].shape)
        graph.insert_before(layout, [dq, moved])
        _take_place(graph, readers, moved.outputs[0], [*readers, layout])


class FakeQuantToClipPass(ir.passes.InPlacePass):
    """Write each per-tensor ``QuantizeLinear -> DequantizeLinear`` pair as ``Clip`` to the pair's range."""

    def __init__(self) -> None:
        self.clipped = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = _names(graph)
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        for node in list(graph):
            if not _is_op(node, "QuantizeLinear") or (params := _per_tensor(node)) is None:
                continue
            readers = _only_readers(node.outputs[0])
            if not readers or any(_per_tensor(r) != params for r in readers):
                continue
            scale, zero, float_type, int_type = params
            info = np.iinfo(int_type)
            lo, hi = (np.asarray(scale * (v - zero), float_type) for v in (info.min, info.max))
            base = names.fresh((node.name or "QuantizeLinear") + "_clip")
            x = node.inputs[0]
            if opset < 11:  # Clip-6: the bounds are attributes
                clip = ir.Node("", "Clip", [x], attributes=[ir.AttrFloat32("min", float(lo)), ir.AttrFloat32("max", float(hi))],
                               name=base)
            else:
                clip = ir.Node("", "Clip", [x, _scalar(graph, names, base + "_min", lo), _scalar(graph, names, base + "_max", hi)],
                               name=base)
            _typed(clip.outputs[0], ir.DataType.from_numpy(np.dtype(float_type)), x.shape)
            graph.insert_before(node, clip)
            _take_place(graph, readers, clip.outputs[0], [*readers, node])
            self.clipped += 1
        if self.clipped:
            onnx_ir.passes.common.RemoveUnusedNodesPass()(model)  # scales and zero points no pair reads any more
        return ir.passes.PassResult(model, self.clipped > 0)


class QuantizeAsIntegerPass(ir.passes.InPlacePass):
    """Write each per-tensor ``QuantizeLinear`` left (no pair: an integer graph output) as ``Round``/``Clip``/``Cast``.

        q = cast(clip(round(x / s) + z, qmin, qmax))        (``Round`` rounds half to even, as QuantizeLinear)
    """

    def __init__(self) -> None:
        self.written = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = _names(graph)
        if model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)) < 11:  # Round and Clip's inputs: opset 11
            return ir.passes.PassResult(model, False)
        for node in list(graph):
            if not _is_op(node, "QuantizeLinear") or (params := _per_tensor(node)) is None:
                continue
            scale, zero, float_type, int_type = params
            info = np.iinfo(int_type)
            base = names.fresh((node.name or "QuantizeLinear") + "_integer")
            s, z, lo, hi = (_scalar(graph, names, f"{base}_{k}", np.asarray(v, float_type))
                            for k, v in (("scale", scale), ("zero", zero), ("min", info.min), ("max", info.max)))
            div = ir.Node("", "Div", [node.inputs[0], s], name=base + "_div")
            rnd = ir.Node("", "Round", [div.outputs[0]], name=base + "_round")
            add = ir.Node("", "Add", [rnd.outputs[0], z], name=base + "_add")
            clip = ir.Node("", "Clip", [add.outputs[0], lo, hi], name=base + "_clip")
            cast = ir.Node("", "Cast", [clip.outputs[0]], attributes=[ir.AttrInt64("to", ir.DataType.from_numpy(np.dtype(int_type)))],
                           name=base + "_cast")
            for n in (div, rnd, add, clip):
                n.outputs[0].name = names.fresh(n.name)
                _typed(n.outputs[0], ir.DataType.from_numpy(np.dtype(float_type)), node.inputs[0].shape)
            out = node.outputs[0]
            name, shape = out.name, out.shape or node.inputs[0].shape
            graph.insert_before(node, [div, rnd, add, clip, cast])
            out.replace_all_uses_with(cast.outputs[0], replace_graph_outputs=True)
            graph.remove(node, safe=True)
            cast.outputs[0].name = name
            _typed(cast.outputs[0], ir.DataType.from_numpy(np.dtype(int_type)), shape)
            self.written += 1
        if self.written:
            onnx_ir.passes.common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, self.written > 0)


@dataclasses.dataclass(frozen=True)
class QdqPrep:
    """What the preparation changed: weights folded, layout ops moved (by op type), fake-quant pairs clipped."""

    folded: int = 0
    moved: tuple[tuple[str, int], ...] = ()
    clipped: int = 0
    integer: int = 0
    output_scale: float | None = None  # the largest scale of a DequantizeLinear giving a graph output (one quantum)
    dynamic: bool = False  # activations quantized at run time (DynamicQuantizeLinear)

    def __bool__(self) -> bool:
        return bool(self.folded or self.moved or self.clipped or self.integer)

    def describe(self) -> str:
        parts = []
        if self.folded:
            parts.append(f"DequantizeLinear of {self.folded} weights folded")
        if self.moved:
            parts.append(f"{sum(n for _, n in self.moved)} {'/'.join(op for op, _ in self.moved)} moved past DequantizeLinear")
        if self.clipped:
            parts.append(f"{self.clipped} QuantizeLinear/DequantizeLinear pairs written as Clip to their range")
        if self.integer:
            parts.append(f"{self.integer} QuantizeLinear to integer outputs written as Round/Clip/Cast")
        return "; ".join(parts)


def is_qdq(model) -> bool:
    """Does the ONNX ModelProto's main graph hold QuantizeLinear or DequantizeLinear nodes?"""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in _STANDARD for n in model.graph.node)


def _output_scale(graph: ir.Graph) -> float | None:
    scales = [p[0] for v in graph.outputs if _is_op(v.producer(), "DequantizeLinear") and (p := _per_tensor(v.producer()))]
    return max(scales) if scales else None


def prepare(model):
    """``(prepared ModelProto, QdqPrep)`` for an ONNX ModelProto (the one given is not changed)."""
    layout, fold, clip, integer = LayoutPastDequantizePass(), FoldWeightDequantizePass(), FakeQuantToClipPass(), QuantizeAsIntegerPass()
    ir_model = ir.from_proto(model)
    scale = _output_scale(ir_model.graph)
    dynamic = any(_is_op(n, "DynamicQuantizeLinear") for n in ir_model.graph)
    # sorted last: a moved DequantizeLinear may read a Constant node that came after the layout op
    ir.passes.Sequential(layout, fold, clip, integer, onnx_ir.passes.common.TopologicalSortPass())(ir_model)
    prep = QdqPrep(fold.folded, tuple(sorted(layout.moved.items())), clip.clipped, integer.written, scale, dynamic)
    return (ir.to_proto(ir_model) if prep else model), prep
