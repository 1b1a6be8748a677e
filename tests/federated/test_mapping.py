"""The canonical parameter space: derive, verify and use the map canonical <-> local for real Keras,
PyTorch and modelport-generated PyTorch models of the same architecture (the federated demo's CNN
on 8x8 digits, and tests/zoo_tf.py's trained digits CNN)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import zoo_tf
from hypothesis import given, settings
from hypothesis import strategies as st

from modelport.errors import BadInputError, CheckFailedError, ModelportError, UnsupportedError
from modelport.federated import mapping

# The demo architecture: Conv 3x3 -> BN -> ReLU -> Flatten -> Dense 32 -> Dense 10, in PyTorch.
TORCH_SOURCE = '''
import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, hidden=32, eps=1e-3):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.bn = nn.BatchNorm2d(8, eps=eps)
        self.fc1 = nn.Linear(8 * 6 * 6, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class Narrow(DigitsCNN):
    def __init__(self):
        super().__init__(hidden=16)


class OtherEps(DigitsCNN):
    def __init__(self):
        super().__init__(eps=1e-5)


class ZooCNN(nn.Module):
    """tests/zoo_tf.py's digits CNN: Conv same (no bias) -> BN -> ReLU -> MaxPool -> Flatten -> Dense."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8, eps=1e-3)
        self.pool = nn.MaxPool2d(2)
        self.logits = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.logits(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 4, batch_first=True)

    def forward(self, x):
        return self.lstm(x.reshape(x.shape[0], 8, 8))[0]
