"""Real, small test models built on the fly and cached per session.

Each ``write_*`` builder writes a model into a directory and returns what a caller needs
to convert it (a module spec, weights, input specs). ``cached(name, builder)`` builds it
once per process under a per-session cache dir in the system temp dir, so tests, the
benchmark script and other engineers' tests can share them cheaply.

Only PyTorch builders live here; Keras builders live in tests/zoo_tf.py.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__all__ = [
    "TorchModel",
    "input_specs",
    "load_module",
    "cnn_eval",
    "cache_dir",
    "cached",
    "write_cnn",
    "write_cnn_pt2",
    "write_cnn_torchscript",
    "write_bert",
    "write_gpt2",
    "write_fallback_model",
    "write_fixed_batch_model",
    "write_unexportable_model",
    "CNN_INPUT",
    "TEXT_INPUTS",
]

# CLI-style input specs, as `--input` takes them.
CNN_INPUT = "x:1x3x32x32:float32"
TEXT_INPUTS = ("input_ids:batchxsequence:int64", "attention_mask:batchxsequence:int64")


@dataclasses.dataclass(frozen=True)
class TorchModel:
    """A PyTorch model on disk: `spec` is what `modelport convert` takes as SRC."""

    spec: str
    weights: dict[str, str]  # kind ("safetensors", "pt") -> path
    inputs: tuple[str, ...]  # `--input` strings
    directory: str

    @property
    def safetensors(self) -> str:
        return self.weights["safetensors"]

    @property
    def pt(self) -> str:
        return self.weights["pt"]


_SESSION_DIR: Path | None = None
_CACHE: dict[str, Any] = {}


def cache_dir() -> Path:
    """A per-process cache dir under the system temp dir (removed by the OS, not by us)."""
    global _SESSION_DIR
    if _SESSION_DIR is None:
        _SESSION_DIR = Path(tempfile.mkdtemp(prefix=f"modelport-zoo-{os.getpid()}-"))
    return _SESSION_DIR


def cached(name: str, builder: Callable[[Path], Any]) -> Any:
    """``builder(dir)`` run once per process into ``cache_dir()/name``; later calls reuse its result."""
    if name not in _CACHE:
        d = cache_dir() / name
        d.mkdir(parents=True, exist_ok=True)
        _CACHE[name] = builder(d)
    return _CACHE[name]


def input_specs(model: TorchModel):
    """The model's `--input` strings as TensorSpecs, parsed the way the CLI parses them."""
    from modelport.inputs import parse_input_spec

    return tuple(parse_input_spec(text) for text in model.inputs)


# --------------------------------------------------------------------------- CNN

CNN_SOURCE = '''
import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv-bn-relu x2, pooling, linear: 3x32x32 images -> 10 class scores."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))
'''


def _randomize_batchnorm(module) -> None:
    """Non-trivial BN statistics, so a converter that drops or folds BN wrongly is caught."""
    import torch

    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def load_module(spec: str):
    """Import the class of a `file.py:Name` spec and construct it (as modelport does)."""
    from modelport.formats.torch_module import import_object

    return import_object(spec)()


def write_cnn(directory: str | Path) -> TorchModel:
    """`cnn.py:SmallCNN` with random weights (non-trivial BatchNorm stats) as .safetensors and .pt."""
    import torch
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "cnn.py").write_text(CNN_SOURCE)
    spec = f"{d / 'cnn.py'}:SmallCNN"
    torch.manual_seed(0)
    model = load_module(spec)
    _randomize_batchnorm(model)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "cnn.safetensors"))
    torch.save(state, str(d / "cnn.pt"))
    return TorchModel(spec, {"safetensors": str(d / "cnn.safetensors"), "pt": str(d / "cnn.pt")}, (CNN_INPUT,), str(d))


def cnn_eval(cnn: TorchModel):
    """The CNN as an eager nn.Module in eval mode, with its saved weights."""
    from safetensors.torch import load_file

    model = load_module(cnn.spec)
    model.load_state_dict(load_file(cnn.safetensors))
    return model.eval()


_cnn_eval = cnn_eval  # the old name, kept for callers that use it


def write_cnn_pt2(directory: str | Path, cnn: TorchModel | None = None) -> str:
    """The CNN as a torch.export archive (.pt2) with a dynamic batch Dim."""
    import torch

    d = Path(directory)
    cnn = cnn or write_cnn(d / "cnn_src")
    model = cnn_eval(cnn)
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.randn(2, 3, 32, 32),)
    ep = torch.export.export(model, example, dynamic_shapes={"x": {0: batch}})
    path = d / "cnn.pt2"
    torch.export.save(ep, str(path))
    return str(path)


def write_cnn_torchscript(directory: str | Path, cnn: TorchModel | None = None, *, script: bool = False) -> str:
    """The CNN as a TorchScript archive (torch.jit.trace, or torch.jit.script)."""
    import torch

    d = Path(directory)
    cnn = cnn or write_cnn(d / "cnn_src")
    model = cnn_eval(cnn)
    ts = torch.jit.script(model) if script else torch.jit.trace(model, (torch.randn(2, 3, 32, 32),))
    path = d / ("cnn_scripted.pt" if script else "cnn_traced.pt")
    torch.jit.save(ts, str(path))
    return str(path)


# --------------------------------------------------------------------------- transformers

BERT_SOURCE = '''
import torch
from torch import nn
from transformers import BertConfig, BertModel


class TinyBert(nn.Module):
    """A 2-layer BERT with 64-wide hidden states; forward returns the last hidden state."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        config = BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            vocab_size=1000, max_position_embeddings=64,
        )
        self.bert = BertModel(config).eval()

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
'''

