"""Graph inputs that also have an initializer (ONNX IR >= 4): the initializer is the input's
default value, a caller may feed another. The generated forward keeps them as optional keyword
arguments (None: the stored value); modelport_torch.json lists only the required inputs."""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from modelport import to_torch
from modelport.to_torch import registry

SCALE = np.array([1.5, -2.0, 0.5], np.float32)


def _scale_model(ir_version: int = 8, opset: int = 17) -> onnx.ModelProto:
    """y = x * scale + 1, with `scale` a graph input whose initializer is its default."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["m"], name="mul"),
         helper.make_node("Add", ["m", "one"], ["y"], name="add")],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(SCALE, "scale"), numpy_helper.from_array(np.float32(1.0), "one")],
    )
    if ir_version < 4:  # IR 3 lists every initializer as a graph input
        graph.input.append(helper.make_tensor_value_info("one", TensorProto.FLOAT, []))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model)
    return model


def _ort(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_initializer_input_is_an_optional_keyword_argument(tmp_path):
    model = _scale_model()
    result = to_torch.convert(model, tmp_path)
    assert result.warnings == ()
    net = to_torch.load(tmp_path)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _ort(model, {"x": x}), rtol=1e-6, atol=1e-6)

    other = np.array([3.0, 0.25, -1.0], np.float32)
    with torch.no_grad():
        overridden = net(torch.from_numpy(x), scale=torch.from_numpy(other)).numpy()
    want = _ort(model, {"x": x, "scale": other})
    np.testing.assert_allclose(overridden, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(overridden, got)
    with torch.no_grad():  # the override did not replace the stored default
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), got)

    meta = json.loads((tmp_path / "modelport_torch.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["x"]
    (opt,) = meta["overridable_inputs"]
    assert opt["name"] == "scale" and opt["arg"] == "scale" and opt["dtype"] == "float32" and opt["shape"] == [3]
    np.testing.assert_array_equal(getattr(net, opt["default"]).detach().numpy(), SCALE)

    src = (tmp_path / "model.py").read_text()
    assert "def forward(self, x, *, scale: torch.Tensor | None = None):" in src
    doc = src.split('"""')[1]
    assert "scale: ONNX input 'scale', float32[3], default self.scale" in doc


def test_initializer_input_through_the_torch_directory_runner(tmp_path):
    """formats/torch_dir (what verification runs) feeds the required inputs only."""
    from modelport.formats import open_runner

    model = _scale_model()
    to_torch.convert(model, tmp_path)
    x = np.ones((2, 3), np.float32)
    with open_runner(tmp_path) as runner:
        assert runner.signature.input_names == ["x"]
        (got,) = runner.run({"x": x}).values()
    np.testing.assert_allclose(got, _ort(model, {"x": x}), rtol=1e-6)


