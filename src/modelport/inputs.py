"""A model's inputs, from the user or from its signature.

What the user writes: ``--input name:1x3x224x224:float32`` (or ``name=1x3x224x224:float32``),
``--input sr=16000`` (a Python constant for a forward parameter: a ``ConstantSpec``) and
``--dim name=value`` (``parse_input_spec``, ``parse_dims``), and ``.npz`` files checked against a signature
(``load_npz``, ``check_feeds``). What modelport draws when nothing is given: seeded random data
from a signature (``make_inputs``). Dynamic dims are filled twice with different sizes, because
a converter can silently freeze a shape. Dims at the same position share a size across inputs
(input_ids and attention_mask agree on batch and sequence) unless ``--dim name=value`` says
otherwise. Integer inputs that index a table stay below the table's size.

Used by formats (probing a module's outputs), verify, convert, compress and the CLI: it depends
only on modelport.artifact and modelport.errors.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from modelport.artifact import TensorSpec
from modelport.errors import BadInputError

__all__ = ["make_inputs", "load_npz", "check_feeds", "dim_sizes", "ConstantSpec", "split_constants",
           "parse_input_spec", "parse_input_specs", "parse_dims", "parse_int_list"]


def _default_size(pos: int, rank: int, round_: int) -> int:
    if pos == 0:
        return 2 + round_  # batch: 2, then 3
    if rank == 4 and pos >= 1:
        return 32 + 8 * round_  # spatial or channel dims of image-like inputs
    return 8 + 5 * round_  # sequence-like: 8, then 13


def dim_sizes(spec: TensorSpec, dims: dict[str, int], round_: int) -> tuple[int, ...]:
    if spec.shape is None:
        raise BadInputError(f"input {spec.name!r} has an unknown rank; give --input {spec.name}:1x3x224x224:{spec.dtype}")
    out = []
    for pos, d in enumerate(spec.shape):
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif isinstance(d, str) and d in dims:
            out.append(dims[d] + round_ * (1 if pos == 0 else 3))
        else:
            out.append(_default_size(pos, len(spec.shape), round_))
    return tuple(out)


def _random(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator, bound: int | None) -> np.ndarray:
    dtype = np.dtype(spec.dtype) if spec.dtype != "bfloat16" else np.dtype("float32")
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu" and "mask" in spec.name.lower() and len(shape) >= 2 and bound is None:
        return _padding_mask(shape, rng).astype(dtype)
    if dtype.kind in "iu":
        if bound is None:
            lowered = spec.name.lower()
            bound = 2 if ("mask" in lowered or "type" in lowered) else (256 if dtype == np.uint8 else 10)
        return rng.integers(0, max(1, bound), shape).astype(dtype)
    raise BadInputError(f"cannot generate random data for input {spec.name!r} of dtype {spec.dtype}")


def _padding_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """An attention mask as tokenizers write it: ones, then right padding; every row sees >= 1 token.

    Random 0/1 masks leave query rows with no visible key, where runtimes legitimately
    disagree (softmax over nothing), so they would fail parity for no fault of the converter.
    """
    length = shape[-1]
    rows = int(np.prod(shape[:-1]))
    keep = rng.integers(max(1, length // 2), length + 1, rows)
    mask = (np.arange(length)[None, :] < keep[:, None]).astype(np.int64)
    return mask.reshape(shape)


@dataclasses.dataclass(frozen=True)
class ConstantSpec(TensorSpec):
    """A Python constant for a forward parameter (``--input sr=16000``): baked into an export, not an input.

    It is a 0-d TensorSpec (dtype int64, float64 or bool) so that code that only knows tensors
    still sees a name, a dtype and a shape; random inputs drawn from it are its value.
    """

    value: bool | int | float = 0

    @property
    def text(self) -> str:
        """``sr=16000`` as the user wrote it (booleans as true/false)."""
        value = str(self.value).lower() if isinstance(self.value, bool) else repr(self.value)
        return f"{self.name}={value}"

    def __str__(self) -> str:
        return self.text


def constant_spec(name: str, value: bool | int | float) -> ConstantSpec:
    dtype = "bool" if isinstance(value, bool) else "int64" if isinstance(value, int) else "float64"
    return ConstantSpec(name, dtype, (), value)


def split_constants(specs: tuple[TensorSpec, ...]) -> tuple[tuple[TensorSpec, ...], dict[str, bool | int | float]]:
    """The tensor specs, and the constants by name (in the order given)."""
    tensors = tuple(s for s in specs if not isinstance(s, ConstantSpec))
    return tensors, {s.name: s.value for s in specs if isinstance(s, ConstantSpec)}


def make_inputs(
    specs: tuple[TensorSpec, ...],
    *,
    seed: int = 0,
    dims: dict[str, int] | None = None,
    bounds: dict[str, int] | None = None,
) -> list[dict[str, np.ndarray]]:
    """One feed dict, or two when any dim is dynamic (at two different sizes)."""
    dims = dims or {}
    bounds = bounds or {}
    dynamic = any(s.is_dynamic for s in specs)
    feeds = []
    for round_ in range(2 if dynamic else 1):
        rng = np.random.default_rng(seed + round_)
        feeds.append({s.name: np.asarray(s.value, dtype=s.dtype) if isinstance(s, ConstantSpec)
                      else _random(s, dim_sizes(s, dims, round_), rng, bounds.get(s.name)) for s in specs})
    return feeds


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a data file: an .npz, or a MindRecord file (``.mindrecord``: one array per field,
    the rows on axis 0, read in the `mindspore` toolchain by ``modelport.data.mindrecord``)."""
    if str(path).lower().endswith(".mindrecord"):
        from modelport.data.mindrecord import read_mindrecord

        return read_mindrecord(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise BadInputError("no such inputs file", path=path) from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            from modelport.errors import UnsafeError

            raise UnsafeError("refusing to load pickled arrays from an .npz", path=path) from None
        raise BadInputError(f"unreadable .npz ({exc})", path=path) from None
    except Exception as exc:
        raise BadInputError(f"unreadable .npz ({type(exc).__name__}: {exc})", path=path) from None


def check_feeds(feeds: dict[str, np.ndarray], specs: tuple[TensorSpec, ...], source: str, *, extra_ok: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Feeds for a model, checked against its inputs: names, dtypes and static dims."""
    want = {s.name for s in specs}
    missing = sorted(want - set(feeds))
    unknown = sorted(set(feeds) - want - set(extra_ok))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing inputs {missing}")
        if unknown:
            parts.append(f"unknown keys {unknown}")
        if str(source).lower().endswith(".mindrecord"):  # a MindRecord file's schema: name its fields
            raise BadInputError(f"the MindRecord schema's fields {sorted(feeds)} do not match the model's "
                                f"inputs {sorted(want)}: {'; '.join(parts)}", path=source)
        raise BadInputError(f"{'; '.join(parts)} (the model's inputs: {sorted(want)})", path=source)
    out = {}
    for spec in specs:
        arr = np.asarray(feeds[spec.name])
        want_dtype = np.dtype(spec.dtype) if spec.dtype != "bfloat16" else np.dtype("float32")
        if arr.dtype != want_dtype:
            if arr.dtype.kind == want_dtype.kind or (arr.dtype.kind in "iu" and want_dtype.kind in "iu"):
                arr = arr.astype(want_dtype)
            else:
                raise BadInputError(f"input {spec.name!r} has dtype {arr.dtype}, the model wants {want_dtype}", path=source)
        if spec.shape is not None:
            ok = arr.ndim == len(spec.shape) and all(
                not isinstance(d, int) or d < 0 or d == n for d, n in zip(spec.shape, arr.shape)
            )
            if not ok:
                raise BadInputError(
                    f"input {spec.name!r} has shape {'x'.join(map(str, arr.shape)) or 'scalar'}, "
                    f"the model wants {spec.shape_str()}",
                    path=source,
                )
        out[spec.name] = arr
    return out



_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _scalar(text: str) -> bool | int | float | None:
    """The Python constant a value like 16000, 0.5, 1e-3 or true spells, else None."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(lowered):
        return int(lowered)
    if _FLOAT.fullmatch(lowered):
        return float(lowered)
    return None


def parse_input_spec(text: str) -> TensorSpec:
    """`name:1x3x224x224:float32` (dims by `x` or `,`; a word is a symbolic dim, `?` unknown).

    `name=1x3x224x224:float32` is the same tensor spec; `name=16000`, `name=0.5` or `name=true`
    (a plain scalar value) is a Python constant for the forward parameter `name`: a ConstantSpec.
    """
    eq, colon = text.find("="), text.find(":")
    if eq > 0 and (colon < 0 or eq < colon):
        name, value = text[:eq], text[eq + 1:]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
            raise BadInputError(f"bad --input {text!r}: {name!r} is no parameter name")
        scalar = _scalar(value) if ":" not in value else None
        if scalar is not None:
            return constant_spec(name, scalar)
        if not value:
            raise BadInputError(f"bad --input {text!r}: expected name=16000 (a constant) or name=1x3x224x224[:float32]")
        text = f"{name}:{value}"
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
