"""`modelport federate`: prepare a federation, run it on Flower (simulation or deployment), write the global model.

1. *Prepare* (main environment): the canonical model (the ONNX named by fed.toml, or the model
   converted to ONNX), each client's verified ``ParamMapping`` (``mapping.derive``: the local model
   computes what the canonical ONNX computes, the round trip is exact), the check that every
   client sends the same canonical tensors and that its data fits the model's input, the initial
   parameters, a plan (``plan.json``) and a Flower app directory (``app/``: pyproject.toml with
   ``[tool.flwr.app.components]``, and this package's ``flower_app.py`` + ``mapping.py``).
2. *Run* in the `flower` toolchain's python: ``--simulate`` on Flower's simulation engine (Ray,
   one virtual supernode per client), or ``--deploy``: ``flower-superlink`` and one
   ``flower-supernode`` per client (its node config names the client's framework, model and data)
   as processes on localhost, then ``flwr run``; all are stopped when the run ends, fails or is
   interrupted. The server appends a line per round to ``progress.jsonl``, read here as it comes.
3. *Write* the aggregated parameters into the canonical ONNX (its initializers replaced, lineage
   appended), atomically, at fed.toml's output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modelport.errors import BadInputError, ModelportError
from modelport.federated.config import FedConfig, load_config

__all__ = ["RoundResult", "ClientResult", "FederateReport", "FederationFailedError", "prepare", "federate",
           "write_global"]

TOOLCHAIN = "flower"
_HERE = Path(__file__).resolve().parent


class FederationFailedError(ModelportError):
    """The Flower run itself failed (exit 1); the message ends with its last log line."""

    exit_code = 1


@dataclasses.dataclass(frozen=True)
class RoundResult:
    round: int
    accuracy: float | None  # the global model on the test data (None: no test_data)
    loss: float | None
    replies: int
    failures: tuple[str, ...]
    clients: tuple[tuple[str, float, float], ...]  # (client, train loss, train accuracy) of those that replied
    seconds: float


@dataclasses.dataclass(frozen=True)
class ClientResult:
    name: str
    framework: str
    examples: int
    mapping_max_abs_err: float
    round_trip_exact: bool


@dataclasses.dataclass(frozen=True)
class FederateReport:
    config: str
    mode: str  # simulate | deploy
    strategy: str
    rounds: tuple[RoundResult, ...]  # round 0: the initial model
    clients: tuple[ClientResult, ...]
    output: str
    keys: int  # canonical tensors averaged
    dp: dict | None
    seconds: float
    warnings: tuple[str, ...] = ()
    secagg: dict | None = None  # SecAgg+ shares and reconstruction threshold

    @property
    def final_accuracy(self) -> float | None:
        return self.rounds[-1].accuracy if self.rounds else None

    def to_dict(self) -> dict:
        from modelport.artifact import to_jsonable

        doc = to_jsonable(self)
        doc["final_accuracy"] = self.final_accuracy
        return doc


# ---------------------------------------------------------------------------------------------- prepare


def _onnx_facts(path: Path) -> tuple[str, tuple, dict[str, Any]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BadInputError(f"the federated model must have one input, it has {len(inputs)}", path=path)
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim)
    return inputs[0].name, dims, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _shape(dims) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"


def _fits(client, x, x_key: str, n_classes_seen: int) -> None:
    """Run the client's own model on two of its samples: data that does not fit is exit 2 naming the input."""
    from modelport.federated import local, mapping
    from modelport.quiet import quiet

    who = f"client {client.name!r} ({client.framework})"
    try:
        with quiet():
            net = mapping.load_local(client.framework, client.model, weights=client.weights)
    except ModelportError as exc:
        raise type(exc)(f"{who}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  (any loader failure is an unreadable model)
        raise BadInputError(f"{who}: cannot load the model: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                            path=client.model) from None
    want = getattr(net, "input_shape", None) if client.framework == "keras" else None
    if isinstance(want, tuple) and (len(want) != x.ndim or any(w is not None and w != s for w, s in zip(want[1:], x.shape[1:]))):
        raise BadInputError(f"{who}: the model's input {x_key!r} takes shape {_shape(want)}, "
                            f"the data has {_shape(x.shape)}", path=client.data)
    try:
        with quiet():
            out = local.forward(client.framework, net, x[:2].astype("float32"))
    except Exception as exc:  # noqa: BLE001  (a shape the model cannot take)
        raise BadInputError(f"{who}: the model cannot take input {x_key!r} of shape {_shape(x.shape)}: "
                            f"{' '.join(str(exc).split())[:200]}", path=client.data) from None
    if out.ndim != 2 or out.shape[1] < n_classes_seen:
        raise BadInputError(f"{who}: the model's output {tuple(out.shape)} is not one logit per class for the "
                            f"{n_classes_seen} classes the labels name", path=client.data)
    return net


def _data(path: str, input_name: str, dims: tuple | None, who: str):
    import numpy as np

    try:
        d = np.load(path)
        files = list(d.files)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{who}: unreadable data (.npz with the inputs and labels): {exc}", path=path) from None
    x_key = input_name if input_name in files else "x" if "x" in files else None
    y_key = next((k for k in ("y", "labels", "label") if k in files), None)
    if x_key is None or y_key is None:
        raise BadInputError(f"{who}: the data needs the input (as {input_name!r} or 'x') and the labels (as 'y' or "
                            f"'labels'); it has {', '.join(files) or 'nothing'}", path=path)
    x, y = d[x_key], d[y_key]
    if dims is not None and (x.ndim != len(dims) or any(v is not None and v != s for v, s in zip(dims[1:], x.shape[1:]))):
        raise BadInputError(f"{who}: input {input_name!r} of the model takes shape {_shape(dims)}, the data has "
                            f"{_shape(x.shape)} (under {x_key!r})", path=path)
    if y.ndim != 1 or len(y) != len(x):
        raise BadInputError(f"{who}: labels {y_key!r} must be one integer class per sample ({len(x)}), "
                            f"they have shape {tuple(y.shape)}", path=path)
    if not np.issubdtype(y.dtype, np.integer):
        raise BadInputError(f"{who}: labels {y_key!r} must be integers, they are {y.dtype}", path=path)
    return x_key, y_key, x, y


def _canonical(cfg: FedConfig, work: Path) -> Path:
    if cfg.model.endswith(".onnx"):
        return Path(cfg.model)
    from modelport.federated import mapping

    return Path(mapping.canonical_from(Path(cfg.model), work / "canonical.onnx"))


def _derive(canonical: Path, client, net):
    from modelport.federated import mapping
    from modelport.quiet import quiet

    try:
        with quiet():
            return mapping.derive(canonical, client.model, client.framework, weights=client.weights, model=net)
    except ModelportError as exc:
        raise type(exc)(f"client {client.name!r} ({client.framework}): {exc}") from None


def _app_dir(app: Path, plan_path: Path, *, secagg: bool = False) -> None:
    """A Flower app directory: the ServerApp/ClientApp module and what it imports, nothing else."""
    pkg = app / "modelport"
    (pkg / "federated").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""modelport\'s Flower apps (a copy made by `modelport federate`)."""\n')
    shutil.copyfile(_HERE.parent / "errors.py", pkg / "errors.py")
    (pkg / "federated" / "__init__.py").write_text('"""Federated learning across frameworks."""\n')
    for name in ("flower_app.py", "local.py", "mapping.py"):
        shutil.copyfile(_HERE / name, pkg / "federated" / name)
    (app / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "modelport-federation"
version = "1.0.0"
description = "A federation prepared by modelport federate"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "modelport"

[tool.flwr.app.components]
serverapp = "modelport.federated.flower_app:server_app"
clientapp = "modelport.federated.flower_app:{'client_app_secagg' if secagg else 'client_app'}"

[tool.flwr.app.config]
plan = {json.dumps(str(plan_path))}
""")


def prepare(cfg: FedConfig, work: Path) -> tuple[Path, list[ClientResult]]:
    """Write the plan, the initial parameters and the Flower app into ``work``; returns the plan's path."""
    import numpy as np

    canonical = _canonical(cfg, work)
    input_name, dims, inits = _onnx_facts(canonical)
    # a client's data is in its own model's layout (a Keras client: NHWC); the test data in the canonical one
    data = [_data(c.data, input_name, None, f"client {c.name!r}") for c in cfg.clients]
    test = _data(cfg.test_data, input_name, dims, "test_data") if cfg.test_data else None
    nets = [_fits(c, x, x_key, int(y.max()) + 1 if len(y) else 0) for c, (x_key, _, x, y) in zip(cfg.clients, data)]
    results, mappings, keys0 = [], [], None
    for client, (_, _, x, _), net in zip(cfg.clients, data, nets):
        m = _derive(canonical, client, net)
        keys = list(m.keys(include_bn=cfg.average_bn))
        if keys0 is None:
            keys0, first = keys, client
        elif keys != keys0:
            diff = next((a for a, b in zip(keys, keys0) if a != b), None) or (keys[len(keys0):] or keys0[len(keys):])[0]
            raise BadInputError(f"client {client.name!r} ({client.framework}) and client {first.name!r} "
                                f"({first.framework}) have different architectures: first differing tensor {diff!r}")
        missing = next((k for k in keys if k not in inits), None)
        if missing is not None:
            raise BadInputError(f"client {client.name!r}: tensor {missing!r} is not an initializer of the canonical model",
                                path=canonical)
        path = work / f"mapping-{len(mappings)}.json"
        path.write_text(m.to_json(), encoding="utf-8")
        mappings.append(path)
        parity = m.parity or {}
        results.append(ClientResult(client.name, client.framework, len(x),
                                    float(parity.get("max_abs", 0.0)),
                                    bool(parity.get("round_trip_exact", True))))
    if not keys0:
        raise BadInputError("the canonical model has no trainable parameters to federate", path=canonical)
    np.savez(work / "initial.npz", **{k: inits[k] for k in keys0})
    plan = {
        "rounds": cfg.rounds, "strategy": cfg.strategy, "strategy_options": dict(cfg.strategy_options),
        "train": {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed},
        "dp": dataclasses.asdict(cfg.dp) if cfg.dp else None, "average_bn": cfg.average_bn,
        "secagg": dataclasses.asdict(cfg.secagg) if cfg.secagg else None,
        "canonical": str(canonical), "initial": str(work / "initial.npz"), "keys": keys0, "input_name": input_name,
        "test": {"path": cfg.test_data, "x_key": test[0], "y_key": test[1]} if test else None,
        "clients": [{"name": c.name, "framework": c.framework, "model": c.model, "weights": c.weights,
                     "data": c.data, "x_key": x_key, "y_key": y_key, "mapping": str(mp),
                     "fail_at_round": c.fail_at_round}
                    for c, (x_key, y_key, _, _), mp in zip(cfg.clients, data, mappings)],
        "out_dir": str(work), "progress": str(work / "progress.jsonl"), "history": str(work / "history.json"),
        "final": str(work / "final.npz"), "round_timeout": cfg.round_timeout,
        "cpus": max(1, min(len(cfg.clients), os.cpu_count() or 1)),
    }
    plan_path = work / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=2), encoding="utf-8")
    _app_dir(work / "app", plan_path, secagg=cfg.secagg is not None)
    return plan_path, results


