"""The lineage DAG and search over a registry that real commands filled.

The chain (one registry, built once): cnn@1 the zoo CNN as ONNX; cnn@2 = convert cnn@1 -> torch
(verified); cnn@3 = compress cnn@1 int8 (judged on nothing elementwise); cnn@4 = adapt cnn@1 to
opset 17 (verified); cnn@5 = convert cnn@4 -> torch at rtol 1e-3; cnn@6 = convert cnn@4 -> torch
with --no-verify; head@1 is made from cnn@2 and cnn@3 (two parents, by hand).
"""

from __future__ import annotations

import json
import re

import pytest

from modelport.registry import lineage as lineage_mod
from modelport.registry.store import Registry


@pytest.fixture(autouse=True)
def _no_home_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_REGISTRY", str(tmp_path / "default-registry"))


CHAIN_REPORTS: list = []  # (command, report) of the chain's first three steps, for the demo's registration


@pytest.fixture(scope="module")
def chain(tmp_path_factory, onnx_model):
    from modelport.adapt.run import adapt
    from modelport.compress.run import compress
    from modelport.convert.run import convert
    from modelport.registry.record import register_report

    d = tmp_path_factory.mktemp("lineage")
    url = str(d / "reg")
    with Registry.open(url) as reg:
        v1 = reg.add(onnx_model, "cnn", alias="prod")
        to_torch = convert(str(onnx_model), "torch", d / "cnn_torch")
        int8 = compress(str(onnx_model), d / "cnn.int8.onnx", quantize="dynamic", bench_runs=0)
        opset17 = adapt(str(onnx_model), d / "cnn17.onnx", opset=17)
        CHAIN_REPORTS[:] = [("convert", to_torch), ("compress", int8), ("adapt", opset17)]
        register_report(reg, "convert", to_torch, source_version=v1, options={"to": "torch"})
        register_report(reg, "compress", int8, source_version=v1)
        (v4,) = register_report(reg, "adapt", opset17, source_version=v1).versions
        v4 = reg.resolve(v4)
        register_report(reg, "convert", convert(v4_path := str(d / "cnn17.onnx"), "torch", d / "cnn17_torch",
                                                rtol=1e-3), source_version=v4)
        register_report(reg, "convert", convert(v4_path, "torch", d / "cnn17_torch_nv", verify=False),
                        source_version=v4)
        reg.add(d / "cnn_torch", "head", parents=["cnn@2", "cnn@3"], step={"command": "merge", "verified": True})
    return url


def _refs(versions) -> list[str]:
    return [v.ref for v in versions]


def test_ancestors_and_descendants(chain):
    with Registry.open(chain) as reg:
        g = lineage_mod.lineage(reg, "cnn@5")
        assert g.focus == "cnn@5"
        assert g.ancestors() == ["cnn@4", "cnn@1"]
        assert g.descendants() == []
        assert {n.ref for n in g.nodes} == {"cnn@1", "cnn@4", "cnn@5"}
        assert {(e.parent, e.child) for e in g.edges} == {("cnn@1", "cnn@4"), ("cnn@4", "cnn@5")}
        root = lineage_mod.lineage(reg, "cnn@prod")  # an alias resolves to its version
        assert root.focus == "cnn@1" and root.ancestors() == []
        assert set(root.descendants()) == {"cnn@2", "cnn@3", "cnn@4", "cnn@5", "cnn@6", "head@1"}
        assert root.node("cnn@1").aliases == ("prod",)
        two = lineage_mod.lineage(reg, "head@1")
        assert sorted(two.parents("head@1")) == ["cnn@2", "cnn@3"] and set(two.ancestors()) == {"cnn@1", "cnn@2", "cnn@3"}


def test_steps_on_the_edges(chain):
    with Registry.open(chain) as reg:
        g = lineage_mod.lineage(reg, "cnn@1")
    by_child = {e.child: e for e in g.edges}
    assert by_child["cnn@2"].command == "convert" and by_child["cnn@2"].verified is True
    assert "onnx -> torch" in by_child["cnn@2"].detail and "parity ok" in by_child["cnn@2"].detail
    assert by_child["cnn@4"].command == "adapt" and by_child["cnn@4"].verified is True
    assert by_child["cnn@6"].verified is None
    assert g.node("cnn@5").rtol == pytest.approx(1e-3) and g.node("cnn@2").rtol == pytest.approx(1e-4)


