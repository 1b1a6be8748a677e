"""Caffe (.prototxt + .caffemodel) -> ONNX, and on to torch / openvino / tflite.

There is no Caffe runtime to verify against (Caffe has no maintained release), so each network
is built twice from the same weights: as a PyTorch module (torch's own Conv2d, MaxPool2d with
ceil_mode, AvgPool2d, LocalResponseNorm, ... whose semantics follow Caffe's), and as a Caffe
model — a prototxt written here in Caffe's text syntax and a .caffemodel serialized with the
caffe.proto message classes from the torch module's weights. The lowered ONNX must compute what
the torch module computes.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelport.convert.run import convert
from modelport.formats import caffe_format, detect, open_runner

torch.manual_seed(0)


# --------------------------------------------------------------------------- the reference networks


class Affine(nn.Module):
    """Caffe's Scale layer with bias_term (one factor and one bias per channel)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.randn(c))

    def forward(self, x):
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class AlexLike(nn.Module):
    """conv(stride 2, pad) + BatchNorm + Scale + ReLU, ceil-mode max pool, LRN, grouped dilated conv,
    PReLU, padded ceil-mode average pool, two InnerProducts with a leaky ReLU and dropout, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8, eps=1e-5, affine=False)
        self.scale1 = Affine(8)
        self.norm1 = nn.LocalResponseNorm(5, alpha=0.5, beta=0.75, k=2.0)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.prelu2 = nn.PReLU(8)
        self.fc3 = nn.Linear(8 * 4 * 4, 16)
        self.fc4 = nn.Linear(16, 10)
        with torch.no_grad():
            self.bn1.running_mean.copy_(torch.randn(8) * 0.3)
            self.bn1.running_var.copy_(torch.rand(8) + 0.5)
            self.prelu2.weight.copy_(torch.rand(8) * 0.5)

    def forward(self, x):
        x = torch.relu(self.scale1(self.bn1(self.conv1(x))))
        x = nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)  # 12 -> 6 (floor would give 5)
        x = self.prelu2(self.conv2(self.norm1(x)))
        x = nn.functional.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=True)  # 6 -> 4
        x = nn.functional.leaky_relu(self.fc3(x.flatten(1)), 0.1)
        return torch.softmax(self.fc4(x), dim=1)


ALEX_PROTOTXT = """
name: "AlexLike"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 23 dim: 23 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 group: 2 } }
layer { name: "prelu2" type: "PReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc3" type: "InnerProduct" bottom: "pool2" top: "fc3" inner_product_param { num_output: 16 } }
layer { name: "relu3" type: "ReLU" bottom: "fc3" top: "fc3" relu_param { negative_slope: 0.1 } }
layer { name: "drop3" type: "Dropout" bottom: "fc3" top: "fc3" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc4" type: "InnerProduct" bottom: "fc3" top: "fc4" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc4" top: "prob" }
"""

BN_FACTOR = 3.7  # Caffe's BatchNorm keeps mean * f, var * f and f


def alex_blobs(m: AlexLike) -> dict[str, list[np.ndarray]]:
    t = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    return {
        "conv1": [t["conv1.weight"], t["conv1.bias"]],
        "bn1": [t["bn1.running_mean"] * BN_FACTOR, t["bn1.running_var"] * BN_FACTOR, np.array([BN_FACTOR])],
        "scale1": [t["scale1.weight"], t["scale1.bias"]],
        "conv2": [t["conv2.weight"], t["conv2.bias"]],
        "prelu2": [t["prelu2.weight"]],
        "fc3": [t["fc3.weight"], t["fc3.bias"]],
        "fc4": [t["fc4.weight"], t["fc4.bias"]],
    }


class Branches(nn.Module):
    """1x1 conv, Slice into three, Eltwise SUM (coefficients) / PROD / MAX, Concat, grouped Deconvolution,
    LRN within channels, floor-mode max pool + in-place TanH, Permute to NHWC, Reshape, InnerProduct over
    axis 2, Sigmoid; a second output from a global average pool and Flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(4, 6, 1)
        self.up = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, groups=2)
        self.ip = nn.Linear(4, 3)

    def forward(self, x):
        a, b, c = self.conv_a(x).split(2, dim=1)
        cat = torch.cat([0.5 * a - 1.5 * b + c, a * b, torch.maximum(b, c)], dim=1)
        up = self.up(cat)
        sq = nn.functional.avg_pool2d(up * up, 3, 1, padding=1, count_include_pad=True)
        lrn = up * (1 + 0.3 * sq) ** -0.75
        pooled = torch.tanh(nn.functional.max_pool2d(lrn, 3, 3))  # 20 -> 6 (round_mode FLOOR)
        seq = pooled.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4)
        return torch.sigmoid(self.ip(seq)), lrn.mean(dim=(2, 3))


