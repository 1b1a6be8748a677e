"""The canonical parameter space of one architecture, and its map to each client framework.

The canonical state is the ONNX model's float initializers (names and layout). A client holds the
same architecture as a PyTorch module, a Keras model or a modelport-generated PyTorch directory;
``derive`` finds, for every canonical tensor, the local tensor it is and how its layout differs,
then proves it: the canonical weights loaded into the local model compute what onnxruntime computes
on the canonical ONNX (a probe batch, rtol 1e-4), and mapping the local weights back gives the
canonical arrays bit for bit.

How tensors are matched (never by values): both models are brought to an ONNX graph whose
initializers are the local tensors as the framework stores them — a PyTorch module through
``torch.onnx`` (dynamo exporter, no graph optimizer, so BatchNorm is not folded and zero biases
stay; its initializers are the state_dict keys), a Keras model through a layer-by-layer lowering
(its initializers are the weights' ``path``, in Keras layout, with ``Transpose`` nodes where ONNX
wants another one; tf2onnx folds BatchNorm into the kernel and drops zero biases, so it cannot
tell which tensor is which). Each graph is walked into *slots*, in graph order: the tensor, the op
that reads it and in which role (``Conv.W``, ``BatchNormalization.mean``, ``Dense.W`` for a
``Gemm``/``MatMul`` weight, …), and its *semantic* axes:

- a ``Conv`` weight is ``OIHW`` as the op reads it; a ``Transpose`` between the tensor and the op
  (a Keras ``HWIO`` kernel) is part of its layout;
- a dense weight is ``(out, in)`` whatever the op (``Gemm`` with or without ``transB``,
  ``MatMul`` reads ``(in, out)``); when its input is a flattened feature map, ``in`` is split into
  the map's ``(C, H, W)`` in the order the graph flattens them, found by running the index of each
  feature through the ``Transpose``/``Reshape``/``Flatten`` ops between the map and the layer:
  Keras flattens ``H, W, C``, PyTorch ``C, H, W``, and the dense weight's rows are permuted
  accordingly (the classic bug; the parity check would catch it);
- BatchNorm running mean and variance are ``bn_stat`` (kept local by default: FedBN).

Slots of the two graphs pair up in order; a pair whose role, semantic shape or op attributes
(strides, pads, epsilon, …) differ is a different architecture: ``BadInputError`` (exit 2) naming
the first such canonical tensor. Each local array is then

    local = canonical.reshape(view).transpose(perm).reshape(local_shape)

(``view`` splits the canonical axes into the semantic ones; ``None`` fields mean "as is"), and
``to_canonical`` applies the exact inverse. Fused RNN gates (LSTM/GRU) are refused (exit 3, naming
the tensor).

Only numpy is imported at module import: ``ParamMapping``, ``read_local`` and ``write_local`` run
inside Flower clients; ``derive`` and ``canonical_from`` import onnx, onnxruntime and the framework.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from modelport.errors import BadInputError, CheckFailedError, UnsupportedError

__all__ = ["Entry", "ParamMapping", "FRAMEWORKS", "KINDS", "read_local", "write_local", "load_local", "derive",
           "verify_mapping", "canonical_from", "canonical_arrays"]

FRAMEWORKS = ("torch", "keras", "generated")
KINDS = ("param", "bn_stat", "buffer")
_FORMAT = "modelport-param-mapping/1"


# ------------------------------------------------------------------------------------------ the map


@dataclasses.dataclass(frozen=True)
class Entry:
    """One canonical tensor and the local tensor it is.

    ``local = canonical.reshape(view).transpose(perm).reshape(local_shape)``; ``view`` None means the
    canonical shape, ``perm`` None the identity. ``kind`` is ``param`` (trained, averaged),
    ``bn_stat`` (BatchNorm running mean/var: local by default, FedBN) or ``buffer`` (a local tensor
    with no canonical counterpart, e.g. ``num_batches_tracked``: never sent; ``canonical`` is "").
    ``role`` says how the graph reads it (``Conv.W``, ``Dense.W``, ``BatchNormalization.mean``, …).
    """

    canonical: str
    local: str
    perm: tuple[int, ...] | None
    local_shape: tuple[int, ...]
    kind: str
    view: tuple[int, ...] | None = None
    canonical_shape: tuple[int, ...] = ()
    role: str = ""

    def forward(self, array: np.ndarray) -> np.ndarray:
        """The local array from the canonical one."""
        a = np.asarray(array)
        if tuple(a.shape) != tuple(self.canonical_shape):
            raise BadInputError(f"canonical tensor {self.canonical!r} has shape {list(a.shape)}, "
                                f"the mapping expects {list(self.canonical_shape)}")
        if self.view is not None:
            a = a.reshape(self.view)
        if self.perm is not None:
            a = np.transpose(a, self.perm)
        return np.ascontiguousarray(a.reshape(self.local_shape))

    def backward(self, array: np.ndarray) -> np.ndarray:
        """The canonical array from the local one (the exact inverse of ``forward``)."""
        a = np.asarray(array)
        if tuple(a.shape) != tuple(self.local_shape):
            raise BadInputError(f"local tensor {self.local!r} has shape {list(a.shape)}, "
                                f"the mapping expects {list(self.local_shape)}")
        view = tuple(self.view if self.view is not None else self.canonical_shape)
        if self.perm is not None:
            a = a.reshape(tuple(view[p] for p in self.perm))
            a = np.transpose(a, tuple(int(i) for i in np.argsort(self.perm)))
        return np.ascontiguousarray(a.reshape(self.canonical_shape))


@dataclasses.dataclass(frozen=True)
class ParamMapping:
    """Canonical <-> local parameters of one client framework, and how that was verified.

    ``parity``: ``probe_shape``, ``max_abs``, ``max_rel``, ``rtol``, ``atol``, ``ok``,
    ``round_trip_exact``, ``input_perm`` (the local input is ``transpose(canonical input, perm)``).
    """

    framework: str
    canonical_digest: str
    entries: tuple[Entry, ...]
    parity: dict
    input_perm: tuple[int, ...] | None = None  # the local model's input is transpose(canonical input, this)

    def _sent(self, include_bn: bool) -> list[Entry]:
        kinds = ("param", "bn_stat") if include_bn else ("param",)
        return [e for e in self.entries if e.kind in kinds]

    def keys(self, *, include_bn: bool = False) -> list[str]:
        """The canonical keys a client sends, in canonical (graph) order."""
        return [e.canonical for e in self._sent(include_bn)]

    def to_local(self, canonical: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Local arrays for the canonical keys given (absent keys, e.g. BN stats under FedBN, are skipped)."""
        known = {e.canonical for e in self.entries if e.kind != "buffer"}
        unknown = sorted(set(canonical) - known)
        if unknown:
            raise BadInputError(f"canonical tensor {unknown[0]!r} is not in the mapping "
                                f"({len(unknown)} unknown key(s))")
        return {e.local: e.forward(canonical[e.canonical]) for e in self.entries
                if e.kind != "buffer" and e.canonical in canonical}

    def to_canonical(self, local: dict[str, np.ndarray], *, include_bn: bool = False) -> dict[str, np.ndarray]:
        """Exactly the keys of ``keys(include_bn=...)``, from the local arrays (every one must be there)."""
        out = {}
        for e in self._sent(include_bn):
            if e.local not in local:
                raise BadInputError(f"local tensor {e.local!r} (canonical {e.canonical!r}) is missing")
            out[e.canonical] = e.backward(local[e.local])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (tuples as lists); self-contained: this module runs where modelport is not installed."""
        return json.loads(json.dumps({"format": _FORMAT, **dataclasses.asdict(self)}, default=_plain))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ParamMapping:
        try:
            data = json.loads(text)
            if data.get("format") != _FORMAT:
                raise ValueError(f"not a {_FORMAT} document")
            entries = tuple(Entry(
                canonical=str(e["canonical"]), local=str(e["local"]),
                perm=None if e.get("perm") is None else tuple(int(i) for i in e["perm"]),
                local_shape=tuple(int(i) for i in e["local_shape"]), kind=str(e["kind"]),
                view=None if e.get("view") is None else tuple(int(i) for i in e["view"]),
                canonical_shape=tuple(int(i) for i in e.get("canonical_shape", ())), role=str(e.get("role", "")),
            ) for e in data["entries"])
            if any(e.kind not in KINDS for e in entries):
                raise ValueError("unknown entry kind")
            perm = data.get("input_perm")
            return cls(str(data["framework"]), str(data["canonical_digest"]), entries, dict(data.get("parity", {})),
                       None if perm is None else tuple(int(i) for i in perm))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadInputError(f"unreadable parameter mapping ({exc})") from None


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-able")


# ------------------------------------------------------------------------------- local parameters


def _framework(framework: str) -> str:
    if framework not in FRAMEWORKS:
        raise BadInputError(f"unknown framework {framework!r} (known: {', '.join(FRAMEWORKS)})")
    return framework


def read_local(framework: str, model) -> dict[str, np.ndarray]:
    """Every local tensor by key: a torch module's state_dict (``torch``, ``generated``), a Keras
    model's weights by ``path`` (``keras``)."""
    if _framework(framework) == "keras":
        return {w.path: np.array(w.numpy()) for w in model.weights}
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def write_local(framework: str, model, arrays: dict[str, np.ndarray]) -> None:
    """Set the given local tensors in place, exactly (same dtype and shape; other tensors untouched)."""
    if _framework(framework) == "keras":
        weights = {w.path: w for w in model.weights}
        for key, value in arrays.items():
            w = weights.get(key)
            if w is None:
                raise BadInputError(f"the Keras model has no weight {key!r}")
            _check_fit(key, np.asarray(value), tuple(w.shape), np.dtype(w.dtype))
        for key, value in arrays.items():
            weights[key].assign(np.asarray(value))
        return
    import torch

    state = model.state_dict(keep_vars=True)
    for key, value in arrays.items():
        t = state.get(key)
        if t is None:
            raise BadInputError(f"the torch module has no tensor {key!r}")
        _check_fit(key, np.asarray(value), tuple(t.shape), np.dtype(str(t.dtype).removeprefix("torch.")))
    with torch.no_grad():
        for key, value in arrays.items():
            state[key].copy_(torch.from_numpy(np.array(value, copy=True, order="C")))


