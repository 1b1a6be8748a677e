"""Apache MXNet models (a symbol file and its parameters), run with MXNet in the `mxnet` toolchain.

What ``HybridBlock.export(PREFIX)`` and ``Module.save_checkpoint(PREFIX, EPOCH)`` write: the graph
``PREFIX-symbol.json`` and its weights ``PREFIX-EPOCH.params`` (``PREFIX-0000.params``) beside it,
or given with ``--weights``. A directory holding one such pair is one too, and so is the
``.params`` file itself when its symbol is beside it. Detection reads the
JSON's head (MXNet's graph starts with ``{"nodes": [``), so any file name works. The symbol keeps
no input shapes: they come with ``--input data:1x3x224x224:float32`` where one is needed
(convert, verify); the batch dim stays dynamic, as it is in MXNet. MXNet 1.9.1 needs numpy < 2,
so it runs in a toolchain of its own (``modelport.toolchains``); tensors cross as .npz files.
"""

from __future__ import annotations

import glob
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import BaseRunner, LoadOptions, fill_signature, read_head

__all__ = ["NAME", "MXNetRunner", "detect", "driver", "model_files", "open", "signature_of", "spec_dicts"]

NAME = "mxnet"
TOOLCHAIN = "mxnet"
OPS = "mxnet_ops.py"
_HEAD = re.compile(rb'^\s*\{\s*"nodes"\s*:\s*\[')
_EPOCH = re.compile(r"-(\d{4,})\.params$")
_PARAMS_MAGIC = (0x112).to_bytes(8, "little")


def _is_symbol(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".json" and bool(_HEAD.match(read_head(path, 64)))


def _symbol_in(directory: Path) -> Path | None:
    found = [p for p in sorted(directory.iterdir()) if _is_symbol(p)]
    return found[0] if len(found) == 1 else None


def _params_for(symbol: Path) -> tuple[Path | None, str]:
    """The parameters beside a symbol (the newest epoch of PREFIX-EPOCH.params), and the name expected."""
    stem = symbol.name[: -len(".json")]
    if stem.endswith("-symbol"):
        prefix = stem[: -len("-symbol")]
        epochs = sorted((int(m.group(1)), p) for p in symbol.parent.glob(f"{glob.escape(prefix)}-*.params")
                        if (m := _EPOCH.search(p.name)) and p.name == f"{prefix}-{m.group(1)}.params" and p.is_file())
        return (epochs[-1][1] if epochs else None), f"{prefix}-0000.params"
    plain = symbol.with_name(stem + ".params")
    return (plain if plain.is_file() else None), plain.name


def _is_params(path: Path) -> bool:
    """An ``mx.nd.save`` file (what ``.params`` are): its list magic 0x112, little-endian uint64."""
    return path.is_file() and path.suffix.lower() == ".params" and read_head(path, 8) == _PARAMS_MAGIC


def _symbol_for(params: Path) -> Path:
    m = _EPOCH.search(params.name)
    prefix = params.name[: m.start()] if m else params.stem
    return params.with_name(f"{prefix}-symbol.json")


def detect(path: Path) -> bool:
    if path.is_dir():
        symbol = _symbol_in(path)
        return symbol is not None and _params_for(symbol)[0] is not None
    return _is_symbol(path) or _is_params(path)


def model_files(path: str | Path, weights: str | None = None) -> tuple[str, str]:
    """(symbol, params) of an MXNet model; exit 2 when the parameters are not there."""
    p = Path(path)
    if _is_params(p):  # the weights were named: the graph is the symbol beside them
        symbol = _symbol_for(p)
        if not _is_symbol(symbol):
            raise BadInputError(f"these are MXNet parameters; their graph {symbol.name} is not beside them "
                                "(give the symbol file, with --weights for the parameters)", path=path)
        weights, p = weights or str(p), symbol
    symbol = _symbol_in(p) if p.is_dir() else p
    if symbol is None or not _is_symbol(symbol):
        raise BadInputError("no MXNet symbol file (PREFIX-symbol.json) here", path=path)
    if weights:
        params = Path(weights)
        if not params.is_file():
            raise BadInputError("no such parameters file", path=weights)
    else:
        found, expected = _params_for(symbol)
        if found is None:
            raise BadInputError(f"its parameters {expected} are missing (MXNet keeps them beside the symbol as "
                                "PREFIX-EPOCH.params; give them with --weights)", path=symbol)
        params = found
    return str(symbol.resolve()), str(params.resolve())


def driver():
    """The process-wide driver of the mxnet toolchain (started on first use)."""
    from modelport.toolchains.process import DriverProcess

    return DriverProcess.shared(TOOLCHAIN, OPS)


def spec_dicts(specs: tuple[TensorSpec, ...]) -> list[dict]:
    """Input specs as the toolchain reads them: symbolic dims as None."""
    return [{"name": s.name, "dtype": s.dtype,
             "shape": None if s.shape is None else [d if isinstance(d, int) else None for d in s.shape]}
            for s in specs]


def _spec(d: dict, batch: bool) -> TensorSpec:
    shape = d.get("shape")
    if shape is not None:
        shape = tuple("batch" if i == 0 and (s is None or batch) else s for i, s in enumerate(shape))
    return TensorSpec(d["name"], d.get("dtype") or "float32", shape)


def signature_of(symbol: str, params: str, given: tuple[TensorSpec, ...] = (), path: str = "") -> Signature:
    """The model's signature; with input shapes given (``--input``), its output shapes too.

    An MXNet graph runs at any batch size, so the leading dim of a given input shape is ``batch``.
    """
    doc = driver().call("signature", symbol=symbol, params=params)
    declared = tuple(_spec(d, False) for d in doc["inputs"])
    inputs = fill_signature(declared, given, path or symbol)
    inputs = tuple(_spec(d, True) for d in spec_dicts(inputs)) if given else inputs
    if all(s.shape is not None for s in inputs):
        doc = driver().call("signature", symbol=symbol, params=params, inputs=spec_dicts(inputs))
    return Signature(inputs, tuple(_spec(d, False) for d in doc["outputs"]))


class MXNetRunner(BaseRunner):
    """A forward pass of the symbol bound in MXNet, in the toolchain; feeds and results cross as .npz."""

    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        self.symbol, self.params = model_files(path, options.weights)
        self._signature = signature_of(self.symbol, self.params, options.inputs, path)
        self._tmp: str | None = None

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="modelport-mxnet-")
        src, dst = Path(self._tmp) / "inputs.npz", Path(self._tmp) / "outputs.npz"
        np.savez(src, **{k: np.asarray(v) for k, v in feeds.items()})
        done = driver().call("run", symbol=self.symbol, params=self.params, inputs=str(src), outputs=str(dst))
        with np.load(dst) as out:
            return {n: out[n] for n in done["outputs"]}

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def open(path: str, options: LoadOptions) -> MXNetRunner:  # noqa: A001 - the format protocol's name
    return MXNetRunner(path, options)