BRANCHES_PROTOTXT = """
name: "Branches"
input: "data"
input_shape { dim: 2 dim: 4 dim: 10 dim: 10 }
layer { name: "conv_a" type: "Convolution" bottom: "data" top: "conv_a" convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "slice" type: "Slice" bottom: "conv_a" top: "a" top: "b" top: "c" slice_param { axis: 1 slice_point: 2 slice_point: 4 } }
layer { name: "esum" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "esum"
  eltwise_param { operation: SUM coeff: 0.5 coeff: -1.5 coeff: 1 } }
layer { name: "eprod" type: "Eltwise" bottom: "a" bottom: "b" top: "eprod" eltwise_param { operation: PROD } }
layer { name: "emax" type: "Eltwise" bottom: "b" bottom: "c" top: "emax" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "esum" bottom: "eprod" bottom: "emax" top: "cat" concat_param { axis: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "cat" top: "up"
  convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "lrnw" type: "LRN" bottom: "up" top: "lrnw"
  lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.3 beta: 0.75 } }
layer { name: "pf" type: "Pooling" bottom: "lrnw" top: "pf" pooling_param { pool: MAX kernel_size: 3 stride: 3 round_mode: FLOOR } }
layer { name: "tanh" type: "TanH" bottom: "pf" top: "pf" }
layer { name: "perm" type: "Permute" bottom: "pf" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "rs" type: "Reshape" bottom: "perm" top: "rs" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "rs" top: "ip" inner_product_param { num_output: 3 axis: 2 } }
layer { name: "sig" type: "Sigmoid" bottom: "ip" top: "sig" }
layer { name: "gp" type: "Pooling" bottom: "lrnw" top: "gp" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "gp" top: "flat" }
"""


def branches_blobs(m: Branches) -> dict[str, list[np.ndarray]]:
    t = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    return {"conv_a": [t["conv_a.weight"], t["conv_a.bias"]], "up": [t["up.weight"], t["up.bias"]],
            "ip": [t["ip.weight"], t["ip.bias"]]}


class LeNetV1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2, 2, ceil_mode=True)
        return torch.softmax(self.fc(x.flatten(1)), dim=1)


# The legacy format (`layers` with enum types, input_dim) of Caffe before 2015; the accuracy and
# loss layers are training-only and left out.
LENET_V1_PROTOTXT = """
name: "LeNetV1"
input: "data"
input_dim: 1 input_dim: 1 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
layers { name: "accuracy" type: ACCURACY bottom: "fc" bottom: "label" top: "accuracy" include { phase: TEST } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "label" top: "loss" include { phase: TRAIN } }
"""


def lenet_blobs(m: LeNetV1) -> dict[str, list[np.ndarray]]:
    t = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    # legacy 4-D blobs (num, channels, height, width), as old Caffe wrote them
    return {"conv1": [t["conv1.weight"], t["conv1.bias"].reshape(1, 1, 1, 4)],
            "fc": [t["fc.weight"].reshape(1, 1, 5, 36), t["fc.bias"].reshape(1, 1, 1, 5)]}


# --------------------------------------------------------------------------- writing Caffe files


def write_caffemodel(path: Path, blobs: dict[str, list[np.ndarray]], *, legacy: bool = False) -> Path:
    """A .caffemodel (binary NetParameter) holding each layer's blobs, as Caffe's `net.save` writes it."""
    msgs = caffe_format.messages()
    net = msgs["NetParameter"](name=path.stem)
    for name, arrays in blobs.items():
        layer = net.layers.add(name=name) if legacy else net.layer.add(name=name)
        for array in arrays:
            if legacy:
                blob = layer.blobs.add()
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
                blob.data.extend(np.asarray(array, np.float32).ravel().tolist())
            else:
                layer.blobs.append(caffe_format.array_blob(array))
    path.write_bytes(net.SerializeToString())
    return path


