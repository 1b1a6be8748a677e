"""The toolchain cache the test session shares, and the installed `paddle` toolchain.

Installs are slow, so every test worker and every run on this machine share one cache:
``$MODELPORT_TEST_TOOLCHAINS``, else ``<system temp>/modelport-test-toolchains`` (outside ~ and
outside the clone, so a fresh CI clone reuses it). uv's own download cache lives there too.
Parallel workers build a toolchain once: the install holds a lock file while it builds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

__all__ = ["shared_cache", "use_shared_cache", "paddle_toolchain", "mindspore_toolchain", "mxnet_toolchain", "NETWORK_HINTS"]

# What uv/pip say when the registry cannot be reached: only then is a toolchain test skipped.
NETWORK_HINTS = ("failed to fetch", "network", "dns", "connection", "could not connect", "timed out",
                 "temporary failure in name resolution", "no route to host", "offline")

_INSTALLED: dict[str, object] = {}


def shared_cache() -> Path:
    """The directory MODELPORT_CACHE points at for tests that use installed toolchains."""
    path = Path(os.environ.get("MODELPORT_TEST_TOOLCHAINS") or Path(tempfile.gettempdir()) / "modelport-test-toolchains")
    path.mkdir(parents=True, exist_ok=True)
    return path


def use_shared_cache(monkeypatch) -> Path:
    """Point modelport (and uv's download cache) at the shared test cache for this test."""
    root = shared_cache()
    monkeypatch.setenv("MODELPORT_CACHE", str(root))
    monkeypatch.setenv("UV_CACHE_DIR", str(root / "uv"))
    monkeypatch.delenv("MODELPORT_TOOLCHAIN_LOCKS", raising=False)
    return root


def paddle_toolchain(monkeypatch):
    """The `paddle` toolchain installed in the shared cache (built on first use); skips only when offline."""
    from modelport import toolchains
    from modelport.toolchains import ToolchainInstallError

    use_shared_cache(monkeypatch)
    if "paddle" not in _INSTALLED:
        try:
            _INSTALLED["paddle"] = toolchains.install("paddle")
        except ToolchainInstallError as exc:
            if any(h in str(exc).lower() for h in NETWORK_HINTS):
                _INSTALLED["paddle"] = exc
            else:
                raise
    result = _INSTALLED["paddle"]
    if isinstance(result, Exception):
        pytest.skip(f"the paddle toolchain cannot be installed without network here: {result}")
    return toolchains.require("paddle")


def mindspore_toolchain(monkeypatch):
    """The `mindspore` toolchain installed in the shared cache (a 2.8 GB wheel: built on first use,
    then reused); skips only when offline."""
    from modelport import toolchains
    from modelport.toolchains import ToolchainInstallError

    use_shared_cache(monkeypatch)
    if "mindspore" not in _INSTALLED:
        try:
            _INSTALLED["mindspore"] = toolchains.install("mindspore")
        except ToolchainInstallError as exc:
            if any(h in str(exc).lower() for h in NETWORK_HINTS):
                _INSTALLED["mindspore"] = exc
            else:
                raise
    result = _INSTALLED["mindspore"]
    if isinstance(result, Exception):
        pytest.skip(f"the mindspore toolchain cannot be installed without network here: {result}")
    return toolchains.require("mindspore")


def mxnet_toolchain(monkeypatch):
    """The `mxnet` toolchain (MXNet 1.9.1, numpy 1.23, onnx 1.14) installed in the shared cache
    (built on first use, then reused); skips only when offline."""
    from modelport import toolchains
    from modelport.toolchains import ToolchainInstallError

    use_shared_cache(monkeypatch)
    if "mxnet" not in _INSTALLED:
        try:
            _INSTALLED["mxnet"] = toolchains.install("mxnet")
        except ToolchainInstallError as exc:
            if any(h in str(exc).lower() for h in NETWORK_HINTS):
                _INSTALLED["mxnet"] = exc
            else:
                raise
    result = _INSTALLED["mxnet"]
    if isinstance(result, Exception):
        pytest.skip(f"the mxnet toolchain cannot be installed without network here: {result}")
    return toolchains.require("mxnet")
