"""A directory written by `modelport convert --to torch`: model.py + weights.safetensors + modelport_torch.json."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import uuid
from pathlib import Path

from modelport.artifact import TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import LoadOptions, fill_signature
from modelport.formats.torch_common import TorchCallableRunner, torch_module

NAME = "torch"
# The directory's files, as modelport's ONNX -> PyTorch compiler (modelport.to_torch) writes them.
MODEL_FILE = "model.py"
WEIGHTS_FILE = "weights.safetensors"
META = "modelport_torch.json"
CLASS_NAME = "Model"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / MODEL_FILE).is_file() and (path / META).is_file()


def load_module(out_dir: str | os.PathLike):
    """Imports model.py from ``out_dir``, loads weights.safetensors (strict) and returns it in eval mode."""
    import safetensors.torch
    import torch

    out = Path(out_dir)
    spec = importlib.util.spec_from_file_location(f"modelport_generated_{uuid.uuid4().hex}", out / MODEL_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with torch.device("meta"):
        net = getattr(module, CLASS_NAME)()
    from modelport.formats import onnx_data, safetensors_io

    weights = out / WEIGHTS_FILE
    if safetensors_io.is_sharded(weights) or (weights.is_file() and weights.stat().st_size > onnx_data.threshold()):
        state = safetensors_io.load(weights)  # memory-mapped: no copy of the weights
    else:
        state = safetensors.torch.load_file(str(weights))
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


def read_meta(path: Path) -> dict:
    try:
        return json.loads((path / META).read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"unreadable {META} ({exc})", path=path) from None


def _spec(entry: dict) -> TensorSpec:
    shape = entry.get("shape")
    return TensorSpec(entry["name"], entry.get("dtype", "float32"), None if shape is None else tuple(shape))


def meta_inputs(meta: dict) -> tuple[TensorSpec, ...]:
    return tuple(_spec(e) if isinstance(e, dict) else TensorSpec(e, "float32", None) for e in meta.get("inputs", []))


class TorchDirRunner(TorchCallableRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        torch_module()
        meta = read_meta(Path(path))
        module = load_module(path).to(options.device)
        inputs = fill_signature(meta_inputs(meta), options.inputs, path)
        super().__init__(path, module, inputs, device=options.device)
        outputs = meta.get("outputs", [])
        self._output_names = [e["name"] if isinstance(e, dict) else e for e in outputs]
        self._output_shapes = [_spec(e).shape if isinstance(e, dict) else None for e in outputs]
        self.module = module
        if outputs and all(isinstance(e, dict) and e.get("dtype") for e in outputs):
            # The recorded signature is complete: no probe run on made-up inputs (a recognizer that
            # needs height 48 fails on them), the first real run only checks it.
            self._outputs = tuple(_spec(e) for e in outputs)

    def _set_outputs(self, outs):
        names = self._output_names
        if len(names) == len(outs):
            outs = [(n, t) for n, (_, t) in zip(names, outs)]
        super()._set_outputs(outs)
        if self._outputs is not None and len(self._output_shapes) == len(self._outputs):
            # Symbolic dims ("batch") come from the recorded signature, not from one run's sizes.
            self._outputs = tuple(
                dataclasses.replace(spec, shape=shape) if shape is not None and len(shape) == len(spec.shape or ()) else spec
                for spec, shape in zip(self._outputs, self._output_shapes)
            )


def open(path: str, options: LoadOptions) -> TorchDirRunner:  # noqa: A001
    return TorchDirRunner(path, options)
