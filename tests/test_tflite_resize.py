"""TFLiteRunner at a second input shape: a refused resize rebuilds the interpreter, and a shape
the model cannot take is a one-line UnsupportedError, never LiteRT's RuntimeError."""

from __future__ import annotations

import numpy as np
import pytest

import zoo_tf  # first: it sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from modelport import formats  # noqa: E402
from modelport.errors import UnsupportedError  # noqa: E402


def _keras_logits(x: np.ndarray) -> np.ndarray:
    import keras

    model = keras.models.load_model(zoo_tf.cnn_keras(), compile=False)
    return np.asarray(model(x, training=False))


@pytest.mark.parametrize("order", [(1, 3), (3, 1), (2, 5, 1, 5)])
def test_batch_sizes_in_any_order_match_keras(order):
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 1)).astype(np.float32)
    ref = _keras_logits(x)
    with formats.open_runner(zoo_tf.tflite_from_keras("cnn")) as runner:
        (spec,), (out,) = runner.signature.inputs, runner.signature.output_names
        for n in order:
            np.testing.assert_allclose(runner.run({spec.name: x[:n]})[out], ref[:n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("allocated_first", [False, True], ids=["fresh", "after-a-run"])
def test_shape_the_model_refuses_is_one_line_unsupported_error_then_runner_still_works(allocated_first):
    # A rank-3 input to the CNN's Conv2D: on an interpreter already allocated for rank 4, LiteRT
    # raises "XNNPack delegate failed to reshape runtime"; the fresh interpreter built in its place
    # refuses it too (conv.cc: dims 3 != 4), so the runner must say the shape is unsupported.
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 1)).astype(np.float32)
    with formats.open_runner(zoo_tf.tflite_from_keras("cnn")) as runner:
        (spec,), (out,) = runner.signature.inputs, runner.signature.output_names
        if allocated_first:
            runner.run({spec.name: x[:2]})
        with pytest.raises(UnsupportedError) as err:
            runner.run({spec.name: x[:2, :, :, 0]})
        msg = str(err.value)
        assert err.value.exit_code == 3
        assert "\n" not in msg
        assert f"{spec.name}=(2, 8, 8)" in msg and "LiteRT:" in msg
        assert "internal error" not in msg.lower()
        # the failed shape leaves the runner usable at good shapes, with right values
        np.testing.assert_allclose(runner.run({spec.name: x})[out], _keras_logits(x), rtol=1e-4, atol=1e-5)
