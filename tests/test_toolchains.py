"""Toolchains: install from a hash-pinned lock, list, remove; failures leave nothing installed.

The small toolchain here is real: one package (``packaging``) with the pins and hashes the
shipped ``paddle`` lock has for it, installed with uv into a per-test cache (uv's download cache
is the shared test one, so it is fast after the first run). The `paddle` toolchain itself is
exercised in test_paddle.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import zoo_toolchains

from modelport import toolchains
from modelport.toolchains import environment


def _entry(lock: Path, package: str) -> str:
    """The lines of one package's pin (with its hashes) in a uv-compiled lock."""
    text = lock.read_text(encoding="utf-8")
    m = re.search(rf"^{re.escape(package)}==.*?(?=^\S|\Z)", text, re.M | re.S)
    assert m, f"{package} not in {lock}"
    return "\n".join(ln for ln in m.group(0).splitlines() if not ln.strip().startswith("#")) + "\n"


@pytest.fixture
def locks(tmp_path, monkeypatch) -> Path:
    """A per-test cache and a directory of extra locks: `tiny` (packaging, hash-pinned) and `broken`."""
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UV_CACHE_DIR", str(zoo_toolchains.shared_cache() / "uv"))
    extra = tmp_path / "locks"
    extra.mkdir()
    (extra / "tiny.txt").write_text(_entry(environment.LOCKS / "paddle.txt", "packaging"))
    (extra / "tiny.in").write_text("# key packages: packaging\npackaging\n")
    (extra / "broken.txt").write_text("packaging==0.0.0.404 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    monkeypatch.setenv("MODELPORT_TOOLCHAIN_LOCKS", str(extra))
    return extra


def _skip_offline(result) -> None:
    if result.exit_code == 2 and any(h in result.stderr.lower() for h in zoo_toolchains.NETWORK_HINTS):
        pytest.skip(f"no network for the toolchain install: {result.stderr.strip()}")


def test_shipped_locks_are_hash_pinned_and_match_their_sources():
    names = toolchains.known()
    assert "paddle" in names
    for name in names:
        tc = toolchains.toolchain(name)
        text = tc.lock.read_text()
        pins = tc.pins()
        assert pins, name
        # every requirement is pinned with == and carries at least one sha256
        blocks = re.findall(r"^(\S+)==\S+ \\\n((?:\s+--hash=sha256:[0-9a-f]{64}.*\n?)+)", text, re.M)
        assert len(blocks) == len(pins), name
        for wanted in tc.key_packages():
            assert wanted in pins, (name, wanted)
        assert tc.path().name == f"{name}-{tc.digest}" and len(tc.digest) == 12


def test_install_list_remove(cli, locks, tmp_path):
    r = cli("toolchain", "list", "--json")
    assert r.exit_code == 0
    rows = {t["name"]: t for t in json.loads(r.stdout)["toolchains"]}
    assert rows["tiny"]["installed"] is False and rows["tiny"]["packages"] == [["packaging", "26.4"]]

    r = cli("toolchain", "install", "tiny", "--json")
    _skip_offline(r)
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["built"] is True and report["packages"] == [["packaging", "26.4"]]
    env = Path(report["path"])
    assert env.parent == tmp_path / "cache" / "toolchains" and env.name == f"tiny-{toolchains.toolchain('tiny').digest}"
    # the environment really has the package, and nothing of modelport's own
    import subprocess

    out = subprocess.run([str(env / "bin" / "python"), "-I", "-c",
                          "import packaging, importlib.util as u; print(packaging.__version__, u.find_spec('modelport'))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["26.4", "None"]
    assert [p.name for p in env.parent.iterdir() if not p.name.startswith(".")] == [env.name]

    r = cli("toolchain", "install", "tiny", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["built"] is False

    r = cli("toolchain", "list")
    assert r.exit_code == 0 and "packaging 26.4" in r.stdout
    assert {t.name: t.installed for t in toolchains.status()}["tiny"] is True
    assert toolchains.require("tiny").version("packaging") == "26.4"

    r = cli("toolchain", "remove", "tiny")
    assert r.exit_code == 0 and str(env) in r.stdout
    assert not env.exists()
    assert {t.name: t.installed for t in toolchains.status()}["tiny"] is False


def test_pip_builds_the_same_environment_when_uv_is_not_used(cli, locks, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_TOOLCHAIN_INSTALLER", "pip")
    monkeypatch.setenv("PIP_CACHE_DIR", str(zoo_toolchains.shared_cache() / "pip"))
    r = cli("toolchain", "install", "tiny", "--json")
    _skip_offline(r)
    assert r.exit_code == 0, r.stderr
    env = Path(json.loads(r.stdout)["path"])
    marker = json.loads((env / environment.MARKER).read_text())
    assert marker["installer"] == "pip" and marker["versions"]["packaging"] == "26.4"
    r = cli("toolchain", "install", "broken")
    assert r.exit_code == 2 and "failed to install (pip install)" in r.stderr and "0.0.0.404" in r.stderr


def test_failed_install_exit_2_with_the_installers_last_lines_and_nothing_left(cli, locks, tmp_path):
    r = cli("toolchain", "install", "broken")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "toolchain 'broken' failed to install (uv pip install)" in lines[0]
    assert "0.0.0.404" in lines[0]  # uv's own words about the version that does not exist
    root = tmp_path / "cache" / "toolchains"
    assert sorted(p.name for p in root.iterdir()) == [".broken.lock"]
    assert toolchains.installed("broken") == []


def test_an_interrupted_install_counts_as_not_installed_and_is_cleaned_up(cli, locks, tmp_path):
    tc = toolchains.toolchain("tiny")
    root = tmp_path / "cache" / "toolchains"
    partial = root / f".{tc.dirname}.partial-killed"  # what a kill -9 during a build leaves
    (partial / "bin").mkdir(parents=True)
    (partial / "bin" / "python").touch()
    unfinished = root / tc.dirname  # a directory in place without its marker is no install either
    (unfinished / "bin").mkdir(parents=True)
    (unfinished / "bin" / "python").touch()
    assert toolchains.installed() == []
    r = cli("toolchain", "list", "--json")
    assert [t["installed"] for t in json.loads(r.stdout)["toolchains"] if t["name"] == "tiny"] == [False]
    r = cli("toolchain", "install", "tiny", "--json")
    _skip_offline(r)
    assert r.exit_code == 0, r.stderr
    assert not partial.exists() and (root / tc.dirname / environment.MARKER).is_file()


def test_an_environment_from_another_lock_is_reported_and_not_used(cli, locks, tmp_path):
    r = cli("toolchain", "install", "tiny")
    _skip_offline(r)
    assert r.exit_code == 0, r.stderr
    (locks / "tiny.txt").write_text((locks / "tiny.txt").read_text() + "# edited\n")  # a new lock: a new hash
    r = cli("toolchain", "list", "--json")
    row = [t for t in json.loads(r.stdout)["toolchains"] if t["name"] == "tiny"][0]
    assert row["installed"] is False and len(row["other_locks"]) == 1
    with pytest.raises(toolchains.ToolchainMissingError, match="installed from another lock.*modelport toolchain install tiny"):
        toolchains.require("tiny")
    r = cli("toolchain", "remove", "tiny", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["removed"] == row["other_locks"]


@pytest.mark.parametrize("args, code, words", [
    (("toolchain", "install", "nosuch"), 3, "unknown toolchain 'nosuch'; known: broken, "),
    (("toolchain", "install", "../etc"), 3, "unknown toolchain '../etc'"),
    (("toolchain", "remove", "tiny"), 2, "toolchain 'tiny' is not installed"),
    (("toolchain", "remove", "nosuch"), 3, "unknown toolchain 'nosuch'"),
])
def test_bad_toolchain_commands(cli, locks, args, code, words):
    r = cli(*args)
    assert r.exit_code == code
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr


def test_missing_toolchain_is_exit_3_naming_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "empty"))
    with pytest.raises(toolchains.ToolchainMissingError) as info:
        toolchains.DriverProcess("paddle", "paddle_ops.py")
    assert info.value.exit_code == 3
    assert str(info.value) == "toolchain 'paddle' is not installed; install it with: modelport toolchain install paddle"


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MODELPORT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert toolchains.toolchain("paddle").path().parent == tmp_path / "xdg" / "modelport" / "toolchains"
    monkeypatch.setenv("MODELPORT_CACHE", str(tmp_path / "mine"))
    assert toolchains.cache_root() == tmp_path / "mine"
