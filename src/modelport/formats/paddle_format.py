"""PaddlePaddle inference models, run with paddle.inference in the `paddle` toolchain.

An inference model is a program and its weights: Paddle 3's PIR program (``NAME.json``) or the
legacy ``NAME.pdmodel`` (protobuf), with ``NAME.pdiparams`` beside it (or ``--weights``). A
directory holding one such pair (PaddleOCR's ``inference/``) is one too. Paddle cannot share
modelport's environment (paddle2onnx pins onnx 1.17), so the runner drives the toolchain's
Python in a subprocess (``modelport.toolchains``); inputs and outputs cross as .npz files.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import BaseRunner, LoadOptions, fill_signature, read_head

__all__ = ["NAME", "PaddleRunner", "detect", "driver", "model_files", "open", "signature_of"]

NAME = "paddle"
TOOLCHAIN = "paddle"
OPS = "paddle_ops.py"
PROGRAMS = (".json", ".pdmodel")
PARAMS = ".pdiparams"
_PIR_HEAD = re.compile(rb'^\s*\{\s*"base_code"\s*:\s*\{\s*"magic"\s*:\s*"pir"')


def _is_program(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix.lower() == ".pdmodel":
        return True
    return path.suffix.lower() == ".json" and bool(_PIR_HEAD.match(read_head(path, 64)))


def _program_in(directory: Path) -> Path | None:
    found = [p for p in sorted(directory.iterdir()) if _is_program(p)]
    return found[0] if len(found) == 1 else None


def detect(path: Path) -> bool:
    if path.is_dir():
        program = _program_in(path)
        return program is not None and program.with_suffix(PARAMS).is_file()
    return _is_program(path)


def model_files(path: str | Path, weights: str | None = None) -> tuple[str, str]:
    """(program, weights) of an inference model; exit 2 when the weights are not there."""
    p = Path(path)
    program = _program_in(p) if p.is_dir() else p
    if program is None or not _is_program(program):
        raise BadInputError("no Paddle inference program (NAME.json or NAME.pdmodel) here", path=path)
    if program.suffix.lower() == ".pdmodel" and read_head(program, 1) != b"\x0a":  # ProgramDesc: field 1, blocks
        raise BadInputError("not a Paddle program (a .pdmodel is a ProgramDesc protobuf; this one is not)", path=program)
    params = Path(weights) if weights else program.with_suffix(PARAMS)
    if not params.is_file():
        hint = "no such weights file" if weights else (
            f"its weights {params.name} are missing (Paddle keeps them beside the program; give them with --weights)")
        raise BadInputError(hint, path=weights or program)
    return str(program.resolve()), str(params.resolve())


def driver():
    """The process-wide driver of the paddle toolchain (started on first use)."""
    from modelport.toolchains.process import DriverProcess

    return DriverProcess.shared(TOOLCHAIN, OPS)


def _spec(d: dict) -> TensorSpec:
    shape = d.get("shape")
    if shape is not None:
        shape = tuple("batch" if i == 0 and s is None else s for i, s in enumerate(shape))
    return TensorSpec(d["name"], d.get("dtype") or "float32", shape)


def signature_of(model: str, params: str) -> Signature:
    doc = driver().call("signature", model=model, params=params)
    return Signature(tuple(_spec(d) for d in doc["inputs"]), tuple(_spec(d) for d in doc["outputs"]))


class PaddleRunner(BaseRunner):
    """paddle.inference's predictor, in the toolchain; feeds and results cross as .npz."""

    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        self.model, self.params = model_files(path, options.weights)
        self.threads = options.threads
        sig = signature_of(self.model, self.params)
        self._signature = Signature(fill_signature(sig.inputs, options.inputs, path), sig.outputs)
        self._tmp: str | None = None

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="modelport-paddle-")
        src, dst = Path(self._tmp) / "inputs.npz", Path(self._tmp) / "outputs.npz"
        np.savez(src, **{k: np.asarray(v) for k, v in feeds.items()})
        done = driver().call("run", model=self.model, params=self.params, inputs=str(src), outputs=str(dst),
                             threads=self.threads)
        with np.load(dst) as out:
            return {n: out[n] for n in done["outputs"]}

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def open(path: str, options: LoadOptions) -> PaddleRunner:  # noqa: A001 - the format protocol's name
    return PaddleRunner(path, options)
