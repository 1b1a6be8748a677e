"""Compression of models whose weights exceed protobuf's limit: int4, fp16 and pruning chunk by chunk.

The in-memory passes (``quantize.quantize_int4``, ``fp16.convert_fp16``, ``prune.magnitude_prune``) hold the
whole model in one protobuf, which a model above 2 GiB cannot be, and several copies of its weights. Each
function here reads the model without its external data, decides the graph exactly as its in-memory twin
does, and writes every changed tensor to the output's external data a block at a time from the source's
memory-mapped file (``modelport.formats.onnx_data``); unchanged tensors are copied in chunks.

    int4   MatMulNBits (com.microsoft), symmetric, blocks of ``block_size`` values along K, packed and
           scaled by onnxruntime's own kernel (``quantize_matmul_4bits``) a slab of output columns at a
           time: each block comes from one column, so the slabs concatenate to the bytes
           ``MatMulNBitsQuantizer`` writes for the whole weight.
    fp16   onnxconverter-common's ``convert_float_to_float16`` runs on the model without its weights (it
           only retypes external tensors); the values are converted by its own ``convert_np_to_float16``
           (clamped to [1e-7, 1e4] in magnitude) a block at a time.
    prune  the k-th smallest |w| (k = floor(fraction * numel), per layer or over all layers together) is found
           by a two-pass radix select on the bit patterns of |w| (for non-negative IEEE floats their order is
           the order of the unsigned integers): a histogram of the high 16 bits, then of the low 16 bits
           inside the chosen bin. Exactly k values become zero: every |w| below the threshold, then the first
           of those equal to it in C order. Memory is one block, whatever the layer's size.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from modelport.errors import BadInputError, UnsupportedError

__all__ = ["quantize_int4", "convert_fp16", "magnitude_prune"]

_BLOCK_BYTES = 64 << 20  # bytes of float32 read per block


def _read(src: Path):
    from modelport.security.loaders import read_onnx

    return read_onnx(src, load_external_data=False)


def _flat_blocks(arr: np.ndarray) -> Iterator[np.ndarray]:
    """Consecutive C-order blocks of ``arr`` as float32 copies (the memmap's pages released after each)."""
    from modelport.formats import onnx_data

    flat = arr.reshape(-1)
    step = max(1, _BLOCK_BYTES // 4)
    for i in range(0, flat.size, step):
        yield np.asarray(flat[i:i + step], dtype=np.float32)
        onnx_data.release(arr)


# --------------------------------------------------------------------------- int4


def _int4_slabs(w: np.ndarray, block_size: int):
    """(packed, scales) of MatMulNBits for slabs of output columns of the K x N weight ``w``, in order."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    from modelport.formats import onnx_data

    rows, cols = w.shape
    k_blocks = (rows + block_size - 1) // block_size
    blob = (block_size + 1) // 2
    width = max(1, _BLOCK_BYTES // max(1, rows * 4))
    for c0 in range(0, cols, width):
        c1 = min(cols, c0 + width)
        slab = np.zeros((k_blocks * block_size, c1 - c0), np.float32)  # zero-padded rows, as the quantizer pads
        slab[:rows] = w[:, c0:c1]
        onnx_data.release(w)
        packed = np.zeros((c1 - c0, k_blocks, blob), np.uint8)
        scales = np.zeros((c1 - c0, k_blocks), np.float32)
        zero_point = np.zeros((c1 - c0, (k_blocks + 1) // 2), np.uint8)
        quantize_matmul_4bits(packed, slab, scales, zero_point, block_size, c1 - c0, rows, True)
        yield packed, scales


def _int4_writers(w: np.ndarray, block_size: int):
    """Writers (see ``onnx_data.save``) of the packed weight and its scales; the scales come from the same pass."""
    kept: list[np.ndarray] = []

    def packed(out) -> int:
        n = 0
        kept.clear()
        for p, s in _int4_slabs(w, block_size):
            out.write(p.tobytes())
            n += p.nbytes
            kept.append(s)
        return n

    def scales(out) -> int:
        if not kept:  # written before (or without) the packed weight: quantize again
            kept.extend(s for _p, s in _int4_slabs(w, block_size))
        n = 0
        for s in kept:  # (N, k_blocks) row-major: the slabs of columns concatenate
            out.write(s.tobytes())
            n += s.nbytes
        kept.clear()
        return n

    return packed, scales


def _requested(model) -> set[str]:
    from modelport.formats.onnx_format import iter_nodes

    names = {i for n in iter_nodes(model.graph) for i in n.input if i}
    names.update(o.name for o in model.graph.output)
    return names


def quantize_int4(src: str | Path, dst: str | Path, *, block_size: int = 32, exclude: Iterable[str] = ()) -> int:
    """Blockwise symmetric int4 MatMulNBits, as onnxruntime's ``MatMulNBitsQuantizer`` writes it, chunk by chunk.

    Every main-graph MatMul whose second input is a 2-D float32 initializer becomes MatMulNBits(A, B_Q4,
    B_scales) with K, N, bits 4 and ``block_size``; the weight leaves the graph's inputs, unused initializers
    are dropped and the com.microsoft opset (version 1) is imported, as the quantizer does. MatMuls inside
    subgraphs, and float16 or N-D weights, stay float. Returns how many MatMuls were quantized (0: nothing written).
    """
    import onnx
    from onnx import TensorProto, helper

    from modelport.formats import onnx_data

    src, dst = Path(src), Path(dst)
    model = _read(src)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    skip = set(exclude)
    writers: dict[str, object] = {}
    nodes, count = [], 0
    for node in g.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if (w is None or node.name in skip or w.data_type != TensorProto.FLOAT or len(w.dims) != 2
                or node.domain not in ("", "ai.onnx")):
            nodes.append(node)
            continue
        rows, cols = (int(d) for d in w.dims)
        k_blocks = (rows + block_size - 1) // block_size
        qname, sname = f"{w.name}_Q4", f"{w.name}_scales"
        if qname not in writers:
            arr = onnx_data.array(w, src.parent)
            writers[qname], writers[sname] = _int4_writers(arr, block_size)
            g.initializer.append(TensorProto(name=qname, data_type=TensorProto.UINT8,
                                             dims=[cols, k_blocks, (block_size + 1) // 2]))
            g.initializer.append(TensorProto(name=sname, data_type=TensorProto.FLOAT, dims=[cols, k_blocks]))
        listed = [i for i in g.input if i.name == w.name]
        for i in listed[:1]:
            g.input.remove(i)
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], qname, sname], [node.output[0]],
                                      name=f"{node.name}_Q4" if node.name else "", domain="com.microsoft",
                                      K=rows, N=cols, bits=4, block_size=block_size))
        count += 1
    if not count:
        return 0
    del g.node[:]
    g.node.extend(nodes)
    wanted = _requested(model)
    kept = [t for t in g.initializer if t.name in wanted]
    del g.initializer[:]
    g.initializer.extend(kept)
    ms = next((o for o in model.opset_import if o.domain == "com.microsoft"), None)
    if ms is None:
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    else:
        ms.version = 1
    onnx_data.save(model, dst, base_dir=src.parent, arrays=writers, external=True)
    return count


# --------------------------------------------------------------------------- fp16


def _fp16_writer(t32, base_dir: Path):
    """A writer of a float32 external tensor's values as onnxconverter-common's float16, a block at a time."""
    from onnxconverter_common.float16 import convert_np_to_float16

    from modelport.formats import onnx_data

    def write(out) -> int:
        arr = onnx_data.array(t32, base_dir)
        n = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "truncated to fp16 range": parity reports what it costs
            for block in _flat_blocks(arr):
                h = convert_np_to_float16(block).astype(np.float16, copy=False)
                out.write(h.tobytes())
                n += h.nbytes
        return n

    return write


def convert_fp16(src: str | Path, dst: str | Path, *, keep_io_float32: bool = True, exclude: Iterable[str] = ()) -> int:
    """``fp16.convert_fp16`` of a model above the threshold; returns how many external tensors became float16."""
    import onnx
    from onnxconverter_common import float16

    from modelport.formats import onnx_data

    src, dst = Path(src), Path(dst)
    model = _read(src)
    was = {t.name: onnx.TensorProto() for t in onnx_data.initializers(model)
           if onnx_data.is_external(t) and t.data_type == onnx.TensorProto.FLOAT}
    for t in onnx_data.initializers(model):
        if t.name in was:
            was[t.name].CopyFrom(t)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = float16.convert_float_to_float16(model, keep_io_types=keep_io_float32,
                                                   node_block_list=sorted(exclude) or None)
    except ValueError as exc:  # "already converted to float16"
        raise UnsupportedError(f"onnxconverter-common refuses the model: {' '.join(str(exc).split())[:200]}",
                               path=src) from None
    writers = {t.name: _fp16_writer(was[t.name], src.parent) for t in onnx_data.initializers(out)
               if t.name in was and onnx_data.is_external(t) and t.data_type == onnx.TensorProto.FLOAT16}
    onnx_data.save(out, dst, base_dir=src.parent, arrays=writers, external=True)
    return len(writers)


# --------------------------------------------------------------------------- pruning


def _bits(block: np.ndarray) -> np.ndarray:
    """|x|'s float32 bit pattern as uint32: ordered as |x| is (NaN above inf)."""
    return block.view(np.uint32) & np.uint32(0x7FFFFFFF)


class _Select:
    """The k-th smallest |w| over a sequence of weights (by two histogram passes), and the mask it implies."""

    def __init__(self, arrays: list[np.ndarray], k: int) -> None:
        self.arrays, self.k = arrays, k
        self.threshold, self.below, self.extra = None, 0, 0
        if k > 0:
            self._find()

    def _blocks(self) -> Iterator[np.ndarray]:
        for a in self.arrays:
            for block in _flat_blocks(a):
                yield _bits(block)

    def _find(self) -> None:
        hist = np.zeros(1 << 16, np.int64)
        for b in self._blocks():
            hist += np.bincount(b >> 16, minlength=1 << 16)
        cum = np.cumsum(hist)
        hi = int(np.searchsorted(cum, self.k))  # the first bin where the count reaches k
        before = int(cum[hi - 1]) if hi else 0
        low = np.zeros(1 << 16, np.int64)
        for b in self._blocks():
            sel = b[(b >> 16) == hi]
            if sel.size:
                low += np.bincount(sel & 0xFFFF, minlength=1 << 16)
        cum_low = np.cumsum(low)
        lo = int(np.searchsorted(cum_low, self.k - before))
        self.threshold = np.uint32((hi << 16) | lo)
        self.below = before + (int(cum_low[lo - 1]) if lo else 0)
        self.extra = self.k - self.below  # how many equal to the threshold are zeroed, first ones first

    def writer(self, arr: np.ndarray, dtype: np.dtype, zeros: dict[str, int], name: str):
        """A writer of ``arr`` with the selected values zeroed; the zeros it wrote go to ``zeros[name]``."""

        def write(out) -> int:
            n = count = 0
            for block in _flat_blocks(arr):
                if self.threshold is not None:
                    b = _bits(block)
                    mask = b < self.threshold
                    if self.extra > 0:
                        eq = b == self.threshold
                        rank = np.cumsum(eq)
                        take = eq & (rank <= self.extra)
                        self.extra -= int(take.sum())
                        mask |= take
                    block = np.where(mask, np.float32(0), block)
                data = block.astype(dtype, copy=False)
                count += int(np.count_nonzero(data == 0))
                out.write(data.tobytes())
                n += data.nbytes
            zeros[name] = count
            return n

        return write


def _zeros(arr: np.ndarray) -> int:
    return sum(int(np.count_nonzero(b == 0)) for b in _flat_blocks(arr))


def magnitude_prune(src: str | Path, dst: str | Path, fraction: float, *, scope: str = "layer",
                    exclude: Iterable[str] = (), fractions: Mapping[str, float] | None = None):
    """``prune.magnitude_prune`` of a model above the threshold, written to ``dst``; per-layer sparsity.

    Same arguments and semantics (exactly k values zeroed per layer, or over all layers for "global",
    ``fractions`` overriding a node's share); float32 and float16 weights (float64 ones are refused).
    """
    from onnx import TensorProto

    from modelport.compress import prune as prune_pass
    from modelport.formats import onnx_data

    if not 0.0 < fraction < 1.0:
        raise BadInputError(f"prune fraction must be in (0, 1), got {fraction}")
    if scope not in prune_pass.SCOPES:
        raise BadInputError(f"unknown prune scope {scope!r}; known: {', '.join(prune_pass.SCOPES)}")
    own = dict(fractions or {})
    bad = {k: f for k, f in own.items() if not 0.0 <= f < 1.0}
    if bad:
        raise BadInputError(f"per-layer prune fractions must be in [0, 1), got {bad}")
    src, dst = Path(src), Path(dst)
    model = _read(src)
    every = prune_pass.prunable_weights(model)
    if not every:
        raise BadInputError(
            "nothing to prune: no float Conv/Gemm/MatMul weight initializers (weights computed at run "
            "time or already quantized are not pruned)")
    skip = set(exclude) | {k for k, f in own.items() if f == 0.0}
    weights = {k: v for k, v in every.items() if v[0] not in skip}
    inits = {t.name: t for t in model.graph.initializer}
    doubles = [k for k in weights if inits[k].data_type == TensorProto.DOUBLE]
    if doubles:
        raise UnsupportedError(f"pruning float64 weights ({doubles[0]}) of a model above "
                               f"{onnx_data.threshold()} bytes is not supported", path=src)
    arrays = {name: onnx_data.array(inits[name], src.parent) for name in weights}
    asked = {name: own.get(weights[name][0], None if scope == "global" else fraction) for name in arrays}
    selects = {name: _Select([a], int(asked[name] * a.size)) for name, a in arrays.items() if asked[name] is not None}
    shared = [name for name in arrays if asked[name] is None]
    if shared:
        together = _Select([arrays[n] for n in shared], int(fraction * sum(arrays[n].size for n in shared)))
        selects.update({n: together for n in shared})  # one threshold; its ties taken in layer order
    before = {name: _zeros(a) for name, a in arrays.items()}
    zeros: dict[str, int] = {}
    writers = {name: selects[name].writer(a, a.dtype, zeros, name) for name, a in arrays.items()}
    onnx_data.save(model, dst, base_dir=src.parent, arrays=writers, external=True)
    out = []
    for name, a in arrays.items():
        node, op = weights[name]
        out.append(prune_pass.LayerSparsity(node, op, name, int(a.size), before[name] / a.size,
                                            zeros[name] / a.size, asked[name]))
    return tuple(out)
