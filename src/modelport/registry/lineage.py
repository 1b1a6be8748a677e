"""The lineage DAG of a registry: which version was made from which, by what step, proving what.

Every version may name parent versions and the step that made it (``registry.record`` writes both
for convert / adapt / compress / distill). ``lineage(registry, ref)`` is the sub-DAG around one
version: all its ancestors and all its descendants, with the edges between them.
``search(registry, derived_from=..., format=..., verified=..., rtol=...)`` answers questions such as
"every tflite version derived from v3 that passed at rtol 1e-4".

What "verified" means: the step that made the version recorded a verdict (``step["verified"]``)
and it was a pass. "Passed at rtol X" adds that its parity check compared outputs elementwise and
held every output to a relative tolerance of at most X (``step["parity"]["rtol"] <= X``), so a
version checked at a looser tolerance, or judged on a task metric only, does not count.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Iterable
from typing import Any

from modelport.artifact import to_jsonable

__all__ = ["LineageNode", "LineageEdge", "LineageGraph", "lineage", "search", "graph_of", "ref_of",
           "passed_at", "render_text"]


def ref_of(obj: Any) -> str:
    """``name@number`` of a Version, a parent reference (object or dict) or a string."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        return f"{obj['name']}@{obj['number']}"
    return f"{obj.name}@{obj.number}"


@dataclasses.dataclass(frozen=True)
class LineageNode:
    """One version in the DAG."""

    ref: str
    name: str
    number: int
    format: str
    created_at: str
    aliases: tuple[str, ...]
    command: str | None  # the step that made it (None: added by hand)
    verified: bool | None  # that step's verdict
    rtol: float | None  # the loosest relative tolerance its parity held outputs to
    files_sha256: str = ""


@dataclasses.dataclass(frozen=True)
class LineageEdge:
    """``parent`` -> ``child``, made by ``command``."""

    parent: str
    child: str
    command: str | None
    detail: str = ""
    verified: bool | None = None


