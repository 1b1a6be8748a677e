"""Compression of models whose weights exceed protobuf's limit: int4, fp16, pruning, static int8 chunk by chunk.

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
    static int8 QDQ: onnxruntime's calibrator on the model without its weights (its session reads them from their
           files), then onnxruntime's QDQQuantizer on the model whose weights are stand-ins holding each channel's
           min and max; the int8 weights are written a block at a time with the scales it chose (see below).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from modelport.errors import BadInputError, ModelportError, UnsupportedError

__all__ = ["calibrate", "convert_fp16", "magnitude_prune", "quantize_int4", "quantize_static"]

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


# --------------------------------------------------------------------------- static int8 (QDQ)
#
# onnxruntime's quantize_static holds the whole model in protobufs (shape inference, the calibration model, the
# quantizer's copy). Above the threshold its two halves run apart, each on the model without its weights:
#
#   calibrate  onnxruntime's own calibrator (MinMax, Entropy or Percentile, made by ``create_calibrator`` with its
#              defaults) augments the weightless model as it would (ReduceMin/ReduceMax, or the tensors themselves,
#              as extra outputs of the inputs and outputs of every node it quantizes) and collects the ranges; only
#              its session is ours: the weights are read from the source's files (memory-mapped by onnxruntime, the
#              bytes of the model given with ``session.model_external_initializers_file_folder_path``), with the
#              calibrator's own session options.
#   quantize   onnxruntime's ``QDQQuantizer`` runs on the model whose large float weights are stand-ins: a tensor of
#              the weight's rank holding, for each channel of the axis its op is quantized along, that channel's
#              min and max (2 values per channel; per tensor, the weight's min and max). Every scale and zero point
#              it computes from a weight depends on those alone (``compute_data_quant_params``: min and max of each
#              channel), so the graph, names, scales, zero points and bias adjustments it writes are its own. The
#              int8 values of each weight are then written a block of rows at a time by its ``quantize_nparray``
#              with those scales, straight into the output's external data.
#
# The axis each stand-in assumes (MatMul 1, Gemm 0 with transB else 1, Conv 0, ConvTranspose 1: the quantizer's
# defaults) is checked against the DequantizeLinear it wrote; a mismatch, or a stand-in quantized as anything but a
# per-tensor or per-channel weight (an int32 bias), is refused rather than written.

_SMALL_BYTES = 1 << 20  # external tensors up to this size are read into the protobuf (biases, shapes, norms)
_AXES = {("MatMul", 1): 1, ("Conv", 1): 0, ("ConvTranspose", 1): 1}  # + Gemm: 0 with transB, else 1
_STATIC_EXTRA = {"ActivationSymmetric": False, "WeightSymmetric": True}  # what quantize.quantize_static asks


def _op_types() -> list[str]:
    """The op types onnxruntime's quantize_static quantizes (and calibrates) when none are named."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _ort_model(src: Path):
    """The model as quantize_static holds it after ``load_model_with_shape_infer``, without its large weights.

    External tensors up to ``_SMALL_BYTES`` are read in; shapes are inferred on the model whose large weights are
    typed graph inputs (their values never matter to inference); onnxruntime's inference marker is set.
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    from modelport.formats import onnx_data

    model = _read(src)
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 10:
        raise UnsupportedError(f"static int8 of a model above {onnx_data.threshold()} bytes needs opset >= 10 "
                               f"(QuantizeLinear); this one is opset {opset} (modelport adapt --opset 13 first)", path=src)
    for t in model.graph.initializer:
        if onnx_data.is_external(t) and not t.raw_data and onnx_data.tensor_bytes(t) <= _SMALL_BYTES:
            loaded = numpy_helper.from_array(np.array(onnx_data.array(t, src.parent)), t.name)
            loaded.data_type, loaded.doc_string = t.data_type, t.doc_string
            t.CopyFrom(loaded)
    try:
        inferred = onnx.shape_inference.infer_shapes(onnx_data.without_weights(model, max_elements=1 << 62))
    except Exception as exc:  # noqa: BLE001 - onnx's inference refusing the graph is reported, never an internal error
        raise UnsupportedError(f"ONNX shape inference fails on this model ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:200]})", path=src) from None
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    add_infer_metadata(model)
    return model


def _reading_session(model_bytes: bytes, weights_dir: Path, providers):
    """An onnxruntime session of a model whose external data lives in ``weights_dir``, as the calibrator makes it.

    Its options are the calibrator's: MatMul/Gemm weights are pre-packed, each packed copy replacing the mapped
    pages it was made from. Without pre-packing the session would hold less (the mapped weights alone), but the
    kernels round differently (activation ranges then move by a unit in the last place from onnxruntime's), and
    the command's peak is the same (2 GiB benchmark, with and without its latency runs: 2.55 GB either way).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as onnxruntime's calibrator runs
    so.log_severity_level = 3
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(weights_dir.resolve()))
    return ort.InferenceSession(model_bytes, so, providers=providers)


