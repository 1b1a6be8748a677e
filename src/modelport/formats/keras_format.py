"""Keras models: `.keras` (Keras 3 zip) and legacy `.h5` (HDF5)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import BaseRunner, LoadOptions, fill_signature, read_head, require, zip_names

NAME = "keras"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    if read_head(path, 8) == HDF5_MAGIC:
        return True
    names = zip_names(path)
    return bool(names) and "config.json" in names and any(n.startswith("model.weights") for n in names)


def quiet_tf_env() -> None:
    """Keep TensorFlow's C++ INFO/WARNING lines off stderr (read once, when TF is first imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def keras_module():
    quiet_tf_env()
    require("tensorflow", "tf", "Keras models")
    import keras

    return keras


def load_keras(path: str):
    from modelport.security.loaders import check_keras_file

    keras = keras_module()
    check_keras_file(path)  # the config against keras' own layer classes, before Keras reads it (exit 4)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            from modelport.errors import UnsafeError

            raise UnsafeError("refusing to load a Keras Lambda layer (arbitrary code)", path=path) from None
        raise BadInputError(f"cannot load Keras model ({str(exc).strip().splitlines()[0]})", path=path) from None
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"cannot load Keras model ({msg})", path=path) from None


def tf_dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None) or str(dtype)
    return np.dtype(name).name if name != "bfloat16" else name


def keras_inputs(model) -> tuple[TensorSpec, ...]:
    specs = []
    for i, t in enumerate(model.inputs):
        name = getattr(t, "name", None) or f"input_{i}"
        name = name.split(":")[0]
        shape = tuple("batch" if (j == 0 and d is None) else d for j, d in enumerate(t.shape))
        specs.append(TensorSpec(name, tf_dtype_name(t.dtype), shape))
    return tuple(specs)


def _producer_name(tensor) -> str | None:
    history = getattr(tensor, "_keras_history", None)
    operation = getattr(history, "operation", None)
    return getattr(operation, "name", None)


def keras_output_names(model) -> list[str]:
    """The model's output names: Keras' own, else the layers that produce them, else output_i."""
    outs = model.outputs
    names = getattr(model, "output_names", None)  # Functional has them; Sequential does not
    if not names or len(names) != len(outs):
        names = [_producer_name(t) for t in outs]
    names = [str(n) if n else "" for n in names]
    if all(names) and len(set(names)) == len(names):
        return names
    return [f"output_{i}" for i in range(len(outs))]


def call_model(model, arrays: list):
    """Call a Keras model on its inputs (in ``model.inputs`` order), packed as the model expects them."""
    import keras

    struct = getattr(model, "_inputs_struct", None)  # Functional: a tensor, a list or a dict of inputs
    if struct is not None:
        return model(keras.tree.pack_sequence_as(struct, list(arrays)), training=False)
    return model(arrays[0] if len(arrays) == 1 else list(arrays), training=False)


def flat_outputs(out) -> list:
    """A Keras call's outputs in ``model.outputs`` order (dicts by sorted key, as keras.tree does)."""
    import keras

    return list(keras.tree.flatten(out))


class KerasRunner(BaseRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        self.model = load_keras(path)
        if not getattr(self.model, "inputs", None):
            raise BadInputError("Keras model was never built (it has no inputs)", path=path)
        inputs = fill_signature(keras_inputs(self.model), options.inputs, path)
        outputs = tuple(
            TensorSpec(n, tf_dtype_name(t.dtype), tuple("batch" if (j == 0 and d is None) else d for j, d in enumerate(t.shape)))
            for n, t in zip(keras_output_names(self.model), self.model.outputs)
        )
        self._signature = Signature(inputs, outputs)
        import tensorflow as tf

        # Compiled once per input-shape family: eager Keras calls are ~100x slower on small models,
        # and a user serving Keras would not call it eagerly either.
        model = self.model
        specs = [tf.TensorSpec([d if isinstance(d, int) else None for d in (s.shape or ())] if s.shape is not None else None,
                               s.dtype) for s in inputs]
        self._call = tf.function(lambda *arrays: call_model(model, list(arrays)), input_signature=specs)

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [np.asarray(feeds[s.name]) for s in self._signature.inputs]
        outs = flat_outputs(self._call(*args))
        return {s.name: np.asarray(o) for s, o in zip(self._signature.outputs, outs)}


def open(path: str, options: LoadOptions) -> KerasRunner:  # noqa: A001
    return KerasRunner(path, options)