def _check_fit(key: str, value: np.ndarray, shape: tuple, dtype: np.dtype) -> None:
    if tuple(value.shape) != tuple(int(d) for d in shape):
        raise BadInputError(f"tensor {key!r}: shape {list(value.shape)} does not fit the model's {list(shape)}")
    if value.dtype != dtype:
        raise BadInputError(f"tensor {key!r}: dtype {value.dtype} does not fit the model's {dtype}")


def load_local(framework: str, path: str | Path, *, weights: str | None = None):
    """The local model: ``torch`` a ``file.py:Class`` module (+ optional state_dict/safetensors
    ``weights``), ``keras`` a .keras/.h5 file, ``generated`` a directory `modelport convert --to torch` wrote."""
    framework, text = _framework(framework), str(path)
    if framework == "keras":
        from modelport.formats.keras_format import load_keras
        from modelport.quiet import native_output

        if not Path(text).is_file():
            raise BadInputError("no such Keras model file", path=text)
        with native_output():
            return load_keras(text)
    if framework == "generated":
        from modelport.formats import torch_dir

        p = Path(text)
        if not torch_dir.detect(p):
            raise BadInputError("not a directory written by `modelport convert --to torch` "
                                f"(no {torch_dir.MODEL_FILE} and {torch_dir.META})", path=text)
        try:
            return torch_dir.load_module(p)
        except Exception as exc:  # noqa: BLE001  (a damaged directory: its code or weights)
            raise BadInputError(f"cannot load the generated module ({type(exc).__name__}: {_line(exc)})",
                                path=text) from None
    from modelport.formats import split_module_spec
    from modelport.formats.torch_module import build_module

    if split_module_spec(text) is None:
        raise UnsupportedError("a torch client model is given as path/file.py:Class (with optional weights); "
                               "TorchScript and .pt2 programs cannot be trained in place", path=text)
    return build_module(text, weights)


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


