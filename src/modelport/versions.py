"""Versions of modelport and of every framework it can use, read from installed metadata.

Nothing here imports a framework: ``modelport --version`` and every ``--json`` report stay fast.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import platform

__version__ = "0.1.0"

# (name shown, distributions that provide it, first found wins)
_TOOLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("numpy", ("numpy",)),
    ("onnx", ("onnx",)),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    ("onnx-ir", ("onnx-ir",)),
    ("onnxscript", ("onnxscript",)),
    ("onnxconverter-common", ("onnxconverter-common",)),
    ("torch", ("torch",)),
    ("torch-pruning", ("torch-pruning",)),
    ("safetensors", ("safetensors",)),
    ("tensorflow", ("tensorflow-cpu", "tensorflow")),
    ("keras", ("keras",)),
    ("tf2onnx", ("tf2onnx",)),
    ("ai-edge-litert", ("ai-edge-litert",)),
    ("onnx2tf", ("onnx2tf",)),
    ("openvino", ("openvino",)),
    ("scikit-learn", ("scikit-learn",)),
    ("matplotlib", ("matplotlib",)),
)


def _installed(dists: tuple[str, ...]) -> str | None:
    for d in dists:
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            continue
    return None


@functools.cache
def tool_versions() -> dict[str, str]:
    """{"modelport": ..., "python": ..., framework: version} for every framework installed."""
    found = {"modelport": __version__, "python": platform.python_version()}
    for name, dists in _TOOLS:
        v = _installed(dists)
        if v is not None:
            found[name] = v
    return found
