"""Real Keras / TensorFlow / TFLite test models, built on the fly once per test session.

Every builder returns a path inside one temporary directory per process (so each
pytest-xdist worker has its own) and is cached, so a model is built once however many
tests use it. The directory is removed at exit. Models are tiny (8x8 images, 64-d
vectors) so that building, training and converting them takes seconds.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = [
    "zoo_dir",
    "digits",
    "cnn_keras",
    "cnn_h5",
    "mlp_sequential",
    "two_io_keras",
    "module_savedmodel",
    "exported_savedmodel",
    "tflite_from_keras",
    "tflite_from_savedmodel",
]

SEED = 0


@functools.cache
def zoo_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="modelport-zoo-tf-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _keras():
    import keras

    keras.utils.set_random_seed(SEED)
    return keras


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as (x_train, y_train, x_test, y_test), x as NHWC float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return x_train, y_train, x_test, y_test


@functools.cache
def _trained_cnn():
    """Conv2D + BatchNormalization + ReLU + MaxPool + Dense on 8x8x1 digits, trained for a few epochs."""
    keras = _keras()
    from keras import layers

    inp = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    out = layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, out, name="digits_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x_train, y_train, _, _ = digits()
    from modelport.quiet import native_output

    with native_output():  # TF's C++ lines while it trains
        model.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0)
    return model


@functools.cache
def cnn_keras() -> Path:
    """The trained digits CNN (functional) as a Keras 3 `.keras` file; output named `logits`."""
    path = zoo_dir() / "digits_cnn.keras"
    _trained_cnn().save(path)
    return path


@functools.cache
def cnn_h5() -> Path:
    """The same trained CNN saved as a legacy HDF5 `.h5` file."""
    import logging

    path = zoo_dir() / "digits_cnn.h5"
    absl = logging.getLogger("absl")  # Keras warns that HDF5 is legacy: that is the point here
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        _trained_cnn().save(path)
    finally:
        absl.setLevel(level)
    return path


@functools.cache
def _mlp():
    keras = _keras()
    from keras import layers

    return keras.Sequential(
        [
            keras.Input((64,)),
            layers.Dense(32, activation="relu", name="hidden"),
            layers.Dropout(0.2, name="dropout"),
            layers.Dense(10, name="logits"),
        ],
        name="mlp",
    )


@functools.cache
def mlp_sequential() -> Path:
    """A Sequential MLP on 64-d vectors (the model kind tf2onnx's from_keras breaks on)."""
    path = zoo_dir() / "mlp_sequential.keras"
    _mlp().save(path)
    return path


@functools.cache
def _two_io():
    keras = _keras()
    from keras import layers

    image = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((5,), name="meta")
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(image)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Concatenate(name="concat")([x, meta])
    h = layers.Dense(16, activation="relu", name="hidden")(x)
    cls = layers.Dense(3, name="cls")(h)
    score = layers.Dense(1, activation="sigmoid", name="score")(h)
    return keras.Model([image, meta], [cls, score], name="two_io")


@functools.cache
def two_io_keras() -> Path:
    """Two inputs (`image` 8x8x1, `meta` 5) and two outputs (`cls` 3 scores, `score` 1 sigmoid)."""
    path = zoo_dir() / "two_io.keras"
    _two_io().save(path)
    return path


@functools.cache
def module_savedmodel() -> Path:
    """A plain tf.Module saved with a `serving_default` signature: x[batch, 4] -> {y: relu(x W + b), z: sum(x)}."""
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(SEED)
            self.w = tf.Variable(rng.standard_normal((4, 3)).astype(np.float32), name="w")
            self.b = tf.Variable(rng.standard_normal(3).astype(np.float32), name="b")

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.nn.relu(tf.matmul(x, self.w) + self.b), "z": tf.reduce_sum(x, axis=1)}

    module = Affine()
    path = zoo_dir() / "affine_savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@functools.cache
def exported_savedmodel() -> Path:
    """The Sequential MLP exported with `model.export()` (a serving SavedModel)."""
    path = zoo_dir() / "mlp_export"
    _mlp().export(str(path), verbose=False)
    return path


def _write_tflite(converter, path: Path) -> Path:
    path.write_bytes(converter.convert())
    return path


@functools.cache
def tflite_from_keras(name: str) -> Path:
    """A zoo Keras model (`mlp`, `two_io` or `cnn`) converted by TF's own TFLiteConverter.from_keras_model."""
    import tensorflow as tf

    model = {"mlp": _mlp, "two_io": _two_io, "cnn": _trained_cnn}[name]()
    return _write_tflite(tf.lite.TFLiteConverter.from_keras_model(model), zoo_dir() / f"{name}.tflite")


@functools.cache
def tflite_from_savedmodel() -> Path:
    """The exported MLP SavedModel converted by TFLiteConverter.from_saved_model."""
    import tensorflow as tf

    src = exported_savedmodel()
    return _write_tflite(tf.lite.TFLiteConverter.from_saved_model(str(src)), zoo_dir() / "mlp_export.tflite")
