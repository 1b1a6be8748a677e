"""Parsing user-written specs: `--input name:1x3x224x224:float32` and `--dim name=value`."""

from __future__ import annotations

import re

import numpy as np

from modelport.artifact import TensorSpec
from modelport.errors import BadInputError

__all__ = ["parse_input_spec", "parse_input_specs", "parse_dims", "parse_int_list"]


def parse_input_spec(text: str) -> TensorSpec:
    """`name:1x3x224x224:float32` (dims by `x` or `,`; a word is a symbolic dim, `?` unknown)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise BadInputError(f"bad --input {text!r}: expected name:1x3x224x224[:float32]")
    name, dims_text = parts[0], parts[1]
    dtype = parts[2] if len(parts) == 3 and parts[2] else "float32"
    try:
        dtype = np.dtype(dtype).name
    except TypeError:
        raise BadInputError(f"bad --input {text!r}: unknown dtype {dtype!r}") from None
    dims: list[int | str | None] = []
    if dims_text not in ("", "scalar"):
        sep = "," if "," in dims_text else "x"
        for d in dims_text.split(sep):
            d = d.strip()
            if d.isdigit():
                dims.append(int(d))
            elif d == "?":
                dims.append(None)
            elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", d):
                dims.append(d)
            else:
                raise BadInputError(f"bad --input {text!r}: dim {d!r} is neither a size nor a name")
    return TensorSpec(name, dtype, tuple(dims))


def parse_input_specs(texts: list[str] | tuple[str, ...] | None) -> tuple[TensorSpec, ...]:
    specs = tuple(parse_input_spec(t) for t in texts or ())
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise BadInputError(f"--input names repeat: {names}")
    return specs


def parse_dims(texts: list[str] | tuple[str, ...] | None) -> dict[str, int]:
    out = {}
    for t in texts or ():
        name, sep, value = t.partition("=")
        if not sep or not name or not value.isdigit() or int(value) < 1:
            raise BadInputError(f"bad --dim {t!r}: expected name=positive_int")
        out[name] = int(value)
    return out


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BadInputError(f"bad {what} {text!r}: expected comma-separated integers like 1,8") from None
    if not values or any(v < 1 for v in values):
        raise BadInputError(f"bad {what} {text!r}: expected positive integers")
    return values
