"""Rewrite rules: pattern / check / rewrite over onnx_ir graphs.

A rule matches one node by ``(domain, op_type)`` (its pattern), ``check(node, opset)``
says whether it may apply (a falsy ``Verdict`` carries the reason), and ``rewrite``
emits the replacement through an opset-aware :class:`Emitter`. Rules are registered by
domain, op and name (``Gelu=decompose``, ``Gelu=tanh-approx``: the default domain, where
``""`` and ``"ai.onnx"`` are the same); a rule matches only nodes of its own domain (a
``com.microsoft`` Gelu is not the default-domain Gelu). ``exact`` rules compute the same
function (verified at rel err <= 1e-5), the others are named approximations whose error
is measured and reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

__all__ = ["Rule", "Verdict", "Emitter", "RuleApplication", "register", "rules_for", "all_rules", "find_rule", "apply_rule",
           "apply_rules", "matches", "norm_domain"]


@dataclasses.dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


OK = Verdict(True)


class Emitter:
    """Builds replacement nodes for one matched node, valid at the graph's opset."""

    def __init__(self, node: ir.Node, opset: int) -> None:
        self.node = node
        self.opset = opset
        self.nodes: list[ir.Node] = []
        self._n = 0

    def _name(self, op: str) -> str:
        self._n += 1
        return f"{self.node.name or self.node.op_type}/{op}_{self._n}"

    def op(self, op_type: str, *inputs: ir.Value | None, num_outputs: int = 1, **attrs) -> ir.Value:
        attributes = [ir.convenience.convert_attribute(k, v) for k, v in attrs.items() if v is not None]
        node = ir.Node("", op_type, list(inputs), attributes, num_outputs=num_outputs, name=self._name(op_type))
        for i, out in enumerate(node.outputs):
            out.name = f"{node.name}:{i}"
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, value, dtype: ir.DataType | None = None) -> ir.Value:
        np_dtype = (dtype or ir.DataType.FLOAT).numpy()
        return self.op("Constant", value=ir.tensor(np.asarray(value, dtype=np_dtype), name=self._name("value")))

    def dtype_of(self, value: ir.Value) -> ir.DataType:
        return value.dtype if value.dtype is not None else ir.DataType.FLOAT

    def reduce_mean(self, x: ir.Value, axes: list[int]) -> ir.Value:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.const(axes, ir.DataType.INT64), keepdims=1)
        return self.op("ReduceMean", x, axes=axes, keepdims=1)

    def clip01(self, x: ir.Value, dtype: ir.DataType) -> ir.Value:
        return self.op("Max", self.op("Min", x, self.const(1.0, dtype)), self.const(0.0, dtype))


@dataclasses.dataclass(frozen=True)
class Rule:
    """Replace ``domain::op_type`` nodes by ``rewrite``'s output, where ``check`` allows it."""

    op_type: str
    name: str
    exact: bool
    emits: tuple[str, ...]  # the ops it always emits (Cast for fp16 LayerNormalization etc. aside)
    rewrite: Callable[[Emitter, ir.Node], list[ir.Value]]
    check: Callable[[ir.Node, int], Verdict] = lambda node, opset: OK
    doc: str = ""
    domain: str = ""
    # Also rewrites a multi-node form of the op (e.g. the erf subgraph exporters write for Gelu below
    # opset 20), through onnxscript's pattern rewriter; returns how many it rewrote.
    subgraph: Callable[[ir.Model], int] | None = None

    @property
    def key(self) -> str:
        return f"{self.op_type}={self.name}"


_RULES: dict[tuple[str, str, str], Rule] = {}  # (domain, op_type, name)


def register(op_type: str, name: str, *, exact: bool, emits: Iterable[str], check=None, doc: str = "", subgraph=None,
             domain: str = ""):
    """Decorator: registers ``fn(emitter, node) -> outputs`` as the rule ``op_type=name`` (for ``domain``'s op)."""

    def deco(fn):
        rule = Rule(op_type, name, exact, tuple(emits), fn, check or (lambda n, o: OK), doc or (fn.__doc__ or "").strip(),
                    norm_domain(domain), subgraph=subgraph)
        _RULES[(rule.domain, op_type, name)] = rule
        return fn

    return deco


_DEFAULT_DOMAINS = ("", "ai.onnx")


def norm_domain(domain: str | None) -> str:
    """``""`` and ``"ai.onnx"`` are the same default domain."""
    return "" if domain in _DEFAULT_DOMAINS or domain is None else domain


def matches(rule: Rule, node: ir.Node) -> bool:
    """The rule's pattern: the node's op type and domain (the default domain spelled either way)."""
    return node.op_type == rule.op_type and norm_domain(node.domain) == norm_domain(rule.domain)


def _load() -> None:
    from modelport.adapt.rules import approximations, decompositions  # noqa: F401  (register on import)


def all_rules() -> list[Rule]:
    _load()
    return sorted(_RULES.values(), key=lambda r: r.key)


def rules_for(op_type: str, domain: str | None = None) -> list[Rule]:
    """The rules for ``op_type`` (of ``domain`` when given; of any domain when not)."""
    return [r for r in all_rules() if r.op_type == op_type and (domain is None or norm_domain(r.domain) == norm_domain(domain))]


def find_rule(op_type: str, name: str, domain: str = "") -> Rule | None:
    """The rule ``op_type=name`` for ``domain``'s op (the default domain unless given)."""
    _load()
    return _RULES.get((norm_domain(domain), op_type, name))


@dataclasses.dataclass(frozen=True)
class RuleApplication:
    """Which rule rewrote which nodes, or why it did not apply."""

    rule: str
    exact: bool
    nodes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()


def _walk(graph: ir.Graph) -> Iterable[tuple[ir.Graph, ir.Node]]:
    for node in list(graph):
        yield graph, node
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _walk(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    yield from _walk(g)


def apply_rule(model: ir.Model, rule: Rule) -> RuleApplication:
    """Rewrite every node the rule matches and allows; returns what changed."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    done, skipped = [], []
    for graph, node in list(_walk(model.graph)):
        if not matches(rule, node):
            continue
        verdict = rule.check(node, opset)
        if not verdict:
            skipped.append((node.name or node.op_type, verdict.reason))
            continue
        emit = Emitter(node, opset)
        new_outputs = rule.rewrite(emit, node)
        graph.insert_before(node, emit.nodes)
        for old, new in zip(node.outputs, new_outputs):
            if new is None:
                continue
            if old.dtype is not None and new.dtype is None:
                new.dtype = old.dtype
            new.shape = old.shape
            is_output = old in graph.outputs
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            if is_output:
                name = old.name
                old.name = f"{name}.replaced"
                new.name = name
        graph.remove(node, safe=True)
        done.append(node.name or node.op_type)
    if rule.subgraph is not None:
        count = rule.subgraph(model)
        done.extend(f"{rule.op_type} subgraph {i + 1}" for i in range(count))
        if count:
            from onnx_ir.passes.common import RemoveUnusedNodesPass

            RemoveUnusedNodesPass()(model)
    return RuleApplication(rule.key, rule.exact, tuple(done), tuple(skipped))


def apply_rules(model: ir.Model, rules: Iterable[Rule]) -> list[RuleApplication]:
    return [apply_rule(model, r) for r in rules]
