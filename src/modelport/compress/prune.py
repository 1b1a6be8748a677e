"""Unstructured magnitude pruning of ONNX weight initializers.

The weights of Conv (W), Gemm (B) and MatMul (a constant operand) nodes whose magnitude
falls below a threshold become exactly zero in the initializer itself (no mask is stored):

    per layer:  t_l = the k-th smallest |w| of layer l,   k = floor(fraction * numel_l)
    global:     t   = the k-th smallest |w| over all pruned layers together
    w' = 0 where |w| is among the k smallest, else w

Exactly k values are zeroed per layer (per model, for global), ties broken by position, so
the sparsity asked for is the sparsity delivered. A layer may be given its own fraction
(accuracy control prunes the layers that hurt most less); with the global scope, the
shared threshold is then taken over the other layers only. Biases and normalization parameters are
left alone: they are few and pruning them hurts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np

from modelport.errors import BadInputError

__all__ = ["LayerSparsity", "PRUNABLE_OPS", "prunable_weights", "magnitude_prune", "weight_sparsity"]

PRUNABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SCOPES = ("layer", "global")


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    """One pruned weight: the node using it, its size, and its sparsity before and after."""

    node: str
    op: str
    weight: str
    params: int
    sparsity_before: float
    sparsity_after: float
    fraction: float | None = None  # the share asked for this layer (None: the global threshold's)


def prunable_weights(model) -> dict[str, tuple[str, str]]:
    """Weight initializer name -> (first node using it, op type), for float weights of rank >= 2."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, tuple[str, str]] = {}
    for node in model.graph.node:
        if node.op_type not in PRUNABLE_OPS:
            continue
        slots = (0, 1) if node.op_type == "MatMul" else (1,)
        for i in slots:
            if i >= len(node.input) or node.input[i] not in inits:
                continue
            t = inits[node.input[i]]
            if len(t.dims) >= 2 and t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
                out.setdefault(t.name, (node.name, node.op_type))
    return out


def _zero_smallest(flat_abs: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k smallest entries (exactly k)."""
    mask = np.zeros(flat_abs.shape, dtype=bool)
    if k > 0:
        mask[np.argpartition(flat_abs, k - 1, kind="introselect")[:k]] = True
    return mask


def magnitude_prune(model, fraction: float, *, scope: str = "layer", exclude: Iterable[str] = (),
                    fractions: Mapping[str, float] | None = None) -> tuple[LayerSparsity, ...]:
    """Zero the smallest ``fraction`` of weights in place; per-layer sparsity of what was pruned.

    Args:
        model: an onnx.ModelProto, modified in place.
        fraction: share of each layer's (or, with scope "global", all layers') weights to zero.
        scope: "layer" (one threshold per layer) or "global" (one threshold for all).
        exclude: node names whose weights stay dense.
        fractions: node name -> the fraction for that node's weight instead (in [0, 1); 0: dense).

    Raises:
        BadInputError: a fraction outside its range, unknown scope, or nothing to prune.
    """
    from onnx import numpy_helper

    if not 0.0 < fraction < 1.0:
        raise BadInputError(f"prune fraction must be in (0, 1), got {fraction}")
    if scope not in SCOPES:
        raise BadInputError(f"unknown prune scope {scope!r}; known: {', '.join(SCOPES)}")
    own = dict(fractions or {})
    bad = {k: f for k, f in own.items() if not 0.0 <= f < 1.0}
    if bad:
        raise BadInputError(f"per-layer prune fractions must be in [0, 1), got {bad}")
    skip = set(exclude) | {k for k, f in own.items() if f == 0.0}
    weights = {k: v for k, v in prunable_weights(model).items() if v[0] not in skip}
    if not weights and not prunable_weights(model):
        raise BadInputError(
            "nothing to prune: no float Conv/Gemm/MatMul weight initializers (weights computed at run "
            "time or already quantized are not pruned)"
        )
    inits = {t.name: t for t in model.graph.initializer}
    arrays = {name: numpy_helper.to_array(inits[name]) for name in weights}
    asked = {name: own.get(weights[name][0], None if scope == "global" else fraction) for name in arrays}
    shared = [name for name in arrays if asked[name] is None]
    masks = {name: _zero_smallest(np.abs(a).ravel(), int(asked[name] * a.size)).reshape(a.shape)
             for name, a in arrays.items() if asked[name] is not None}
    if shared:
        flat = np.concatenate([np.abs(arrays[name]).ravel().astype(np.float64) for name in shared])
        mask = _zero_smallest(flat, int(fraction * flat.size))
        offset = 0
        for name in shared:
            a = arrays[name]
            masks[name] = mask[offset:offset + a.size].reshape(a.shape)
            offset += a.size
    layers = []
    for name, a in arrays.items():
        before = float(np.count_nonzero(a == 0)) / a.size
        pruned = np.where(masks[name], np.zeros((), a.dtype), a)
        inits[name].CopyFrom(numpy_helper.from_array(pruned, name))
        node, op = weights[name]
        layers.append(LayerSparsity(node, op, name, int(a.size), before, float(np.count_nonzero(pruned == 0)) / a.size,
                                    asked[name]))
    return tuple(layers)


def _zero_points(model, base_dir=None) -> dict[str, np.ndarray]:
    """Integer weight initializer -> its zero point, from the node that dequantizes it."""
    from modelport.formats import onnx_data

    inits = {t.name: t for t in model.graph.initializer}
    slot = {"DequantizeLinear": (0, 2), "MatMulInteger": (1, 3), "ConvInteger": (1, 3)}
    out = {}
    for node in model.graph.node:
        if node.op_type in slot:
            w, z = slot[node.op_type]
            if len(node.input) > z and node.input[w] in inits and node.input[z] in inits:
                out[node.input[w]] = np.array(onnx_data.array(inits[node.input[z]], base_dir))
    return out


def weight_sparsity(model, base_dir=None) -> float | None:
    """Fraction of weight values (initializers of rank >= 2) that are exactly zero.

    Integer (quantized) weights count as zero where they equal their zero point; packed
    4-bit weights (MatMulNBits) cannot be read this way and are left out. None: no weights.
    ``base_dir``: for a model read without its external data, where that data is (memory-mapped,
    one tensor at a time).
    """
    from onnx import TensorProto

    from modelport.formats import onnx_data

    zps = _zero_points(model, base_dir)
    packed = {n.input[1] for n in model.graph.node if n.op_type == "MatMulNBits" and len(n.input) > 1}
    total = zeros = 0
    for t in model.graph.initializer:
        if len(t.dims) < 2 or t.name in packed or t.data_type == TensorProto.STRING:
            continue
        a = onnx_data.array(t, base_dir)
        if a.dtype.kind not in "fiu":
            continue
        if a.dtype.kind in "iu":
            zp = zps.get(t.name, np.zeros((), a.dtype))
            if zp.ndim == 1 and a.ndim >= 1 and zp.size == a.shape[0]:
                zp = zp.reshape((-1,) + (1,) * (a.ndim - 1))
            elif zp.ndim == 1 and zp.size == a.shape[-1]:
                zp = zp.reshape((1,) * (a.ndim - 1) + (-1,))
            elif zp.size != 1:
                continue
            zeros += int(np.count_nonzero(a == zp))
        else:
            zeros += int(np.count_nonzero(a == 0))
        total += a.size
        onnx_data.release(a)
    return zeros / total if total else None