def calibrate(src: str | Path, calibration, scratch: str | Path, *, method: str = "minmax"):
    """Activation ranges of ``src`` on the calibration chunks, by onnxruntime's calibrator (``TensorsData``).

    The weights are read from their files by onnxruntime, never into a protobuf. MinMax keeps one min and max per
    tensor and chunk; Entropy and Percentile keep the calibrated tensors of every chunk until their histograms are
    built, as onnxruntime's HistogramCalibrater does. ``scratch``: a directory for the calibration model (the
    caller removes it).
    """
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    from modelport.compress import quantize as quant

    if method not in quant.CALIBRATION_METHODS:
        raise BadInputError(f"unknown calibration method {method!r}; known: {', '.join(quant.CALIBRATION_METHODS)}")
    src, scratch = Path(src), Path(scratch)
    model = _ort_model(src)
    ops = _op_types()
    # onnxruntime's calibrator of that method with its defaults, made on a one-node model; it is then given ours
    stub = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "stub", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]), opset_imports=list(model.opset_import)[:1])
    onnx.save(stub, str(scratch / "calibrator_stub.onnx"))
    with quant._quiet():
        cal = create_calibrator(scratch / "calibrator_stub.onnx", ops,
                                augmented_model_path=str(scratch / "calibrator_stub.augmented.onnx"),
                                calibrate_method=getattr(CalibrationMethod, quant.CALIBRATION_METHODS[method]))
    driven = ("model", "augmented_model_path", "num_model_outputs", "model_original_outputs", "intermediate_outputs",
              "infer_session", "execution_providers")
    if not all(hasattr(cal, a) for a in driven):
        raise UnsupportedError("this onnxruntime's calibrator is not one modelport can drive on a model above "
                               f"the external-data threshold ({type(cal).__name__})", path=src)
    cal.infer_session = None
    cal.model = model
    cal.augmented_model_path = str(scratch / "calibration.onnx")
    cal.num_model_outputs = len(model.graph.output)
    cal.model_original_outputs = {o.name for o in model.graph.output}
    cal.intermediate_outputs = []
    for fresh in ("calibrate_tensors_range", "collector"):
        if hasattr(cal, fresh):
            setattr(cal, fresh, None)
    cal.augment_graph()  # onnxruntime's own augmentation, saved without the weights (they are references)
    augmented = Path(cal.augmented_model_path)
    try:
        cal.infer_session = _reading_session(augmented.read_bytes(), src.parent, cal.execution_providers)
        augmented.unlink()
        with quant._quiet():
            cal.collect_data(quant._reader(calibration))
            ranges = cal.compute_data()
    except ModelportError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime refusing the data or the model is reported, never internal
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:240]}"
        if isinstance(exc, InvalidArgument):
            raise BadInputError(f"the model does not take the calibration data ({why})", path=src) from None
        raise UnsupportedError(f"onnxruntime fails to calibrate the model ({why})", path=src) from None
    finally:
        cal.infer_session = None  # the session (and its mapped weights) goes before anything is written
        cal.model = None
    return ranges


def _weight_axis(model, name: str) -> int | None:
    """The axis onnxruntime's QDQ quantizer quantizes ``name`` along per channel, when every reader agrees."""
    axes = set()
    for node in model.graph.node:
        for i, x in enumerate(node.input):
            if x != name:
                continue
            if node.op_type == "Gemm" and i == 1:
                axes.add(0 if any(a.name == "transB" and a.i for a in node.attribute) else 1)
            else:
                axes.add(_AXES.get((node.op_type, i)))
    return axes.pop() if len(axes) == 1 else None


