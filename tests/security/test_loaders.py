"""Every loader defends itself: ONNX external data, Keras configs, SavedModel ops, TFLite custom ops.

Attacks are real files: ONNX models whose external data points outside their directory (at a
"secret" file a read would open: Linux inotify counts its opens, onnxruntime's included), Keras
archives with a Lambda whose code creates a marker file when it runs, SavedModels whose graphs
read files. Each is refused (exit 4) through the real CLI, with one line naming what and where;
the same models without the attack load.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import zoo_tf
from onnx import TensorProto, helper, numpy_helper

from modelport.errors import BadInputError
from modelport.security import loaders

# --------------------------------------------------------------------------- helpers


def _fails(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


class OpenWatch:
    """Counts opens of a file by anything in this process, C++ libraries included (inotify)."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0
        assert libc.inotify_add_watch(self.fd, os.fsencode(path), 0x20 | 0x1) >= 0  # IN_OPEN | IN_ACCESS

    def count(self) -> int:
        n = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return n
            off = 0
            while off + 16 <= len(data):
                n += 1
                off += 16 + int.from_bytes(data[off + 12: off + 16], sys.byteorder)

    def close(self) -> None:
        os.close(self.fd)


def external_model(directory: Path, location: str = "w.bin") -> Path:
    """y = x + w (w: 8 floats) with w in external data at ``location``, as onnx itself saves it."""
    directory.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.arange(8, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = directory / "model.onnx"
    (directory / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)
    return path


def point_at(path: Path, location: str, length: int = 32) -> Path:
    model = onnx.load(str(path), load_external_data=False)
    t = model.graph.initializer[0]
    del t.external_data[:]
    t.external_data.add(key="location", value=location)
    t.external_data.add(key="length", value=str(length))
    onnx.save(model, str(path))
    return path


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file outside every model directory: what the attacks try to read."""
    d = tmp_path / "outside"
    d.mkdir()
    f = d / "secret.txt"
    f.write_bytes(b"the contents a model must never read " * 4)
    return f


# --------------------------------------------------------------------------- ONNX external data


def _escapes(tmp_path: Path, secret: Path, kind: str) -> Path:
    """A model in tmp_path/models/<kind> whose external data reaches ``secret`` one way or another."""
    path = external_model(tmp_path / "models" / kind)
    d = path.parent
    if kind == "dotdot":
        return point_at(path, os.path.relpath(secret, d))
    if kind == "absolute":
        return point_at(path, str(secret))
    if kind == "symlink-file":
        (d / "w.bin").unlink()
        os.symlink(secret, d / "w.bin")
        return point_at(path, "w.bin")
    if kind == "symlink-dir":
        os.symlink(secret.parent, d / "sub")
        return point_at(path, f"sub/{secret.name}")
    if kind == "hard-link":  # onnxruntime 1.32 follows this one: the inotify watch would see it
        (d / "w.bin").unlink()
        os.link(secret, d / "w.bin")
        return path
    if kind == "ort-memory":
        return point_at(path, "*/_ORT_MEM_ADDR_/*")
    if kind == "two-locations":  # one reader may take the first, another the last
        point_at(path, os.path.relpath(secret, d))
        model = onnx.load(str(path), load_external_data=False)
        model.graph.initializer[0].external_data.add(key="location", value="w.bin")
        onnx.save(model, str(path))
        return path
    raise AssertionError(kind)


ESCAPES = {
    "dotdot": "a '..' component",
    "absolute": "an absolute path",
    "symlink-file": "the file is a symlink to",
    "symlink-dir": "the directory 'sub' is a symlink to",
    "hard-link": "the file has 2 hard links",
    "ort-memory": "read its own process memory",
    "two-locations": "has more than one 'location' entry",
}


@pytest.mark.parametrize("kind", sorted(ESCAPES))
def test_external_data_that_escapes_is_refused_before_it_is_opened(cli, tmp_path, secret, kind):
    path = _escapes(tmp_path, secret, kind)
    watch = OpenWatch(secret)
    try:
        line = _fails(cli("inspect", path), 4, str(path), "refused: external data", ESCAPES[kind])
        if kind not in ("ort-memory", "two-locations"):
            assert "escapes the model directory" in line
        assert watch.count() == 0  # nothing, C++ included, opened the secret
    finally:
        watch.close()


def test_the_watch_sees_what_onnxruntime_reads(tmp_path, secret):
    """The hard-linked file is one onnxruntime itself reads (so the zero above means something)."""
    import onnxruntime as ort

    path = _escapes(tmp_path, secret, "hard-link")
    watch = OpenWatch(secret)
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert watch.count() > 0
    finally:
        watch.close()


@pytest.mark.parametrize("command", ["inspect", "verify", "convert", "compress", "check", "adapt", "bench"])
def test_every_command_that_loads_onnx_refuses(cli, tmp_path, secret, command):
    path = _escapes(tmp_path, secret, "dotdot")
    out = tmp_path / "out"
    out.mkdir()
    args = {
        "inspect": ["inspect", path],
        "verify": ["verify", path, path],
        "convert": ["convert", path, "--to", "torch", "-o", out / "m"],
        "compress": ["compress", path, "--quantize", "dynamic", "-o", out / "q.onnx"],
        "check": ["check", path, "--target", "onnxruntime-coreml"],
        "adapt": ["adapt", path, "--target", "onnxruntime-coreml", "-o", out / "a.onnx"],
        "bench": ["bench", path, "--runs", "1"],
    }[command]
    _fails(cli(*args), 4, "escapes the model directory", "'..' component")
    assert os.listdir(out) == []


def test_a_fifo_as_external_data_is_refused(cli, tmp_path):
    path = external_model(tmp_path / "fifo")
    (path.parent / "w.bin").unlink()
    os.mkfifo(path.parent / "w.bin")  # reading it would block for ever
    _fails(cli("inspect", path), 4, "is not a regular file")


def test_external_data_in_a_constant_node_of_a_subgraph_is_checked(cli, tmp_path, secret):
    """onnx's own loader looks at initializers and attributes; the check also walks If branches."""
    t = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=os.path.relpath(secret, tmp_path / "models"))
    then = helper.make_graph([helper.make_node("Constant", [], ["c"], value=t)], "then", [],
                             [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
                               helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    (tmp_path / "models").mkdir()
    onnx.save(model, str(tmp_path / "models" / "if.onnx"))
    _fails(cli("inspect", tmp_path / "models" / "if.onnx"), 4, "of tensor 'c' escapes the model directory")


def test_external_data_inside_the_directory_keeps_working(cli, tmp_path):
    beside = external_model(tmp_path / "beside")
    subdir = external_model(tmp_path / "subdir", "weights/w.bin")
    aliased = external_model(tmp_path / "aliased", "real/w.bin")
    os.symlink("real", aliased.parent / "alias")  # a symlink that stays inside is fine
    point_at(aliased, "alias/w.bin")
    for path in (beside, subdir, aliased):
        res = cli("inspect", path, "--json")
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout)["onnx"]["external_data"] is True
        res = cli("verify", path, path, "--json")  # onnxruntime reads the weights: outputs are x + arange(8)
        assert res.exit_code == 0, res.stderr
    model = loaders.read_onnx(subdir)
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), np.arange(8, dtype=np.float32))
    found = loaders.external_data(onnx.load(str(aliased), load_external_data=False), aliased)
    assert [(e.location, e.file.name, e.length) for e in found] == [("alias/w.bin", "w.bin", 32)]


