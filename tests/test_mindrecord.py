"""MindRecord (MindSpore's dataset format, not a model format) through the `mindspore` toolchain:
`modelport data convert` between .npz and .mindrecord, and a .mindrecord wherever modelport takes
data (verify/convert --inputs, compress --calibration and --eval, distill --data).

The files are written by MindSpore's own FileWriter and read back by its FileReader (in the
toolchain); the round trip is checked array for array against the .npz it came from. The model
is a small CNN written here as ONNX (conv, batch norm folded into conv, relu, global pool, dense:
random weights), so the data path is tested without a MindSpore model or a torch export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zoo_toolchains


@pytest.fixture(autouse=True)
def _toolchain(monkeypatch):
    zoo_toolchains.mindspore_toolchain(monkeypatch)


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory) -> str:
    """x: batch x 3 x 32 x 32 float32 -> logits: batch x 10."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weights = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
               "w2": rng.standard_normal((16, 8, 3, 3)) * 0.2, "b2": rng.standard_normal(16) * 0.1,
               "wf": rng.standard_normal((16, 10)) * 0.3, "bf": rng.standard_normal(10) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"])]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    out = tmp_path_factory.mktemp("mindrecord_cnn") / "cnn.onnx"
    onnx.save(model, out)
    return str(out)