# -------------------------------------------------------------------------------------- ONNX slots

_FLOATS = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
# ops that keep a tensor's layout (elementwise, one data input)
_PASS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Gelu", "Softplus", "HardSigmoid", "HardSwish",
         "Identity", "Dropout", "Cast", "Clip", "Neg", "Abs", "Exp", "Log", "Sqrt", "Erf", "PRelu"}
_LAYOUT = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_BN_ROLES = {1: "scale", 2: "B", 3: "mean", 4: "var"}
_COMPARED_ATTRS = {"Conv": ("strides", "pads", "dilations", "group"), "ConvTranspose": ("strides", "pads", "dilations", "group"),
                   "BatchNormalization": ("epsilon",), "Gemm": ("alpha", "beta")}
_ATTR_DEFAULTS = {"group": 1, "alpha": 1.0, "beta": 1.0, "epsilon": 1e-5}


@dataclasses.dataclass(frozen=True)
class _Slot:
    name: str  # the initializer
    role: str
    kind: str
    shape: tuple[int, ...]  # the initializer's shape
    semantic: tuple[int, ...]  # sizes of the semantic axes
    groups: tuple[tuple[int, ...], ...]  # per initializer axis, the semantic axes it holds (outer first)
    attrs: tuple[tuple[str, Any], ...]
    node: str

    @property
    def view(self) -> tuple[int, ...]:
        return tuple(self.semantic[s] for g in self.groups for s in g)

    @property
    def to_semantic(self) -> tuple[int, ...]:
        """semantic = init.reshape(view).transpose(this)"""
        flat = [s for g in self.groups for s in g]
        return tuple(flat.index(s) for s in range(len(self.semantic)))


