"""Fresh names for the values and nodes a pass adds to an ONNX graph.

A pass that adds a tensor must not reuse a name the graph already has: ONNX resolves a value by name,
so a second producer of ``w_scale`` silently rewires every reader of the first (the checker catches it
in the main graph, not always in an ``If``/``Loop`` body reading names of the graph around it). The
rule is the same everywhere: ``base`` if it is free, else ``base_1``, ``base_2``, ... (the first free
one), and a name handed out is taken from then on. :class:`NameAllocator` is that rule, written once;
:func:`value_names` is the set a pass starts from (every value name of a graph and its subgraphs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["NameAllocator", "value_names"]


class NameAllocator:
    """Hands out names not in ``taken`` (nor handed out before): ``base``, else ``base{sep}1``, ``base{sep}2``, ...

    ``taken`` is copied. Counting resumes where the last name of the same base stopped, so adding n
    copies of one base costs O(n), not O(n^2), with the same names as counting from 1 each time.
    """

    def __init__(self, taken: Iterable[str] = (), *, sep: str = "_") -> None:
        self._taken = set(taken)
        self._sep = sep
        self._next: dict[str, int] = {}

    def fresh(self, base: str) -> str:
        """A name no one has: ``base`` when it is free, else ``base`` plus the separator and the first free number."""
        if base not in self._taken:
            self._taken.add(base)
            return base
        k = self._next.get(base, 1)
        while f"{base}{self._sep}{k}" in self._taken:
            k += 1
        self._next[base] = k + 1
        name = f"{base}{self._sep}{k}"
        self._taken.add(name)
        return name

    def reserve(self, names: Iterable[str]) -> None:
        """Mark names as taken (a value the pass creates under a name it chose itself)."""
        self._taken.update(names)

    def __contains__(self, name: object) -> bool:
        return name in self._taken


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph in its nodes' attributes, depth first."""
    todo = [graph]
    while todo:
        g = todo.pop()
        yield g
        for node in g.node:
            for a in node.attribute:
                if a.HasField("g"):
                    todo.append(a.g)
                todo.extend(a.graphs)


def value_names(graph: Any) -> set[str]:
    """Every value name of an ``onnx.GraphProto`` (or a ModelProto's graph) and of the subgraphs inside it:
    inputs, outputs, initializers (sparse too), value_info, and every node's inputs and outputs."""
    graph = getattr(graph, "graph", graph)
    names: set[str] = set()
    for g in _graphs(graph):
        names.update(v.name for v in (*g.input, *g.output, *g.value_info))
        names.update(t.name for t in g.initializer)
        names.update(t.values.name for t in g.sparse_initializer)
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
    names.discard("")  # an omitted optional input
    return names
