"""`registry diff`: signature, graph, weights per tensor, metrics and parity of two real models.

Changes are made with onnx on the zoo CNN (a fine-tuned head, an extra node, a frozen batch dim),
so the expected differences are known exactly and the deltas are checked against numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from modelport.registry.diff import diff, name_key
from modelport.registry.store import Registry


@pytest.fixture(autouse=True)
def _no_home_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_REGISTRY", str(tmp_path / "default-registry"))


def _largest_initializer(model: onnx.ModelProto) -> onnx.TensorProto:
    return max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)


def _tuned(src: Path, out: Path, seed: int = 3) -> tuple[str, np.ndarray, np.ndarray]:
    """The model with its largest weight nudged (a 'fine-tune'): (name, before, after)."""
    model = onnx.load(str(src))
    init = _largest_initializer(model)
    before = numpy_helper.to_array(init).copy()
    after = (before + np.random.default_rng(seed).normal(0, 0.01, before.shape)).astype(before.dtype)
    init.CopyFrom(numpy_helper.from_array(after, init.name))
    onnx.save(model, str(out))
    return init.name, before, after


def _rewired(src: Path, out: Path) -> str:
    """An extra Mul (by an initializer of 2s) before the graph output; the output's producer is rewired."""
    model = onnx.load(str(src))
    g = model.graph
    out_name = g.output[0].name
    producer = next(n for n in g.node if out_name in n.output)
    producer.output[list(producer.output).index(out_name)] = "pre_scale"
    g.initializer.append(numpy_helper.from_array(np.full((10,), 2.0, np.float32), "scale"))
    g.node.append(helper.make_node("Mul", ["pre_scale", "scale"], [out_name], name="extra_scale"))
    g.input[0].type.tensor_type.shape.dim[0].dim_value = 4  # and freeze the batch dim
    onnx.save(model, str(out))
    return producer.name


def test_fine_tuned_weight_is_the_only_change(onnx_model, tmp_path):
    tuned = tmp_path / "tuned.onnx"
    key, before, after = _tuned(onnx_model, tuned)
    with Registry.open(str(tmp_path / "reg")) as reg:
        reg.add(onnx_model, "cnn")
        reg.add(tuned, "cnn")
        d = diff("cnn@1", "cnn@2", registry=reg)
    assert not d.identical and d.signature == () and d.nodes == ()
    assert all(a == b for _, a, b in d.ops)
    changed = [t for t in d.tensors if t.status == "changed"]
    assert [(t.key_a, t.key_b, t.matched_by) for t in changed] == [(key, key, "key")]
    delta = after.astype(np.float64) - before.astype(np.float64)
    assert changed[0].l2 == pytest.approx(float(np.linalg.norm(delta)), rel=1e-9)
    assert changed[0].max_abs == pytest.approx(float(np.abs(delta).max()), rel=1e-9)
    assert changed[0].rel_l2 == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(before.astype(np.float64)), rel=1e-9)
    assert d.counts["changed"] == 1 and d.counts["added"] == d.counts["removed"] == 0
    assert d.counts["same"] == len(d.tensors) - 1 >= 4


def test_graph_and_signature_changes(onnx_model, tmp_path):
    other = tmp_path / "rewired.onnx"
    producer = _rewired(onnx_model, other)
    d = diff(str(onnx_model), str(other))  # two paths: no registry needed
    nodes = {(n.name, n.change) for n in d.nodes}
    assert ("extra_scale", "added") in nodes and (producer, "rewired") in nodes
    assert len(d.nodes) == 2
    ops = {op: (a, b) for op, a, b in d.ops}
    assert ops["Mul"][1] == ops["Mul"][0] + 1
    (sig,) = d.signature
    assert sig.io == "input" and sig.change == "dims" and "4x" in sig.b.replace("[", "x") or "[4" in sig.b
    assert [(t.key_b, t.status) for t in d.tensors if t.status == "added"] == [("scale", "added")]


def test_across_formats_through_the_name_map(onnx_model, torch_dir, tmp_path):
    with Registry.open(str(tmp_path / "reg")) as reg:
        reg.add(onnx_model, "cnn")
        reg.add(torch_dir, "cnn")
        d = diff("cnn@1", "cnn@2", registry=reg)
    assert d.a_format == "onnx" and d.b_format == "torch"
    matched = [t for t in d.tensors if t.key_a and t.key_b]
    assert matched and all(t.status in ("same", "layout") for t in matched)
    # every weight of the generated module is accounted for: nothing in the torch directory is new
    assert d.counts["added"] == 0
    by_map = [t for t in matched if t.matched_by == "name map"]
    assert by_map and all(name_key(t.key_a) == name_key(t.key_b) and t.key_a != t.key_b for t in by_map)
    big = {t.key_a for t in matched if np.prod(t.shape_a) >= 64}
    onnx_weights = {i.name for i in onnx.load(str(onnx_model)).graph.initializer
                    if numpy_helper.to_array(i).size >= 64}
    assert big == onnx_weights  # every real weight matched across the formats
    assert "graphs of onnx and torch" in " ".join(d.notes)


def test_keras_and_tflite_kernels_match_as_transposes(keras_model, tflite_model, tmp_path):
    with Registry.open(str(tmp_path / "reg")) as reg:
        reg.add(keras_model, "mlp")
        reg.add(tflite_model, "mlp")
        d = diff("mlp@1", "mlp@2", registry=reg)
    layout = [t for t in d.tensors if t.status == "layout"]
    assert layout, d.tensors
    for t in layout:
        assert t.shape_a == tuple(reversed(t.shape_b)) and "transpose" in t.note
    assert {s.change for s in d.signature} <= {"renamed"}  # same dtypes and dims, other names


def test_metrics_and_parity_side_by_side_cli(cli, onnx_model, tmp_path):
    reg = tmp_path / "reg"
    res = cli("convert", onnx_model, "--to", "torch", "-o", tmp_path / "t", "--register", "cnn", "--registry", reg)
    assert res.exit_code == 0, res.stderr
    res = cli("registry", "diff", "cnn@1", "cnn@2", "--json", "--registry", reg)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    rows = {r[0]: [r[1], r[2]] for r in doc["parity"]}
    assert rows["verified"] == [None, True] and rows["made by"] == [None, "convert"]
    assert rows["ok"] == [None, True] and rows["rtol"][1] == pytest.approx(1e-4)
    assert doc["counts"]["changed"] == 0 and doc["a_format"] == "onnx"
    res = cli("registry", "diff", "cnn@1", "cnn@2", "--registry", reg)
    assert res.exit_code == 0 and "tensors" in res.stdout and "parity" in res.stdout


def _fails_cleanly(res, code: int, *fragments: str) -> None:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith("modelport: error: "), res.stderr
    for frag in fragments:
        assert frag in line, line


def test_bad_input(cli, onnx_model, tmp_path):
    reg = tmp_path / "reg"
    with Registry.open(str(reg)) as r:
        r.add(onnx_model, "cnn")
    _fails_cleanly(cli("registry", "diff", "cnn@1", "nosuch@2", "--registry", reg), 2, "no model named 'nosuch'")
    _fails_cleanly(cli("registry", "diff", "cnn@1", "cnn@5", "--registry", reg), 2, "no version 5")
    _fails_cleanly(cli("registry", "diff", str(tmp_path / "missing.onnx"), "cnn@1", "--registry", reg), 2)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model at all")
    _fails_cleanly(cli("registry", "diff", str(junk), str(onnx_model)), 2, "junk.onnx", "no model")
