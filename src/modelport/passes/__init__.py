"""ONNX -> ONNX passes: quantization (int8 dynamic/static, int4), fp16, magnitude pruning,
accuracy control, and the report of a compression run."""

from __future__ import annotations

from modelport.passes import accuracy_control, compress_report, fp16, prune, quantize
from modelport.passes.accuracy_control import ControlResult, EvalData, LayerSensitivity
from modelport.passes.compress_report import CompressReport, ModelStats
from modelport.passes.prune import LayerSparsity

__all__ = [
    "accuracy_control",
    "compress_report",
    "fp16",
    "prune",
    "quantize",
    "CompressReport",
    "ControlResult",
    "EvalData",
    "LayerSensitivity",
    "LayerSparsity",
    "ModelStats",
]