# -------------------------------------------------------------------------------------------------- run


def _env(tc_python: Path, work: Path) -> dict[str, str]:
    from modelport.toolchains.process import child_environ

    env = child_environ()
    home = work / "flwr-home"
    home.mkdir(exist_ok=True)
    env.update({
        "PATH": f"{tc_python.parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(work / "app"), "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
        "MODELPORT_FED_PLAN": str(work / "plan.json"), "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1", "GRPC_VERBOSITY": "ERROR",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "RAY_agent_register_timeout_ms": "180000",
    })
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Processes:
    """Processes started for a run; each in its own process group, all stopped on exit (TERM, then KILL)."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env, self.procs = work, env, []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115  (closed in stop)
        proc = subprocess.Popen(cmd, cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((name, proc, log))
        return proc

    def stop(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc, log in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            with contextlib.suppress(ProcessLookupError):  # what the process left behind in its group
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
        self._strays()

    def _strays(self) -> None:
        """Processes Flower started in sessions of their own (flwr-serverapp, flwr-clientapp): they carry this
        run's plan in their environment."""
        import psutil

        mine = self.env.get("MODELPORT_FED_PLAN")
        strays = []
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and proc.environ().get("MODELPORT_FED_PLAN") == mine:
                    strays.append(proc)
            except (psutil.Error, OSError):
                continue
        for proc in strays:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(strays, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


def _tail(path: Path, n: int = 1) -> str:
    """The most telling line(s) of a log: the last exception or error, else the last line that is not chatter."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith(("Exception:", "RuntimeError:", "ValueError:")) or "Error: " in ln[:60]]
    skip = ("WARNING", "warn", "DEPRECATED", "INFO", "SystemExit")
    useful = errors or [ln for ln in lines if not any(k in ln[:20] for k in skip)] or lines
    return " | ".join(useful[-n:])[:500]


def _follow(progress: Path, seen: int, on_round: Callable[[dict], None] | None) -> int:
    if not progress.is_file():
        return seen
    lines = progress.read_text(encoding="utf-8").splitlines()
    for line in lines[seen:]:
        if line.strip() and on_round is not None:
            on_round(json.loads(line))
    return len(lines)


_CRASHED = ("Simulation Runtime crashed", "An error was encountered. Ending simulation")
_RAY_SLOW = "timed out during startup"  # Ray gives its raylet a fixed 30 s: on a loaded machine, try once more


def _simulate(python: Path, work: Path, env: dict[str, str], on_round, *, attempts: int = 2) -> None:
    log = work / "simulation.log"
    for attempt in range(1, attempts + 1):
        procs = _Processes(work, env)
        try:
            proc = procs.start("simulation", [str(python), "-m", "modelport.federated.flower_app", str(work / "plan.json")])
            seen, crashed = 0, None
            while proc.poll() is None:
                seen = _follow(work / "progress.jsonl", seen, on_round)
                text = log.read_text(errors="replace") if log.is_file() else ""
                if any(c in text for c in _CRASHED):  # the engine gave up but its process may linger
                    crashed = crashed or time.monotonic()
                    if time.monotonic() - crashed > 5:
                        break
                time.sleep(0.5)
            _follow(work / "progress.jsonl", seen, on_round)
        finally:
            procs.stop()
        if proc.returncode == 0 and (work / "history.json").is_file():
            return
        text = log.read_text(errors="replace") if log.is_file() else ""
        if _RAY_SLOW in text and attempt < attempts:
            log.rename(work / f"simulation-attempt-{attempt}.log")
            for stale in [work / "progress.jsonl", *work.glob("client-*-local.npz")]:
                stale.unlink(missing_ok=True)
            continue
        raise FederationFailedError(f"the simulation failed (exit {proc.returncode}): {_tail(log)}")


def _wait_listening(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederationFailedError(f"{what} exited ({proc.returncode}): {_tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FederationFailedError(f"{what} did not listen on port {port} within {timeout:.0f} s: {_tail(log)}")


def _deploy(python: Path, work: Path, env: dict[str, str], plan: dict, on_round) -> None:
    bin_dir = python.parent
    port = _free_port()  # flwr 1.42: one HTTP port for the Runtime, Control and Fleet APIs
    (Path(env["FLWR_HOME"]) / "config.toml").write_text(
        f'[superlink]\ndefault = "modelport"\n\n[superlink.modelport]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    procs = _Processes(work, env)
    try:
        link = procs.start("superlink", [str(bin_dir / "flower-superlink"), "--insecure",
                                         "--host", "127.0.0.1", "--port", str(port)])
        _wait_listening(port, link, "flower-superlink", work / "superlink.log")
        nodes = []
        for i, c in enumerate(plan["clients"]):
            node_config = " ".join(f"{k}={json.dumps(v)}" for k, v in
                                   (("client-index", i), ("framework", c["framework"]), ("model", c["model"]),
                                    ("data", c["data"])))
            nodes.append(procs.start(f"supernode-{i}", [str(bin_dir / "flower-supernode"), "--insecure",
                                                        "--superlink", f"127.0.0.1:{port}",
                                                        "--host", "127.0.0.1", "--port", str(_free_port()),
                                                        "--node-config", node_config]))
        run = procs.start("flwr-run", [str(bin_dir / "flwr"), "run", str(work / "app"), "modelport", "--stream"])
        seen, deadline = 0, None
        while not (work / "history.json").is_file():
            seen = _follow(work / "progress.jsonl", seen, on_round)
            if link.poll() is not None:
                raise FederationFailedError(f"flower-superlink exited ({link.returncode}): {_tail(work / 'superlink.log')}")
            if run.poll() is not None and run.returncode != 0:
                raise FederationFailedError(f"flwr run failed ({run.returncode}): {_tail(work / 'flwr-run.log')}")
            if run.poll() is not None:  # the stream ended: the run is over; its history follows at once
                deadline = deadline or time.monotonic() + 10
                if time.monotonic() > deadline:
                    raise FederationFailedError(f"the run ended without a result: {_tail(work / 'flwr-run.log', 2)}")
            time.sleep(0.5)
        _follow(work / "progress.jsonl", seen, on_round)
    finally:
        procs.stop()


# ------------------------------------------------------------------------------------------------ write


def write_global(canonical: Path, arrays: dict, out: Path, step) -> None:
    """The canonical ONNX with ``arrays`` as its initializers and ``step`` appended to its lineage, at ``out``
    (written beside it, then renamed)."""
    import onnx
    from onnx import numpy_helper

    from modelport.pipeline.lineage import read_lineage, write_lineage

    model = onnx.load(str(canonical))
    for init in model.graph.initializer:
        if init.name in arrays:
            init.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial.onnx", dir=out.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        write_lineage(tmp, "onnx", (*read_lineage(canonical), step))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _round(doc: dict) -> RoundResult:
    clients = tuple((name, float(m.get("train-loss", 0.0)), float(m.get("train-accuracy", 0.0)))
                    for name, m in sorted(dict(doc.get("clients", {})).items()))
    return RoundResult(int(doc["round"]), doc.get("accuracy"), doc.get("loss"), int(doc.get("replies", 0)),
                       tuple(doc.get("failures", ())), clients, float(doc.get("seconds", 0.0)))


@contextlib.contextmanager
def _workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        if path.exists() and any(path.iterdir()):
            raise BadInputError("the work directory must be empty or new", path=path)
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="modelport-federate-") as tmp:
        yield Path(tmp)


def federate(config: str | Path, *, mode: str = "simulate", output: str | None = None, work_dir: str | None = None,
             on_round: Callable[[RoundResult], None] | None = None) -> FederateReport:
    """Run the federation fed.toml describes; returns the report, the global model written at its output.

    Raises BadInputError (exit 2: fed.toml, clients whose architectures differ, data that does not
    fit), ToolchainMissingError (exit 3: the `flower` toolchain is not installed),
    FederationFailedError (exit 1: the Flower run failed).
    """
    from modelport import toolchains
    from modelport.artifact import StepRecord

    if mode not in ("simulate", "deploy"):
        raise BadInputError(f"unknown mode {mode!r} (simulate or deploy)")
    start = time.perf_counter()
    cfg = load_config(config)
    out = Path(output).resolve() if output else Path(cfg.output)
    env_tc = toolchains.require(TOOLCHAIN)
    with _workdir(work_dir) as work:
        plan_path, clients = prepare(cfg, work)
        plan = json.loads(plan_path.read_text())
        env = _env(env_tc.python, work)
        callback = (lambda doc: on_round(_round(doc))) if on_round else None
        if mode == "simulate":
            _simulate(env_tc.python, work, env, callback)
        else:
            _deploy(env_tc.python, work, env, plan, callback)
        history = json.loads((work / "history.json").read_text())
        rounds = tuple(_round(r) for r in history["rounds"])
        import numpy as np

        with np.load(work / "final.npz") as d:
            final = {k: d[k] for k in d.files}
        versions = tuple((k, env_tc.version(k) or "?") for k in ("flwr", "ray", "torch", "tensorflow-cpu"))
        last = rounds[-1] if rounds else None
        acc = f"; accuracy {last.accuracy:.4f}" if last and last.accuracy is not None else ""
        dp = f"; DP {cfg.dp.mode}-side (noise {cfg.dp.noise_multiplier:g}, clip {cfg.dp.clipping_norm:g})" if cfg.dp else ""
        if cfg.secagg:
            dp += f"; SecAgg+ ({cfg.secagg.num_shares} shares, threshold {cfg.secagg.reconstruction_threshold})"
        step = StepRecord("federate", "onnx", "onnx", f"flwr ({mode})", versions,
                          f"{cfg.strategy}, {cfg.rounds} rounds, clients "
                          f"{', '.join(f'{c.name} ({c.framework})' for c in cfg.clients)}{dp}{acc}", None)
        write_global(Path(plan["canonical"]), final, out, step)
    warnings = tuple(f"round {r.round}: {len(r.failures)} client(s) failed: {r.failures[0]}" for r in rounds if r.failures)
    if cfg.dp and cfg.average_bn:
        warnings += ("DP noise is added to the averaged batch-norm statistics too (a small variance can turn "
                     "negative); average_bn = false keeps them on the clients",)
    return FederateReport(str(cfg.path), mode, cfg.strategy, rounds, tuple(clients), str(out), len(plan["keys"]),
                          history.get("dp"), round(time.perf_counter() - start, 2), warnings, history.get("secagg"))