class _Graph:
    def __init__(self, model) -> None:
        import onnx

        self.model = model
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001  (shapes are a help; the initializers' own dims still hold)
            inferred = model
        self.shapes: dict[str, tuple] = {}
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        for i in g.initializer:
            self.shapes[i.name] = tuple(i.dims)
        self.inputs = [vi.name for vi in g.input if vi.name not in self.inits]

    def source(self, name: str) -> tuple[str, tuple[int, ...] | None] | None:
        """(initializer, perm) when ``name`` is ``transpose(initializer, perm)`` (perm None: as is), else None."""
        perm: tuple[int, ...] | None = None
        while name not in self.inits:
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type == "Transpose":
                import onnx

                p = next((tuple(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)
                rank = len(self.shapes.get(node.input[0], ()) or ())
                p = p if p is not None else tuple(range(rank))[::-1]
                perm = p if perm is None else tuple(p[i] for i in perm)
            elif node.op_type not in ("Identity",):
                return None
            name = node.input[0]
        init = self.inits[name]
        if init.data_type not in _FLOATS:
            return None
        return name, perm

    def attrs(self, node) -> tuple[tuple[str, Any], ...]:
        import onnx

        want = _COMPARED_ATTRS.get(node.op_type, ())
        have = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        out = []
        w = self.shapes.get(node.input[1]) if len(node.input) > 1 else None
        n = len(w) - 2 if w else 0
        defaults = {**_ATTR_DEFAULTS, "strides": (1,) * n, "dilations": (1,) * n, "pads": (0,) * (2 * n)}
        for k in want:
            v = have.get(k, defaults.get(k))
            if isinstance(v, list):
                v = tuple(int(x) for x in v)
            elif isinstance(v, float):
                v = round(v, 9)
            out.append((k, v))
        if node.op_type == "Gemm" and all(v == 1.0 for _, v in out):
            return ()  # a plain dense layer, as a MatMul is
        return tuple(out)


def _feature_order(g: _Graph, name: str, tensor: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(feature map dims C, H, W…, q) when the 2-D input ``name`` of a dense layer is a flattened
    feature map whose features come in the order ``transpose(map, q).ravel()``; None when it is not one."""
    chain = []
    cur = name
    while True:
        node = g.producer.get(cur)
        if node is None or node.op_type not in _PASS | _LAYOUT:
            break
        if node.op_type in _LAYOUT:
            chain.append(node)
        cur = node.input[0]
    anchor = g.shapes.get(cur)
    if not chain or anchor is None or len(anchor) < 3 or any(d is None for d in anchor[1:]):
        return None
    dims = tuple(int(d) for d in anchor[1:])
    sem = np.arange(int(np.prod(dims))).reshape((1, *dims))
    idx = sem
    if cur in g.inputs:  # a graph input: its semantic layout is the one the input's first layers read
        perm = _input_perm(g, cur)
        if perm is not None:
            dims = tuple(int(anchor[p]) for p in perm[1:])
            sem = np.arange(int(np.prod(dims))).reshape((1, *dims))
            idx = np.transpose(sem, tuple(int(i) for i in np.argsort(perm)))
    import onnx

    for node in reversed(chain):
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        if node.op_type == "Transpose":
            idx = np.transpose(idx, tuple(a.get("perm", range(idx.ndim)[::-1])))
        elif node.op_type == "Flatten":
            axis = int(a.get("axis", 1))
            idx = idx.reshape(int(np.prod(idx.shape[:axis], dtype=np.int64)), -1)
        else:  # Reshape, Squeeze, Unsqueeze: to the inferred shape, batch kept at 1
            out = g.shapes.get(node.output[0])
            if out is None or not out:
                shape = (1, -1)
            else:
                shape = (1, *[-1 if d is None else int(d) for d in out[1:]])
                if shape.count(-1) > 1:
                    shape = (1, -1)
            try:
                idx = idx.reshape(shape)
            except ValueError:
                return None
    if idx.ndim != 2 or idx.shape[0] != 1:
        return None
    vec = idx.ravel()
    for q in itertools.permutations(range(len(dims))):
        if np.array_equal(np.transpose(sem[0], q).ravel(), vec):
            return dims, tuple(q)
    raise UnsupportedError(f"the features read by dense weight {tensor!r} are not a transposed feature map "
                           "(no axis order of the map explains them)")


def _input_perm(g: _Graph, name: str) -> tuple[int, ...] | None:
    """``perm`` such that the first layout-sensitive layer reads ``transpose(input, perm)``; None: as is."""
    import onnx

    perm = None
    cur = name
    while True:
        users = [n for n in g.consumers.get(cur, []) if n.op_type != "Shape"]  # reading the batch size
        if len(users) != 1:
            return perm
        node = users[0]
        if node.op_type == "Transpose":
            p = next((tuple(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)
            if p is None:
                return perm
            perm = p if perm is None else tuple(perm[i] for i in p)
        elif node.op_type not in _PASS:
            return perm
        cur = node.output[0]


def _refuse_recurrent(g: _Graph, model) -> None:
    """Fused gates (LSTM/GRU/RNN) are refused, naming the first tensor that feeds their weights."""
    for node in model.graph.node:
        if node.op_type not in ("LSTM", "GRU", "RNN"):
            continue
        todo, seen, found = [n for n in node.input[1:4] if n], set(), []
        while todo:
            name = todo.pop(0)
            if name in seen:
                continue
            seen.add(name)
            if name in g.inits:
                found.append(name)
            elif name in g.producer:
                todo.extend(i for i in g.producer[name].input if i)
        tensor = next((n for n in found if g.inits[n].data_type in _FLOATS), node.name or node.op_type)
        raise UnsupportedError(f"tensor {tensor!r} holds fused {node.op_type} gates: mapping recurrent layers across "
                               "frameworks (gate order i,o,f,c vs i,f,c,o, split biases) is not supported yet")


def _slots(model) -> tuple[list[_Slot], _Graph]:
    g = _Graph(model)
    _refuse_recurrent(g, model)
    slots: list[_Slot] = []
    seen: set[str] = set()
    dense_out: dict[str, _Slot] = {}  # MatMul output -> its weight slot (the Add after it holds the bias)
    for node in model.graph.node:
        if node.op_type in ("Transpose", "Identity"):  # part of a tensor's layout: its reader holds the slot
            continue
        for i, inp in enumerate(node.input):
            src = g.source(inp) if inp else None
            if src is None or src[0] in seen:
                continue
            init, perm = src
            seen.add(init)
            shape = tuple(int(d) for d in g.inits[init].dims)
            seen_shape = tuple(shape[p] for p in perm) if perm is not None else shape  # as the op reads it
            op = node.op_type
            kind = "param"
            dense = (op == "Gemm" and i == 1) or (op == "MatMul" and i == 1 and len(seen_shape) == 2)
            if dense:
                trans_b = op == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
                out_n, in_n = (seen_shape if trans_b else seen_shape[::-1])
                order = _feature_order(g, node.input[0], init)
                if order is not None and int(np.prod(order[0])) == in_n:
                    fdims, q = order
                    semantic = (out_n, *fdims)
                    in_group = tuple(1 + k for k in q)
                else:
                    semantic, in_group = (out_n, in_n), (1,)
                seen_groups = ((0,), in_group) if trans_b else (in_group, (0,))
                role = "Dense.W"
            else:
                semantic = seen_shape
                seen_groups = tuple((k,) for k in range(len(seen_shape)))
                if op in ("Conv", "ConvTranspose"):
                    role = f"{op}.{'W' if i == 1 else 'B'}"
                elif op == "BatchNormalization" and i in _BN_ROLES:
                    role = f"BatchNormalization.{_BN_ROLES[i]}"
                    kind = "bn_stat" if i in (3, 4) else "param"
                elif op == "Gemm" and i == 2:
                    role = "Dense.B"
                elif op == "Add" and any(o in dense_out for o in node.input):
                    role = "Dense.B"
                else:
                    role = f"{op}.{i}"
            # the initializer's axis k is the op's axis inv(perm)[k]
            if perm is not None:
                inv = [int(j) for j in np.argsort(perm)]
                groups = tuple(seen_groups[inv[k]] for k in range(len(shape)))
            else:
                groups = tuple(seen_groups)
            slot = _Slot(init, role, kind, shape, tuple(int(s) for s in semantic), groups, g.attrs(node),
                         node.name or op)
            slots.append(slot)
            if op == "MatMul" and dense:
                dense_out[node.output[0]] = slot
    return slots, g


def _pair(c: _Slot, lo: _Slot) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(view, perm) with local = canonical.reshape(view).transpose(perm).reshape(local shape)."""
    pc, pl = c.to_semantic, lo.to_semantic
    inv_pl = [int(j) for j in np.argsort(pl)]
    perm = tuple(pc[i] for i in inv_pl)
    view = c.view
    perm_out = None if perm == tuple(range(len(perm))) else perm
    view_out = None if view == c.shape or perm_out is None else view
    return view_out, perm_out


def _match(canon: list[_Slot], local: list[_Slot], framework: str) -> list[Entry]:
    entries = []
    for k, c in enumerate(canon):
        if k >= len(local):
            raise BadInputError(f"architectures differ: canonical tensor {c.name!r} ({c.role} "
                                f"{_dims(c.shape)}) has no counterpart in the {framework} model "
                                f"(it has {len(local)} tensors, the canonical {len(canon)})")
        lo = local[k]
        why = ""
        if c.role != lo.role:
            why = f"it is {c.role} there, the {framework} model's tensor {lo.name!r} is {lo.role}"
            if lo.role.startswith("BatchNormalization.") or lo.role.endswith(".B"):
                why += (" (was the canonical ONNX exported with BatchNorm folded or zero biases dropped? "
                        "make it with modelport.federated.mapping.canonical_from)")
        elif c.semantic != lo.semantic:
            why = (f"{c.role} of shape {_dims(c.shape)} vs {framework} tensor {lo.name!r} of shape {_dims(lo.shape)}")
        elif c.attrs != lo.attrs:
            diff = [f"{a} {va} vs {vb}" for (a, va), (_, vb) in zip(c.attrs, lo.attrs) if va != vb]
            why = f"{c.node} ({c.role}) differs from {framework} tensor {lo.name!r}'s op: {', '.join(diff)}"
        if why:
            raise BadInputError(f"architectures differ at canonical tensor {c.name!r}: {why}")
        view, perm = _pair(c, lo)
        entries.append(Entry(c.name, lo.name, perm, lo.shape, c.kind, view, c.shape, c.role))
    if len(local) > len(canon):
        extra = local[len(canon)]
        raise BadInputError(f"architectures differ: the {framework} model's tensor {extra.name!r} ({extra.role} "
                            f"{_dims(extra.shape)}) has no counterpart in the canonical model")
    return entries


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


# ---------------------------------------------------------------------------- frameworks -> ONNX


def _torch_walk_graph(module, shape: tuple[int, ...]):
    """The module's graph for the slot walk only: the TorchScript exporter in training mode (fast; in
    eval mode it folds BatchNorm into the convolution), on a copy (a training-mode trace updates the
    BatchNorm statistics); the dynamo exporter when tracing fails. Initializers are state_dict keys."""
    import copy
    import io

    import onnx
    import torch

    from modelport.quiet import quiet

    twin = copy.deepcopy(module).eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    try:
        with quiet(), torch.no_grad():
            twin(x)
    except Exception as exc:  # noqa: BLE001  (the forward itself fails on this input)
        raise BadInputError(f"the torch model fails on input {_dims(shape)}: {type(exc).__name__}: {_line(exc)}") from None
    try:
        buf = io.BytesIO()
        with quiet():
            torch.onnx.export(twin, (x,), buf, dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                              do_constant_folding=False, input_names=["input"], opset_version=17)
        return onnx.load_from_string(buf.getvalue())
    except Exception:  # noqa: BLE001  (a forward TorchScript cannot trace: the dynamo exporter may)
        return _torch_graph(module, shape)


def _torch_graph(module, shape: tuple[int, ...], *, dynamic: bool = False):
    """The module as ONNX (dynamo exporter, no graph optimizer: BatchNorm unfolded, state_dict names);
    ``dynamic``: the batch dim stays symbolic (``batch``)."""
    import torch

    from modelport.quiet import quiet

    training = module.training
    module.eval()
    try:
        if dynamic:
            shape = (max(2, shape[0]), *shape[1:])
        x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        extra = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamic else {}
        with quiet(), _no_logging():
            program = torch.onnx.export(module, (x,), dynamo=True, optimize=False, verbose=False,
                                        input_names=["input"], output_names=["output"], external_data=False, **extra)
    except Exception as exc:  # noqa: BLE001  (the module's forward, or the exporter)
        raise BadInputError(f"the torch model cannot be exported on input {_dims(shape)}: "
                            f"{type(exc).__name__}: {_line(exc)}") from None
    finally:
        module.train(training)
    return program.model_proto


@contextlib.contextmanager
def _no_logging():
    """torch.export logs ERROR records on models it then exports fine."""
    import logging

    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _keras_graph(model):
    """A Keras model lowered layer by layer to ONNX: initializers are its weights (by path, Keras
    layout); ``Transpose`` nodes give ONNX the layout it reads (NCHW maps, OIHW kernels)."""
    return _KerasLowering(model).run()


_KERAS_SKIP = {"InputLayer", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "ActivityRegularization"}
_KERAS_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "elu": "Elu", "softplus": "Softplus"}


def _same_pads(hw, kernel, strides, dilation) -> list[int]:
    """TensorFlow's SAME padding as ONNX pads (begin..., end...)."""
    begin, end = [], []
    for n, k, s, d in zip(hw, kernel, strides, dilation):
        out = -(-int(n) // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - int(n), 0)
        begin.append(total // 2)
        end.append(total - total // 2)
    return begin + end


class _KerasLowering:
    """Walks a chain of Keras layers, emitting ONNX nodes; tracks whether the value is NCHW."""

    def __init__(self, model) -> None:
        self.model = model
        self.nodes: list = []
        self.inits: list = []
        self.cur = "input"
        self.nchw = False
        self.rank = len(model.inputs[0].shape)

    def emit(self, op: str, inputs: list[str], **attrs) -> str:
        from onnx import helper

        out = f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.cur = out
        return out

    def weight(self, variable) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.array(variable.numpy()), name=variable.path))
        return variable.path

    def to_nchw(self) -> None:
        if self.rank == 4 and not self.nchw:
            self.emit("Transpose", [self.cur], perm=[0, 3, 1, 2])
            self.nchw = True

    def to_keras(self) -> None:
        if self.nchw:
            self.emit("Transpose", [self.cur], perm=[0, 2, 3, 1])
            self.nchw = False

    def activation(self, name, layer) -> None:
        name = name if isinstance(name, str) else getattr(name, "__name__", str(name))
        if name in (None, "linear"):
            return
        if name == "softmax":
            self.to_keras()
            self.emit("Softmax", [self.cur], axis=-1)
        elif name in ("silu", "swish"):
            x = self.cur
            self.emit("Mul", [x, self.emit("Sigmoid", [x])])
        elif name in _KERAS_ACTIVATIONS:
            self.emit(_KERAS_ACTIVATIONS[name], [self.cur])
        else:
            raise UnsupportedError(f"Keras layer {layer.name!r}: activation {name!r} has no lowering")

    def chain(self) -> list:
        import keras

        layers = [lyr for lyr in self.model.layers]
        if len(self.model.inputs) != 1 or len(self.model.outputs) != 1:
            raise UnsupportedError("a federated Keras model has one input and one output")
        if isinstance(self.model, keras.Sequential):
            return layers
        prev = self.model.inputs[0]
        for lyr in layers:
            if type(lyr).__name__ == "InputLayer":
                continue
            if len(getattr(lyr, "_inbound_nodes", [])) != 1 or lyr.input is not prev:
                raise UnsupportedError(f"Keras layer {lyr.name!r} does not follow the previous layer: only "
                                       "chains of layers are lowered (no branches, no shared layers)")
            prev = lyr.output
        return layers

    def run(self):
        import onnx
        from onnx import TensorProto, helper

        for layer in self.chain():
            self.layer(layer)
        self.to_keras()
        out_shape = list(self.model.outputs[0].shape)
        in_shape = list(self.model.inputs[0].shape)
        self.emit("Identity", [self.cur])
        self.nodes[-1].output[0] = "output"
        graph = helper.make_graph(
            self.nodes, self.model.name or "keras",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch" if d is None else d for d in in_shape])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch" if d is None else d for d in out_shape])],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelport")
        onnx.checker.check_model(model)
        return model

    def layer(self, layer) -> None:
        cls = type(layer).__name__
        cfg = layer.get_config()
        if cls in _KERAS_SKIP:
            return
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise UnsupportedError(f"Keras layer {layer.name!r}: only channels_last layers are lowered")
        if cls == "Conv2D":
            self.to_nchw()
            x = self.cur
            kernel = self.emit("Transpose", [self.weight(layer.kernel)], perm=[3, 2, 0, 1])
            ins = [x, kernel] + ([self.weight(layer.bias)] if cfg.get("use_bias", True) else [])
            k, s, d = tuple(cfg["kernel_size"]), tuple(cfg["strides"]), tuple(cfg["dilation_rate"])
            hw = tuple(layer.input.shape[1:3])
            pads = _same_pads(hw, k, s, d) if cfg["padding"] == "same" else [0, 0, 0, 0]
            self.emit("Conv", ins, strides=list(s), dilations=list(d), pads=pads, group=int(cfg.get("groups", 1)),
                      kernel_shape=list(k))
            self.activation(cfg.get("activation"), layer)
        elif cls == "Dense":
            self.to_keras()
            if len(layer.input.shape) != 2:
                raise UnsupportedError(f"Keras layer {layer.name!r}: Dense on a rank-{len(layer.input.shape)} input "
                                       "is not lowered (flatten first)")
            self.emit("MatMul", [self.cur, self.weight(layer.kernel)])
            if cfg.get("use_bias", True):
                self.emit("Add", [self.cur, self.weight(layer.bias)])
            self.activation(cfg.get("activation"), layer)
        elif cls == "BatchNormalization":
            axis = cfg.get("axis", -1)
            axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
            rank = len(layer.input.shape)
            if axis not in (-1, rank - 1) or not cfg.get("center", True) or not cfg.get("scale", True):
                raise UnsupportedError(f"Keras layer {layer.name!r}: BatchNormalization is lowered over the last "
                                       "axis with center and scale only")
            self.to_nchw()
            self.emit("BatchNormalization", [self.cur, self.weight(layer.gamma), self.weight(layer.beta),
                                             self.weight(layer.moving_mean), self.weight(layer.moving_variance)],
                      epsilon=float(cfg["epsilon"]))
        elif cls == "ReLU":
            if cfg.get("max_value") is not None or cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
                raise UnsupportedError(f"Keras layer {layer.name!r}: ReLU with max_value/negative_slope/threshold "
                                       "is not lowered")
            self.emit("Relu", [self.cur])
        elif cls == "Activation":
            self.activation(cfg.get("activation"), layer)
        elif cls in ("MaxPooling2D", "AveragePooling2D"):
            self.to_nchw()
            k, s = tuple(cfg["pool_size"]), tuple(cfg["strides"] or cfg["pool_size"])
            hw = tuple(layer.input.shape[1:3])
            pads = _same_pads(hw, k, s, (1, 1)) if cfg["padding"] == "same" else [0, 0, 0, 0]
            self.emit("MaxPool" if cls == "MaxPooling2D" else "AveragePool", [self.cur], kernel_shape=list(k),
                      strides=list(s), pads=pads)
        elif cls == "GlobalAveragePooling2D":
            if cfg.get("keepdims"):
                raise UnsupportedError(f"Keras layer {layer.name!r}: keepdims is not lowered")
            self.to_nchw()
            self.emit("GlobalAveragePool", [self.cur])
            self.emit("Flatten", [self.cur], axis=1)
            self.nchw, self.rank = False, 2
        elif cls == "Flatten":
            self.to_keras()
            self.emit("Flatten", [self.cur], axis=1)
            self.rank = 2
        elif cls in ("LSTM", "GRU", "SimpleRNN", "Bidirectional"):
            names = ", ".join(w.path for w in layer.weights[:1]) or layer.name
            raise UnsupportedError(f"tensor {names!r} holds fused {cls} gates: mapping recurrent layers across "
                                   "frameworks (gate order i,f,c,o vs ONNX i,o,f,c) is not supported yet")
        else:
            raise UnsupportedError(f"Keras layer {layer.name!r} ({cls}) has no lowering for federated mapping")



def _probe_runs(framework: str, model, x: np.ndarray) -> np.ndarray:
    if framework == "keras":
        from modelport.quiet import native_output

        with native_output():
            out = model(x, training=False)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out)
    import torch

    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        model.train(training)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.detach().cpu().numpy()


# ------------------------------------------------------------------------------------------ derive


def canonical_arrays(canonical: str | Path) -> dict[str, np.ndarray]:
    """The canonical state: every float initializer of the ONNX model, by name."""
    from onnx import numpy_helper

    model = _read_onnx(canonical)
    return {i.name: numpy_helper.to_array(i, base_dir=str(Path(canonical).parent)) for i in model.graph.initializer
            if i.data_type in _FLOATS}


def _read_onnx(path: str | Path):
    p = Path(path)
    if not p.is_file():
        raise BadInputError("no such canonical ONNX model", path=p)
    try:
        from modelport.security.loaders import read_onnx

        return read_onnx(str(p))
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001  (not ONNX at all)
        raise BadInputError(f"unreadable ONNX model ({type(exc).__name__}: {_line(exc)})", path=p) from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _probe_shape(g: _Graph, name: str, batch: int) -> tuple[int, ...]:
    shape = g.shapes.get(name)
    if not shape:
        raise BadInputError(f"the canonical model's input {name!r} has no known shape")
    out = tuple(batch if (i == 0 and d is None) else d for i, d in enumerate(shape))
    if any(d is None for d in out):
        raise BadInputError(f"the canonical model's input {name!r} has dynamic dims besides the batch: {list(shape)}")
    return tuple(int(d) for d in out)


def _local_shape(c_shape: tuple[int, ...], framework: str) -> list[tuple[int, ...]]:
    """Input shapes to try for the local model: the canonical's, then the other channel order."""
    shapes = [c_shape]
    if len(c_shape) == 4:
        other = (0, 2, 3, 1) if framework == "keras" else (0, 3, 1, 2)
        back = (0, 3, 1, 2) if framework == "keras" else (0, 2, 3, 1)
        for p in (other, back):
            s = tuple(c_shape[i] for i in p)
            if s not in shapes:
                shapes.append(s)
    return shapes


def derive(canonical: str | Path, local: str | Path, framework: str, *, probe: np.ndarray | None = None,
           rtol: float = 1e-4, atol: float = 1e-5, weights: str | None = None, model=None) -> ParamMapping:
    """Derive and verify the map between a canonical ONNX model and a local model of the same architecture.

    Args:
        canonical: the canonical ONNX model (its float initializers are the canonical state).
        local: the local model: ``file.py:Class`` (torch), .keras/.h5 (keras), a generated directory.
        framework: ``torch``, ``keras`` or ``generated``.
        probe: the canonical model's input for the parity check (default: 4 seeded random samples).
        rtol, atol: the parity tolerance.
        weights: the torch module's state_dict (not needed: the canonical weights are loaded).
        model: the local model already loaded (then ``local`` only names it in messages).

    Returns:
        The mapping, its ``parity`` filled by :func:`verify_mapping`.

    Raises:
        BadInputError: unknown framework, unreadable model, or architectures that differ (naming the
            first canonical tensor without a counterpart).
        UnsupportedError: a layer the mapping cannot lower or map (fused RNN gates, branching Keras models).
        CheckFailedError: the mapped model does not compute what the canonical computes, or the round trip
            is not exact.
    """
    framework = _framework(framework)
    cpath = Path(canonical)
    cmodel = _read_onnx(cpath)
    canon_slots, cg = _slots(cmodel)
    if len(cg.inputs) != 1:
        raise UnsupportedError(f"the canonical model has {len(cg.inputs)} inputs; federated mapping needs one",
                               path=cpath)
    if model is None:
        model = load_local(framework, local, weights=weights)
    c_input = cg.inputs[0]
    c_shape = _probe_shape(cg, c_input, 4 if probe is None else int(np.asarray(probe).shape[0]))
    if framework == "keras":
        lmodel = _keras_graph(model)
    else:
        lmodel, errors = None, []
        for shape in _local_shape(c_shape, framework):
            try:
                lmodel = _torch_walk_graph(model, shape)
                break
            except BadInputError as exc:
                errors.append(str(exc))
        if lmodel is None:
            raise BadInputError(errors[0], path=str(local))
    local_slots, lg = _slots(lmodel)
    if len(lg.inputs) != 1:
        raise UnsupportedError(f"the {framework} model has {len(lg.inputs)} inputs; federated mapping needs one",
                               path=str(local))
    entries = _match(canon_slots, local_slots, framework)
    mapped = {e.local for e in entries}
    state = read_local(framework, model)
    missing = [e.local for e in entries if e.local not in state]
    if missing:
        raise BadInputError(f"the {framework} model has no tensor {missing[0]!r} its graph reads", path=str(local))
    entries += [Entry("", k, None, tuple(v.shape), "buffer", None, (), "") for k, v in state.items() if k not in mapped]
    # the input as the local model takes it: canonical -> semantic (tc), semantic -> local (inverse of tl)
    tc = _input_perm(cg, c_input) or tuple(range(len(c_shape)))
    tl = _input_perm(lg, lg.inputs[0]) or tuple(range(len(c_shape)))
    if len(tc) != len(tl):
        raise BadInputError(f"architectures differ at the input: rank {len(tc)} vs {len(tl)} in the {framework} model")
    in_perm = tuple(int(tc[i]) for i in np.argsort(tl))
    want_local = _probe_shape(lg, lg.inputs[0], c_shape[0])
    if tuple(c_shape[p] for p in in_perm) != want_local:
        raise BadInputError(f"architectures differ at the input: the canonical takes {_dims(c_shape)}, "
                            f"the {framework} model {_dims(want_local)}")
    mapping = ParamMapping(framework, _sha256(cpath), tuple(entries), {},
                           None if in_perm == tuple(range(len(in_perm))) else in_perm)
    return verify_mapping(mapping, cpath, model, probe=probe, rtol=rtol, atol=atol)


def verify_mapping(mapping: ParamMapping, canonical: str | Path, model, *, probe: np.ndarray | None = None,
                   rtol: float = 1e-4, atol: float = 1e-5, perturb: bool = True) -> ParamMapping:
    """Prove a mapping on a local model: with the canonical weights loaded (``to_local``), the model
    computes what onnxruntime computes on the canonical ONNX for ``probe`` (canonical layout; default 4
    seeded random samples) within ``atol + rtol * |expected|``; mapped back (``to_canonical``), every
    canonical tensor is bit-identical. The model's own weights are restored afterwards.

    With ``perturb`` (the default) both sides run on the canonical weights plus seeded noise (BatchNorm
    variances scaled, staying positive), so that a fresh model's zero biases and trivial BatchNorm
    statistics cannot hide a wrong mapping.

    Returns the mapping with ``parity`` filled; raises CheckFailedError (``.report``: that mapping) when either fails.
    """
    import onnxruntime as ort

    from modelport.quiet import native_output

    cpath = Path(canonical)
    cmodel = _read_onnx(cpath)
    digest = _sha256(cpath)
    if digest != mapping.canonical_digest:
        raise BadInputError(f"the mapping was derived for another canonical model (sha256 {mapping.canonical_digest[:12]}, "
                            f"this one {digest[:12]})", path=cpath)
    g = _Graph(cmodel)
    c_input = g.inputs[0]
    if probe is None:
        x = np.random.default_rng(0).standard_normal(_probe_shape(g, c_input, 4)).astype(np.float32)
    else:
        x = np.asarray(probe, dtype=np.float32)
    perm = mapping.input_perm or tuple(range(x.ndim))
    if len(perm) != x.ndim:
        raise BadInputError(f"the probe has rank {x.ndim}, the canonical input {len(perm)}")
    x_local = np.ascontiguousarray(np.transpose(x, perm))
    arrays = canonical_arrays(cpath)
    if perturb:
        arrays = _perturbed(arrays, mapping)
        _set_initializers(cmodel, arrays)
    framework = mapping.framework
    state = read_local(framework, model)
    sent = [e for e in mapping.entries if e.kind != "buffer"]
    saved = {e.local: state[e.local] for e in sent if e.local in state}
    write_local(framework, model, mapping.to_local({e.canonical: arrays[e.canonical] for e in sent}))
    try:
        try:
            got = _probe_runs(framework, model, x_local)
        except Exception as exc:  # noqa: BLE001  (the local model's forward on the probe)
            raise BadInputError(f"the {framework} model fails on the probe {_dims(x_local.shape)}: "
                                f"{type(exc).__name__}: {_line(exc)}") from None
        with native_output():
            sess = ort.InferenceSession(cmodel.SerializeToString(), providers=["CPUExecutionProvider"])
            try:
                want = sess.run(None, {c_input: x})[0]
            except Exception as exc:  # noqa: BLE001  (a probe that does not fit the canonical model)
                raise BadInputError(f"the canonical model fails on the probe {_dims(x.shape)}: {_line(exc)}") from None
        back = mapping.to_canonical(read_local(framework, model), include_bn=True)
    finally:
        write_local(framework, model, saved)
    inexact = [k for k in back if back[k].dtype != arrays[k].dtype or back[k].tobytes() != arrays[k].tobytes()]
    if got.shape != want.shape:
        raise BadInputError(f"architectures differ at the output: the canonical gives {_dims(want.shape)}, "
                            f"the {framework} model {_dims(got.shape)}")
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    max_abs = float(err.max()) if err.size else 0.0
    max_rel = float((err / np.maximum(np.abs(want.astype(np.float64)), 1e-12)).max()) if err.size else 0.0
    ok = bool(np.all(err <= atol + rtol * np.abs(want.astype(np.float64))))
    parity = {"probe_shape": list(x.shape), "local_probe_shape": list(x_local.shape), "input_perm": list(perm),
              "max_abs": max_abs, "max_rel": max_rel, "rtol": rtol, "atol": atol, "ok": ok,
              "round_trip_exact": not inexact, "tensors": len(sent), "perturbed": perturb}
    mapping = dataclasses.replace(mapping, parity=parity)
    if not ok:
        raise CheckFailedError(f"the {framework} model with the canonical weights does not compute what the canonical "
                               f"ONNX computes: max abs error {max_abs:.3g} (rtol {rtol:g}, atol {atol:g})",
                               report=mapping)
    if inexact:
        raise CheckFailedError(f"canonical tensor {inexact[0]!r} does not survive the round trip through the "
                               f"{framework} model bit for bit", report=mapping)
    return mapping


def _perturbed(arrays: dict[str, np.ndarray], mapping: ParamMapping) -> dict[str, np.ndarray]:
    """The canonical arrays plus seeded noise: ``a + 0.1 * scale * N(0, 1)``, scale the tensor's std (or
    0.1 for a constant one); BatchNorm variances ``var * U(0.5, 1.5) + 0.1``."""
    rng = np.random.default_rng(1)
    roles = {e.canonical: e.role for e in mapping.entries if e.kind != "buffer"}
    out = dict(arrays)
    for name, role in roles.items():
        a = arrays[name]
        if not np.issubdtype(a.dtype, np.floating) or a.dtype.itemsize < 4:
            continue
        if role == "BatchNormalization.var":
            new = a * rng.uniform(0.5, 1.5, a.shape) + 0.1
        else:
            scale = float(np.std(a)) if a.size > 1 else 0.0
            new = a + 0.1 * (scale or 0.1) * rng.standard_normal(a.shape)
        out[name] = new.astype(a.dtype)
    return out


def _set_initializers(model, arrays: dict[str, np.ndarray]) -> None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name in arrays:
            init.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))


