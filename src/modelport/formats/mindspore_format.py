"""MindSpore MindIR files (``.mindir``, written by ``mindspore.export(..., file_format="MINDIR")``),
run with ``nn.GraphCell(mindspore.load(path))`` in the `mindspore` toolchain.

MindSpore is a 2.8 GB wheel with numpy < 2 (parts of its C++ are built against numpy 1.x), so
it runs in a toolchain of its own (``modelport.toolchains``) driven in a subprocess; inputs and
outputs cross as .npz files. The signature is read from the MindIR protobuf (input names are the
``construct`` parameters', outputs are called ``output`` / ``output_N``). ``driver()`` is shared
with the Cell format (``mindspore_cell``) and MindRecord (``modelport.data.mindrecord``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import BaseRunner, LoadOptions, fill_signature

__all__ = ["NAME", "MindIRRunner", "detect", "driver", "open", "signature_of", "spec_of", "specs_for_driver",
           "run_in_driver"]

NAME = "mindspore"
TOOLCHAIN = "mindspore"
OPS = "mindspore_ops.py"
SUFFIX = ".mindir"


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == SUFFIX


def driver():
    """The process-wide driver of the mindspore toolchain (started on first use)."""
    from modelport.toolchains.process import DriverProcess

    return DriverProcess.shared(TOOLCHAIN, OPS)


def spec_of(d: dict) -> TensorSpec:
    shape = d.get("shape")
    if shape is not None:
        shape = tuple("batch" if i == 0 and s is None else s for i, s in enumerate(shape))
    return TensorSpec(d["name"], d.get("dtype") or "float32", shape)


def specs_for_driver(specs: tuple[TensorSpec, ...]) -> list[dict]:
    """Input specs as the driver takes them: a symbolic or unknown leading dim (or a given batch of 1) is None."""
    out = []
    for s in specs:
        if s.shape is None:
            raise BadInputError(f"input {s.name!r} has an unknown rank; give --input {s.name}:1x3x224x224:{s.dtype}")
        dims = [None if (i == 0 and (not isinstance(d, int) or d == 1)) else d for i, d in enumerate(s.shape)]
        if any(d is None or not isinstance(d, int) for d in dims[1:]):
            raise BadInputError(f"input {s.name!r}: only its leading (batch) dim may be dynamic "
                                f"(give --input {s.name}:1x3x224x224:{s.dtype})")
        out.append({"name": s.name, "dtype": s.dtype, "shape": dims})
    return out


def signature_of(path: str) -> Signature:
    doc = driver().call("mindir_signature", path=path)
    return Signature(tuple(spec_of(d) for d in doc["inputs"]), tuple(spec_of(d) for d in doc["outputs"]))


def run_in_driver(runner, op: str, feeds: dict[str, np.ndarray], **args) -> dict[str, np.ndarray]:
    """Feeds out as .npz in the runner's temp dir, the op run, its outputs back."""
    if runner._tmp is None:
        runner._tmp = tempfile.mkdtemp(prefix="modelport-mindspore-")
    src, dst = Path(runner._tmp) / "inputs.npz", Path(runner._tmp) / "outputs.npz"
    names = [s.name for s in runner.signature.inputs]
    np.savez(src, **{k: np.asarray(v) for k, v in feeds.items()})
    done = driver().call(op, input_names=names, inputs=str(src), outputs=str(dst), **args)
    with np.load(dst) as out:
        return {n: out[n] for n in done["outputs"]}


class MindIRRunner(BaseRunner):
    """A MindIR file as ``nn.GraphCell`` in the toolchain (graph mode); feeds and results cross as .npz."""

    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        p = Path(path)
        if not p.is_file():
            raise BadInputError("no such file", path=path)
        if p.stat().st_size == 0:
            raise BadInputError("file is empty", path=path)
        self.file = str(p.resolve())
        sig = signature_of(self.file)
        self._signature = Signature(fill_signature(sig.inputs, options.inputs, path), sig.outputs)
        self._tmp: str | None = None

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_in_driver(self, "mindir_run", feeds, path=self.file)

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def open(path: str, options: LoadOptions) -> MindIRRunner:  # noqa: A001 - the format protocol's name
    return MindIRRunner(path, options)
