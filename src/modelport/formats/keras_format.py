"""Keras models: `.keras` (Keras 3 zip) and legacy `.h5` (HDF5)."""

from __future__ import annotations

import contextlib
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
    """The Keras model at ``path``, loaded with ``safe_mode`` after two checks of the untrusted file.

    Its HDF5 parts (an ``.h5`` model, a ``.keras`` archive's ``model.weights.h5``) are read in a
    forked child and written anew (:func:`modelport.security.loaders.rebuilt_keras_file`): a corrupt
    file that crashes or hangs libhdf5 kills the child and is refused (exit 2). The copy's config is
    checked against keras' own classes (exit 4 for Lambda and custom objects), and Keras loads the
    copy, in this process, so the model it returns is an ordinary one; variables beyond what the
    file's weights could fill are refused before Keras allocates them (exit 2).
    """
    from modelport.security.loaders import rebuilt_keras_file

    keras = keras_module()
    with rebuilt_keras_file(path) as clean:  # its config checked against keras' own classes too (exit 4)
        weights = _weights_bytes(clean)
        try:
            with _variable_budget(VARIABLE_BYTES_FACTOR * weights + VARIABLE_BYTES_SLACK):
                return keras.models.load_model(clean, compile=False, safe_mode=True)
        except _TooLarge as exc:
            raise BadInputError(f"cannot load Keras model (its config declares at least {exc.args[0]} bytes of "
                                f"variables for {weights} bytes of weights in the file: refused before Keras "
                                "allocates them)", path=path) from None
        except ValueError as exc:
            if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
                from modelport.errors import UnsafeError

                raise UnsafeError("refusing to load a Keras Lambda layer (arbitrary code)", path=path) from None
            raise BadInputError(f"cannot load Keras model ({_first_line(exc, clean, path)})", path=path) from None
        except Exception as exc:
            raise BadInputError(f"cannot load Keras model ({_first_line(exc, clean, path)})", path=path) from None


# A Keras config sizes every variable (``units``, ``filters``, input shapes) and Keras allocates and
# initializes them before it reads a single weight: a config that declares a Dense of 10^8 units
# costs gigabytes before the weights are found not to fit (found by fuzzing: 2.6 GB peaks). The
# variables a load creates may take this many times the bytes of weights the file holds, plus the slack.
VARIABLE_BYTES_FACTOR = 4
VARIABLE_BYTES_SLACK = 64 << 20


class _TooLarge(BaseException):  # not an Exception: Keras' own `except Exception` must not swallow it
    pass


def _weights_bytes(clean: str) -> int:
    """Bytes of weights in the (rebuilt) Keras file: the .h5 itself, or the weights of a .keras archive/directory."""
    import zipfile

    p = Path(clean)
    names = ("model.weights.h5", "model.weights.npz")
    if p.is_dir():
        return sum((p / n).stat().st_size for n in names if (p / n).is_file())
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            return sum(i.file_size for i in zf.infolist() if i.filename in names)
    return p.stat().st_size


def _variable_nbytes(shape, dtype) -> int | None:
    try:
        n = 1
        for d in shape:
            n *= int(d)
    except (TypeError, ValueError, OverflowError):
        return None
    try:
        size = np.dtype(str(getattr(dtype, "name", dtype) or "float32")).itemsize
    except TypeError:
        size = 4  # bfloat16 and other dtypes numpy does not know
    return max(n, 0) * size


@contextlib.contextmanager
def _variable_budget(limit: int):
    """Within the block, Keras variables created from an initializer (sized by their shape, allocated and
    filled by Keras) may take ``limit`` bytes in all; the one past it raises :class:`_TooLarge` instead."""
    from keras.src.backend.common import variables

    cls = variables.Variable
    original = cls.__init__
    spent = [0]

    def guarded(self, initializer, shape=None, dtype=None, *args, **kwargs):
        if shape is not None and (callable(initializer) or isinstance(initializer, str)):
            nbytes = _variable_nbytes(shape, dtype)
            if nbytes is not None:
                spent[0] += nbytes
                if spent[0] > limit:
                    raise _TooLarge(spent[0])
        return original(self, initializer, shape, dtype, *args, **kwargs)

    cls.__init__ = guarded
    try:
        yield spent
    finally:
        cls.__init__ = original


def _first_line(exc: BaseException, clean: str, path: str) -> str:
    """The first line of Keras' message, naming the user's file rather than the rebuilt copy."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0].replace(clean, str(path))[:500]


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