def write_caffe(folder: Path, name: str, prototxt: str, blobs, *, legacy: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    proto = folder / f"{name}.prototxt"
    proto.write_text(textwrap.dedent(prototxt))
    write_caffemodel(folder / f"{name}.caffemodel", blobs, legacy=legacy)
    return proto


NETS = {
    "alexlike": (AlexLike, ALEX_PROTOTXT, alex_blobs, (3, 23, 23), False),
    "branches": (Branches, BRANCHES_PROTOTXT, branches_blobs, (4, 10, 10), False),
    "lenet_v1": (LeNetV1, LENET_V1_PROTOTXT, lenet_blobs, (1, 8, 8), True),
}


@pytest.fixture(scope="module")
def caffe_nets(tmp_path_factory):
    """name -> (torch module in eval mode, prototxt path), written once per module."""
    root = tmp_path_factory.mktemp("caffe")
    out = {}
    for name, (cls, proto, blobs, _, legacy) in NETS.items():
        module = cls().eval()
        out[name] = (module, write_caffe(root / name, name, proto, blobs(module), legacy=legacy))
    return out


def _reference(module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        y = module(torch.from_numpy(x))
    return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


def _run(path: str, x: np.ndarray) -> list[np.ndarray]:
    with open_runner(path) as runner:
        outs = runner.run({runner.signature.inputs[0].name: x})
        return [outs[s.name] for s in runner.signature.outputs]


@pytest.fixture(scope="module")
def onnx_files(caffe_nets, tmp_path_factory):
    root = tmp_path_factory.mktemp("caffe_onnx")
    return {name: (proto, convert(proto, "onnx", root / f"{name}.onnx", verify=False))
            for name, (_, proto) in caffe_nets.items()}


@pytest.mark.parametrize("name", list(NETS))
def test_caffe_to_onnx_matches_the_torch_network(name, caffe_nets, onnx_files):
    module, _ = caffe_nets[name]
    _, report = onnx_files[name]
    assert report.route == ("modelport caffe lowering",) and report.src_format == "caffe"
    assert report.ok is None  # not verified: no Caffe runtime; checked against torch here
    rng = np.random.default_rng(1)
    for batch in (1, 3):  # the batch dim stayed dynamic
        x = rng.standard_normal((batch, *NETS[name][3])).astype(np.float32)
        ref, got = _reference(module, x), _run(report.artifact.path, x)
        assert len(ref) == len(got)
        for r, o in zip(ref, got):
            assert o.shape == r.shape
            np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-5)


def test_onnx_names_and_shapes_follow_the_prototxt(onnx_files):
    import onnx

    model = onnx.load(onnx_files["branches"][1].artifact.path)

    def io(values):
        return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    assert io(model.graph.input) == [("data", ["batch", 4, 10, 10])]
    assert io(model.graph.output) == [("sig", ["batch", 36, 3]), ("flat", ["batch", 4])]
    ops = {n.op_type for n in model.graph.node}
    assert {"ConvTranspose", "Split", "Sum", "Max", "Concat", "Transpose", "Reshape", "MatMul"} <= ops


def test_ceil_pooling_gives_caffes_sizes_not_onnx_floor_sizes(onnx_files):
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(onnx_files["alexlike"][1].artifact.path))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][1:] for v in model.graph.value_info}
    assert shapes["pool1"] == [8, 6, 6]  # ceil((12 - 3) / 2) + 1
    assert shapes["pool2"] == [8, 4, 4]  # ceil((6 + 2 - 3) / 2) + 1, the last window clipped


def test_legacy_v1_net_drops_training_layers(onnx_files):
    _, report = onnx_files["lenet_v1"]
    assert any("accuracy (Accuracy)" in w for w in report.warnings), report.warnings
    assert [s.name for s in report.artifact.signature.outputs] == ["prob"]


@pytest.mark.parametrize(("name", "to"), [("alexlike", "torch"), ("alexlike", "openvino"), ("branches", "torch")])
def test_onward_targets_verified_against_the_onnx_and_match_torch(name, to, caffe_nets, onnx_files, tmp_path):
    module, _ = caffe_nets[name]
    onnx_path = onnx_files[name][1].artifact.path
    report = convert(onnx_path, to, tmp_path / f"{name}_{to}")  # verified against onnxruntime
    assert report.ok, report.parity.summary()
    x = np.random.default_rng(2).standard_normal((2, *NETS[name][3])).astype(np.float32)
    for r, o in zip(_reference(module, x), _run(report.artifact.path, x)):
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-5)


