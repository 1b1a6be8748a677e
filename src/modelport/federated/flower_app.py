"""The Flower apps of `modelport federate`: a ServerApp and a ClientApp, run in the `flower` toolchain.

This module runs inside the toolchain's python (flwr, torch, tensorflow, onnx, onnxruntime,
numpy), never in modelport's main environment: it imports only this package's ``mapping``
(numpy at import time) and, inside functions, the toolchain's packages. `modelport federate`
copies it, ``mapping.py`` and ``errors.py`` into a generated Flower app directory (a FAB:
pyproject.toml with ``[tool.flwr.app.components]``), so ``flwr run`` and the simulation engine
load it as ``modelport.federated.flower_app`` without modelport being installed there.

Everything a run needs is in its plan (``plan.json``, written by ``modelport.federated.run``):
the run config's ``plan`` key, else ``$MODELPORT_FED_PLAN``, names it.

The server sends the canonical parameters (the ONNX initializers, by name); a client maps them
to its framework's layout with its verified ``ParamMapping``, trains, maps back and replies with
exactly the keys it was sent, in their order, plus its metrics. Batch-norm statistics are not
sent unless the plan says ``average_bn`` (FedBN: each client keeps its own, on disk in the run
directory between rounds). The server evaluates the global model on the plan's test data with
onnxruntime after every round (the canonical ONNX with its initializers replaced) and appends
one JSON line per round to ``progress.jsonl``; at the end it writes ``final.npz`` and
``history.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelport.federated import local as _local  # the app directory carries both (numpy-only imports)
from modelport.federated import mapping as _mapping

if TYPE_CHECKING:
    from flwr.app import Context, Message  # undeclared-ok: runs in the flower toolchain
    from flwr.clientapp import ClientApp  # undeclared-ok: runs in the flower toolchain
    from flwr.serverapp import Grid, ServerApp  # undeclared-ok: runs in the flower toolchain

# flwr is imported inside functions, and the app objects (server_app, client_app, client_app_secagg) are built
# at the end when flwr is there, so that modelport's main environment can import this module too.

FRAMEWORKS = _local.FRAMEWORKS
PLAN_ENV = "MODELPORT_FED_PLAN"


# ----------------------------------------------------------------------------------------------- plan


def load_plan(context: Context | None = None) -> dict:
    path = None
    if context is not None:
        path = context.run_config.get("plan")
    path = path or os.environ.get(PLAN_ENV)
    if not path:
        raise RuntimeError(f"no federation plan: set the run config key 'plan' or ${PLAN_ENV}")
    return json.loads(Path(str(path)).read_text(encoding="utf-8"))


def _append(path: str, doc: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(doc) + "\n")
        fh.flush()


# --------------------------------------------------------------------------------------------- client

def _client_index(context: Context, plan: dict) -> int:
    cfg = context.node_config
    if "client-index" in cfg:
        return int(cfg["client-index"])
    return int(cfg["partition-id"])  # the simulation engine numbers its supernodes


def local_round(context: Context, canonical: dict[str, np.ndarray], config: dict) -> tuple[dict, dict]:
    """One client round: canonical -> local, train, local -> canonical. Returns (exactly the canonical keys
    given, in their order; the metrics)."""
    plan = load_plan(context)
    index = _client_index(context, plan)
    spec = plan["clients"][index]
    framework = str(context.node_config.get("framework", spec["framework"]))
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r} in the node config (known: {', '.join(FRAMEWORKS)})")
    server_round = int(config["server-round"])
    if spec.get("fail_at_round") and server_round >= int(spec["fail_at_round"]):
        raise RuntimeError(f"client {spec['name']!r} stopped in round {server_round} (fail_at_round)")
    mapping = _mapping.ParamMapping.from_json(Path(spec["mapping"]).read_text(encoding="utf-8"))
    net = _local.load_model(framework, str(context.node_config.get("model", spec["model"])), spec.get("weights"))
    data = np.load(str(context.node_config.get("data", spec["data"])))
    x, y = np.ascontiguousarray(data[spec["x_key"]], dtype=np.float32), np.asarray(data[spec["y_key"]]).astype(np.int64)

    keys = list(canonical)
    local = _mapping.read_local(framework, net)
    state_file = Path(plan["out_dir"]) / f"client-{index}-local.npz"
    if state_file.is_file():  # what stays on the client (FedBN statistics) from its last round
        with np.load(state_file) as previous:
            local.update({k: previous[k] for k in previous.files})
    full = mapping.to_canonical(local, include_bn=True)  # what the server does not send stays as it is here
    full.update(canonical)
    local.update(mapping.to_local(full))
    _mapping.write_local(framework, net, local)

    train = plan["train"]
    loss, acc = _local.train_local(framework, net, x, y, epochs=int(config.get("epochs", train["epochs"])),
                            batch_size=int(train["batch_size"]), lr=float(config.get("lr", train["lr"])),
                            mu=float(config.get("proximal-mu", 0.0)), seed=int(train["seed"]) * 1000 + server_round * 10 + index)
    local = _mapping.read_local(framework, net)
    back = mapping.to_canonical(local, include_bn=bool(plan["average_bn"]))
    missing = [k for k in keys if k not in back]
    if missing:
        raise RuntimeError(f"client {spec['name']!r} cannot send {missing[0]!r}: its mapping has no such tensor")
    sent_local = {e.local for e in mapping.entries if e.canonical in canonical}
    kept = {k: v for k, v in local.items() if k not in sent_local}
    tmp = state_file.with_suffix(".tmp.npz")
    np.savez(tmp, **kept)
    os.replace(tmp, state_file)

    back = {k: np.ascontiguousarray(back[k], dtype=canonical[k].dtype) for k in keys}
    parity = mapping.parity or {}
    metrics = {
        "num-examples": int(len(x)),
        "train-loss": float(loss),
        "train-accuracy": float(acc),
        "mapping-max-abs-err": float(parity.get("max_abs", 0.0)),
        "mapping-round-trip-exact": int(bool(parity.get("round_trip_exact", True))),
        "proximal-mu": float(config.get("proximal-mu", 0.0)),
        "client-index": index,
    }
    return back, metrics


def _train(msg: Message, context: Context) -> Message:
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict  # undeclared-ok: runs in the flower toolchain

    sent = msg.content["arrays"]
    back, metrics = local_round(context, {k: sent[k].numpy() for k in sent.keys()}, dict(msg.content["config"]))
    arrays = ArrayRecord(array_dict={k: Array(v) for k, v in back.items()})
    return Message(content=RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """Map canonical -> local, train, map back; client-side DP clips the update with Flower's mod."""
    if "clipping_norm" in msg.content["config"]:  # DifferentialPrivacyClientSideFixedClipping sent it
        from flwr.clientapp.mod import fixedclipping_mod  # undeclared-ok: runs in the flower toolchain

        return fixedclipping_mod(msg, context, _train)
    return _train(msg, context)


