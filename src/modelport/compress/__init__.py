"""Compression, always measured: quantization (int8 dynamic/static, int4), fp16, magnitude and
structured pruning (through PyTorch), accuracy control under a budget, and distillation.

``run.compress`` and ``distill.distill`` are the commands; the other modules are their steps.
structured and distill import torch lazily, inside their functions: importing this package stays light."""

from __future__ import annotations

from modelport.compress.accuracy import ControlResult, EvalData, LayerSensitivity
from modelport.compress.prune import LayerSparsity
from modelport.compress.report import CompressReport, ModelStats
from modelport.compress.structured import StructuredLayer

__all__ = [
    "CompressReport",
    "ControlResult",
    "EvalData",
    "LayerSensitivity",
    "LayerSparsity",
    "ModelStats",
    "StructuredLayer",
]