def test_before_ir4_an_input_with_an_initializer_is_a_constant(tmp_path):
    """IR 3 required every initializer to be listed as an input; onnxruntime does not let
    a caller override them, and forward takes no argument for them."""
    model = _scale_model(ir_version=3, opset=8)
    to_torch.convert(model, tmp_path)
    src = (tmp_path / "model.py").read_text()
    assert "def forward(self, x):" in src and "Optional keyword arguments" not in src
    meta = json.loads((tmp_path / "modelport_torch.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["x"] and "overridable_inputs" not in meta
    x = np.ones((2, 3), np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(to_torch.load(tmp_path)(torch.from_numpy(x)).numpy(), _ort(model, {"x": x}))


def test_unused_initializer_input_is_accepted_and_stores_nothing(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("unused", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(4, np.float32), "unused")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    result = to_torch.convert(model, tmp_path)
    assert result.n_params == 0
    net = to_torch.load(tmp_path)
    x = torch.tensor([-1.0, 2.0])
    assert net(x).tolist() == [0.0, 2.0] == net(x, unused=torch.zeros(4)).tolist()
    assert "not read by the graph" in (tmp_path / "model.py").read_text()


def _needs_const_scale(n) -> None:
    """A test op whose converter, like one needing axes or a shape, takes only a constant."""
    c = n.const(1)
    if c is None:
        raise n.fail("scale must be a constant")
    n.assign(f"{n.x(0)} * {n.g.materialize(n.node.input[1])}")


def test_input_a_converter_needs_constant_is_fixed_to_its_default(tmp_path, monkeypatch):
    registry._load_ops()
    # registered for this test only: supported_ops() is compared with the torch target's profile
    monkeypatch.setitem(registry._REGISTRY, ("modelport.test", "NeedsConstScale"), {1: _needs_const_scale})
    model = _scale_model()
    model.opset_import.append(helper.make_opsetid("modelport.test", 1))
    model.graph.node[0].op_type = "NeedsConstScale"
    model.graph.node[0].domain = "modelport.test"
    result = to_torch.convert(model, tmp_path)
    assert len(result.warnings) == 1 and "'scale'" in result.warnings[0] and "mul" in result.warnings[0]
    src = (tmp_path / "model.py").read_text()
    assert "def forward(self, x):" in src
    meta = json.loads((tmp_path / "modelport_torch.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["x"] and "overridable_inputs" not in meta
    x = torch.ones(2, 3)
    assert to_torch.load(tmp_path)(x).tolist() == (x.numpy() * SCALE + 1).tolist()


# -- through tf2onnx ---------------------------------------------------------------------------


@functools.cache
def _default_scale_layer():
    """A Keras layer multiplying by tf.compat.v1.placeholder_with_default(constant): tf2onnx
    writes a PlaceholderWithDefault as a graph input whose initializer is the default."""
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="modelport_test_initializer_inputs")
    class DefaultScale(keras.layers.Layer):
        def __init__(self, scale, **kwargs):
            super().__init__(**kwargs)
            self.scale = [float(s) for s in scale]

        def call(self, x):
            default = tf.constant(self.scale, tf.float32)
            return x * tf.compat.v1.placeholder_with_default(default, shape=[len(self.scale)])

        def get_config(self):
            return {**super().get_config(), "scale": self.scale}

    return DefaultScale


@pytest.mark.slow
def test_tf2onnx_initializer_input_converts_to_torch_with_parity(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from modelport.convert.run import convert

    keras.utils.set_random_seed(0)
    scale = [1.5, -2.0, 0.5, 3.0, 0.25]
    inp = keras.Input((5,), name="x")
    out = keras.layers.Dense(3)(_default_scale_layer()(scale)(inp))
    keras_path, onnx_path, out_dir = tmp_path / "m.keras", tmp_path / "m.onnx", tmp_path / "m_torch"
    keras.Model(inp, out).save(keras_path)

    report = convert(keras_path, "onnx", onnx_path)
    assert report.ok is True
    model = onnx.load(str(onnx_path))
    inits = {i.name for i in model.graph.initializer}
    both = [i.name for i in model.graph.input if i.name in inits]
    assert model.ir_version >= 4 and len(both) == 1 and both[0].endswith("PlaceholderWithDefault:0"), both

    report = convert(onnx_path, "torch", out_dir)
    assert report.ok is True, report.parity
    meta = json.loads((out_dir / "modelport_torch.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["x"]
    (opt,) = meta["overridable_inputs"]
    assert opt["name"] == both[0]

    net = to_torch.load(out_dir)
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    other = np.arange(5, dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), _ort(model, {"x": x}), rtol=1e-5, atol=1e-5)
        got = net(torch.from_numpy(x), **{opt["arg"]: torch.from_numpy(other)}).numpy()
    np.testing.assert_allclose(got, _ort(model, {"x": x, both[0]: other}), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_adapted_keras_normalization_converts_to_torch(tmp_path):
    """An adapted Normalization layer's mean and variance are tensors the traced function captures: they stay
    constants in the ONNX (tf2onnx's from_function would make them value-less inputs), so Keras -> ONNX -> torch
    verifies."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from modelport.convert.run import convert

    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(0).normal(3.0, 2.0, (64, 5)).astype(np.float32))
    inp = keras.Input((5,), name="x")
    keras.Model(inp, keras.layers.Dense(3)(norm(inp))).save(tmp_path / "n.keras")
    report = convert(tmp_path / "n.keras", "onnx", tmp_path / "n.onnx")
    assert report.ok is True and [i.name for i in report.artifact.signature.inputs] == ["x"]
    report = convert(tmp_path / "n.onnx", "torch", tmp_path / "n_torch")
    assert report.ok is True
