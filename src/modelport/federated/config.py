"""fed.toml: what `modelport federate` runs.

```toml
[federation]
model = "global.onnx"      # the architecture: its ONNX initializers are the canonical parameters
                           # (a Keras/PyTorch/... model is converted to ONNX first)
rounds = 5
strategy = "fedavg"        # fedavg | fedprox | fedadam
output = "federated.onnx"  # default: <fed.toml's stem>.onnx beside it
test_data = "test.npz"     # optional: the server evaluates the global model on it every round
average_bn = false         # FedBN (default): batch-norm statistics stay on each client
round_timeout = 600        # seconds the server waits for a round's replies

[strategy]                 # options of the strategy: proximal_mu (fedprox); eta, eta_l, beta_1, beta_2, tau (fedadam)
proximal_mu = 0.1

[train]                    # each client, each round: SGD on cross-entropy over the model's logits
epochs = 1
batch_size = 32
lr = 0.05
seed = 0

[dp]                       # optional: Flower's fixed-clipping DP wrappers
mode = "server"            # server | client (clipping on the client, noise on the server)
noise_multiplier = 0.1
clipping_norm = 1.0

[secagg]                   # optional: Flower's SecAgg+ workflow (fedavg without dp): the server sees only
num_shares = 3             # the sum of the masked updates; default: every client; threshold default: all but one
reconstruction_threshold = 2

[[client]]                 # one per client
name = "hospital-a"
framework = "keras"        # keras | torch | generated
model = "a.keras"          # keras: .keras/.h5; torch: file.py:Class (+ weights) or TorchScript;
                           # generated: a directory from `modelport convert X.onnx --to torch`
weights = "a.pt"           # torch module files only: a state dict (.pt or .safetensors)
data = "a.npz"             # the input array (under the model's input name, or x) and labels (y or labels)
```
Paths are relative to fed.toml's directory. Any error is one line, exit 2.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from modelport.errors import BadInputError

__all__ = ["FRAMEWORKS", "STRATEGIES", "ClientSpec", "DPSpec", "SecAggSpec", "FedConfig", "load_config"]

FRAMEWORKS = ("keras", "torch", "generated")
STRATEGIES = ("fedavg", "fedprox", "fedadam")
_STRATEGY_OPTIONS = {"fedavg": (), "fedprox": ("proximal_mu",), "fedadam": ("eta", "eta_l", "beta_1", "beta_2", "tau")}


@dataclasses.dataclass(frozen=True)
class ClientSpec:
    name: str
    framework: str
    model: str
    data: str
    weights: str | None = None
    fail_at_round: int | None = None  # fault injection: the client raises from this round on (tests, drills)


@dataclasses.dataclass(frozen=True)
class DPSpec:
    mode: str  # "server" | "client"
    noise_multiplier: float
    clipping_norm: float


@dataclasses.dataclass(frozen=True)
class SecAggSpec:
    num_shares: int
    reconstruction_threshold: int


@dataclasses.dataclass(frozen=True)
class FedConfig:
    path: str
    model: str
    rounds: int
    strategy: str
    output: str
    clients: tuple[ClientSpec, ...]
    strategy_options: tuple[tuple[str, float], ...] = ()
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    seed: int = 0
    test_data: str | None = None
    average_bn: bool = False
    round_timeout: float = 600.0
    dp: DPSpec | None = None
    secagg: SecAggSpec | None = None

    def to_dict(self) -> dict:
        from modelport.artifact import to_jsonable

        return to_jsonable(self)


def _fail(path: Path, message: str) -> BadInputError:
    return BadInputError(message, path=path)


def _table(doc: dict, key: str, path: Path, known: tuple[str, ...]) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise _fail(path, f"[{key}] must be a table")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise _fail(path, f"[{key}]: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    return value


def _typed(table: dict, key: str, kind: type | tuple, where: str, path: Path, default: Any = None, *,
           positive: bool = False) -> Any:
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise _fail(path, f"{where}.{key} must be {names}, not {value!r}")
    if positive and value <= 0:
        raise _fail(path, f"{where}.{key} must be > 0, not {value!r}")
    return value


def _file(base: Path, value: str, where: str, path: Path, *, module: bool = False) -> str:
    if not value:
        raise _fail(path, f"{where} is empty")
    if module and ".py:" in value:
        file, _, cls = value.rpartition(":")
        resolved = (base / file).resolve()
        if not resolved.is_file():
            raise _fail(path, f"{where}: no such file {resolved}")
        return f"{resolved}:{cls}"
    resolved = (base / value).resolve()
    if not resolved.exists():
        raise _fail(path, f"{where}: no such file {resolved}")
    return str(resolved)


def load_config(path: str | Path) -> FedConfig:
    """Read and check fed.toml; BadInputError (exit 2, one line) on anything wrong."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _fail(path, f"cannot read the federation config: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"not valid TOML: {' '.join(str(exc).split())}") from None
    base = path.resolve().parent
    unknown = sorted(set(doc) - {"federation", "strategy", "train", "dp", "secagg", "client"})
    if unknown:
        raise _fail(path, f"unknown table [{unknown[0]}] (known: federation, strategy, train, dp, secagg, client)")
    fed = _table(doc, "federation", path, ("model", "rounds", "strategy", "output", "test_data", "average_bn",
                                           "round_timeout"))
    if "model" not in fed:
        raise _fail(path, "[federation] needs model = the architecture (an ONNX file, or a model modelport converts)")
    model = _file(base, _typed(fed, "model", str, "federation", path), "federation.model", path, module=True)
    rounds = _typed(fed, "rounds", int, "federation", path, 3, positive=True)
    strategy = _typed(fed, "strategy", str, "federation", path, "fedavg").lower()
    if strategy not in STRATEGIES:
        raise _fail(path, f"federation.strategy: unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    output = _typed(fed, "output", str, "federation", path) or f"{path.stem}.onnx"
    output = str((base / output).resolve())
    test = _typed(fed, "test_data", str, "federation", path)
    test = _file(base, test, "federation.test_data", path) if test is not None else None
    st = _table(doc, "strategy", path, _STRATEGY_OPTIONS[strategy] or ("",))
    options = tuple((k, float(_typed(st, k, (int, float), "strategy", path))) for k in sorted(st))
    train = _table(doc, "train", path, ("epochs", "batch_size", "lr", "seed"))
    dp = None
    if "dp" in doc:
        d = _table(doc, "dp", path, ("mode", "noise_multiplier", "clipping_norm"))
        mode = _typed(d, "mode", str, "dp", path, "server")
        if mode not in ("server", "client"):
            raise _fail(path, f"dp.mode must be server or client, not {mode!r}")
        noise = _typed(d, "noise_multiplier", (int, float), "dp", path)
        clip = _typed(d, "clipping_norm", (int, float), "dp", path, positive=True)
        if noise is None or clip is None:
            raise _fail(path, "[dp] needs noise_multiplier and clipping_norm")
        if noise < 0:
            raise _fail(path, f"dp.noise_multiplier must be >= 0, not {noise!r}")
        dp = DPSpec(mode, float(noise), float(clip))
    raw = doc.get("client", [])
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise _fail(path, "client entries must be [[client]] tables")
    if len(raw) < 2:
        raise _fail(path, f"a federation needs at least 2 [[client]] tables, found {len(raw)}")
    clients, names = [], set()
    for i, c in enumerate(raw):
        where = f"client[{i}]"
        unknown = sorted(set(c) - {"name", "framework", "model", "weights", "data", "fail_at_round"})
        if unknown:
            raise _fail(path, f"{where}: unknown key {unknown[0]!r} (known: name, framework, model, weights, data)")
        name = _typed(c, "name", str, where, path, f"client-{i}")
        if name in names:
            raise _fail(path, f"{where}: the name {name!r} is used twice")
        names.add(name)
        framework = _typed(c, "framework", str, where, path)
        if framework is None:
            raise _fail(path, f"{where} ({name}): needs framework = keras, torch or generated")
        if framework not in FRAMEWORKS:
            raise _fail(path, f"{where} ({name}): unknown framework {framework!r} (known: {', '.join(FRAMEWORKS)})")
        for key in ("model", "data"):
            if key not in c:
                raise _fail(path, f"{where} ({name}): needs {key} = a path")
        weights = _typed(c, "weights", str, where, path)
        clients.append(ClientSpec(
            name, framework, _file(base, _typed(c, "model", str, where, path), f"{where}.model", path, module=True),
            _file(base, _typed(c, "data", str, where, path), f"{where}.data", path),
            _file(base, weights, f"{where}.weights", path) if weights is not None else None,
            _typed(c, "fail_at_round", int, where, path, positive=True)))
    secagg = None
    if "secagg" in doc:
        sa = _table(doc, "secagg", path, ("num_shares", "reconstruction_threshold"))
        if strategy != "fedavg" or dp is not None:
            raise _fail(path, "[secagg] runs with strategy fedavg and without [dp] (Flower's SecAgg+ workflow)")
        shares = _typed(sa, "num_shares", int, "secagg", path, len(clients), positive=True)
        threshold = _typed(sa, "reconstruction_threshold", int, "secagg", path, max(2, len(clients) - 1), positive=True)
        if not 2 <= shares <= len(clients):
            raise _fail(path, f"secagg.num_shares must be between 2 and the number of clients ({len(clients)}), not {shares}")
        if not 2 <= threshold <= shares:
            raise _fail(path, f"secagg.reconstruction_threshold must be between 2 and num_shares ({shares}), not {threshold}")
        secagg = SecAggSpec(shares, threshold)
    return FedConfig(
        str(path.resolve()), model, rounds, strategy, output, tuple(clients), options,
        epochs=_typed(train, "epochs", int, "train", path, 1, positive=True),
        batch_size=_typed(train, "batch_size", int, "train", path, 32, positive=True),
        lr=float(_typed(train, "lr", (int, float), "train", path, 0.05, positive=True)),
        seed=_typed(train, "seed", int, "train", path, 0),
        test_data=test, average_bn=bool(_typed(fed, "average_bn", bool, "federation", path, False)),
        round_timeout=float(_typed(fed, "round_timeout", (int, float), "federation", path, 600.0, positive=True)),
        dp=dp, secagg=secagg)