# --------------------------------------------------------------------------------------------- server


class Evaluator:
    """Accuracy and loss of the canonical ONNX with given initializers on the plan's test data (onnxruntime)."""

    def __init__(self, plan: dict) -> None:
        import onnx  # undeclared-ok: runs in the flower toolchain

        self.model = onnx.load(plan["canonical"])
        test = plan.get("test")
        self.data = None
        if test:
            with np.load(test["path"]) as d:
                self.data = (np.ascontiguousarray(d[test["x_key"]], dtype=np.float32), np.asarray(d[test["y_key"]]).astype(np.int64))
        self.input = plan["input_name"]

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict | None:
        if self.data is None:
            return None
        import onnxruntime as ort  # undeclared-ok: runs in the flower toolchain
        from onnx import numpy_helper  # undeclared-ok: runs in the flower toolchain

        m = type(self.model)()
        m.CopyFrom(self.model)
        for init in m.graph.initializer:
            if init.name in arrays:
                init.CopyFrom(numpy_helper.from_array(np.asarray(arrays[init.name]), init.name))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        x, y = self.data
        logits = sess.run(None, {self.input: x})[0]
        return {"accuracy": float((logits.argmax(axis=1) == y).mean()), "loss": _local.cross_entropy(logits, y)}


def make_strategy(plan: dict):
    from flwr.serverapp import strategy as st  # undeclared-ok: runs in the flower toolchain

    n = len(plan["clients"])
    common = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_evaluate_nodes=0,
                  min_available_nodes=n)
    opts = dict(plan.get("strategy_options") or {})
    name = plan["strategy"]
    if name == "fedavg":
        strategy = st.FedAvg(**common)
    elif name == "fedprox":
        strategy = st.FedProx(**common, proximal_mu=float(opts.get("proximal_mu", 0.1)))
    elif name == "fedadam":
        strategy = st.FedAdam(**common, **{k: float(opts[k]) for k in ("eta", "eta_l", "beta_1", "beta_2", "tau") if k in opts})
    else:
        raise ValueError(f"unknown strategy {name!r}")
    dp = plan.get("dp")
    if dp:
        wrapper = (st.DifferentialPrivacyServerSideFixedClipping if dp["mode"] == "server"
                   else st.DifferentialPrivacyClientSideFixedClipping)
        strategy = wrapper(strategy, noise_multiplier=float(dp["noise_multiplier"]),
                           clipping_norm=float(dp["clipping_norm"]), num_sampled_clients=n)
    return strategy