def test_missing_or_short_external_data_is_bad_input(cli, tmp_path):
    missing = point_at(external_model(tmp_path / "missing"), "gone.bin")
    _fails(cli("inspect", missing), 2, "missing external data file (gone.bin)")
    short = point_at(external_model(tmp_path / "short"), "w.bin", length=4096)
    _fails(cli("inspect", short), 2, "runs past the end of 'w.bin' (32 bytes)")


# --------------------------------------------------------------------------- Keras


def _rewrite(src: Path, dst: Path, change) -> Path:
    with zipfile.ZipFile(src) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as zout:
        for n, data in members.items():
            zout.writestr(n, data)
    return dst


def _hidden(config: dict) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["config"].get("name") == "hidden")


def test_keras_lambda_is_refused_before_its_code_runs(cli, tmp_path):
    import keras

    marker = tmp_path / "lambda-ran"
    payload = eval(f"lambda t: (open({str(marker)!r}, 'a').close(), t)[1]")  # noqa: S307 - the attack
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(payload, name="payload"),
                              keras.layers.Dense(2, name="out")])
    marker.unlink()  # building the model ran it once: that is how we know a load would run it too
    model.save(tmp_path / "lambda.keras")
    assert not marker.exists()
    _fails(cli("inspect", tmp_path / "lambda.keras"), 4, "Keras layer 'payload' (Lambda)", "arbitrary Python code")
    _fails(cli("convert", tmp_path / "lambda.keras", "--to", "onnx", "-o", tmp_path / "x.onnx"), 4, "'payload'")
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("attack,fragment", [
    (lambda c: _hidden(c).update(module="attack_pkg.layers"), "custom class from module 'attack_pkg.layers'"),
    (lambda c: _hidden(c).update(registered_name="Custom>Dense"), "registered as 'Custom>Dense'"),
    (lambda c: _hidden(c).update(class_name="NotALayer"), "unknown class 'keras.layers.NotALayer'"),
    (lambda c: _hidden(c)["config"].update(activation={"module": "os", "class_name": "function", "config": "system"}),
     "the activation of Keras layer 'hidden' (Dense) is a custom function 'system' from module 'os'"),
    (lambda c: _hidden(c)["config"].update(activation={"module": "keras.utils", "class_name": "function",
                                                       "config": "get_file"}), "custom function 'get_file'"),
    (lambda c: _hidden(c)["config"].update(kernel_initializer={"class_name": "__lambda__", "config": {"code": "AA=="}}),
     "the kernel_initializer of Keras layer 'hidden' (Dense) is a Python lambda"),
    (lambda c: c["config"]["layers"].insert(1, {"module": "keras.layers", "class_name": "StringLookup",
                                                "config": {"name": "vocab", "vocabulary": "/etc/passwd"}}),
     ("layer 'vocab' (StringLookup)", "reads the vocabulary file named in its config ('/etc/passwd')")),
    (lambda c: c["config"]["layers"].insert(1, {"module": "keras.layers", "class_name": "TFSMLayer",
                                                "config": {"name": "sm", "filepath": "/tmp"}}),
     ("layer 'sm' (TFSMLayer)", "loads a TensorFlow SavedModel")),
], ids=["module", "registered", "unknown", "os-system", "get-file", "lambda-initializer", "vocab-file", "tfsm"])
def test_keras_config_outside_the_allow_list_is_refused(cli, tmp_path, attack, fragment):
    bad = _rewrite(zoo_tf.mlp_sequential(), tmp_path / "bad.keras", attack)
    fragments = fragment if isinstance(fragment, tuple) else (fragment,)
    _fails(cli("inspect", bad), 4, "refused:", *fragments, "modelport loads only built-in Keras classes")


