"""The model registry: versions, aliases with history, lineage, tensor-level dedup.

``Registry.open(url)`` (or ``open_registry(url)``) opens one; see ``registry.store`` for the API,
``registry.refs`` for references and URLs, ``registry.blobs`` and ``registry.tensors`` for storage.
"""

from __future__ import annotations

from modelport.registry.store import (
    AliasEvent,
    FsckReport,
    GcReport,
    Registry,
    RegistryCorruptError,
    RegistryOpenError,
    UnknownRefError,
    Version,
    open_registry,
)

__all__ = [
    "Registry",
    "open_registry",
    "Version",
    "AliasEvent",
    "GcReport",
    "FsckReport",
    "UnknownRefError",
    "RegistryOpenError",
    "RegistryCorruptError",
]
