"""`modelport federate` on bad input: one line, the right exit code, no output written, no Flower started.

fed.toml mistakes, an unknown framework, data whose shape does not fit the client's model, clients
whose architectures differ (the first differing tensor named) and a missing `flower` toolchain.
The models are the demo's (a Keras CNN, its PyTorch twin); one Keras client is rebuilt with a
different hidden width for the architecture check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zoo_toolchains

from modelport.federated import demo


def _fails(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> demo.DemoFiles:
    """A small federation on disk (the demo's models and data)."""
    return demo.write_demo(tmp_path_factory.mktemp("fedbad"), rounds=1)


@pytest.fixture
def flower(monkeypatch):
    from modelport import toolchains
    from modelport.toolchains import ToolchainInstallError

    zoo_toolchains.use_shared_cache(monkeypatch)
    try:
        toolchains.install("flower")
    except ToolchainInstallError as exc:
        if any(h in str(exc).lower() for h in zoo_toolchains.NETWORK_HINTS):
            pytest.skip(f"the flower toolchain cannot be installed without network here: {exc}")
        raise


def _config(fed, text: str, name: str = "bad.toml") -> Path:
    path = Path(fed.root) / name
    path.write_text(text)
    return path


CLIENTS = '''
[[client]]
framework = "keras"
model = "keras_client.keras"
data = "keras_client.npz"

[[client]]
framework = "torch"
model = "net.py:Net"
data = "torch_client.npz"
'''


@pytest.mark.parametrize("text, words", [
    ("[federation\nmodel = 1", ("not valid TOML",)),
    ("[federation]\nrounds = 2\n" + CLIENTS, ("needs model",)),
    ('[federation]\nmodel = "canonical.onnx"\nstrategy = "fedsgd"\n' + CLIENTS, ("unknown strategy 'fedsgd'", "fedavg")),
    ('[federation]\nmodel = "canonical.onnx"\nrounds = "five"\n' + CLIENTS, ("federation.rounds must be int",)),
    ('[federation]\nmodel = "canonical.onnx"\nrounds = 0\n' + CLIENTS, ("federation.rounds must be > 0",)),
    ('[federation]\nmodel = "missing.onnx"\n' + CLIENTS, ("federation.model: no such file",)),
    ('[federation]\nmodel = "canonical.onnx"\n[[client]]\nframework = "torch"\nmodel = "net.py:Net"\n'
     'data = "torch_client.npz"\n', ("at least 2 [[client]]",)),
    ('[federation]\nmodel = "canonical.onnx"\n' + CLIENTS.replace('"torch"', '"jax"'),
     ("unknown framework 'jax'", "keras, torch, generated")),
    ('[federation]\nmodel = "canonical.onnx"\n[dp]\nnoise_multiplier = 0.1\n' + CLIENTS, ("[dp] needs",)),
    ('[federation]\nmodel = "canonical.onnx"\n[trian]\nepochs = 1\n' + CLIENTS, ("unknown table [trian]",)),
    ('[federation]\nmodel = "canonical.onnx"\n' + CLIENTS.replace("torch_client.npz", "nope.npz"),
     ("client[1].data: no such file",)),
])
def test_fed_toml_errors_are_one_line_exit_2(cli, fed, text, words):
    path = _config(fed, text)
    _fails(cli("federate", "--config", path), 2, *words)
    assert not (Path(fed.root) / "bad.onnx").exists()


def test_missing_config_and_both_modes(cli, fed, tmp_path):
    _fails(cli("federate", "--config", tmp_path / "nope.toml"), 2, "cannot read the federation config")
    _fails(cli("federate", "--config", fed.config, "--simulate", "--deploy"), 2, "exclude each other")


def test_missing_toolchain_is_exit_3_naming_the_install_command(cli, fed, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MODELPORT_TOOLCHAIN_LOCKS", raising=False)
    _fails(cli("federate", "--config", fed.config), 3, "toolchain 'flower'", "modelport toolchain install flower")


def test_data_that_does_not_fit_names_the_input(cli, fed, flower):
    d = np.load(Path(fed.root) / "torch_client.npz")
    np.savez(Path(fed.root) / "wide.npz", x=np.zeros((len(d["y"]), 1, 9, 9), np.float32), y=d["y"])
    path = _config(fed, '[federation]\nmodel = "canonical.onnx"\noutput = "bad.onnx"\n'
                   + CLIENTS.replace("torch_client.npz", "wide.npz"))
    _fails(cli("federate", "--config", path), 2, "client 'client-1' (torch)", "input 'x'", "(", "9, 9")
    np.savez(Path(fed.root) / "nhwc9.npz", x=np.zeros((4, 9, 9, 1), np.float32), y=np.zeros(4, np.int64))
    path = _config(fed, '[federation]\nmodel = "canonical.onnx"\noutput = "bad.onnx"\n'
                   + CLIENTS.replace("keras_client.npz", "nhwc9.npz"))
    _fails(cli("federate", "--config", path), 2, "client 'client-0' (keras)", "input 'x' takes shape (N, 8, 8, 1)",
           "(4, 9, 9, 1)")
    np.savez(Path(fed.root) / "nolabels.npz", x=d["x"])
    path = _config(fed, '[federation]\nmodel = "canonical.onnx"\n' + CLIENTS.replace("torch_client.npz", "nolabels.npz"))
    _fails(cli("federate", "--config", path), 2, "labels")
    assert not (Path(fed.root) / "bad.onnx").exists()


def test_clients_whose_architectures_differ_name_the_first_tensor(cli, fed, flower):
    from modelport.quiet import quiet

    with quiet():
        demo.keras_net(hidden=16).save(Path(fed.root) / "narrow.keras")
    path = _config(fed, '[federation]\nmodel = "canonical.onnx"\noutput = "bad.onnx"\n'
                   + CLIENTS.replace("keras_client.keras", "narrow.keras"))
    line = _fails(cli("federate", "--config", path), 2, "client 'client-0' (keras)", "fc1")
    assert "differ" in line
    assert not (Path(fed.root) / "bad.onnx").exists()