def _one_line(r, code: int, *words: str) -> str:
    assert r.exit_code == code, (r.exit_code, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    return r.stderr


def _write(cli, tmp_path: Path, name: str, **arrays) -> Path:
    np.savez(tmp_path / f"{name}.npz", **arrays)
    out = tmp_path / f"{name}.mindrecord"
    r = cli("data", "convert", tmp_path / f"{name}.npz", "-o", out)
    assert r.exit_code == 0, r.stderr
    return out


def test_npz_to_mindrecord_and_back(cli, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((7, 3, 8, 8)).astype(np.float32), "labels": rng.integers(0, 10, 7),
              "mask": rng.integers(0, 2, (7, 5)).astype(np.uint8), "score": rng.standard_normal(7)}
    np.savez(tmp_path / "data.npz", **arrays)
    r = cli("data", "convert", tmp_path / "data.npz", "-o", tmp_path / "data.mindrecord", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["rows"] == 7 and report["dst_format"] == "mindrecord"
    assert report["widened"] == [["mask", "uint8", "int32"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.mindrecord", "data.mindrecord.db", "data.npz"]
    r = cli("data", "convert", tmp_path / "data.mindrecord", "-o", tmp_path / "back.npz", "--json")
    assert r.exit_code == 0, r.stderr
    assert {f[0]: (f[1], f[2]) for f in json.loads(r.stdout)["fields"]} == {
        "x": ("float32", [3, 8, 8]), "labels": ("int64", []), "mask": ("int32", [5]), "score": ("float64", [])}
    with np.load(tmp_path / "back.npz") as back:
        assert sorted(back.files) == sorted(arrays)
        for k, a in arrays.items():
            np.testing.assert_array_equal(back[k], a)  # row order and values kept (mask widened, not changed)
    # MindSpore's own reader sees the rows: the library reads what the CLI wrote
    from modelport.data import read_mindrecord

    np.testing.assert_array_equal(read_mindrecord(tmp_path / "data.mindrecord")["x"][3], arrays["x"][3])


def test_mindrecord_as_verify_inputs_and_compress_data(cli, cnn_onnx, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    inputs = _write(cli, tmp_path, "inputs", x=x[:3])
    r = cli("verify", cnn_onnx, cnn_onnx, "--inputs", inputs, "--json")
    assert r.exit_code == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert len(runs) == 1 and runs[0]["input_shapes"] == {"x": [3, 3, 32, 32]}
    calib = _write(cli, tmp_path, "calib", x=x)
    evaluation = _write(cli, tmp_path, "eval", x=x, labels=rng.integers(0, 10, 8))
    r = cli("compress", cnn_onnx, "--quantize", "static", "--calibration", calib, "--eval", evaluation,
            "-o", tmp_path / "q.onnx", "--runs", "0", "--json")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "q.onnx").is_file()


def test_a_schema_that_does_not_match_the_model_is_exit_2_naming_the_fields(cli, cnn_onnx, tmp_path):
    rng = np.random.default_rng(2)
    wrong = _write(cli, tmp_path, "wrong", image=rng.standard_normal((2, 3, 32, 32)).astype(np.float32),
                   labels=rng.integers(0, 10, 2))
    for args in (("verify", cnn_onnx, cnn_onnx, "--inputs", wrong),
                 ("compress", cnn_onnx, "--quantize", "static", "--calibration", wrong, "-o", tmp_path / "q.onnx")):
        _one_line(cli(*args), 2, "wrong.mindrecord", "the MindRecord schema's fields ['image', 'labels']",
                  "the model's inputs ['x']", "missing inputs ['x']")
    small = _write(cli, tmp_path, "small", x=rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    _one_line(cli("verify", cnn_onnx, cnn_onnx, "--inputs", small), 2, "input 'x' has shape 2x3x16x16")
    assert not (tmp_path / "q.onnx").exists()


def test_unreadable_mindrecord_is_exit_2(cli, cnn_onnx, tmp_path):
    good = _write(cli, tmp_path, "good", x=np.zeros((2, 3, 32, 32), np.float32))
    junk = tmp_path / "junk.mindrecord"
    junk.write_bytes(b"no rows here " * 50)
    (tmp_path / "junk.mindrecord.db").write_bytes(b"nor an index " * 50)
    _one_line(cli("verify", cnn_onnx, cnn_onnx, "--inputs", junk), 2, "junk.mindrecord", "not a readable MindRecord file")
    lone = tmp_path / "lone" / "good.mindrecord"
    lone.parent.mkdir()
    lone.write_bytes(good.read_bytes())
    _one_line(cli("data", "convert", lone, "-o", tmp_path / "x.npz"), 2, "its index good.mindrecord.db is missing")
    _one_line(cli("verify", cnn_onnx, cnn_onnx, "--inputs", tmp_path / "none.mindrecord"), 2, "no such MindRecord file")
    assert not (tmp_path / "x.npz").exists()
    # given where a model goes, it is named for what it is
    _one_line(cli("inspect", good), 2, "a MindRecord file is a dataset (MindSpore's), not a model")
    # the driver keeps serving after a bad file
    r = cli("data", "convert", good, "-o", tmp_path / "good_back.npz")
    assert r.exit_code == 0, r.stderr


def test_bad_data_convert_inputs(cli, tmp_path):
    np.savez(tmp_path / "ragged.npz", a=np.zeros((3, 2), np.float32), b=np.zeros(4, np.int64))
    np.savez(tmp_path / "scalar.npz", a=np.float32(1.0))
    np.savez(tmp_path / "text.npz", a=np.array(["x", "y"]))
    np.savez(tmp_path / "ok.npz", a=np.zeros(2, np.float32))
    (tmp_path / "data.csv").write_text("a,b\n")
    _one_line(cli("data", "convert", tmp_path / "ragged.npz", "-o", tmp_path / "r.mindrecord"), 2,
              "different numbers of rows", "'a': 3", "'b': 4")
    _one_line(cli("data", "convert", tmp_path / "scalar.npz", "-o", tmp_path / "s.mindrecord"), 2, "'a' is a scalar")
    _one_line(cli("data", "convert", tmp_path / "text.npz", "-o", tmp_path / "t.mindrecord"), 3,
              "array 'a' has dtype str32, which MindRecord cannot hold")
    _one_line(cli("data", "convert", tmp_path / "ok.npz", "-o", tmp_path / "o.npz"), 2, "nothing to convert")
    _one_line(cli("data", "convert", tmp_path / "data.csv", "-o", tmp_path / "c.mindrecord"), 3, "unknown data format")
    _one_line(cli("data", "convert", tmp_path / "ok.npz", "-o", tmp_path / "no" / "dir.mindrecord"), 2,
              "its directory does not exist")
    _one_line(cli("data", "convert", tmp_path / "missing.npz", "-o", tmp_path / "m.mindrecord"), 2, "no such data file")
    assert not list(tmp_path.glob("*.mindrecord*")) and not list(tmp_path.glob(".*"))


def test_missing_toolchain_is_exit_3_naming_the_install_command(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "no-toolchains"))
    np.savez(tmp_path / "ok.npz", a=np.zeros(2, np.float32))
    r = cli("data", "convert", tmp_path / "ok.npz", "-o", tmp_path / "ok.mindrecord")
    assert r.exit_code == 3
    assert r.stderr.strip() == ("modelport: error: toolchain 'mindspore' is not installed; "
                                "install it with: modelport toolchain install mindspore")
    assert not (tmp_path / "ok.mindrecord").exists()
