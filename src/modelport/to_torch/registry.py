"""Op converter registry keyed by ``(domain, op_type, since_version)``.

Each converter is a function named after the op and the opset version it implements
(``softmax_13``). :func:`dispatch` picks the newest implementation whose version is
<= the model's opset for that domain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Converter = Callable[[Any], None]

_REGISTRY: dict[tuple[str, str], dict[int, Converter]] = {}

#: ONNX domains we convert; "" and "ai.onnx" are the default domain.
DEFAULT_DOMAINS = ("", "ai.onnx")


def _norm_domain(domain: str) -> str:
    return "" if domain in DEFAULT_DOMAINS else domain


def register(op_type: str, since: int, domain: str = "") -> Callable[[Converter], Converter]:
    """Registers ``fn`` as the converter for ``op_type`` from opset ``since`` on."""

    def deco(fn: Converter) -> Converter:
        _REGISTRY.setdefault((_norm_domain(domain), op_type), {})[since] = fn
        return fn

    return deco


def dispatch(domain: str, op_type: str, opset: int | None) -> tuple[Converter | None, str]:
    """Returns ``(converter, "")`` or ``(None, reason)`` for an op at a given opset."""
    versions = _REGISTRY.get((_norm_domain(domain), op_type))
    if not versions:
        return None, f"no converter for {domain or 'ai.onnx'}::{op_type}"
    if opset is None:
        return None, f"model imports no opset for domain {domain or 'ai.onnx'!r}"
    usable = [v for v in versions if v <= opset]
    if not usable:
        return None, f"{op_type} converters start at opset {min(versions)}, model has {opset}"
    return versions[max(usable)], ""


def supported_ops() -> set[tuple[str, str, int]]:
    """All registered ``(domain, op_type, since_version)`` triples."""
    _load_ops()
    return {(d, op, v) for (d, op), vs in _REGISTRY.items() for v in vs}


def _load_ops() -> None:
    from modelport.to_torch import ops  # noqa: F401  (registers converters on import)
