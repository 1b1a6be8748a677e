"""A federation to run: scikit-learn's digits, split non-IID over a Keras, a PyTorch and a generated client.

``write_demo(dir)`` writes everything `modelport federate --config dir/fed.toml` needs: the data
(8x8 digits scaled to [0, 1]; 20 % held out as the server's test set; the rest split across the
clients by a Dirichlet(alpha) draw over each class, so each client sees a skewed mix of digits),
one small CNN (Conv 3x3 -> BatchNorm -> ReLU -> Flatten -> Dense 32 -> ReLU -> Dense 10, logits)
written three ways — a Keras model (.keras, NHWC input), a PyTorch module file (net.py:Net, NCHW)
and a modelport-generated PyTorch directory (``modelport convert`` of the canonical ONNX) — the
canonical ONNX (``mapping.canonical_from`` of the Keras model) and fed.toml. Each client's data is in its own
model's layout (NCHW for the PyTorch module, NHWC for the others); the test data in the canonical
one (NHWC: the canonical ONNX is the Keras model's). Also used by the tests and by
benchmarks/federated.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

__all__ = ["NET_PY", "DemoFiles", "digits_split", "keras_net", "write_demo", "fed_toml"]

NET_PY = '''"""The demo CNN for 8x8 digits, in PyTorch (NCHW input)."""
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, channels: int = 8, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.fc1 = nn.Linear(channels * 64, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))
'''


@dataclasses.dataclass(frozen=True)
class DemoFiles:
    root: str
    config: str
    canonical: str
    test: str
    clients: tuple[tuple[str, str, str, str], ...]  # (name, framework, model, data)


def digits_split(clients: int = 3, *, alpha: float = 0.5, seed: int = 0):
    """(train parts [(x, y)] per client, (x_test, y_test), (x_train, y_train)); x as (N, 1, 8, 8) float32."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    cut = int(len(x) * 0.8)
    (xtr, ytr), test = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    owner = np.empty(len(xtr), dtype=np.int64)
    for c in range(10):  # each class spread over the clients in Dirichlet proportions: non-IID
        idx = np.flatnonzero(ytr == c)
        share = rng.dirichlet([alpha] * clients)
        bounds = (np.cumsum(share)[:-1] * len(idx)).astype(int)
        for k, part in enumerate(np.split(idx, bounds)):
            owner[part] = k
    parts = [(xtr[owner == k], ytr[owner == k]) for k in range(clients)]
    return parts, test, (xtr, ytr)


def keras_net(channels: int = 8, hidden: int = 32, classes: int = 10, seed: int = 0):
    """The same CNN in Keras (NHWC input); BatchNorm's epsilon and momentum as PyTorch's defaults."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1), name="x"),
        keras.layers.Conv2D(channels, 3, padding="same", name="conv"),
        keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn"),
        keras.layers.ReLU(name="relu"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(hidden, activation="relu", name="fc1"),
        keras.layers.Dense(classes, name="fc2"),
    ], name="digits_cnn")


def fed_toml(*, clients, rounds: int = 5, strategy: str = "fedavg", epochs: int = 2, lr: float = 0.1,
             batch_size: int = 16, average_bn: bool = True, dp: dict | None = None, strategy_options: dict | None = None,
             output: str = "federated.onnx", extra_client: dict[int, dict] | None = None,
             secagg: dict | None = None) -> str:
    lines = ["[federation]", 'model = "canonical.onnx"', f"rounds = {rounds}", f'strategy = "{strategy}"',
             f'output = "{output}"', 'test_data = "test.npz"', f"average_bn = {str(average_bn).lower()}", "",
             "[train]", f"epochs = {epochs}", f"batch_size = {batch_size}", f"lr = {lr}", "seed = 0", ""]
    if strategy_options:
        lines += ["[strategy]", *(f"{k} = {v}" for k, v in strategy_options.items()), ""]
    if dp:
        lines += ["[dp]", f'mode = "{dp.get("mode", "server")}"', f"noise_multiplier = {dp['noise_multiplier']}",
                  f"clipping_norm = {dp['clipping_norm']}", ""]
    if secagg is not None:
        lines += ["[secagg]", *(f"{k} = {v}" for k, v in secagg.items()), ""]
    for i, (name, framework, model, data) in enumerate(clients):
        lines += ["[[client]]", f'name = "{name}"', f'framework = "{framework}"', f'model = "{model}"', f'data = "{data}"']
        lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in (extra_client or {}).get(i, {}).items()]
        lines.append("")
    return "\n".join(lines)


def write_demo(out: str | Path, *, rounds: int = 5, alpha: float = 0.5, seed: int = 0, **toml) -> DemoFiles:
    """Write the demo federation into ``out`` (created); returns where each part is."""
    from modelport.convert.run import convert
    from modelport.federated.mapping import canonical_from
    from modelport.quiet import quiet

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    parts, (xte, yte), _ = digits_split(3, alpha=alpha, seed=seed)
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    (root / "net.py").write_text(NET_PY)
    with quiet():  # the canonical: the Keras model lowered layer by layer (NHWC input, BatchNorm a node of its own)
        keras_net(seed=seed).save(root / "keras_client.keras")
        canonical_from(root / "keras_client.keras", root / "canonical.onnx")
        convert(root / "canonical.onnx", "torch", root / "generated")  # what `modelport convert --to torch` writes
    np.savez(root / "test.npz", x=nhwc(xte), y=yte)
    (xa, ya), (xb, yb), (xc, yc) = parts
    np.savez(root / "keras_client.npz", x=nhwc(xa), y=ya)
    np.savez(root / "torch_client.npz", x=xb, y=yb)  # NCHW, as the PyTorch module takes it
    np.savez(root / "generated_client.npz", x=nhwc(xc), y=yc)  # the canonical layout
    clients = (("keras-client", "keras", "keras_client.keras", "keras_client.npz"),
               ("torch-client", "torch", "net.py:Net", "torch_client.npz"),
               ("generated-client", "generated", "generated", "generated_client.npz"))
    (root / "fed.toml").write_text(fed_toml(clients=clients, rounds=rounds, **toml))
    return DemoFiles(str(root), str(root / "fed.toml"), str(root / "canonical.onnx"), str(root / "test.npz"), clients)
