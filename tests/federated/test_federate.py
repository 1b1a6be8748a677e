"""`modelport federate`: one model trained by a Keras, a PyTorch and a generated-PyTorch client on Flower.

The federation is the demo's (modelport.federated.demo): scikit-learn's digits split non-IID over
three clients, one small CNN written in Keras and in PyTorch and generated from the canonical ONNX.
Flower runs in the `flower` toolchain (installed once into the shared test cache; the tests skip,
saying so, only when it cannot be downloaded). Two real runs, each shared by several assertions
(Ray and the supernodes start slowly): a simulation with FedProx, server-side DP and a client that
fails in round 2, through the CLI with --register; and a deployment (flower-superlink plus one
flower-supernode per client, processes on localhost) with FedAvg and FedBN. Everything the runs
report is checked against the written ONNX with onnxruntime, outside modelport.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import zoo_toolchains
from onnx import numpy_helper

from modelport.federated import demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _flower(mp):
    from modelport import toolchains
    from modelport.toolchains import ToolchainInstallError

    zoo_toolchains.use_shared_cache(mp)
    try:
        toolchains.install("flower")
    except ToolchainInstallError as exc:
        if any(h in str(exc).lower() for h in zoo_toolchains.NETWORK_HINTS):
            pytest.skip(f"the flower toolchain cannot be installed without network here: {exc}")
        raise
    return toolchains.require("flower")


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> demo.DemoFiles:
    return demo.write_demo(tmp_path_factory.mktemp("federation"), rounds=2)


@pytest.fixture
def flower(monkeypatch):
    return _flower(monkeypatch)


def _inits(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _accuracy(model: Path, test: str) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    d = np.load(test)
    logits = sess.run(None, {sess.get_inputs()[0].name: d["x"]})[0]
    return float((logits.argmax(1) == d["y"]).mean())


def rep_keys(work: Path) -> list[str]:
    return json.loads((work / "plan.json").read_text())["keys"]


def _write(fed: demo.DemoFiles, name: str, **toml) -> Path:
    path = Path(fed.root) / name
    path.write_text(demo.fed_toml(clients=fed.clients, **toml))
    return path


# ------------------------------------------------------------------------------------------ the two runs


@pytest.mark.slow
def test_simulation_fedprox_dp_a_failing_client_and_registration(cli, fed, flower, tmp_path):
    config = _write(fed, "sim.toml", rounds=2, strategy="fedprox", strategy_options={"proximal_mu": 0.05},
                    dp={"mode": "server", "noise_multiplier": 0.002, "clipping_norm": 5.0}, output="sim.onnx",
                    extra_client={2: {"fail_at_round": 2}})
    work = tmp_path / "work"
    registry = tmp_path / "registry"
    r = cli("federate", "--config", config, "--simulate", "--work-dir", work, "--register", "digits-fed",
            "--registry", registry, "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["mode"] == "simulate" and rep["strategy"] == "fedprox"
    assert [c["framework"] for c in rep["clients"]] == ["keras", "torch", "generated"]
    assert all(c["round_trip_exact"] and c["mapping_max_abs_err"] < 1e-4 for c in rep["clients"])
    rounds = rep["rounds"]
    assert [x["round"] for x in rounds] == [0, 1, 2]
    # round 1: all three replied; round 2: the generated client failed, the round completed with the other two
    assert rounds[1]["replies"] == 3 and rounds[1]["failures"] == []
    assert rounds[2]["replies"] == 2 and len(rounds[2]["failures"]) == 1
    assert "fail_at_round" in rounds[2]["failures"][0]
    assert {c[0] for c in rounds[2]["clients"]} == {"keras-client", "torch-client"}
    assert any("round 2" in w for w in rep["warnings"]) and any("batch-norm statistics" in w for w in rep["warnings"])
    # the global model learnt, and what the report says is what onnxruntime measures on the written ONNX
    out = Path(rep["output"])
    assert out == Path(fed.root) / "sim.onnx"
    measured = _accuracy(out, fed.test)
    assert measured == pytest.approx(rep["final_accuracy"], abs=1e-9)
    assert measured > rounds[0]["accuracy"] + 0.3
    before, after = _inits(fed.canonical), _inits(out)
    assert set(before) == set(after)
    assert all(not np.array_equal(before[k], after[k]) for k in rep_keys(work))  # every federated tensor moved
    # FedProx's mu and the server-side DP noise reached the clients / the aggregate (Flower's own log lines)
    log = (work / "simulation.log").read_text()
    assert "central DP noise with" in log and "parameters are clipped by value: 5.0000" in log
    assert rep["dp"]["noise_multiplier"] == 0.002 and rep["dp"]["mode"] == "server"
    progress = [json.loads(line) for line in (work / "progress.jsonl").read_text().splitlines()]
    assert [m["proximal-mu"] for m in progress[1]["clients"].values()] == [0.05] * 3  # each client's proximal term
    # registered with its lineage: the federation is the version's step, and the ONNX's last lineage record
    reg = rep["registered"]
    assert reg["version"] == "digits-fed@1"
    from modelport.pipeline.lineage import read_lineage
    from modelport.registry.store import Registry

    with Registry.open(str(registry), create=False) as store:
        v = store.resolve("digits-fed@1")
    assert v.step["command"] == "federate" and v.step["strategy"] == "fedprox" and v.step["rounds"] == 2
    assert v.step["client_frameworks"] == ["generated", "keras", "torch"]
    assert [x["accuracy"] for x in v.step["per_round"]] == [x["accuracy"] for x in rounds]
    last = read_lineage(out)[-1]
    assert last.step == "federate" and "fedprox, 2 rounds" in last.detail and "DP server-side" in last.detail


@pytest.mark.slow
def test_deployment_superlink_and_supernodes_fedavg_fedbn(fed, flower, tmp_path):
    import psutil

    from modelport.federated.run import federate

    config = _write(fed, "deploy.toml", rounds=1, strategy="fedavg", average_bn=False, output="deploy.onnx")
    seen = []
    report = federate(config, mode="deploy", work_dir=str(tmp_path / "work"), on_round=seen.append)
    assert [r.round for r in seen] == [0, 1] and seen[1].replies == 3 and not seen[1].failures
    assert report.mode == "deploy" and report.rounds[-1].replies == 3
    # each supernode ran its own client: the one its node config named (framework, model, data)
    for i in range(len(fed.clients)):
        log = (tmp_path / "work" / f"supernode-{i}.log").read_text()
        assert log.count("Receiving: train message") == 1, log[-2000:]
    # FedBN: the batch-norm statistics never left the clients, the weights were averaged
    before, after = _inits(fed.canonical), _inits(report.output)
    stats = [k for k in before if "running" in k or "moving" in k]
    assert stats, sorted(before)
    for k in stats:
        np.testing.assert_array_equal(before[k], after[k])
    trained = [k for k in before if k not in stats and before[k].dtype == np.float32]
    assert all(not np.array_equal(before[k], after[k]) for k in trained)
    kept = np.load(tmp_path / "work" / "client-1-local.npz")
    assert any("running" in k for k in kept.files)  # the torch client's own statistics, kept for its next round
    # every process started for the run is gone
    plan = str(tmp_path / "work" / "plan.json")
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("MODELPORT_FED_PLAN") == plan:
                left.append(proc.cmdline())
        except (psutil.Error, OSError):
            continue
    assert not left, left


def test_the_flower_lock_is_installed_with_its_wheel_folder():
    """flwr pins typer<0.21 (the main lock has >=0.29): it lives in a toolchain, whose torch CPU wheel comes
    from the folder NAME.in's `# find-links:` line names (the Makefile's TORCH_FIND_LINKS)."""
    from modelport import toolchains

    tc = toolchains.toolchain("flower")
    pins = tc.pins()
    assert pins["flwr"] == "1.42.0" and pins["torch"].endswith("+cpu") and pins["protobuf"].startswith("6.")
    assert pins["typer"].startswith("0.20")
    links = tc.find_links()
    assert all(Path(d).is_dir() for d in links)
    if Path("/opt/wheels").is_dir():
        assert "/opt/wheels" in links


def test_find_links_expands_variables_and_drops_missing_folders(tmp_path, monkeypatch):
    from modelport import toolchains

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (tmp_path / "x.in").write_text("# find-links: $MP_TEST_WHEELS $MP_TEST_UNSET /nonexistent/wheels\nnumpy\n")
    (tmp_path / "x.txt").write_text("numpy==2.0.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    monkeypatch.setenv("MODELPORT_TOOLCHAIN_LOCKS", str(tmp_path))
    monkeypatch.setenv("MP_TEST_WHEELS", str(wheels))
    monkeypatch.delenv("MP_TEST_UNSET", raising=False)
    assert toolchains.toolchain("x").find_links() == (str(wheels),)


@pytest.mark.slow
def test_simulation_with_secagg_plus(cli, fed, flower, tmp_path):
    """SecAgg+ (Flower's workflow): the server sees only the masked sum of the three clients' updates, and
    the global model still learns; Flower's own log shows the protocol ran to completion."""
    config = _write(fed, "secagg.toml", rounds=1, strategy="fedavg", epochs=1, output="secagg.onnx",
                    secagg={"num_shares": 3, "reconstruction_threshold": 2})
    work = tmp_path / "work"
    r = cli("federate", "--config", config, "--simulate", "--work-dir", work, "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["secagg"] == {"num_shares": 3, "reconstruction_threshold": 2}
    assert rep["rounds"][1]["replies"] == 3 and rep["rounds"][1]["failures"] == []
    log = (work / "simulation.log").read_text()
    assert "Secure aggregation commencing." in log and "Secure aggregation completed." in log
    out = Path(rep["output"])
    measured = _accuracy(out, fed.test)
    assert measured == pytest.approx(rep["final_accuracy"], abs=1e-9)
    assert measured > rep["rounds"][0]["accuracy"] + 0.2
    before, after = _inits(fed.canonical), _inits(out)
    assert all(after[k].dtype == before[k].dtype for k in before)  # SecAgg+ dequantizes to float64: cast back
    # every tensor moved but the conv bias that feeds a BatchNorm: its gradient is zero up to rounding (BN removes
    # the mean), and SecAgg+'s quantization grid (range 8, 2**22 levels) maps a change of ~1e-9 back onto 0
    unmoved = [k for k in rep_keys(work) if np.array_equal(before[k], after[k])]
    assert unmoved in ([], ["conv/bias"]), unmoved
    assert len(rep_keys(work)) >= 8


def test_the_clients_environment_drops_what_onnx2tf_sets_in_ours(tmp_path, monkeypatch):
    """onnx2tf sets TF_USE_LEGACY_KERAS=1 when imported (as earlier tests in a worker do): inherited, the toolchain's
    Keras client would look for tf_keras and fail with an ImportError."""
    import sys

    from modelport.federated.run import _env

    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = _env(Path(sys.executable), tmp_path)
    assert "TF_USE_LEGACY_KERAS" not in env
    assert env["PYTHONPATH"] == str(tmp_path / "app")
