"""ONNX -> PyTorch: compiles an ONNX model into a readable, trainable ``nn.Module``.

``convert`` writes model.py (one ``Model`` class), weights.safetensors and
modelport_torch.json; ``load`` brings the module back; ``check`` lists what cannot be
converted.
"""

from __future__ import annotations

from modelport.to_torch.converter import (
    ConversionResult,
    Unsupported,
    UnsupportedOpsError,
    check,
    convert,
    load,
)
from modelport.to_torch.registry import dispatch, register, supported_ops

__all__ = [
    "SUPPORTED",
    "ConversionResult",
    "Unsupported",
    "UnsupportedOpsError",
    "check",
    "convert",
    "dispatch",
    "load",
    "register",
    "supported_ops",
]


def __getattr__(name: str):
    if name == "SUPPORTED":
        return frozenset(supported_ops())
    raise AttributeError(name)