def test_caffe_to_tflite_through_the_planner(caffe_nets, tmp_path):
    pytest.importorskip("onnx2tf")
    module, proto = caffe_nets["lenet_v1"]
    report = convert(proto, "tflite", tmp_path / "lenet.tflite", verify=False)
    assert report.route == ("modelport caffe lowering", "onnx2tf")
    x = np.random.default_rng(3).standard_normal((1, 1, 8, 8)).astype(np.float32)
    (ref,), (got,) = _reference(module, x), _run(report.artifact.path, x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_detect_inspect_and_signature(caffe_nets, cli):
    _, proto = caffe_nets["alexlike"]
    assert detect(proto) == "caffe"
    res = cli("inspect", proto, "--json")
    assert res.exit_code == 0, res.stderr
    sig = json.loads(res.stdout)["signature"]
    assert sig["inputs"] == [{"name": "data", "dtype": "float32", "shape": ["batch", 3, 23, 23]}]
    assert [o["name"] for o in sig["outputs"]] == ["prob"]


# --------------------------------------------------------------------------- bad input


def _one_line(res, code: int) -> str:
    line = res.stderr.strip()
    assert res.exit_code == code, res.stderr
    assert "\n" not in line and line.startswith("modelport: error: "), res.stderr
    return line


def test_convert_without_no_verify_says_caffe_cannot_run(caffe_nets, cli, tmp_path):
    _, proto = caffe_nets["lenet_v1"]
    out = tmp_path / "out"
    out.mkdir()
    line = _one_line(cli("convert", proto, "--to", "onnx", "-o", out / "m.onnx"), 3)
    assert "cannot run a Caffe model" in line and "--no-verify" in line
    assert list(out.iterdir()) == []
    res = cli("convert", proto, "--to", "onnx", "-o", out / "m.onnx", "--no-verify")
    assert res.exit_code == 0, res.stderr
    assert (out / "m.onnx").is_file()


def test_caffemodel_with_other_layer_names_is_exit_2_naming_them(cli, tmp_path):
    module = LeNetV1().eval()
    blobs = lenet_blobs(module)
    proto = write_caffe(tmp_path / "net", "lenet", LENET_V1_PROTOTXT, {"conv_1": blobs["conv1"], "ip": blobs["fc"]})
    line = _one_line(cli("convert", proto, "--to", "onnx", "--no-verify", "-o", tmp_path / "m.onnx"), 2)
    assert "has no weights for layer(s) conv1, fc of the .prototxt (its layers with weights: conv_1, ip)" in line
    assert not (tmp_path / "m.onnx").exists()


def test_layer_we_do_not_lower_is_exit_3_naming_it_and_its_type(cli, tmp_path):
    proto = textwrap.dedent("""
        input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
        layer { name: "crop" type: "Crop" bottom: "conv" bottom: "data" top: "crop" crop_param { axis: 2 offset: 1 } }
    """)
    (tmp_path / "fcn.prototxt").write_text(proto)
    w = np.zeros((2, 3, 3, 3), np.float32)
    write_caffemodel(tmp_path / "fcn.caffemodel", {"conv": [w, np.zeros(2, np.float32)]})
    line = _one_line(cli("convert", tmp_path / "fcn.prototxt", "--to", "onnx", "--no-verify"), 3)
    assert "Caffe layer 'crop' of type 'Crop' is not lowered to ONNX" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fcn.caffemodel", "fcn.prototxt"]


@pytest.mark.parametrize("content", [b"\xff\xfe garbage, not a protobuf \x00\x01" * 20, "onnx"])
def test_caffemodel_that_is_not_a_netparameter_is_exit_2(content, caffe_nets, onnx_files, cli, tmp_path):
    proto = tmp_path / "net.prototxt"
    proto.write_text(caffe_nets["lenet_v1"][1].read_text())
    data = Path(onnx_files["lenet_v1"][1].artifact.path).read_bytes() if content == "onnx" else content
    (tmp_path / "net.caffemodel").write_bytes(data)
    line = _one_line(cli("convert", proto, "--to", "onnx", "--no-verify", "-o", tmp_path / "m.onnx"), 2)
    assert f"{tmp_path / 'net.caffemodel'}: not a Caffe NetParameter" in line
    assert not (tmp_path / "m.onnx").exists()


def test_prototxt_without_weights_and_a_bad_field_are_exit_2(cli, tmp_path):
    proto = tmp_path / "lonely.prototxt"
    proto.write_text(LENET_V1_PROTOTXT)
    line = _one_line(cli("convert", proto, "--to", "onnx", "--no-verify"), 2)
    assert "without its weights (no .caffemodel beside it): give --weights" in line
    typo = tmp_path / "typo.prototxt"
    typo.write_text(LENET_V1_PROTOTXT.replace("kernel_size: 3", "kernal_size: 3"))
    write_caffemodel(tmp_path / "typo.caffemodel", lenet_blobs(LeNetV1()), legacy=True)
    line = _one_line(cli("convert", typo, "--to", "onnx", "--no-verify"), 2)
    assert "kernal_size" in line
