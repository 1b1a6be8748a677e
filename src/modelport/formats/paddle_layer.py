"""A ``paddle.nn.Layer`` in a Python file: ``path/file.py:Name`` with its weights (``--weights NAME.pdparams``).

The class is built with no arguments inside the `paddle` toolchain, its ``.pdparams`` (a
``paddle.save`` state dict) loaded, and it is saved with ``paddle.jit.save`` for the given
``--input`` shapes: from there on it is a Paddle inference model (``paddle_format``). Detection:
a ``file.py:Name`` spec whose file imports paddle (and not torch), or whose weights are ``.pdparams``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from modelport.artifact import TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import LoadOptions
from modelport.formats.paddle_format import PaddleRunner

__all__ = ["NAME", "PaddleLayerRunner", "detect", "export", "open"]

NAME = "paddle-layer"
_IMPORTS_PADDLE = re.compile(r"^\s*(import paddle\b|from paddle\b)", re.M)
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
    return bool(_IMPORTS_PADDLE.search(text)) and not _IMPORTS_TORCH.search(text)


def export(spec: str, weights: str | None, inputs: tuple[TensorSpec, ...], directory: str) -> tuple[str, str]:
    """Save the Layer as an inference model in ``directory``; returns (program, weights) paths."""
    from modelport.formats import paddle_format

    parts = _split(spec)
    if parts is None:
        raise BadInputError("give a paddle.nn.Layer as path/file.py:ClassName", path=spec)
    file, name = parts
    if not Path(file).is_file():
        raise BadInputError("no such file", path=file)
    if weights and not Path(weights).is_file():
        raise BadInputError("no such weights file", path=weights)
    if not inputs or any(s.shape is None for s in inputs):
        raise BadInputError(f"{name}: give its input shapes with --input NAME:1x3x224x224:float32", path=file)
    specs = [{"name": s.name, "dtype": s.dtype,
              "shape": [d if isinstance(d, int) and not (i == 0 and d == 1) else None for i, d in enumerate(s.shape)]}
             for s in inputs]  # batch 1 given: the saved program keeps the batch dynamic
    done = paddle_format.driver().call("export_layer", file=str(Path(file).resolve()), name=name,
                                       weights=str(Path(weights).resolve()) if weights else None,
                                       inputs=specs, out_prefix=str(Path(directory).resolve() / "model"))
    return done["model"], done["params"]


class PaddleLayerRunner(PaddleRunner):
    """A PaddleRunner over the Layer saved in a temp dir, removed when the runner closes."""

    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        self._saved = tempfile.mkdtemp(prefix="modelport-paddle-layer-")
        try:
            model, params = export(path, options.weights, options.inputs, self._saved)
            super().__init__(model, LoadOptions(weights=params, threads=options.threads))
        except BaseException:
            shutil.rmtree(self._saved, ignore_errors=True)
            raise
        self.path = path

    def close(self) -> None:
        super().close()
        shutil.rmtree(self._saved, ignore_errors=True)


def open(path: str, options: LoadOptions) -> PaddleLayerRunner:  # noqa: A001 - the format protocol's name
    return PaddleLayerRunner(path, options)
