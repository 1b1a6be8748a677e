"""`modelport scrub` and `convert --scrub`: what an export leaks about the machine is gone, the graph is not.

The torch model is defined in a file under the test's temp dir, so torch's dynamo exporter writes
that path (in its stack traces) into the ONNX file; the test finds it there before scrubbing and
nowhere after, and onnxruntime gives bit-identical outputs for both files.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import zoo
from onnx import TensorProto, helper, numpy_helper

from modelport.pipeline.lineage import LINEAGE_KEY, read_lineage
from modelport.security.scrub import Leaks, scrub

NET = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x)) * 2.0
'''


def _fails(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


def _net_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "netmod.py").write_text(NET)
    return directory / "netmod.py"


def _needles(tmp_path: Path) -> dict[str, bytes]:
    """What identifies this machine and run: the temp dir, the working dir, the user's name (when distinctive)."""
    found = {"tmp dir": str(tmp_path).encode(), "working dir": os.getcwd().encode()}
    if len(getpass.getuser()) >= 3:
        found["user"] = getpass.getuser().encode()
    return found


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


@pytest.fixture(scope="module")
def dynamo_export(tmp_path_factory) -> Path:
    """A small torch model exported with torch.onnx.export(..., dynamo=True), as torch writes it."""
    import torch

    d = tmp_path_factory.mktemp("dynamo")
    spec = importlib.util.spec_from_file_location("netmod_scrub_test", _net_file(d / "src"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    program = zoo.onnx_export(module.Net().eval(), (torch.randn(2, 4),), dynamo=True, input_names=["x"])
    path = d / "exported.onnx"
    program.save(str(path))
    return path


def test_scrub_removes_the_local_paths_of_a_dynamo_export_and_keeps_parity(cli, dynamo_export, tmp_path):
    before = dynamo_export.read_bytes()
    needles = _needles(dynamo_export.parent)
    present = [name for name, text in needles.items() if text in before]
    assert "tmp dir" in present, "torch's exporter no longer writes the source path: this test proves nothing"
    out = tmp_path / "clean.onnx"
    res = cli("scrub", dynamo_export, "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    after = out.read_bytes()
    assert [name for name in present if needles[name] in after] == []
    assert b'File "' not in after and b"stack_trace" not in after
    assert report["removed"]["stack trace"] >= 1 and report["removed"]["source location"] >= 1
    assert report["graph_unchanged"] is True and report["remaining"] == []
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    for a, b in zip(_outputs(dynamo_export, x), _outputs(out, x)):
        assert np.array_equal(a, b)
    model = onnx.load(str(out))
    records = json.loads(next(p.value for p in model.metadata_props if p.key == LINEAGE_KEY))
    assert [r["step"] for r in records] == ["scrub"] and records[0]["verified"] is True
    assert dynamo_export.read_bytes() == before  # the source is left as it was


def test_convert_scrub_writes_no_local_path(cli, tmp_path):
    src = _net_file(tmp_path / "src")
    out = tmp_path / "net.onnx"
    res = cli("convert", f"{src}:Net", "--to", "onnx", "-o", out, "--input", "x:2x4:float32", "--scrub", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True  # verified against the torch module
    assert report["scrub"]["removed"].get("stack trace", 0) >= 1
    data = out.read_bytes()
    assert str(tmp_path).encode() not in data and os.getcwd().encode() not in data
    steps = [r.step for r in read_lineage(out)]
    assert steps == ["convert", "scrub"]


def test_convert_scrub_to_a_format_without_a_scrubber_is_unsupported(cli, tmp_path):
    path = zoo.add_offset_model(tmp_path / "add.onnx", [1, 2, 3, 4])
    _fails(cli("convert", path, "--to", "torch", "-o", tmp_path / "t", "--scrub"), 3, "--scrub works on ONNX outputs")
    assert not (tmp_path / "t").exists()


def _leaky_model(tmp_path: Path, leaks: Leaks) -> Path:
    """Hand-made leaks in every place scrub looks: 2 paths, 1 user name, 1 host name, 1 stack trace, 1 source key."""
    host = next(w for k, w in leaks.words if k == "host name")
    user = next(w for k, w in leaks.words if k == "user name")
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.doc_string = f"trained in {tmp_path}/run7"  # path
    node = helper.make_node("Add", ["x", "w"], ["y"], name="add", doc_string='File "/home/ci/train.py", line 3')
    node.metadata_props.add(key="source", value="train.py:3")  # a source-location key
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w],
                              doc_string="exported from C:\\Users\\ci\\model.py")  # path
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="exporter",
                              doc_string=f"made by {user}")  # user
    model.ir_version = 9
    model.metadata_props.add(key="machine", value=f"built on {host}")  # host
    model.metadata_props.add(key="license", value="Apache-2.0")  # kept
    detail = f"source sha256 abc; inputs read from {tmp_path}/inputs.npz"
    model.metadata_props.add(key=LINEAGE_KEY, value=json.dumps([
        {"step": "convert", "src_format": "torch", "dst_format": "onnx", "tool": "t", "versions": [], "detail": detail,
         "verified": True}]))
    path = tmp_path / "leaky.onnx"
    onnx.save(model, str(path))
    return path


def test_scrub_finds_each_kind_and_keeps_the_lineage_records(tmp_path):
    leaks = Leaks(literals=((("path"), str(tmp_path)),), words=(("user name", "alice-ci"), ("host name", "build-07")))
    src = _leaky_model(tmp_path, leaks)
    report = scrub(src, tmp_path / "out.onnx", leaks=leaks)
    assert report.removed == {"stack trace": 1, "source location": 1, "path": 2, "user name": 1, "host name": 1}
    assert report.lineage_fields == 1 and report.graph_unchanged
    model = onnx.load(str(tmp_path / "out.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["license"] == "Apache-2.0" and "machine" not in props
    records = json.loads(props[LINEAGE_KEY])
    assert [r["step"] for r in records] == ["convert", "scrub"]
    assert records[0]["detail"] == "source sha256 abc; inputs read from <path>"  # the record kept, the path not
    data = (tmp_path / "out.onnx").read_bytes()
    for text in (str(tmp_path), "alice-ci", "build-07", "/home/ci", "C:\\Users"):
        assert text.encode() not in data
    assert model.producer_name == "exporter"


def test_scrub_moves_external_data_with_the_model(cli, tmp_path):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    zoo.add_offset_model(src_dir / "m.onnx", [1, 2, 3, 4])
    model = onnx.load(str(src_dir / "m.onnx"))
    model.graph.doc_string = f"saved in {tmp_path}"
    onnx.save(model, str(src_dir / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    out = tmp_path / "elsewhere" / "m.onnx"
    res = cli("scrub", src_dir / "m.onnx", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["external_data"] == ["m.data"]
    assert (out.parent / "m.data").read_bytes() == (src_dir / "m.data").read_bytes()
    x = np.zeros((2, 4), np.float32)
    assert np.array_equal(_outputs(out, x)[0], _outputs(src_dir / "m.onnx", x)[0])
    assert str(tmp_path).encode() not in out.read_bytes()


def test_scrub_bad_input(cli, tmp_path):
    path = zoo.add_offset_model(tmp_path / "add.onnx", [1, 2, 3, 4])
    out = tmp_path / "out"
    out.mkdir()
    _fails(cli("scrub", tmp_path / "missing.onnx", "-o", out / "x.onnx"), 2, "no such file")
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04 not onnx")
    _fails(cli("scrub", tmp_path / "model.keras", "-o", out / "x.onnx"), 3, "not an ONNX model")
    _fails(cli("scrub", out, "-o", out / "x.onnx"), 3, "is a directory")
    data = Path(path).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    _fails(cli("scrub", tmp_path / "cut.onnx", "-o", out / "x.onnx"), 2, "corrupt or truncated")
    _fails(cli("scrub", path, "-o", out), 2, "output is a directory")
    evil = tmp_path / "models" / "evil.onnx"
    evil.parent.mkdir()
    model = onnx.load(path)
    onnx.save(model, str(evil), save_as_external_data=True, location="w.bin", size_threshold=0)
    model = onnx.load(str(evil), load_external_data=False)
    for e in model.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../add.onnx"
    onnx.save(model, str(evil))
    _fails(cli("scrub", evil, "-o", out / "x.onnx"), 4, "escapes the model directory")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(path, other / "w.bin")  # a file of the same name, other content, where the data would go
    (evil.parent / "w.bin").unlink()
    onnx.save(onnx.load(path), str(evil), save_as_external_data=True, location="w.bin", size_threshold=0)
    _fails(cli("scrub", evil, "-o", other / "x.onnx"), 2, "already exists beside the output with other content")
    assert sorted(os.listdir(out)) == [] and sorted(os.listdir(other)) == ["w.bin"]


def test_what_scrub_cannot_change_is_reported_as_left(cli, tmp_path):
    """A node named after a local path is part of the graph: reported, not renamed."""
    path = zoo.add_offset_model(tmp_path / "add.onnx", [1, 2, 3, 4])
    model = onnx.load(path)
    model.graph.node[0].name = f"{tmp_path}/add"
    onnx.save(model, path)
    res = cli("scrub", path, "-o", tmp_path / "out.onnx", "--json")
    assert res.exit_code == 0, res.stderr
    left = json.loads(res.stdout)["remaining"]
    assert len(left) == 1 and left[0].startswith("path in node name") and str(tmp_path) in left[0]
    assert f"{tmp_path}/add".encode() in (tmp_path / "out.onnx").read_bytes()
    table = cli("scrub", path, "-o", tmp_path / "out.onnx")
    assert "left" in table.stdout and "part of the graph" in table.stdout
