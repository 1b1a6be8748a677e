"""Turns ONNX value and initializer names into short, readable Python identifiers."""

from __future__ import annotations

import keyword
import re

_RESERVED = {"self", "torch", "nn", "F", "math", "Model", "super", "range", "list", "len",
             "tuple", "int", "float", "bool", "min", "max", "sum", "abs", "type", "input",
             "print", "object", "slice", "map", "zip", "iter", "id", "all", "any", "round"}
_SUFFIXES = ("_output_0", ":0", "_output")


def identifier(raw: str, short: bool = True, fallback: str = "v") -> str:
    """A valid identifier from ``raw``; ``short`` keeps only the last path segments."""
    name = raw
    for suf in _SUFFIXES:
        if name.endswith(suf) and len(name) > len(suf):
            name = name[: -len(suf)]
    if short:
        parts = [p for p in re.split(r"[/:]", name) if p]
        name = "_".join(parts[-2:]) if len(parts) > 1 else (parts[0] if parts else "")
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", name).strip("_")
    name = re.sub(r"_+", "_", name)
    if short and len(name) > 32:
        name = name[-32:].lstrip("_")
    if not name:
        name = fallback
    if name[0].isdigit():
        name = f"{fallback}_{name}"
    if short:
        name = name.lower()
    if keyword.iskeyword(name) or name in _RESERVED:
        name = f"{name}_"
    return name


class Namer:
    """Hands out unique identifiers."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self.taken: set[str] = set(taken or ())

    def new(self, raw: str, short: bool = True, fallback: str = "v") -> str:
        base = identifier(raw, short, fallback)
        name, i = base, 1
        while name in self.taken:
            name = f"{base}_{i}"
            i += 1
        self.taken.add(name)
        return name