def main(grid: Grid, context: Context) -> None:
    """The ServerApp's main: the strategy by name (DP-wrapped if asked), rounds, evaluation, the result."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord  # undeclared-ok: runs in the flower toolchain

    plan = load_plan(context)
    if plan.get("secagg"):
        return _main_secagg(grid, context, plan)
    with np.load(plan["initial"]) as d:
        initial = {k: d[k] for k in plan["keys"]}
    strategy = make_strategy(plan)
    evaluate = Evaluator(plan)
    rounds: dict[int, dict] = {}
    started = time.perf_counter()

    inner = strategy.aggregate_train

    def aggregate_train(server_round: int, replies):
        replies = list(replies)
        row = rounds.setdefault(server_round, {"round": server_round})
        row["replies"] = sum(1 for m in replies if not m.has_error())
        row["failures"] = [str(m.error.reason).strip().splitlines()[-1][:300] if m.error.reason else f"error {m.error.code}"
                           for m in replies if m.has_error()]
        clients = {}
        for m in replies:
            if not m.has_error():
                metrics = dict(m.content["metrics"])
                clients[plan["clients"][int(metrics["client-index"])]["name"]] = {
                    k: metrics[k] for k in ("num-examples", "train-loss", "train-accuracy", "mapping-max-abs-err", "proximal-mu")}
        row["clients"] = clients
        return inner(server_round, replies)

    strategy.aggregate_train = aggregate_train  # records each round's replies, then aggregates as the strategy does

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        res = evaluate({k: arrays[k].numpy() for k in arrays.keys()})
        row = rounds.setdefault(server_round, {"round": server_round})
        row.update({"seconds": round(time.perf_counter() - started, 2), **(res or {})})
        row.setdefault("replies", len(plan["clients"]) if server_round == 0 else 0)
        row.setdefault("failures", [])
        _append(plan["progress"], row)
        return MetricRecord(res) if res else None

    train = plan["train"]
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(array_dict={k: Array(v) for k, v in initial.items()}),
                            num_rounds=int(plan["rounds"]), timeout=float(plan["round_timeout"]),
                            train_config=ConfigRecord({"epochs": int(train["epochs"]), "lr": float(train["lr"])}),
                            evaluate_fn=evaluate_fn)
    final = {k: result.arrays[k].numpy() for k in result.arrays.keys()} if result.arrays is not None else initial
    extra = {}
    if dp := plan.get("dp"):
        spent = getattr(strategy, "privacy_spent", None)
        extra["dp"] = {**dp, "privacy_spent": str(spent) if spent is not None else None}
    _finish(plan, rounds, final, started, extra)


def _finish(plan: dict, rounds: dict, final: dict, started: float, extra: dict | None = None) -> None:
    tmp = Path(plan["final"]).with_suffix(".tmp.npz")
    np.savez(tmp, **final)
    os.replace(tmp, plan["final"])
    history = {"rounds": [rounds[r] for r in sorted(rounds)], "seconds": round(time.perf_counter() - started, 2),
               **(extra or {})}
    Path(plan["history"]).write_text(json.dumps(history, indent=2), encoding="utf-8")


# ------------------------------------------------------------------------------------- secure aggregation


def _main_secagg(grid: Grid, context: Context, plan: dict) -> None:
    """FedAvg under Flower's SecAgg+ workflow: the server only ever sees the sum of the clients' masked
    updates. SecAgg+ runs in Flower's legacy (NumPyClient) API: the workflow drives a legacy strategy."""
    from flwr.common import ndarrays_to_parameters  # undeclared-ok: runs in the flower toolchain
    from flwr.server import LegacyContext, ServerConfig  # undeclared-ok: runs in the flower toolchain
    from flwr.server.strategy import FedAvg as LegacyFedAvg  # undeclared-ok: runs in the flower toolchain
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # undeclared-ok: runs in the flower toolchain

    keys, n = plan["keys"], len(plan["clients"])
    with np.load(plan["initial"]) as d:
        initial = [d[k] for k in keys]
    evaluate = Evaluator(plan)
    rounds: dict[int, dict] = {}
    latest = {"arrays": dict(zip(keys, initial))}
    started = time.perf_counter()

    def fit_metrics(results):
        server_round = max((r for r in rounds), default=0) + 1
        clients = {plan["clients"][int(m["client-index"])]["name"]: {
            k: m[k] for k in ("num-examples", "train-loss", "train-accuracy", "mapping-max-abs-err", "proximal-mu")}
            for _, m in results}
        missing = n - len(results)
        rounds[server_round] = {"round": server_round, "replies": len(results), "clients": clients,
                                "failures": [f"{missing} client(s) dropped out of the SecAgg+ round"] if missing else []}
        return {}

    dtypes = [a.dtype for a in initial]

    def evaluate_fn(server_round, ndarrays, config):  # SecAgg+ dequantizes to float64: back to each tensor's dtype
        arrays = {k: np.asarray(a, dtype=t) for k, a, t in zip(keys, ndarrays, dtypes)}
        latest["arrays"] = arrays
        res = evaluate(arrays)
        row = rounds.setdefault(server_round, {"round": server_round, "replies": n if server_round == 0 else 0,
                                               "failures": []})
        row.update({"seconds": round(time.perf_counter() - started, 2), **(res or {})})
        _append(plan["progress"], row)
        return (res["loss"], {"accuracy": res["accuracy"]}) if res else None

    train = plan["train"]
    strategy = LegacyFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_evaluate_clients=0,
                            min_available_clients=n, initial_parameters=ndarrays_to_parameters(initial),
                            evaluate_fn=evaluate_fn, fit_metrics_aggregation_fn=fit_metrics,
                            on_fit_config_fn=lambda r: {"server-round": r, "epochs": int(train["epochs"]),
                                                        "lr": float(train["lr"])})
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=int(plan["rounds"]),
                                                                round_timeout=float(plan["round_timeout"])),
                           strategy=strategy)
    sa = plan["secagg"]
    DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=sa["num_shares"],
                                                    reconstruction_threshold=sa["reconstruction_threshold"],
                                                    clipping_range=float(sa.get("clipping_range", 8.0))))(grid, legacy)
    _finish(plan, rounds, latest["arrays"], started, {"secagg": sa})


