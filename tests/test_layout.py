"""The package layout shows the architecture: no import cycles between packages, no grab-bag
modules, the public API not shadowed by the packages of the same names, ARCHITECTURE.md true."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import modelport

SRC = Path(modelport.__file__).resolve().parent
ROOT = SRC.parent.parent


def _unit(module: str) -> str:
    """modelport.convert.run -> convert; modelport.errors -> errors; modelport -> modelport."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "modelport"


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (SRC / rel).is_dir() or (SRC / rel).with_suffix(".py").is_file()


def import_graph() -> dict[str, dict[str, str]]:
    """{unit: {imported unit: 'file:line' of the first such import}}, from every import in every
    module, function-local ones included (a lazy import is still a dependency)."""
    graph: dict[str, dict[str, str]] = {}
    for f in sorted(SRC.rglob("*.py")):
        rel = f.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        here = _unit(module)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "modelport":  # from modelport import X: X is a submodule or a name of __init__
                    targets = [f"modelport.{a.name}" if _is_module(f"modelport.{a.name}") else "modelport"
                               for a in node.names]
                else:
                    targets = [node.module]
            for t in targets:
                if t == "modelport" or t.startswith("modelport."):
                    there = _unit(t)
                    if there != here:
                        graph.setdefault(here, {}).setdefault(there, f"{f.relative_to(SRC)}:{node.lineno}")
    return graph


def _cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in graph.get(u, {}):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_packages_import_each_other_without_cycles():
    graph = import_graph()
    # the public API module and the CLI sit on top: nothing below may import them
    graph.pop("modelport", None)
    graph.pop("cli", None)
    graph.pop("demo", None)
    cycle = _cycle(graph) or []
    assert not cycle, "import cycle: " + " -> ".join(f"{a} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
    below = {u: deps for u, deps in import_graph().items() if u not in ("modelport", "cli", "demo")}
    lifted = {u: deps["modelport"] for u, deps in below.items() if "modelport" in deps}
    assert not lifted, f"packages importing the public API module (a hidden cycle): {lifted}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": ""}, "b": {}}) is None


def test_no_grab_bag_modules():
    bad = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.stem in ("helpers", "common", "utils", "misc")]
    assert bad == []


def test_the_public_api_survives_importing_every_submodule():
    for info in pkgutil.walk_packages(modelport.__path__, "modelport."):
        if info.name.endswith("generate_profiles"):
            continue
        importlib.import_module(info.name)
    for name in ("convert", "verify", "inspect", "bench", "adapt", "compress", "check", "distill", "load"):
        assert callable(getattr(modelport, name)), name
        assert getattr(modelport, name).__module__.startswith("modelport"), name
    assert sorted(modelport.__all__) == sorted(set(modelport.__all__))


def test_architecture_md_names_only_packages_that_exist():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`(?:src/modelport/)?([a-z_]+)/`", text))
    assert {"pipeline", "convert", "adapt", "compress", "verify", "formats", "to_torch", "targets"} <= named
    missing = sorted(n for n in named if not (SRC / n).is_dir() and not any(d.is_dir() for d in SRC.rglob(n)))
    assert missing == [], f"ARCHITECTURE.md names packages that do not exist: {missing}"
    modules = set(re.findall(r"`modelport\.([a-z_.]+)`", text))
    assert modules, "ARCHITECTURE.md names no module"
    for m in modules:
        importlib.import_module(f"modelport.{m}")