def test_search(chain):
    with Registry.open(chain) as reg:
        assert _refs(lineage_mod.search(reg, derived_from="cnn@1", format="torch", verified=True)) == \
            ["cnn@2", "cnn@5", "head@1"]
        assert _refs(lineage_mod.search(reg, derived_from="cnn@1", format="torch", verified=True, name="cnn")) == \
            ["cnn@2", "cnn@5"]
        assert _refs(lineage_mod.search(reg, derived_from="cnn@4")) == ["cnn@5", "cnn@6"]
        assert _refs(lineage_mod.search(reg, derived_from="cnn@1", format="torch", rtol=1e-4)) == ["cnn@2"]
        assert _refs(lineage_mod.search(reg, derived_from="cnn@1", format="torch", rtol=1e-3)) == ["cnn@2", "cnn@5"]
        assert _refs(lineage_mod.search(reg, derived_from="cnn@1", rtol=1e-6)) == []
        # int8 passed (no budget to miss) but was never compared at an elementwise tolerance
        int8 = reg.resolve("cnn@3")
        assert int8.step["verified"] is True and lineage_mod.passed_at(int8, None)
        assert "cnn@3" not in _refs(lineage_mod.search(reg, rtol=1e-1))
        assert _refs(lineage_mod.search(reg, format="torch", verified=False)) == ["cnn@6"]
        assert _refs(lineage_mod.search(reg, name="head")) == ["head@1"]
        assert _refs(lineage_mod.search(reg, derived_from="cnn@5")) == []


def test_lineage_cli_text_json_dot(cli, chain):
    res = cli("registry", "lineage", "cnn@4", "--registry", chain)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("cnn@1 onnx [prod]")
    assert any(re.match(r"^[└├]─ cnn@4 \* onnx  <- adapt \(passed", ln) for ln in lines), lines
    assert any("cnn@6 torch  <- convert (not verified" in ln for ln in lines), lines

    res = cli("registry", "lineage", "cnn@4", "--json", "--registry", chain)
    doc = json.loads(res.stdout)
    assert doc["focus"] == "cnn@4" and doc["ancestors"] == ["cnn@1"] and doc["descendants"] == ["cnn@5", "cnn@6"]
    assert {e["child"] for e in doc["edges"]} == {"cnn@4", "cnn@5", "cnn@6"}

    res = cli("registry", "lineage", "head@1", "--dot", "--registry", chain)
    dot = res.stdout
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert len(re.findall(r'^  "[^"]+" \[label=', dot, re.M)) == 4  # cnn@1, @2, @3, head@1
    assert len(re.findall(r"->", dot)) == 4
    assert re.search(r'"head@1" \[label="head@1\\ntorch", style="bold', dot)


def test_two_parents_drawn_once(chain):
    with Registry.open(chain) as reg:
        lines = lineage_mod.render_text(lineage_mod.lineage(reg, "head@1"))
    assert sum("head@1 *" in ln for ln in lines) == 1  # drawn in full once, under its first parent
    assert sum("head@1 (also made from cnn@3; drawn under cnn@2)" in ln for ln in lines) == 1


def test_search_cli(cli, chain):
    res = cli("registry", "search", "--derived-from", "cnn@1", "--format", "torch", "--verified", "--rtol", "1e-4",
              "--json", "--registry", chain)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [v["ref"] for v in doc["matches"]] == ["cnn@2"] and doc["query"]["rtol"] == 1e-4
    res = cli("registry", "search", "--derived-from", "cnn@4", "--registry", chain)
    assert "cnn@5" in res.stdout and "cnn@6" in res.stdout and "cnn@2" not in res.stdout


def _fails_cleanly(res, code: int, *fragments: str) -> None:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith("modelport: error: "), res.stderr
    for frag in fragments:
        assert frag in line, line


def test_bad_input(cli, chain):
    _fails_cleanly(cli("registry", "lineage", "nosuch@1", "--registry", chain), 2, "no model named 'nosuch'", "cnn")
    _fails_cleanly(cli("registry", "lineage", "cnn@99", "--registry", chain), 2, "no version 99", "1..6")
    _fails_cleanly(cli("registry", "lineage", "cnn@1", "--dot", "--json", "--registry", chain), 2, "exclude")
    _fails_cleanly(cli("registry", "search", "--derived-from", "cnn@beta", "--registry", chain), 2, "no alias 'beta'",
                   "prod -> 1")
    _fails_cleanly(cli("registry", "search", "--rtol", "-1", "--registry", chain), 2, "--rtol")
    _fails_cleanly(cli("registry", "search", "--rtol", "1e-4", "--unverified", "--registry", chain), 2, "--unverified")


def test_demo_registers_its_chain(chain, onnx_model, tmp_path):
    """The demo's registration (`modelport demo` prints these lines), on the chain's real reports."""
    from modelport.demo import _register_chain

    url, lines = _register_chain(tmp_path, onnx_model, CHAIN_REPORTS)
    assert lines[0].startswith("digits_cnn@1 * onnx")
    made = {m.group(1): m.group(2) for m in (re.search(r"(digits_cnn@\d) \S+  <- (\w+)", ln) for ln in lines) if m}
    assert sorted(made.values()) == ["adapt", "compress", "convert"]
    with Registry.open(url) as reg:
        assert [v.parents for v in reg.versions("digits_cnn")] == [()] + [("digits_cnn@1",)] * 3
