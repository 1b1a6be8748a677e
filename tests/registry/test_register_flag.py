"""`--register NAME` on convert / adapt / compress / distill, and registry references as sources.

Real models (the zoo CNN as ONNX) through the real CLI; each registered version is read back from
the registry and its step checked against what the command measured and wrote.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from modelport.registry.record import files_sha256
from modelport.registry.store import Registry


@pytest.fixture(autouse=True)
def _no_home_registry(tmp_path, monkeypatch):
    """Every registry of these tests lives under tmp_path, never in ~/.modelport."""
    monkeypatch.setenv("MODELPORT_REGISTRY", str(tmp_path / "default-registry"))


def _fails_cleanly(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


def test_convert_register_adds_input_and_output_with_the_step(cli, onnx_model, tmp_path):
    reg, out = tmp_path / "reg", tmp_path / "cnn_torch"
    res = cli("convert", onnx_model, "--to", "torch", "-o", out, "--register", "cnn", "--registry", reg)
    assert res.exit_code == 0, res.stderr
    assert "registered cnn@2" in res.stdout and "input added as cnn@1" in res.stdout
    with Registry.open(str(reg)) as r:
        v1, v2 = r.versions("cnn")
    assert (v1.format, v1.files_sha256, v1.step, v1.parents) == ("onnx", files_sha256(onnx_model), None, ())
    assert v2.format == "torch" and v2.parents == ("cnn@1",) and v2.files_sha256 == files_sha256(out)
    step = v2.step
    assert step["command"] == "convert" and step["options"]["to"] == "torch"
    assert step["input"] == {"path": str(onnx_model), "format": "onnx", "files_sha256": v1.files_sha256, "ref": "cnn@1"}
    assert step["output"]["files_sha256"] == v2.files_sha256 and step["output"]["format"] == "torch"
    assert step["route"] == ["onnx", "torch"] and step["verified"] is True
    assert step["tools"]["torch"] and step["tools"]["onnx"]
    parity = step["parity"]
    assert parity["ok"] is True and parity["enforced"] is True and parity["rtol"] == pytest.approx(1e-4)
    assert len(parity["shapes"]) >= 2  # dynamic batch: probed at two sizes
    assert parity["max_abs"] == max(o["max_abs"] for o in parity["outputs"])
    assert [s["dst_format"] for s in step["steps"]] == ["torch"]
    assert v2.lineage[-1].dst_format == "torch" and v2.lineage[-1].verified is True

    # the same input again (JSON on stdout untouched): found by its digest, not added twice
    res = cli("convert", onnx_model, "--to", "torch", "-o", tmp_path / "again", "--register", "cnn",
              "--registry", reg, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["dst_format"] == "torch"
    assert "registered cnn@3" in res.stderr and "input found as cnn@1" in res.stderr
    with Registry.open(str(reg)) as r:
        assert [(v.number, v.parents) for v in r.versions("cnn")] == [(1, ()), (2, ("cnn@1",)), (3, ("cnn@1",))]


def test_input_under_another_name_is_the_parent(cli, onnx_model, tmp_path):
    reg = tmp_path / "reg"
    with Registry.open(str(reg)) as r:
        r.add(onnx_model, "base")
    res = cli("adapt", onnx_model, "-o", tmp_path / "cnn17.onnx", "--opset", "17", "--register", "edge",
              "--registry", reg)
    assert res.exit_code == 0, res.stderr
    with Registry.open(str(reg)) as r:
        assert r.names() == ["base", "edge"]
        (v,) = r.versions("edge")
        assert v.parents == ("base@1",) and v.format == "onnx"
        assert v.step["command"] == "adapt" and v.step["options"]["opset"] == 17
        assert v.step["verified"] is True and v.step["parity"]["ok"] is True


def test_source_ref_is_materialized_and_registers_by_default(cli, onnx_model, tmp_path, monkeypatch):
    reg = tmp_path / "reg"
    with Registry.open(str(reg)) as r:
        r.add(onnx_model, "cnn", alias="prod")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("modelport-ref-")}
    res = cli("compress", "cnn@prod", "--quantize", "dynamic", "--runs", "0", "--registry", reg)
    assert res.exit_code == 0, res.stderr
    out = work / f"{Path(onnx_model).stem}.int8.onnx"  # the name compress picks, in the current directory
    assert out.is_file()
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("modelport-ref-")}
    assert after == before  # the materialized source is gone
    with Registry.open(str(reg)) as r:
        v1, v2 = r.versions("cnn")
    assert v2.parents == ("cnn@1",) and v2.files_sha256 == files_sha256(out)
    step = v2.step
    assert step["command"] == "compress" and step["options"]["model"] == "cnn@prod"
    assert step["input"]["ref"] == "cnn@1" and step["input"]["files_sha256"] == v1.files_sha256
    metrics = step["metrics"]
    assert metrics["file_bytes.result"] == out.stat().st_size
    assert metrics["file_bytes.source"] == Path(onnx_model).stat().st_size
    assert step.get("parity") is None or step["parity"]["enforced"] is False  # int8 is not judged elementwise


def test_distill_registers_the_student_and_its_torch_directory(cli, onnx_model, tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.standard_normal((32, 3, 32, 32)).astype(np.float32), labels=rng.integers(0, 10, 32))
    reg = tmp_path / "reg"
    res = cli("distill", "--teacher", onnx_model, "--student", onnx_model, "-o", tmp_path / "student.onnx",
              "--data", data, "--epochs", "1", "--runs", "0", "--register", "cnn", "--registry", reg)
    assert res.exit_code == 0, res.stderr
    with Registry.open(str(reg)) as r:
        teacher, student, student_torch = r.versions("cnn")
    assert student.parents == (teacher.ref,) and student_torch.parents == (student.ref,)
    assert (student.format, student_torch.format) == ("onnx", "torch")
    assert student.step["metrics"]["metric"] == "top-1" or student.step["metrics"]["metric"]
    assert student.step["metrics"]["best_epoch"] in (0, 1)
    assert student_torch.step["command"] == "distill (torch export)"
    assert student_torch.step["verified"] is True and student_torch.step["parity"]["ok"] is True
    assert student_torch.step["input"]["files_sha256"] == student.files_sha256


# ------------------------------------------------------------------------------------------ bad input


def test_bad_register_name_fails_before_any_work(cli, onnx_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _fails_cleanly(cli("convert", onnx_model, "--to", "torch", "-o", out / "m", "--register", "no good",
                       "--registry", tmp_path / "reg"), 2, "not a valid model name")
    assert os.listdir(out) == [] and not (tmp_path / "reg").exists()


def test_unopenable_registry_fails_before_any_work(cli, onnx_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _fails_cleanly(cli("adapt", onnx_model, "-o", out / "m.onnx", "--opset", "17", "--register", "cnn",
                       "--registry", blocker / "reg"), 2, "registry")
    assert os.listdir(out) == []


def test_unknown_source_ref_lists_what_exists(cli, onnx_model, tmp_path):
    reg = tmp_path / "reg"
    with Registry.open(str(reg)) as r:
        r.add(onnx_model, "cnn")
    out = tmp_path / "out"
    out.mkdir()
    _fails_cleanly(cli("convert", "nosuch@1", "--to", "torch", "-o", out / "m", "--registry", reg), 2,
                   "no model named 'nosuch'", "cnn")
    _fails_cleanly(cli("convert", "cnn@7", "--to", "torch", "-o", out / "m", "--registry", reg), 2,
                   "no version 7", "versions: 1")
    _fails_cleanly(cli("compress", "cnn@prod", "--quantize", "dynamic", "--registry", reg), 2, "no alias 'prod'")
    assert os.listdir(out) == []
    with Registry.open(str(reg)) as r:
        assert len(r.versions()) == 1
