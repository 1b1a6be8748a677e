"""ONNX -> ONNX passes: quantization (int8 dynamic/static, int4), fp16, magnitude pruning,
structured pruning (through PyTorch), accuracy control, and the report of a compression run.

structured_prune imports torch lazily, inside its function: importing this package stays light."""

from __future__ import annotations

from modelport.passes import accuracy_control, compress_report, fp16, prune, quantize, structured_prune
from modelport.passes.accuracy_control import ControlResult, EvalData, LayerSensitivity
from modelport.passes.compress_report import CompressReport, ModelStats
from modelport.passes.prune import LayerSparsity
from modelport.passes.structured_prune import StructuredLayer

__all__ = [
    "accuracy_control",
    "compress_report",
    "fp16",
    "prune",
    "quantize",
    "structured_prune",
    "CompressReport",
    "ControlResult",
    "EvalData",
    "LayerSensitivity",
    "LayerSparsity",
    "ModelStats",
    "StructuredLayer",
]
