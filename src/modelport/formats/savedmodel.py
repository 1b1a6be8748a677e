"""TensorFlow SavedModel directories, run through their `serving_default` signature."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError, UnsupportedError
from modelport.formats.base import BaseRunner, LoadOptions, fill_signature, require

NAME = "savedmodel"


def detect(path: Path) -> bool:
    return path.is_dir() and ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file())


def _spec(name: str, t) -> TensorSpec:
    shape = None if t.shape.rank is None else tuple("batch" if (i == 0 and d is None) else d for i, d in enumerate(t.shape.as_list()))
    return TensorSpec(name, t.dtype.name, shape)


def natural_key(name: str) -> list:
    """Sort `output_2` before `output_10`."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def load_signature_fn(path: str):
    from modelport.formats.keras_format import quiet_tf_env
    from modelport.security.loaders import check_savedmodel

    quiet_tf_env()
    tf = require("tensorflow", "tf", "TensorFlow SavedModels")
    check_savedmodel(path)  # ops that touch files, the network or Python: refused unless trusted (exit 4)
    try:
        loaded = tf.saved_model.load(path)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"cannot load SavedModel ({msg})", path=path) from None
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" not in sigs:
        raise BadInputError("SavedModel has no serving_default signature", path=path)
    return loaded, sigs["serving_default"]


class SavedModelRunner(BaseRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        self._loaded, self.fn = load_signature_fn(path)
        # Signature functions take keyword tensors and return a dict; both are ordered by name,
        # as TF flattens them (and as TFLite's converter lists them).
        _, kw = self.fn.structured_input_signature
        inputs = tuple(_spec(n, kw[n]) for n in sorted(kw, key=natural_key))
        outs = self.fn.structured_outputs
        if not isinstance(outs, dict):
            raise BadInputError("SavedModel serving_default does not return a dict of tensors", path=path)
        outputs = tuple(_spec(n, outs[n]) for n in sorted(outs, key=natural_key))
        self._signature = Signature(fill_signature(inputs, options.inputs, path), outputs)

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        kwargs = {s.name: tf.constant(np.asarray(feeds[s.name])) for s in self._signature.inputs}
        try:
            out = self.fn(**kwargs)
        except (tf.errors.OpError, ValueError, TypeError) as exc:  # e.g. InvalidArgumentError: Incompatible shapes
            shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in kwargs.items())
            text = getattr(exc, "message", None) or str(exc)
            first = " ".join(re.sub(r"\{\{[^}]*\}\}", "", text).split())[:300] or type(exc).__name__
            raise UnsupportedError(f"SavedModel fails at input shapes {shapes} ({type(exc).__name__}: {first})",
                                   path=self.path) from None
        return {s.name: out[s.name].numpy() for s in self._signature.outputs}


def open(path: str, options: LoadOptions) -> SavedModelRunner:  # noqa: A001
    return SavedModelRunner(path, options)
