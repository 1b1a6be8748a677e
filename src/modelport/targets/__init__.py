"""Target profiles (data files) and the compatibility check of an ONNX model against them.

    >>> from modelport.targets import known_targets, load_profile
    >>> from modelport.targets.check import check      # or modelport.adapt.check
    >>> report = check("model.onnx", "onnxruntime-opset13")
"""

from __future__ import annotations

from modelport.targets.profile import OpVersion, Profile, known_targets, load_profile

__all__ = ["OpVersion", "Profile", "known_targets", "load_profile"]