@dataclasses.dataclass(frozen=True)
class LineageGraph:
    """The versions around ``focus`` (its ancestors and descendants) and the edges between them."""

    focus: str
    nodes: tuple[LineageNode, ...]
    edges: tuple[LineageEdge, ...]

    def node(self, ref: str) -> LineageNode:
        return next(n for n in self.nodes if n.ref == ref)

    def parents(self, ref: str) -> list[str]:
        return [e.parent for e in self.edges if e.child == ref]

    def children(self, ref: str) -> list[str]:
        return [e.child for e in self.edges if e.parent == ref]

    def ancestors(self, ref: str | None = None) -> list[str]:
        return _walk(ref or self.focus, self.parents)

    def descendants(self, ref: str | None = None) -> list[str]:
        return _walk(ref or self.focus, self.children)

    def to_dict(self) -> dict[str, Any]:
        return {"focus": self.focus, "ancestors": self.ancestors(), "descendants": self.descendants(),
                "nodes": to_jsonable(self.nodes), "edges": to_jsonable(self.edges)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_dot(self) -> str:
        """Graphviz DOT: one box per version (the focus bold), one arrow per step (red when it failed)."""
        lines = ["digraph lineage {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
        for n in self.nodes:
            label = f"{n.ref}\\n{n.format}"
            if n.aliases:
                label += f"\\n[{', '.join(n.aliases)}]"
            style = ', style="bold,filled", fillcolor="#e8f0fe"' if n.ref == self.focus else ""
            lines.append(f"  {_dot_id(n.ref)} [label={_dot_str(label)}{style}];")
        for e in self.edges:
            label = e.command or ""
            if e.verified is True:
                label += " ✓"
            elif e.verified is False:
                label += " ✗"
            color = ', color="red"' if e.verified is False else ""
            lines.append(f"  {_dot_id(e.parent)} -> {_dot_id(e.child)} [label={_dot_str(label.strip())}{color}];")
        lines.append("}")
        return "\n".join(lines) + "\n"


def _dot_str(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def _dot_id(ref: str) -> str:
    return _dot_str(ref)


def _walk(start: str, step) -> list[str]:
    seen: list[str] = []
    queue = deque(step(start))
    while queue:
        ref = queue.popleft()
        if ref in seen or ref == start:
            continue
        seen.append(ref)
        queue.extend(step(ref))
    return seen


def _step_rtol(step: dict[str, Any] | None) -> float | None:
    """The relative tolerance a passed, enforced parity check held every output to (None: no such check)."""
    parity = (step or {}).get("parity") or {}
    if not parity.get("ok") or parity.get("enforced") is False:
        return None
    rtol = parity.get("rtol")
    return float(rtol) if isinstance(rtol, (int, float)) and not isinstance(rtol, bool) else None


def _edge_detail(step: dict[str, Any] | None) -> str:
    step = step or {}
    parts = []
    route = step.get("route")
    if route:
        parts.append(" -> ".join(route))
    parity = step.get("parity") or {}
    if parity:
        worst = parity.get("max_rel")
        worst = f", max rel {worst:.1e}" if isinstance(worst, (int, float)) else ""
        if parity.get("enforced") is False:  # judged on a task metric: the elementwise comparison is information
            parts.append(f"parity informational{worst}")
        else:
            parts.append(f"parity {'ok' if parity.get('ok') else 'FAILED'}{worst}"
                         + (f" at rtol {parity['rtol']:g}" if isinstance(parity.get("rtol"), (int, float)) else ""))
    metrics = step.get("metrics") or {}
    name = metrics.get("metric")
    if name and "source" in metrics and "result" in metrics:
        parts.append(f"{name} {metrics['source']:.4f} -> {metrics['result']:.4f}")
    return "; ".join(parts)


def _node(version) -> LineageNode:
    step = version.step or {}
    return LineageNode(ref_of(version), version.name, version.number, version.format, str(version.created_at),
                       tuple(version.aliases or ()), step.get("command"), step.get("verified"), _step_rtol(step),
                       getattr(version, "files_sha256", "") or "")


def graph_of(versions: Iterable) -> tuple[dict[str, Any], dict[str, list[str]], dict[str, list[str]]]:
    """({ref: version}, {ref: parent refs}, {ref: child refs}) for every version given."""
    by_ref = {ref_of(v): v for v in versions}
    parents = {r: [ref_of(p) for p in (v.parents or ())] for r, v in by_ref.items()}
    children: dict[str, list[str]] = {r: [] for r in by_ref}
    for r, ps in parents.items():
        for p in ps:
            children.setdefault(p, []).append(r)
    return by_ref, parents, children


def lineage(registry, ref: str) -> LineageGraph:
    """The DAG around the version ``ref``: every ancestor, every descendant, and their edges."""
    focus = registry.resolve(ref)
    by_ref, parents, children = graph_of(registry.versions())
    start = ref_of(focus)
    keep = {start, *_walk(start, lambda r: parents.get(r, [])), *_walk(start, lambda r: children.get(r, []))}
    # a version that is missing from the listing (removed) stays out; its edges too
    keep = {r for r in keep if r in by_ref}
    order = sorted(keep, key=lambda r: (str(by_ref[r].created_at), by_ref[r].name, by_ref[r].number))
    nodes = tuple(_node(by_ref[r]) for r in order)
    edges = tuple(LineageEdge(p, r, (by_ref[r].step or {}).get("command"), _edge_detail(by_ref[r].step),
                              (by_ref[r].step or {}).get("verified"))
                  for r in order for p in parents.get(r, []) if p in keep)
    return LineageGraph(start, nodes, edges)


def passed_at(version, rtol: float | None) -> bool:
    """The version's step passed (and, with ``rtol``, held every output to a relative tolerance <= rtol)."""
    step = version.step or {}
    if step.get("verified") is not True:
        return False
    if rtol is None:
        return True
    used = _step_rtol(step)
    return used is not None and used <= rtol * (1 + 1e-9)


def search(registry, *, derived_from: str | None = None, format: str | None = None,  # noqa: A002
           verified: bool | None = None, rtol: float | None = None, name: str | None = None) -> list:
    """Versions that match every filter given, oldest first.

    ``derived_from``: a strict descendant of that version (any number of steps away);
    ``format``: that format; ``verified``: True keeps versions whose step passed, False those whose
    step failed or recorded no verdict; ``rtol`` (implies verified): passed with every output held to
    a relative tolerance of at most ``rtol``; ``name``: versions of that name.
    """
    from modelport.errors import BadInputError

    if rtol is not None and (rtol != rtol or rtol <= 0):
        raise BadInputError(f"--rtol must be a positive number, got {rtol}")
    versions = registry.versions(name) if name else registry.versions()
    if derived_from is not None:
        root = ref_of(registry.resolve(derived_from))
        _, _, children = graph_of(registry.versions())
        below = set(_walk(root, lambda r: children.get(r, [])))
        versions = [v for v in versions if ref_of(v) in below]
    if format is not None:
        versions = [v for v in versions if v.format == format]
    if rtol is not None:
        versions = [v for v in versions if passed_at(v, rtol)]
    elif verified is not None:
        versions = [v for v in versions if passed_at(v, None) == verified]
    return sorted(versions, key=lambda v: (str(v.created_at), v.name, v.number))


def render_text(graph: LineageGraph) -> list[str]:
    """The DAG as an indented tree from its roots; the focus marked ``*``; a version with two parents
    is drawn once, then referred to."""
    roots = [n.ref for n in graph.nodes if not graph.parents(n.ref)]
    lines: list[str] = []
    drawn: set[str] = set()

    def label(ref: str) -> str:
        n = graph.node(ref)
        aliases = f" [{', '.join(n.aliases)}]" if n.aliases else ""
        mark = " *" if ref == graph.focus else ""
        return f"{ref}{mark} {n.format}{aliases}"

    home = {n.ref: graph.parents(n.ref)[0] for n in graph.nodes if graph.parents(n.ref)}  # drawn under its first parent

    def draw(ref: str, prefix: str, edge: LineageEdge | None, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        via = ""
        if edge is not None:
            verdict = {True: "passed", False: "FAILED", None: "not verified"}[edge.verified]
            via = f"  <- {edge.command or 'derived'} ({verdict}{'; ' + edge.detail if edge.detail else ''})"
            if home.get(ref) != edge.parent:  # a second parent: the version is drawn under its first one
                lines.append(f"{prefix}{branch}{ref} (also made from {edge.parent}; drawn under {home[ref]})")
                return
        if ref in drawn:
            lines.append(f"{prefix}{branch}{ref} (shown above){via}")
            return
        drawn.add(ref)
        lines.append(f"{prefix}{branch}{label(ref)}{via}")
        kids = [e for e in graph.edges if e.parent == ref]
        inner = prefix + ("" if top else ("   " if last else "│  "))
        for i, e in enumerate(kids):
            draw(e.child, inner, e, i == len(kids) - 1, False)

    for r in roots:
        draw(r, "", None, True, True)
    return lines