def canonical_from(model: str | Path, out: str | Path, *, inputs: tuple | None = None,
                   weights: str | None = None) -> Path:
    """The canonical ONNX of a model: ONNX as is, a Keras model lowered layer by layer, a PyTorch module
    (``file.py:Class``, ``inputs`` its TensorSpecs or ``name:1x1x8x8:float32`` strings) exported
    without graph optimization. Written beside ``out`` and renamed into place."""
    import onnx

    from modelport.formats import detect

    src, dest = str(model), Path(out)
    fmt = detect(src)
    if fmt == "onnx":
        proto = _read_onnx(src)
    elif fmt == "keras":
        proto = _keras_graph(load_local("keras", src))
    elif fmt == "torch-module" or fmt == "torch":
        from modelport.inputs import parse_input_spec

        specs = tuple(parse_input_spec(s) if isinstance(s, str) else s for s in (inputs or ()))
        if fmt == "torch":
            from modelport.formats import torch_dir

            meta = torch_dir.read_meta(Path(src))
            specs = specs or torch_dir.meta_inputs(meta)
        if len(specs) != 1 or specs[0].shape is None:
            raise BadInputError("the canonical model needs its one input's shape, e.g. inputs=('x:1x1x8x8:float32',)",
                                path=src)
        shape = tuple(1 if not isinstance(d, int) else int(d) for d in specs[0].shape)
        proto = _torch_graph(load_local("torch" if fmt == "torch-module" else "generated", src, weights=weights), shape,
                             dynamic=True)
    else:
        raise UnsupportedError(f"a canonical model is made from ONNX, Keras or a PyTorch module, not {fmt}", path=src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        onnx.save(proto, str(tmp))
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