def test_keras_h5_lambda_and_custom_class_are_refused(cli, tmp_path):
    import logging

    import h5py
    import keras

    absl = logging.getLogger("absl")  # Keras warns that HDF5 is legacy
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2, name="double"),
                          keras.layers.Dense(2, name="out")]).save(tmp_path / "lambda.h5")
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="out")]).save(tmp_path / "plain.h5")
    finally:
        absl.setLevel(level)
    _fails(cli("inspect", tmp_path / "lambda.h5"), 4, "Keras layer 'double' (Lambda)")
    assert cli("inspect", tmp_path / "plain.h5").exit_code == 0
    with h5py.File(tmp_path / "plain.h5", "r+") as f:  # the legacy form names classes only
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][-1]["class_name"] = "EvilDense"
        f.attrs["model_config"] = json.dumps(config)
    _fails(cli("inspect", tmp_path / "plain.h5"), 4, "unknown class 'EvilDense'")


def test_a_custom_layer_loads_only_when_this_program_registered_it(cli, tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="secl_tests", name="Twice")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inp = keras.Input((4,), name="x")
    keras.Model(inp, Twice(name="twice")(inp)).save(tmp_path / "twice.keras")
    assert cli("inspect", tmp_path / "twice.keras").exit_code == 0  # registered here: the caller's own code
    moved = _rewrite(tmp_path / "twice.keras", tmp_path / "moved.keras",
                     lambda c: c["config"]["layers"][1].update(registered_name="elsewhere>Twice"))
    _fails(cli("inspect", moved), 4, "Keras layer 'twice' (Twice)", "registered as 'elsewhere>Twice'")
    other = _rewrite(tmp_path / "twice.keras", tmp_path / "other.keras",
                     lambda c: c["config"]["layers"][1].update(module="attack_pkg"))
    _fails(cli("inspect", other), 4, "Keras layer 'twice' (Twice)")


def test_built_in_keras_models_load(cli):
    for path in (zoo_tf.mlp_sequential(), zoo_tf.two_io_keras()):
        res = cli("inspect", path, "--json")
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout)["params"] > 0


