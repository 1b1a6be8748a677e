"""Adapt passes: ONNX -> ONNX changes that make a model fit a target.

``opset`` converts opsets (onnx's version converter plus our adapters), ``io`` changes the
model's boundary (layout, batch, names, dtypes, normalization), ``rules`` rewrites ops
into what a target has (exact decompositions, named approximations); ``passes`` wraps each as
an ``onnx_ir`` pass (``RewriteRulePass``, ``OpsetPass``, ``LayoutPass``, …) for ``ir.passes.Sequential``.
"""

from __future__ import annotations

__all__ = ["io", "opset", "passes", "rules"]