GPT2_SOURCE = '''
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel


class TinyGPT2(nn.Module):
    """A 2-layer GPT-2 LM head with 64-wide embeddings; forward returns the logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        config = GPT2Config(
            n_embd=64, n_layer=2, n_head=2, vocab_size=1000, n_positions=64, use_cache=False,
            bos_token_id=0, eos_token_id=0,
        )
        self.gpt2 = GPT2LMHeadModel(config).eval()

    def forward(self, input_ids, attention_mask):
        return self.gpt2(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=False)[0]
'''


def _write_source(directory: str | Path, filename: str, source: str, name: str, inputs: tuple[str, ...]) -> TorchModel:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / filename).write_text(source)
    return TorchModel(f"{d / filename}:{name}", {}, inputs, str(d))


def write_bert(directory: str | Path) -> TorchModel:
    """`bert.py:TinyBert`: forward(input_ids, attention_mask) -> last hidden state; seeded in its constructor."""
    return _write_source(directory, "bert.py", BERT_SOURCE, "TinyBert", TEXT_INPUTS)


def write_gpt2(directory: str | Path) -> TorchModel:
    """`gpt2.py:TinyGPT2`: forward(input_ids, attention_mask) -> logits; seeded in its constructor."""
    return _write_source(directory, "gpt2.py", GPT2_SOURCE, "TinyGPT2", TEXT_INPUTS)


# --------------------------------------------------------------------------- export failures

FALLBACK_SOURCE = '''
import torch
from torch import nn


class PythonSideEffect(nn.Module):
    """Dynamo cannot export this (it reads a tensor value into Python and branches on it
    with data-dependent control flow torch.export refuses), but TorchScript tracing can:
    tracing records the branch taken for the example input.
    """

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        y = self.linear(x)
        if float(y.abs().sum()) > -1.0:  # data-dependent Python branch: always true
            y = torch.relu(y)
        return y
'''

UNEXPORTABLE_SOURCE = '''
import numpy as np
import torch
from torch import nn


class NumpyRoundTrip(nn.Module):
    """Leaves torch for numpy mid-forward: neither dynamo nor the TorchScript exporter can follow."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        y = self.linear(x).detach().numpy()
        return torch.from_numpy(np.sort(y, axis=-1).copy())
'''


FIXED_BATCH_SOURCE = '''
import torch
from torch import nn


class FixedBatch(nn.Module):
    """Adds a (2, 3) buffer: only batch 2 (or 1) broadcasts, so the batch dim cannot be dynamic."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 3)
        self.register_buffer("offset", torch.arange(6.0).reshape(2, 3))

    def forward(self, x):
        return self.linear(x) + self.offset
'''


def write_fixed_batch_model(directory: str | Path) -> TorchModel:
    """A module that only works at batch 2: a dynamic batch must be refused, --static-batch must work."""
    return _write_source(directory, "fixed_batch.py", FIXED_BATCH_SOURCE, "FixedBatch", ("x:2x8:float32",))


def write_fallback_model(directory: str | Path) -> TorchModel:
    """A module whose dynamo export fails but whose TorchScript export works."""
    return _write_source(directory, "fallback.py", FALLBACK_SOURCE, "PythonSideEffect", ("x:1x4:float32",))


def write_unexportable_model(directory: str | Path) -> TorchModel:
    """A module that both the dynamo and the TorchScript exporters fail on."""
    return _write_source(directory, "unexportable.py", UNEXPORTABLE_SOURCE, "NumpyRoundTrip", ("x:1x4:float32",))



def tiny_resnet(seed: int = 0):
    """A small ResNet-style CNN with seeded random weights, in eval mode: residual adds, a strided
    block with a 1x1 downsample, a grouped (4 groups) and a depthwise 3x3 conv, global pooling."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, groups: int = 1) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, groups=groups, bias=False), nn.BatchNorm2d(cout)
            self.down = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class TinyResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.layer1, self.layer2, self.layer3 = Block(16, 16, 1), Block(16, 32, 2, groups=4), Block(32, 32, 1, groups=32)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.layer3(self.layer2(self.layer1(self.stem(x)))).mean((2, 3)))

    torch.manual_seed(seed)
    return TinyResNet().eval()


def write_bert_encoder_onnx(path: str | Path) -> str:
    """BERT (hidden 256, 4 layers, 4 heads, intermediate 512, vocab 1000) -> last hidden state, as ONNX
    through torch.onnx's dynamo exporter with dynamic batch and sequence (<= 128)."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                        vocab_size=1000, max_position_embeddings=128)
    torch.manual_seed(0)
    bert = BertModel(config).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(0, 1000, (2, 16))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=128)
    program = onnx_export(Encoder().eval(), (ids, torch.ones_like(ids)), dynamo=True,
                                input_names=["input_ids", "attention_mask"],
                                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                                verbose=False)
    program.save(str(path))
    return str(path)


def onnx_export(*args, **kwargs):
    """torch.onnx.export with its progress prints and log records kept off the test's output,
    as modelport keeps them off the user's."""
    import torch

    from modelport.quiet import quiet

    with quiet():
        return torch.onnx.export(*args, **kwargs)


def add_offset_model(path, offset) -> str:
    """An ONNX model y = x + offset (a constant of 4 values), x: [batch, 4] float32, checked and saved."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["y"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.asarray(offset, dtype=np.float32), "offset")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)
