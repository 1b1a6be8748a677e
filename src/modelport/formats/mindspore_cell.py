"""A ``mindspore.nn.Cell`` in a Python file: ``path/file.py:Name`` with its weights (``--weights NAME.ckpt``).

The class is built with no arguments inside the `mindspore` toolchain and its checkpoint loaded
after every parameter's name and shape were checked against the Cell (a checkpoint of another
network is exit 2 naming the parameter). It runs as a PyNative forward; the ``--input`` shapes
are required (a leading 1 or a name is the dynamic batch). Detection: a ``file.py:Name`` spec
whose file imports mindspore (and not torch).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import BaseRunner, LoadOptions
from modelport.formats.mindspore_format import driver, run_in_driver, spec_of, specs_for_driver

__all__ = ["NAME", "CellRunner", "detect", "cell_args", "open"]

NAME = "mindspore-cell"
_IMPORTS_MINDSPORE = re.compile(r"^\s*(import mindspore\b|from mindspore\b)", re.M)
_IMPORTS_TORCH = re.compile(r"^\s*(import torch\b|from torch\b)", re.M)


def _split(spec: str) -> tuple[str, str] | None:
    head, sep, name = str(spec).rpartition(":")
    return (head, name) if sep and head.endswith(".py") and name.isidentifier() else None


def detect(path: Path) -> bool:
    parts = _split(str(path))
    if parts is None or not Path(parts[0]).is_file():
        return False
    try:
        text = Path(parts[0]).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(_IMPORTS_MINDSPORE.search(text)) and not _IMPORTS_TORCH.search(text)


def cell_args(spec: str, weights: str | None, inputs: tuple[TensorSpec, ...]) -> dict:
    """The driver's arguments for the Cell: file, class name, checkpoint, input specs; exit 2 when any is bad."""
    parts = _split(spec)
    if parts is None:
        raise BadInputError("give a mindspore.nn.Cell as path/file.py:ClassName", path=spec)
    file, name = parts
    if not Path(file).is_file():
        raise BadInputError("no such file", path=file)
    if weights and not Path(weights).is_file():
        raise BadInputError("no such weights file", path=weights)
    if not inputs or any(s.shape is None for s in inputs):
        raise BadInputError(f"{name}: give its input shapes with --input NAME:1x3x224x224:float32", path=file)
    return {"file": str(Path(file).resolve()), "name": name,
            "weights": str(Path(weights).resolve()) if weights else None, "inputs": specs_for_driver(inputs)}


class CellRunner(BaseRunner):
    """The Cell's PyNative forward in the toolchain; feeds and results cross as .npz."""

    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        self.args = cell_args(path, options.weights, options.inputs)
        doc = driver().call("cell_signature", **self.args)
        self._signature = Signature(tuple(spec_of(d) for d in doc["inputs"]), tuple(spec_of(d) for d in doc["outputs"]))
        self._tmp: str | None = None

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = {k: v for k, v in self.args.items() if k != "inputs"}
        return run_in_driver(self, "cell_run", feeds, **args)

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def open(path: str, options: LoadOptions) -> CellRunner:  # noqa: A001 - the format protocol's name
    return CellRunner(path, options)