def _secagg_client(context: Context):
    from flwr.client import NumPyClient  # undeclared-ok: runs in the flower toolchain

    class SecAggClient(NumPyClient):
        def fit(self, parameters, config):
            keys = load_plan(context)["keys"]
            back, metrics = local_round(context, dict(zip(keys, parameters)), dict(config))
            return [back[k] for k in keys], int(metrics["num-examples"]), metrics

    return SecAggClient().to_client()


def _secagg_app() -> ClientApp:
    from flwr.client.mod import secaggplus_mod  # undeclared-ok: runs in the flower toolchain
    from flwr.clientapp import ClientApp  # undeclared-ok: runs in the flower toolchain

    return ClientApp(client_fn=_secagg_client, mods=[secaggplus_mod])


def _client_app() -> ClientApp:
    from flwr.clientapp import ClientApp  # undeclared-ok: runs in the flower toolchain

    app = ClientApp()
    app.train()(train)
    return app


def _server_app() -> ServerApp:
    from flwr.serverapp import ServerApp  # undeclared-ok: runs in the flower toolchain

    app = ServerApp()
    app.main()(main)
    return app


# The Flower app components: plain top-level assignments (flwr finds them by reading this file's syntax
# tree); None in modelport's main environment, which imports this module too but has no flwr.
_HAVE_FLWR = importlib.util.find_spec("flwr") is not None
server_app = _server_app() if _HAVE_FLWR else None
client_app = _client_app() if _HAVE_FLWR else None
client_app_secagg = _secagg_app() if _HAVE_FLWR else None


# ------------------------------------------------------------------------------------------ simulation


def _patient_ray(seconds: float = 180.0) -> None:
    """Ray waits a fixed 30 s for its raylet to register (ray/_private/node.py), too little on a loaded
    machine: its node lookup retries for up to ``seconds`` instead (the raylet's own wait for its agents
    is raised through RAY_agent_register_timeout_ms, set by modelport.federated.run)."""
    import ray._private.services as services  # undeclared-ok: runs in the flower toolchain

    lookup = services.get_node
    if getattr(lookup, "_modelport_patient", False):
        return

    def get_node(*args, **kwargs):
        deadline = time.monotonic() + seconds
        while True:
            try:
                return lookup(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    get_node._modelport_patient = True
    services.get_node = get_node


def simulate(plan_path: str) -> None:
    """Run the plan on the simulation engine (Ray): one virtual supernode per client."""
    from flwr.simulation import run_simulation  # undeclared-ok: runs in the flower toolchain

    os.environ[PLAN_ENV] = plan_path
    plan = load_plan()
    _patient_ray()
    cpus = max(1, int(plan.get("cpus") or (os.cpu_count() or 1)))
    clients = _secagg_app() if plan.get("secagg") else _client_app()
    run_simulation(server_app=_server_app(), client_app=clients, num_supernodes=len(plan["clients"]),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                                                 "log_to_driver": False}})


if __name__ == "__main__":
    import sys

    simulate(sys.argv[1])
