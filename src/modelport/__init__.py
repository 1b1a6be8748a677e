"""modelport: move trained models between frameworks and platforms, and prove they still do the same thing.

    >>> import modelport
    >>> report = modelport.convert("model.keras", "onnx")      # verified by default
    >>> modelport.verify("model.keras", report.artifact.path)  # any two formats
"""

from __future__ import annotations

# The packages modelport.convert and modelport.verify are loaded before the functions of the
# same names are bound here, so that a later import of a submodule cannot rebind the name.
import modelport.convert as _convert_package  # noqa: F401
import modelport.verify as _verify_package  # noqa: F401
from modelport.adapt import adapt, check
from modelport.api import bench, convert, inspect, load, verify
from modelport.compress import compress
from modelport.distill import distill
from modelport.artifact import Artifact, Signature, StepRecord, TensorSpec
from modelport.errors import (
    BadInputError,
    CheckFailedError,
    ExportError,
    MissingExtraError,
    ModelportError,
    UnsafeError,
    UnsupportedError,
)

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "BadInputError",
    "CheckFailedError",
    "ExportError",
    "MissingExtraError",
    "ModelportError",
    "Signature",
    "StepRecord",
    "TensorSpec",
    "UnsafeError",
    "UnsupportedError",
    "adapt",
    "bench",
    "check",
    "compress",
    "convert",
    "distill",
    "inspect",
    "load",
    "verify",
]