'''


def _keras_demo(path: Path, hidden: int = 32) -> Path:
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(8, 3, name="conv")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hidden, activation="relu", name="fc1")(x)
    out = layers.Dense(10, name="fc2")(x)
    keras.Model(inp, out, name="digits_demo").save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fed")
    (d / "nets.py").write_text(TORCH_SOURCE)
    torch_spec = f"{d / 'nets.py'}:DigitsCNN"
    canonical = mapping.canonical_from(torch_spec, d / "canonical.onnx", inputs=("x:1x1x8x8:float32",))
    return {"dir": d, "nets": d / "nets.py", "torch": torch_spec, "canonical": canonical,
            "keras": _keras_demo(d / "demo.keras")}


@pytest.fixture(scope="module")
def keras_map(models):
    return mapping.derive(models["canonical"], models["keras"], "keras")


def _by_local(m: mapping.ParamMapping) -> dict[str, mapping.Entry]:
    return {e.local: e for e in m.entries}


def _digits_nchw(n: int = 32) -> np.ndarray:
    x = zoo_tf.digits()[2][:n]  # NHWC
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def test_keras_client_of_a_torch_canonical(models, keras_map):
    m = keras_map
    assert m.parity["ok"] and m.parity["round_trip_exact"]
    assert m.parity["max_abs"] <= 1e-4
    assert m.input_perm == (0, 2, 3, 1)  # torch NCHW in, Keras NHWC
    by = _by_local(m)
    assert by["conv/kernel"].canonical == "conv.weight" and by["conv/kernel"].local_shape == (3, 3, 1, 8)
    # the Dense after Flatten: torch flattens C,H,W, Keras H,W,C: rows permuted, not a plain transpose
    fc1 = by["fc1/kernel"]
    assert fc1.canonical == "fc1.weight" and fc1.view == (32, 8, 6, 6) and fc1.perm == (2, 3, 1, 0)
    assert {by["bn/moving_mean"].kind, by["bn/moving_variance"].kind} == {"bn_stat"}
    assert mapping.ParamMapping.from_json(m.to_json()) == m

    # independently of derive: canonical weights through the map give the canonical ONNX's predictions
    import keras
    import onnxruntime as ort

    arrays = mapping.canonical_arrays(models["canonical"])
    model = mapping.load_local("keras", models["keras"])
    mapping.write_local("keras", model, m.to_local(arrays))
    x = _digits_nchw()
    want = ort.InferenceSession(str(models["canonical"]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = np.asarray(model(np.transpose(x, m.input_perm), training=False))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    back = m.to_canonical(mapping.read_local("keras", model), include_bn=True)
    assert set(back) == {e.canonical for e in m.entries if e.kind != "buffer"}
    assert all(back[k].tobytes() == arrays[k].tobytes() for k in back)
    assert isinstance(model, keras.Model)


def test_the_parity_check_catches_a_missing_flatten_permutation(models, keras_map):
    """The classic bug: the Dense after Flatten transposed as a 2-D matrix, rows left in C,H,W order."""
    naive = tuple(dataclasses.replace(e, view=None, perm=(1, 0)) if e.local == "fc1/kernel" else e
                  for e in keras_map.entries)
    buggy = dataclasses.replace(keras_map, entries=naive, parity={})
    model = mapping.load_local("keras", models["keras"])
    before = mapping.read_local("keras", model)
    with pytest.raises(CheckFailedError, match="does not compute what the canonical") as info:
        mapping.verify_mapping(buggy, models["canonical"], model)
    assert info.value.exit_code == 1 and info.value.report.parity["max_abs"] > 1e-3
    after = mapping.read_local("keras", model)  # the model's own weights are back
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # two tensors of one shape swapped (conv bias <-> BN beta): the perturbed weights expose it
    swap = {"conv/bias": "bn/beta", "bn/beta": "conv/bias"}
    swapped = dataclasses.replace(keras_map, entries=tuple(dataclasses.replace(e, local=swap.get(e.local, e.local))
                                                           for e in keras_map.entries), parity={})
    with pytest.raises(CheckFailedError, match="does not compute what the canonical"):
        mapping.verify_mapping(swapped, models["canonical"], model)
    assert mapping.verify_mapping(keras_map, models["canonical"], model).parity["ok"]


def test_torch_and_generated_clients(models, tmp_path):
    from modelport.convert.run import convert

    m = mapping.derive(models["canonical"], models["torch"], "torch")
    assert m.parity["ok"] and m.parity["round_trip_exact"] and m.input_perm is None
    assert all(e.local == e.canonical and e.perm is None for e in m.entries if e.kind != "buffer")
    assert [e.local for e in m.entries if e.kind == "buffer"] == ["bn.num_batches_tracked"]
    assert "bn.running_mean" not in m.keys() and "bn.running_mean" in m.keys(include_bn=True)
    assert m.keys()[0] == "conv.weight" and len(m.keys(include_bn=True)) == len(m.keys()) + 2

    generated = tmp_path / "generated"
    convert(str(models["canonical"]), "torch", str(generated), verify=False)
    g = mapping.derive(models["canonical"], generated, "generated", probe=_digits_nchw(8))  # real digits as probe
    assert g.parity["ok"] and g.parity["round_trip_exact"] and g.parity["probe_shape"] == [8, 1, 8, 8]
    assert g.keys(include_bn=True) == m.keys(include_bn=True)
    # FedBN: a reply without the BN statistics leaves the local ones in place
    module = mapping.load_local("generated", generated)
    stats = mapping.read_local("generated", module)["bn.running_var"].copy()
    arrays = mapping.canonical_arrays(models["canonical"])
    sent = {k: arrays[k] * 0.5 for k in g.keys()}
    mapping.write_local("generated", module, g.to_local(sent))
    local = mapping.read_local("generated", module)
    assert np.array_equal(local["bn.running_var"], stats)
    assert np.array_equal(local["fc1.weight"], arrays["fc1.weight"] * 0.5)


def test_torch_client_of_a_trained_keras_canonical(models, tmp_path):
    """tests/zoo_tf.py's trained CNN (same padding, no conv bias, max pool) as the canonical; a torch client."""
    import onnxruntime as ort

    from modelport.quiet import native_output

    canonical = mapping.canonical_from(zoo_tf.cnn_keras(), models["dir"] / "zoo_canonical.onnx")
    m = mapping.derive(canonical, f"{models['nets']}:ZooCNN", "torch")
    assert m.parity["ok"] and m.parity["round_trip_exact"] and m.input_perm == (0, 3, 1, 2)
    by = _by_local(m)
    assert by["conv.weight"].canonical.endswith("conv/kernel") and by["conv.weight"].perm == (3, 2, 0, 1)
    assert by["logits.weight"].view == (4, 4, 8, 10)  # Keras rows H,W,C -> torch columns C,H,W
    # the lowered canonical computes what Keras computes, on real digits
    keras_model = mapping.load_local("keras", zoo_tf.cnn_keras())
    x = zoo_tf.digits()[2][:64]
    with native_output():
        want = np.asarray(keras_model(x, training=False))
    got = ort.InferenceSession(str(canonical), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert (got.argmax(1) == zoo_tf.digits()[3][:64]).mean() > 0.5  # a trained model, not noise
    # a module generated from this canonical: the compiler keeps the NHWC flatten, its Linear holds the kernel
    from modelport.convert.run import convert

    convert(str(canonical), "torch", str(tmp_path / "generated"), verify=False)
    g = mapping.derive(canonical, tmp_path / "generated", "generated")
    assert g.parity["ok"] and g.parity["round_trip_exact"] and g.input_perm is None
    assert g.keys(include_bn=True) == m.keys(include_bn=True)


# ------------------------------------------------------------------------------------------ bad input


def _one_line(exc: ModelportError, code: int, *fragments: str) -> str:
    text = str(exc)
    assert exc.exit_code == code, text
    assert "\n" not in text and "Traceback" not in text, text
    for frag in fragments:
        assert frag in text, text
    return text


def test_architectures_that_differ_name_the_first_tensor(models, tmp_path):
    with pytest.raises(BadInputError) as info:
        mapping.derive(models["canonical"], f"{models['nets']}:Narrow", "torch")
    _one_line(info.value, 2, "'fc1.weight'", "32x288", "16x288")
    with pytest.raises(BadInputError) as info:
        mapping.derive(models["canonical"], _keras_demo(tmp_path / "narrow.keras", hidden=16), "keras")
    _one_line(info.value, 2, "'fc1.weight'", "fc1/kernel")
    with pytest.raises(BadInputError) as info:  # same shapes, another BatchNorm epsilon
        mapping.derive(models["canonical"], f"{models['nets']}:OtherEps", "torch")
    _one_line(info.value, 2, "'bn.weight'", "epsilon")
    with pytest.raises(BadInputError) as info:  # the zoo CNN pads its convolution ("same")
        mapping.derive(models["canonical"], zoo_tf.cnn_keras(), "keras")
    _one_line(info.value, 2, "'conv.weight'", "pads (0, 0, 0, 0) vs (1, 1, 1, 1)")


def test_unknown_framework_and_unreadable_models(models, tmp_path):
    with pytest.raises(BadInputError) as info:
        mapping.derive(models["canonical"], models["keras"], "jax")
    _one_line(info.value, 2, "unknown framework 'jax'", "keras")
    garbage = tmp_path / "broken.keras"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BadInputError) as info:
        mapping.derive(models["canonical"], garbage, "keras")
    _one_line(info.value, 2, "broken.keras")
    with pytest.raises(BadInputError) as info:
        mapping.derive(models["canonical"], tmp_path / "missing.keras", "keras")
    _one_line(info.value, 2, "no such")
    with pytest.raises(BadInputError) as info:
        mapping.derive(models["canonical"], tmp_path, "generated")
    _one_line(info.value, 2, "not a directory written by")
    not_onnx = tmp_path / "canonical.onnx"
    not_onnx.write_bytes(b"\x08\x07garbage")
    with pytest.raises(BadInputError) as info:
        mapping.derive(not_onnx, models["keras"], "keras")
    _one_line(info.value, 2, "canonical.onnx")
    with pytest.raises(BadInputError) as info:
        mapping.derive(models["canonical"], f"{models['nets']}:NoSuchClass", "torch")
    _one_line(info.value, 2, "NoSuchClass")
    with pytest.raises(BadInputError) as info:  # a probe with 3 channels for a 1-channel model
        mapping.derive(models["canonical"], models["keras"], "keras", probe=np.zeros((2, 3, 8, 8), np.float32))
    _one_line(info.value, 2, "fails on the probe 2x8x8x3")


def test_fused_recurrent_gates_are_refused_naming_the_tensor(models, tmp_path):
    import keras
    from keras import layers

    inp = keras.Input((8, 8), name="seq")
    out = layers.Dense(10, name="head")(layers.LSTM(4, name="lstm")(inp))
    path = tmp_path / "lstm.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(UnsupportedError) as info:
        mapping.canonical_from(path, tmp_path / "lstm.onnx")
    _one_line(info.value, 3, "lstm", "gates")
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*tmp"))
    with pytest.raises(UnsupportedError) as info:
        mapping.derive(models["canonical"], f"{models['nets']}:Recurrent", "torch")
    _one_line(info.value, 3, "LSTM gates")


def test_branching_keras_models_are_refused(models, tmp_path):
    import keras
    from keras import layers

    inp = keras.Input((8, 8, 1))
    a = layers.Conv2D(4, 3, padding="same", name="a")(inp)
    b = layers.Conv2D(4, 3, padding="same", name="b")(inp)
    out = layers.Dense(10, name="head")(layers.Flatten()(layers.Add()([a, b])))
    path = tmp_path / "branches.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(UnsupportedError) as info:
        mapping.derive(models["canonical"], path, "keras")
    _one_line(info.value, 3, "chains of layers")


def test_bad_arrays_and_documents(models, keras_map):
    arrays = mapping.canonical_arrays(models["canonical"])
    with pytest.raises(BadInputError) as info:
        keras_map.to_local({**arrays, "extra.weight": np.zeros(3, np.float32)})
    _one_line(info.value, 2, "'extra.weight'")
    with pytest.raises(BadInputError) as info:
        keras_map.to_local({"fc1.weight": np.zeros((288, 32), np.float32)})  # the local layout, not canonical
    _one_line(info.value, 2, "'fc1.weight'", "[288, 32]")
    with pytest.raises(BadInputError) as info:
        keras_map.to_canonical({"conv/kernel": np.zeros((3, 3, 1, 8), np.float32)})
    _one_line(info.value, 2, "is missing")
    model = mapping.load_local("keras", models["keras"])
    with pytest.raises(BadInputError) as info:
        mapping.write_local("keras", model, {"conv/kernel": np.zeros((8, 1, 3, 3), np.float32)})
    _one_line(info.value, 2, "'conv/kernel'", "shape")
    with pytest.raises(BadInputError) as info:
        mapping.write_local("keras", model, {"conv/kernel": np.zeros((3, 3, 1, 8), np.float64)})
    _one_line(info.value, 2, "dtype float64")
    for text in ("{not json", '{"format": "something else"}', '{"format": "modelport-param-mapping/1"}'):
        with pytest.raises(BadInputError) as info:
            mapping.ParamMapping.from_json(text)
        _one_line(info.value, 2, "unreadable parameter mapping")


# ------------------------------------------------------------------------------ the entry's layout maths

@st.composite
def _layouts(draw):
    view = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    perm = tuple(draw(st.permutations(range(len(view)))))
    cut = draw(st.integers(0, len(view)))  # the canonical shape merges the view's axes at one cut
    canonical = tuple(int(np.prod(p)) for p in (view[:cut], view[cut:]) if p)
    permuted = [view[p] for p in perm]
    cut2 = draw(st.integers(0, len(view)))
    local = tuple(int(np.prod(p)) for p in (permuted[:cut2], permuted[cut2:]) if p)
    return canonical, view, perm, local


@settings(max_examples=60, deadline=None)
@given(_layouts(), st.integers(0, 2**31 - 1))
def test_forward_and_backward_are_exact_inverses(layout, seed):
    canonical, view, perm, local = layout
    e = mapping.Entry("c", "l", perm, local, "param", view, canonical, "Dense.W")
    a = np.random.default_rng(seed).standard_normal(canonical).astype(np.float32)
    out = e.forward(a)
    assert out.shape == local
    assert np.array_equal(out.ravel(), np.transpose(a.reshape(view), perm).ravel())
    back = e.backward(out)
    assert back.dtype == a.dtype and back.tobytes() == a.tobytes()
