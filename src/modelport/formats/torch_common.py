"""Shared by the PyTorch formats: running an nn.Module on dicts of numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import BaseRunner, require


def torch_module():
    return require("torch", "torch", "PyTorch models")


def np_dtype_of(torch_dtype: Any) -> str:
    torch = torch_module()
    return str(torch.empty((), dtype=torch_dtype).numpy().dtype) if torch_dtype != torch.bfloat16 else "bfloat16"


def flatten_outputs(out: Any) -> list[tuple[str | None, Any]]:
    """Tensors of a forward's result in order; dict keys (HF ModelOutput too) become names."""
    torch = torch_module()
    if isinstance(out, torch.Tensor):
        return [(None, out)]
    if isinstance(out, dict) or hasattr(out, "to_tuple") and hasattr(out, "keys"):
        items: list[tuple[str | None, Any]] = []
        for key in out.keys():
            for sub_name, t in flatten_outputs(out[key]):
                items.append((key if sub_name is None else f"{key}.{sub_name}", t))
        return items
    if isinstance(out, (list, tuple)):
        items = []
        for i, v in enumerate(out):
            items.extend(flatten_outputs(v))
        return items
    if out is None:
        return []
    raise BadInputError(f"model output of type {type(out).__name__} is not a tensor, tuple or dict")


class TorchCallableRunner(BaseRunner):
    """Calls a torch callable with inputs in signature order; outputs flattened to arrays."""

    def __init__(self, path: str, fn: Any, inputs: tuple[TensorSpec, ...], *, device: str = "cpu") -> None:
        super().__init__(path)
        self.fn = fn
        self.device = device
        self._inputs = inputs
        self._outputs: tuple[TensorSpec, ...] | None = None
        self._last_batch: int | None = None

    def _set_outputs(self, outs: list[tuple[str | None, Any]]) -> None:
        specs = []
        batch = self._batch_dim()
        for i, (name, t) in enumerate(outs):
            shape: tuple[int | str, ...] = tuple(int(d) for d in t.shape)
            if batch and shape and shape[0] == batch[1]:  # follows the inputs' symbolic batch (one run's guess)
                shape = (batch[0], *shape[1:])
            specs.append(TensorSpec(name or f"output_{i}", np_dtype_of(t.dtype), shape))
        self._outputs = tuple(specs)

    def _batch_dim(self) -> tuple[str, int] | None:
        """(name, size in the last run) of a symbolic dim 0 that every input shares, else None."""
        first = {s.shape[0] if s.shape else None for s in self._inputs}
        if len(first) != 1 or not isinstance(next(iter(first)), str) or self._last_batch is None:
            return None
        return next(iter(first)), self._last_batch

    @property
    def signature(self) -> Signature:
        if self._outputs is None:
            from modelport.inputs import make_inputs

            self.run(make_inputs(self._inputs, seed=0)[0])
        return Signature(self._inputs, self._outputs or ())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = torch_module()
        args = []
        for spec in self._inputs:
            if spec.name not in feeds:
                raise BadInputError(f"missing input {spec.name!r}", path=self.path)
            args.append(torch.from_numpy(np.require(feeds[spec.name], requirements="C")).to(self.device))  # 0-d stays 0-d
        try:
            with torch.inference_mode():
                out = self.fn(*args)
        except Exception as exc:
            shapes = ", ".join(f"{s.name}:{'x'.join(map(str, a.shape))}:{str(a.dtype).removeprefix('torch.')}" for s, a in zip(self._inputs, args))
            first = " ".join(str(exc).strip().split("\n")[0].split())[:300]
            raise BadInputError(f"the model fails on inputs {shapes}: {type(exc).__name__}: {first}", path=self.path) from None
        flat = flatten_outputs(out)
        self._last_batch = int(args[0].shape[0]) if args and args[0].dim() else None
        if self._outputs is None or len(self._outputs) != len(flat):
            self._set_outputs(flat)
        assert self._outputs is not None
        return {spec.name: t.detach().cpu().numpy() for spec, (_, t) in zip(self._outputs, flat)}
