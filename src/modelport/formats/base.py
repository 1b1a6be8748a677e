"""What every format provides: detection from content and a Runner over dicts of numpy arrays."""

from __future__ import annotations

import dataclasses
import importlib
import zipfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError, MissingExtraError

__all__ = [
    "Runner",
    "LoadOptions",
    "BaseRunner",
    "require",
    "zip_names",
    "read_head",
    "fill_signature",
]


@runtime_checkable
class Runner(Protocol):
    """Runs one model: named numpy arrays in, named numpy arrays out."""

    format: str

    @property
    def signature(self) -> Signature: ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def index_bounds(self) -> dict[str, int]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How to load a model: weights for module files, input specs where the model has none."""

    weights: str | None = None
    inputs: tuple[TensorSpec, ...] = ()
    device: str = "cpu"
    threads: int | None = None


class BaseRunner:
    """Shared plumbing: context manager, no-op close, no index bounds."""

    format = "?"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def index_bounds(self) -> dict[str, int]:
        """Upper bounds (exclusive) for integer inputs that index a table."""
        return {}

    def close(self) -> None:
        pass

    def __enter__(self) -> BaseRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def require(module: str, extra: str, purpose: str = "") -> Any:
    """Import a framework lazily, or fail naming the extra that provides it."""
    from modelport.quiet import native_output

    if module.split(".")[0] in ("tensorflow", "tf2onnx", "keras", "ai_edge_litert"):
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read once, when TF is first imported
    try:
        with native_output():  # TF and LiteRT print INFO lines from C++ when they load
            return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtraError(module.split(".")[0], extra, purpose=purpose) from None


def read_head(path: Path, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise BadInputError(f"cannot read file: {exc.strerror}", path=path) from None


def zip_names(path: Path) -> list[str] | None:
    """Member names of a zip archive, None if the file is not a zip; corrupt zips raise."""
    if not path.is_file() or read_head(path, 4) != b"PK\x03\x04":
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BadInputError(f"corrupt or truncated archive ({exc})", path=path) from None


def fill_signature(declared: tuple[TensorSpec, ...], given: tuple[TensorSpec, ...], path: str) -> tuple[TensorSpec, ...]:
    """Input specs for a model: the model's own, overridden by `--input` specs given by the user."""
    if not given:
        return declared
    if declared and len(given) != len(declared):
        names = [s.name for s in given]
        have = [s.name for s in declared]
        if not set(names) <= set(have):
            raise BadInputError(f"--input names {names} do not match the model's inputs {have}", path=path)
    if not declared:
        return given
    by_name = {s.name: s for s in given}
    positional = len(given) == len(declared) and not set(by_name) & {s.name for s in declared}
    out = []
    for i, spec in enumerate(declared):
        if spec.name in by_name:
            out.append(by_name[spec.name])
        elif positional:  # the model's own input names stay: the runtime feeds by them
            out.append(TensorSpec(spec.name, given[i].dtype, given[i].shape))
        else:
            out.append(spec)
    return tuple(out)
