"""Source generation: ONNX graph -> the text of a torch ``nn.Module``.

Each op converter receives a :class:`Node` and emits Python statements through it. Values
flow through the generated ``forward`` under one of these kinds:

* ``tensor``: a torch tensor held in a local variable;
* ``const``: an initializer or Constant, materialized lazily as a parameter, a buffer or
  a Python literal, and folded into literals where an op needs axes or shapes;
* ``shape`` / ``scalar``: int64 shape data kept as Python ints (``x.shape[0]``), so that
  dynamic dims stay symbolic and the module stays exportable;
* ``seq`` / ``none``: a Python list of tensors (ONNX sequences), or a missing optional.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper as onnx_helper
from onnx import numpy_helper

from modelport.formats import onnx_data
from modelport.to_torch import dtypes, naming

#: ops through which gradients do not flow; a float constant only they read stays a buffer.
NON_DIFFERENTIABLE = {"Shape", "Size", "Equal", "Less", "Greater", "LessOrEqual",
                      "GreaterOrEqual", "ArgMax", "ArgMin", "NonZero", "Reshape", "Expand",
                      "ConstantOfShape", "Range", "Tile", "Resize", "Upsample", "Slice",
                      "Squeeze", "Unsqueeze", "Pad", "Split", "TopK", "IsNaN", "IsInf",
                      "Not", "And", "Or", "Xor", "Cast", "Sign", "Floor", "Ceil", "Round"}


class NotConvertible(Exception):
    """Raised by a converter for a node it cannot express; the reason reaches the user."""


def lit(v: Any) -> str:
    """Python source for a scalar or nested list literal."""
    if isinstance(v, (list, tuple)):
        inner = ", ".join(lit(x) for x in v)
        return f"({inner},)" if isinstance(v, tuple) and len(v) == 1 else (
            f"({inner})" if isinstance(v, tuple) else f"[{inner}]")
    if isinstance(v, (bool, np.bool_)):
        return repr(bool(v))
    if isinstance(v, (int, np.integer)):
        return repr(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "math.nan"
        if math.isinf(f):
            return "math.inf" if f > 0 else "-math.inf"
        return repr(f)
    if isinstance(v, bytes):
        return repr(v.decode())
    return repr(v)


def _kept(arr: np.ndarray) -> np.ndarray:
    """A state-dict entry: contiguous, except a memory-mapped weight (or a view of one, e.g. its
    transpose), kept as it is and made contiguous one tensor at a time when the weights are written."""
    return arr if onnx_data.is_mapped(arr) else np.ascontiguousarray(arr)


@dataclass
class Value:
    """How one ONNX value is reachable from generated code."""

    expr: str | None
    kind: str = "tensor"
    const: np.ndarray | None = None
    items: list[str] | None = None
    dtype: int | None = None
    zero_parts: bool = False  # a shape list built with a literal 0 among its parts ([0, *s, 3]: Reshape copies there)


@dataclass
class Line:
    text: str
    indent: int = 0
    defines: tuple[str, ...] = ()


@dataclass
class ModuleState:
    """What the generated ``__init__`` holds, shared by a graph and its subgraphs."""

    types: dict[str, tuple[int, list | None]]
    opsets: dict[str, int]
    trainable: set[str]
    init_lines: list[str] = field(default_factory=list)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    helpers: list[str] = field(default_factory=list)
    attrs: naming.Namer = field(default_factory=naming.Namer)
    locals: naming.Namer = field(default_factory=naming.Namer)
    warnings: list[str] = field(default_factory=list)
    problems: list[tuple[onnx.NodeProto, str]] = field(default_factory=list)
    n_nodes: int = 0
    base_dir: str | None = None  # the ONNX file's directory: external data is memory-mapped from there
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    graph_outputs: set[str] = field(default_factory=set)
    fused: dict[int, str] = field(default_factory=dict)

    def helper(self, name: str) -> str:
        """Marks runtime function ``name`` for model.py, after the runtime functions it calls."""
        from modelport.to_torch.runtime import HELPERS  # imports torch: not before a model needs it

        if name not in self.helpers:
            src = HELPERS[name]
            for other in HELPERS:
                if other != name and re.search(rf"(?<![\w.]){other}\(", src):
                    self.helper(other)
            self.helpers.append(name)
        return name

    def tensor(self, hint: str, arr: np.ndarray, param: bool) -> str:
        if re.fullmatch(r"val_\d+", hint):
            # torch.onnx's exporter names its own constants val_N: a buffer of that name
            # would collide with them when the generated module is exported again.
            hint = f"const_{hint[4:]}"
        attr = self.attrs.new(hint, short=False, fallback="c")
        arr = _kept(arr)
        self.state[attr] = arr
        shape = ", ".join(str(d) for d in arr.shape)
        dt = dtypes.torch_dtype(dtypes.onnx_type(arr))
        empty = f"torch.empty(({shape}{',' if arr.ndim == 1 else ''}), dtype={dt})"
        if param:
            self.init_lines.append(f"self.{attr} = nn.Parameter({empty})")
        else:
            self.init_lines.append(f'self.register_buffer("{attr}", {empty})')
        return f"self.{attr}"

    def layer(self, hint: str, ctor: str, params: dict[str, np.ndarray]) -> str:
        attr = self.attrs.new(hint, short=False, fallback="layer")
        self.init_lines.append(f"self.{attr} = {ctor}")
        for k, v in params.items():
            self.state[f"{attr}.{k}"] = _kept(v)
        return f"self.{attr}"


class Graph:
    """One ONNX graph (the main graph or a subgraph) being turned into statements."""

    def __init__(self, ms: ModuleState, graph: onnx.GraphProto, parent: Graph | None = None):
        self.ms = ms
        self.graph = graph
        self.parent = parent
        self.values: dict[str, Value] = {}
        self.lines: list[Line] = []
        for init in graph.initializer:  # external data: a read-only memmap, never a copy in the protobuf
            self.values[init.name] = Value(None, "const", onnx_data.array(init, ms.base_dir))
        for sp in graph.sparse_initializer:
            arr = numpy_helper.to_array(sp)
            self.values[sp.values.name] = Value(None, "const", arr)

    def lookup(self, name: str) -> Value:
        g: Graph | None = self
        while g is not None:
            if name in g.values:
                return g.values[name]
            g = g.parent
        raise KeyError(f"value {name!r} is used before it is defined")

    def emit(self, text: str, defines: tuple[str, ...] = (), indent: int = 0) -> None:
        self.lines.append(Line(text, indent, defines))

    def new_local(self, raw: str) -> str:
        return self.ms.locals.new(raw)

    def materialize(self, name: str, scalar_ok: bool = False) -> str:
        v = self.lookup(name)
        if v.kind == "tensor" or v.kind in ("seq", "none"):
            return v.expr or "None"
        if v.kind == "const":
            arr = v.const
            if scalar_ok and arr.ndim == 0 and arr.dtype.kind in "biuf":
                return lit(arr.item())
            if v.expr is None:
                param = name in self.ms.trainable
                v.expr = self.ms.tensor(name, arr, param)
            return v.expr
        dt = dtypes.torch_dtype(v.dtype or onnx.TensorProto.INT64)
        if v.kind == "scalar":
            if scalar_ok:
                return v.expr
            return f"torch.tensor({v.expr}, dtype={dt})"
        return f"torch.tensor({v.expr}, dtype={dt})"

    def convert_nodes(self) -> None:
        from modelport.to_torch import registry

        for node in self.graph.node:
            self.ms.n_nodes += 1
            domain = "" if node.domain in registry.DEFAULT_DOMAINS else node.domain
            fn, reason = registry.dispatch(domain, node.op_type, self.ms.opsets.get(domain))
            label = f"# {node.name} ({node.op_type})" if node.name else f"# {node.op_type}"
            if id(node) in self.ms.fused:
                self.emit(f"{label}: fused into {self.ms.fused[id(node)]}")
                continue
            start = len(self.lines)
            self.emit(label)
            if fn is None:
                self.ms.problems.append((node, reason))
                self._placeholder(node)
                continue
            try:
                fn(Node(self, node))
            except NotConvertible as e:
                del self.lines[start:]
                self.ms.problems.append((node, str(e)))
                self._placeholder(node)

    def _placeholder(self, node: onnx.NodeProto) -> None:
        for o in node.output:
            if o:
                self.values[o] = Value("None", "none")


class Node:
    """The interface op converters use: typed access to a node and its inputs, and emit."""

    def __init__(self, g: Graph, node: onnx.NodeProto):
        self.g = g
        self.node = node
        self.ms = g.ms
        self._attrs = {a.name: a for a in node.attribute}
        self._outs: dict[int, str] = {}

    # -- attributes ---------------------------------------------------------------------
    @property
    def opset(self) -> int:
        return self.ms.opsets.get(self.node.domain if self.node.domain not in ("ai.onnx",)
                                  else "", 0)

    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    def attr(self, name: str, default: Any = None) -> Any:
        a = self._attrs.get(name)
        if a is None:
            return default
        if a.ref_attr_name:
            raise NotConvertible(f"attribute {name} references a function attribute")
        v = onnx_helper.get_attribute_value(a)
        if isinstance(v, bytes):
            return v.decode()
        if isinstance(v, onnx.TensorProto):
            return numpy_helper.to_array(v)
        if isinstance(v, list) and v and isinstance(v[0], bytes):
            return [s.decode() for s in v]
        return v

    # -- inputs -------------------------------------------------------------------------
    @property
    def n_in(self) -> int:
        return len(self.node.input)

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i]) and \
            self.g.lookup(self.node.input[i]).kind != "none"

    def val(self, i: int) -> Value:
        return self.g.lookup(self.node.input[i])

    def x(self, i: int = 0, scalar_ok: bool = False) -> str | None:
        """Source for input ``i`` as a tensor (or None when absent)."""
        if not self.has(i):
            return None
        return self.g.materialize(self.node.input[i], scalar_ok)

    def xs(self) -> list[str]:
        return [self.x(i) for i in range(self.n_in) if self.has(i)]

    def const(self, i: int) -> np.ndarray | None:
        if not self.has(i):
            return None
        v = self.val(i)
        return v.const if v.kind == "const" else None

    def ints(self, i: int) -> str | None:
        """Source for a 1-D int input as a Python sequence of ints."""
        if not self.has(i):
            return None
        v = self.val(i)
        if v.kind == "const":
            return lit([int(a) for a in v.const.reshape(-1)])
        if v.kind == "shape":
            return v.expr
        if v.kind == "scalar":
            return f"[{v.expr}]"
        return f"{v.expr}.tolist()"

    def int_items(self, i: int) -> list[str] | None:
        """Element sources of a 1-D int input when its length is known at codegen time."""
        if not self.has(i):
            return None
        v = self.val(i)
        if v.kind == "const":
            return [lit(int(a)) for a in v.const.reshape(-1)]
        if v.kind == "shape" and v.items is not None:
            return list(v.items)
        if v.kind == "scalar":
            return [v.expr]
        return None

    def const_ints(self, i: int) -> list[int] | None:
        c = self.const(i)
        return None if c is None else [int(a) for a in c.reshape(-1)]

    def scalar(self, i: int) -> str | None:
        """Source for a 0-d (or 1-element) input as a Python number."""
        if not self.has(i):
            return None
        v = self.val(i)
        if v.kind == "const":
            return lit(v.const.reshape(-1)[0].item())
        if v.kind == "scalar":
            return v.expr
        if v.kind == "shape":
            return f"{v.expr}[0]"
        return f"{v.expr}.item()"

    def dtype(self, i: int) -> int | None:
        if not self.has(i):
            return None
        v = self.val(i)
        if v.kind == "const":
            return dtypes.onnx_type(v.const)
        if v.kind in ("shape", "scalar"):
            return v.dtype or onnx.TensorProto.INT64
        t = self.ms.types.get(self.node.input[i])
        return t[0] if t else None

    def shape(self, i: int) -> list | None:
        if not self.has(i):
            return None
        v = self.val(i)
        if v.kind == "const":
            return list(v.const.shape)
        t = self.ms.types.get(self.node.input[i])
        return t[1] if t else None

    def rank(self, i: int) -> int | None:
        s = self.shape(i)
        return None if s is None else len(s)

    def odtype(self, j: int = 0) -> int | None:
        if j >= len(self.node.output):
            return None
        t = self.ms.types.get(self.node.output[j])
        return t[0] if t else None

    def oshape(self, j: int = 0) -> list | None:
        t = self.ms.types.get(self.node.output[j]) if j < len(self.node.output) else None
        return t[1] if t else None

    # -- outputs ------------------------------------------------------------------------
    @property
    def n_out(self) -> int:
        return len(self.node.output)

    def has_out(self, j: int) -> bool:
        return j < len(self.node.output) and bool(self.node.output[j])

    def out(self, j: int = 0) -> str:
        if j not in self._outs:
            name = self.node.output[j] if self.has_out(j) else f"unused_{j}"
            self._outs[j] = self.g.new_local(name or "_")
        return self._outs[j]

    def assign(self, expr: str, j: int = 0, kind: str = "tensor", items: list[str] | None = None,
               dtype: int | None = None) -> str:
        """Emits ``out_j = expr`` and records output ``j``."""
        name = self.out(j)
        self.g.emit(f"{name} = {expr}", self._defines(j))
        self.set(j, Value(name, kind, items=items, dtype=dtype))
        return name

    def assign_many(self, expr: str, js: list[int]) -> None:
        names = [self.out(j) if self.has_out(j) else "_" for j in js]
        self.g.emit(f"{', '.join(names)} = {expr}",
                    tuple(self.node.output[j] for j in js if self.has_out(j)))
        for j in js:
            if self.has_out(j):
                self.set(j, Value(self.out(j)))

    def set(self, j: int, value: Value) -> None:
        if self.has_out(j):
            self.g.values[self.node.output[j]] = value

    def set_const(self, j: int, arr: np.ndarray) -> None:
        self.set(j, Value(None, "const", np.asarray(arr)))

    def emit(self, text: str, indent: int = 0, defines: tuple[str, ...] = ()) -> None:
        self.g.emit(text, defines, indent)

    def _defines(self, j: int) -> tuple[str, ...]:
        return (self.node.output[j],) if self.has_out(j) else ()

    def tmp(self, hint: str) -> str:
        return self.g.new_local(hint)

    # -- module state -------------------------------------------------------------------
    def helper(self, name: str) -> str:
        return self.ms.helper(name)

    def layer(self, hint: str, ctor: str, params: dict[str, np.ndarray]) -> str:
        return self.ms.layer(hint, ctor, params)

    def initializer_name(self, i: int) -> str:
        return self.node.input[i]

    def sole_consumer(self, j: int = 0) -> onnx.NodeProto | None:
        """The only node reading output ``j``, when there is exactly one and it is no graph output."""
        name = self.node.output[j]
        users = self.ms.consumers.get(name, [])
        if len(users) != 1 or name in self.ms.graph_outputs:
            return None
        return users[0]

    def fuse(self, other: onnx.NodeProto) -> None:
        """Marks ``other`` as emitted by this node; its outputs are this node's to set."""
        self.ms.fused[id(other)] = self.node.name or self.node.op_type

    def const_of(self, name: str):
        try:
            v = self.g.lookup(name)
        except KeyError:
            return None
        return v.const if v.kind == "const" else None

    def fail(self, reason: str) -> NotConvertible:
        return NotConvertible(reason)

    def subgraph(self, attr: str, bind: dict[str, Value] | None = None) -> tuple[list[Line], list[str]]:
        """Converts a graph attribute; returns its lines and its outputs' sources."""
        sub = Graph(self.ms, self.attr(attr), self.g)
        for k, v in (bind or {}).items():
            sub.values[k] = v
        sub.convert_nodes()
        outs = [sub.materialize(o.name) for o in sub.graph.output]
        return sub.lines, outs

    def emit_block(self, lines: list[Line], indent: int) -> None:
        for ln in lines:
            self.g.lines.append(Line(ln.text, ln.indent + indent, ln.defines))