def test_the_allow_list_comes_from_keras_itself():
    import keras

    allow = loaders.keras_allow_list()
    public = {getattr(keras.layers, n) for n in dir(keras.layers)
              if isinstance(getattr(keras.layers, n), type) and issubclass(getattr(keras.layers, n), keras.layers.Layer)}
    assert public <= allow.layers  # every built-in layer class, none typed in by hand
    assert {keras.layers.Lambda, keras.layers.TFSMLayer} <= set(allow.denied)
    assert allow.resolve("keras.layers", "Dense") is keras.layers.Dense
    assert allow.resolve("keras", "Sequential") is keras.Sequential
    assert allow.resolve("keras.utils", "get_file") is None and allow.resolve(None, "Lambda") is keras.layers.Lambda


# --------------------------------------------------------------------------- SavedModel


def _save_module(path: Path, *, leak_in: str) -> Path:
    """A tf.Module serving y = x W; ``leak_in`` = 'serving' reads a file there, 'other' in a second function only."""
    import tensorflow as tf

    from modelport.quiet import native_output

    secret = str(path.parent / "secret.txt")
    module = tf.Module()
    module.w = tf.Variable(np.ones((4, 2), np.float32))

    @tf.function
    def read_secret():
        return tf.io.read_file(secret)

    def serve(x):
        y = tf.matmul(x, module.w)
        if leak_in == "serving":
            y = y + tf.cast(tf.strings.length(read_secret()), tf.float32)
        return {"y": y}

    module.serve = tf.function(serve, input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    signatures = {"serving_default": module.serve}
    if leak_in == "other":
        module.leak = tf.function(lambda: {"s": read_secret()}, input_signature=[])
        signatures["leak"] = module.leak
    with native_output():
        tf.saved_model.save(module, str(path), signatures=signatures)
    return path


def test_savedmodel_with_file_ops_is_refused_unless_trusted(cli, tmp_path, monkeypatch):
    path = _save_module(tmp_path / "reads", leak_in="serving")
    line = _fails(cli("inspect", path), 4, "refused: SavedModel op ReadFile", "reads a file", "--trust")
    assert "in function '__inference_read_secret_" in line  # the nested function that holds it, by name
    found = loaders.savedmodel_findings(path)
    assert {f.op for f in found} == {"ReadFile"}
    monkeypatch.setenv(loaders.TRUST_ENV, "1")
    assert cli("inspect", path).exit_code == 0


def test_convert_trust_loads_a_savedmodel_with_a_file_op_in_another_function(cli, tmp_path):
    path = _save_module(tmp_path / "other", leak_in="other")
    out = tmp_path / "m.onnx"
    _fails(cli("convert", path, "--to", "onnx", "-o", out), 4, "ReadFile", "__inference_read_secret_")
    assert not out.exists()
    res = cli("convert", path, "--to", "onnx", "-o", out, "--trust", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["ok"] is True and out.is_file()


def test_a_plain_savedmodel_loads():
    assert loaders.savedmodel_findings(zoo_tf.module_savedmodel()) == ()  # SaveV2/RestoreV2 are normal
    assert loaders.check_savedmodel(zoo_tf.exported_savedmodel()) == ()


def test_a_corrupt_saved_model_pb_is_bad_input(cli, tmp_path):
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"\x0a\xff\xff not a protobuf")
    _fails(cli("inspect", tmp_path / "sm"), 2, "corrupt or truncated saved_model.pb")


# --------------------------------------------------------------------------- TFLite


def test_tflite_custom_ops_are_reported(cli, tmp_path):
    import tensorflow as tf

    from modelport.quiet import native_output

    @tf.function(input_signature=[tf.TensorSpec([4, 4], tf.float32)])
    def det(x):
        return tf.linalg.det(x) + 1.0  # no TFLite builtin: a custom op when allowed

    converter = tf.lite.TFLiteConverter.from_concrete_functions([det.get_concrete_function()], det)
    converter.allow_custom_ops = True
    with native_output():
        (tmp_path / "det.tflite").write_bytes(converter.convert())
    res = cli("inspect", tmp_path / "det.tflite", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["custom_ops"] == {"MatrixDeterminant": 1}
    res = cli("inspect", tmp_path / "det.tflite")
    assert any(ln.startswith("│ custom ops") and "MatrixDeterminant×1" in ln for ln in res.stdout.splitlines())
    plain = cli("inspect", zoo_tf.tflite_from_keras("mlp"), "--json")
    assert plain.exit_code == 0 and json.loads(plain.stdout)["custom_ops"] == {}


def test_a_truncated_tflite_is_bad_input(tmp_path):
    data = zoo_tf.tflite_from_keras("mlp").read_bytes()
    (tmp_path / "cut.tflite").write_bytes(data[:40])
    with pytest.raises(BadInputError, match="TFLite"):
        loaders.tflite_custom_ops(tmp_path / "cut.tflite")
