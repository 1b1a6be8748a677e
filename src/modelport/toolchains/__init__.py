"""Toolchains: a framework whose requirements conflict with modelport's own runs in a virtual
environment of its own, built from a lock shipped here (``locks/NAME.txt``), and is driven in a
subprocess that exchanges files (ONNX, npz) with this one.

``environment`` installs, lists and removes them; ``process`` runs a toolchain's driver;
``driver.py`` and ``*_ops.py`` are the standalone files that run inside a toolchain; ``lock``
recompiles a lock from its ``NAME.in``.
"""

from __future__ import annotations

from modelport.toolchains.environment import (
    Installed,
    Toolchain,
    ToolchainInstallError,
    ToolchainMissingError,
    cache_root,
    install,
    installed,
    known,
    remove,
    require,
    status,
    toolchain,
)
from modelport.toolchains.process import DriverProcess, ToolchainError

__all__ = ["DriverProcess", "Installed", "Toolchain", "ToolchainError", "ToolchainInstallError",
           "ToolchainMissingError", "cache_root", "install", "installed", "known", "remove", "require", "status", "toolchain"]