def _channel_ranges(arr: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of each channel of ``arr`` along ``axis`` (one each for None), a block of rows at a time."""
    from modelport.formats import onnx_data

    n = 1 if axis is None else arr.shape[axis]
    lo = np.full(n, np.inf, arr.dtype)
    hi = np.full(n, -np.inf, arr.dtype)
    rows = max(1, _BLOCK_BYTES // max(1, arr[0].nbytes))
    for i in range(0, arr.shape[0], rows):
        blk = np.asarray(arr[i:i + rows])
        if axis is None:
            np.minimum(lo, blk.min(), out=lo)
            np.maximum(hi, blk.max(), out=hi)
        elif axis == 0:
            flat = blk.reshape(blk.shape[0], -1)
            lo[i:i + rows], hi[i:i + rows] = flat.min(axis=1), flat.max(axis=1)
        else:
            others = tuple(d for d in range(blk.ndim) if d != axis)
            np.minimum(lo, blk.min(axis=others), out=lo)
            np.maximum(hi, blk.max(axis=others), out=hi)
        onnx_data.release(arr)
    return lo, hi


def _stand_in(t, lo: np.ndarray, hi: np.ndarray, axis: int | None):
    """A tensor of ``t``'s name, type and rank whose channels along ``axis`` hold [min, max] (per tensor: one pair)."""
    from onnx import numpy_helper

    rank = len(t.dims)
    shape = [1] * rank
    if axis is None:
        lo, hi = lo.min(keepdims=True), hi.max(keepdims=True)
        shape[0] = 2
        values = np.concatenate([lo, hi]).reshape(shape)
    else:
        other = 0 if axis != 0 else 1
        shape[axis], shape[other] = lo.size, 2
        values = np.stack([lo, hi])  # (2, channels): in the tensor's order when the pair's axis comes first
        values = (values if other < axis else values.T).reshape(shape)
    out = numpy_helper.from_array(np.ascontiguousarray(values), t.name)
    out.data_type = t.data_type
    return out


def _qdq_writer(arr: np.ndarray, qtype: int, scale: np.ndarray, zero_point: np.ndarray, axis: int | None):
    """A writer of ``arr`` quantized by onnxruntime's ``quantize_nparray`` with these scales, a block of rows at a time."""
    from onnxruntime.quantization.quant_utils import quantize_nparray

    from modelport.formats import onnx_data

    shape = [1] * arr.ndim
    if axis is not None:
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)

    def write(out) -> int:
        n = 0
        rows = max(1, _BLOCK_BYTES // max(1, arr[0].nbytes))
        for i in range(0, arr.shape[0], rows):
            s, z = (scale[i:i + rows], zero_point[i:i + rows]) if axis == 0 else (scale, zero_point)
            q = np.ascontiguousarray(quantize_nparray(qtype, np.asarray(arr[i:i + rows]), s, z))
            out.write(q.tobytes())
            n += q.nbytes
            onnx_data.release(arr)
        return n

    return write


def _qdq(model, ranges, per_channel: bool, exclude: Iterable[str], standins: dict):
    """onnxruntime's QDQQuantizer on ``model`` with its stand-ins; (quantized model, {weight: (q tensor, axis)})."""
    import copy

    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    from modelport.compress import quantize as quant

    work = copy.deepcopy(model)
    for t in work.graph.initializer:
        if t.name in standins:
            _t, lo, hi, axis = standins[t.name]
            t.CopyFrom(_stand_in(t, lo, hi, axis if per_channel else None))
    with quant._quiet():
        quantizer = QDQQuantizer(work, per_channel, False, QuantType.QInt8, QuantType.QInt8, ranges, [],
                                 sorted(exclude), _op_types(), dict(_STATIC_EXTRA))
        quantizer.quantize_model()
        quantizer.model.topological_sort()  # what save_model_to_file does before saving
    return quantizer.model.model


def quantize_static(src: str | Path, dst: str | Path, ranges, *, per_channel: bool = True,
                    exclude: Iterable[str] = ()) -> tuple[int, str | None]:
    """``quantize.quantize_static`` (QDQ, int8 activations asymmetric, int8 weights symmetric) above the threshold.

    ``ranges``: what :func:`calibrate` measured on the source. The graph is onnxruntime's QDQQuantizer's (every op
    type it quantizes by default, as in memory); the weights are quantized a block at a time from their mapped files
    and written to ``dst``'s external data. Not done here, unlike in memory: onnxruntime's quantization
    pre-processing (it holds the model) and the weight-only int8 of weights inside If/Loop/Scan bodies (they stay
    float). Per channel needs opset 13; where onnxruntime's quantizer fails per channel, per tensor is used and
    the note says so. Returns (how many weights were quantized, note).
    """
    import onnx
    from onnxruntime.quantization.quant_utils import TENSOR_NAME_QUANT_SUFFIX

    from modelport.compress import quantize as quant
    from modelport.formats import onnx_data

    src, dst = Path(src), Path(dst)
    model = _ort_model(src)
    per_channel = per_channel and quant.per_axis_opset(model)
    standins: dict[str, tuple] = {}  # name -> (original tensor, channel mins, channel maxes, axis)
    arrays: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        if (onnx_data.is_external(t) and not t.raw_data and len(t.dims) and onnx_data.tensor_bytes(t) > 0
                and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)):
            arr = arrays[t.name] = onnx_data.array(t, src.parent)
            axis = _weight_axis(model, t.name) if per_channel and arr.ndim >= 2 else None
            kept = onnx.TensorProto()
            kept.CopyFrom(t)
            standins[t.name] = (kept, *_channel_ranges(arr, axis), axis)

    def run(pc: bool):
        try:
            return _qdq(model, ranges, pc, exclude, standins)
        except ModelportError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer failing is reported, never an internal error
            return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"

    out, note = run(per_channel), None
    if isinstance(out, str):
        if not per_channel:
            raise UnsupportedError(f"onnxruntime's static quantizer fails on this model ({out})", path=src)
        why, out = out, run(False)
        if isinstance(out, str):
            raise UnsupportedError(f"onnxruntime's static quantizer fails on this model per channel ({why}) and per "
                                   f"tensor ({out})", path=src)
        note, per_channel = f"weight scales per tensor: onnxruntime's static quantizer fails per channel ({why[:160]})", False
    inits = {t.name: t for t in out.graph.initializer}
    dqs = {n.input[0]: n for n in out.graph.node if n.op_type == "DequantizeLinear"}
    writers: dict[str, object] = {}
    for name, (kept, _lo, _hi, assumed) in standins.items():
        q = inits.get(name + TENSOR_NAME_QUANT_SUFFIX)
        if q is not None:
            dq = dqs.get(q.name)
            axis = next((a.i for a in dq.attribute if a.name == "axis"), None) if dq is not None else None
            if axis is not None and axis < 0:
                axis += len(kept.dims)
            ok = (dq is not None and q.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
                  and (axis is None or axis == (assumed if per_channel else None)))
            if not ok:
                raise UnsupportedError(f"onnxruntime's static quantizer quantizes {name!r} in a way modelport cannot "
                                       "write a block at a time above the external-data threshold (per channel along "
                                       f"axis {axis}, type {q.data_type}); nothing written", path=src)
            scale = onnx.numpy_helper.to_array(inits[dq.input[1]])
            zp = onnx.numpy_helper.to_array(inits[dq.input[2]])
            qtype = q.data_type
            q.CopyFrom(onnx.TensorProto(name=q.name, data_type=qtype, dims=list(kept.dims)))
            writers[q.name] = _qdq_writer(arrays[name], qtype, scale, zp, axis)
        if name in inits:  # still read in float (a layer left alone): the original, copied from its file
            inits[name].CopyFrom(kept)
    int8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    count = sum(1 for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                and inits[n.input[0]].data_type in int8)
    if not count:
        return 0, note
    onnx_data.save(out, dst, base_dir=src.parent, arrays=writers, external=True)
    return count, note
