"""Target profiles: what a platform runs (ops per opset, dtypes, layout, dynamic dims), as data files.

The compatibility check against a profile is modelport.adapt.check (adapt applies its fixes).

    >>> from modelport.targets import known_targets, load_profile
    >>> from modelport.adapt.check import check
    >>> report = check("model.onnx", "onnxruntime-opset13")
"""

from __future__ import annotations

from modelport.targets.profile import OpVersion, Profile, known_targets, load_profile

__all__ = ["OpVersion", "Profile", "known_targets", "load_profile"]
