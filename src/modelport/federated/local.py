"""A client's own model, in its own framework: load it, run it, train it (SGD on cross-entropy over logits).

Used in two places: inside the `flower` toolchain by the ClientApp (``flower_app.py``), and in
modelport's main environment by `modelport federate` to check, before any process starts, that
each client's data fits its model. Imports numpy only at import time; torch, keras and
safetensors inside functions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FRAMEWORKS = ("keras", "torch", "generated")

_MODELS: dict[tuple, object] = {}  # one loaded model per (framework, path) per process: rounds reuse it


def load_model(framework: str, model: str, weights: str | None = None):
    """The client's trainable model: keras .keras/.h5; torch ``file.py:Class`` (+ .pt/.safetensors state
    dict) or TorchScript; generated: a directory written by `modelport convert X.onnx --to torch`."""
    key = (framework, model, weights)
    if key in _MODELS:
        return _MODELS[key]
    if framework == "keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras

        net = keras.saving.load_model(model, compile=False)
    elif framework == "generated":
        import importlib.util

        import safetensors.torch

        root = Path(model)
        spec = importlib.util.spec_from_file_location(f"modelport_generated_{abs(hash(model))}", root / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        net = module.Model()
        net.load_state_dict(safetensors.torch.load_file(str(root / "weights.safetensors")), strict=True)
    elif framework == "torch":
        import torch

        file, sep, cls = model.rpartition(":")
        if sep and file.endswith(".py"):
            import importlib.util

            spec = importlib.util.spec_from_file_location(f"modelport_client_{abs(hash(file))}", file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            net = getattr(module, cls)()
            if weights:
                if weights.endswith(".safetensors"):
                    import safetensors.torch

                    state = safetensors.torch.load_file(weights)
                else:
                    state = torch.load(weights, map_location="cpu", weights_only=True)
                net.load_state_dict(state, strict=True)
        else:
            net = torch.jit.load(model, map_location="cpu")
    else:
        raise ValueError(f"unknown framework {framework!r} (known: {', '.join(FRAMEWORKS)})")
    _MODELS[key] = net
    return net


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def train_local(framework: str, net, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, lr: float,
                mu: float, seed: int) -> tuple[float, float]:
    """Train ``net`` in place with SGD on cross-entropy over its logits (+ FedProx's mu/2 ||w - w_global||^2);
    returns (loss, accuracy) of the trained model on the client's data."""
    rng = np.random.default_rng(seed)
    if framework == "keras":
        import tensorflow as tf

        params = net.trainable_variables
        start = [tf.constant(v.numpy()) for v in params]
        opt = tf.keras.optimizers.SGD(learning_rate=lr)
        mu_t = tf.constant(float(mu))

        @tf.function
        def step(xb, yb):
            with tf.GradientTape() as tape:
                logits = net(xb, training=True)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))
                if mu > 0:
                    loss += mu_t / 2 * tf.add_n([tf.reduce_sum(tf.square(v - s)) for v, s in zip(params, start)])
            opt.apply_gradients(zip(tape.gradient(loss, params), params))

        for _ in range(epochs):
            order = rng.permutation(len(x))
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                step(tf.constant(x[idx]), tf.constant(y[idx].astype(np.int64)))
        logits = np.asarray(net(tf.constant(x), training=False))
    else:
        import torch

        torch.manual_seed(seed)
        params = [p for p in net.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in params]
        opt = torch.optim.SGD(params, lr=lr)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        net.train()
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(x)))
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
                if mu > 0:
                    loss = loss + mu / 2 * sum(((p - s) ** 2).sum() for p, s in zip(params, start))
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            logits = net(xt).numpy()
    return cross_entropy(logits, y), float((logits.argmax(axis=1) == y).mean())


def forward(framework: str, net, x: np.ndarray) -> np.ndarray:
    """The model's outputs (logits) on ``x``, in inference mode."""
    if framework == "keras":
        return np.asarray(net(x, training=False))
    import torch

    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
