"""Many writers at once, and writers killed with SIGKILL: real processes (multiprocessing, spawn)
on one store. Adds get distinct, contiguous version numbers and none is lost; two writers moving
one alias both land in its history and the last one wins; a writer killed at any point leaves a
store that fsck passes, with at most unreferenced blobs that gc removes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from modelport.registry import Registry
from modelport.registry.store import PAUSE_ENV, PAUSE_GO_ENV, PAUSE_POINTS

SPAWN = multiprocessing.get_context("spawn")
JOIN_S = 180


# ------------------------------------------------------------------ child processes (spawned)
# (lineage=(): reading an ONNX model's lineage imports onnx, a second of start-up per child that
# these tests do not need; test_store covers lineage.)


def _adder(url: str, paths: list[str], worker: int, start) -> None:
    start.wait(JOIN_S)
    with Registry.open(url) as reg:
        for i, p in enumerate(paths):
            reg.add(p, "shared", tags={"worker": str(worker), "i": str(i)}, lineage=())


def _mover(url: str, versions: list[int], who: str, start) -> None:
    with Registry.open(url) as reg:
        start.wait(JOIN_S)
        for v in versions:
            reg.set_alias("shared", "prod", v, reason=f"{who} -> {v}", who=who)


def _paused_adder(url: str, path: str, pause: str) -> None:
    os.environ[PAUSE_ENV] = pause
    with Registry.open(url) as reg:
        reg.add(path, "m", alias="prod", lineage=())


def _input_registrar(url: str, path: str, reached: str, go: str, result: str) -> None:
    """What a command does with an input it was given as a path: find its version by content
    digest, else add it; held after storing its blobs (having found none) until ``go`` exists."""
    from modelport.registry.record import input_version

    os.environ[PAUSE_ENV] = f"blobs-written={reached}"
    os.environ[PAUSE_GO_ENV] = go
    with Registry.open(url) as reg:
        version, added = input_version(reg, path, "m")
    Path(result).write_text(json.dumps({"ref": version.ref, "added": added}))


def _looping_adder(url: str, paths: list[str], started: str) -> None:
    with Registry.open(url) as reg:
        Path(started).touch()
        while True:
            for p in paths:
                reg.add(p, "m", alias="prod", lineage=())


# ------------------------------------------------------------------------------------ helpers


def _variants(onnx_model: Path, out: Path, n: int) -> list[str]:
    """``n`` copies of the zoo ONNX model, each with one initializer's values changed (the rest shared)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    base = onnx.load(str(onnx_model))
    target = max(range(len(base.graph.initializer)),
                 key=lambda i: numpy_helper.to_array(base.graph.initializer[i]).size)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        model = onnx.ModelProto()
        model.CopyFrom(base)
        init = model.graph.initializer[target]
        arr = numpy_helper.to_array(init)
        new = np.random.default_rng(1000 + k).standard_normal(arr.shape).astype(arr.dtype)
        init.CopyFrom(numpy_helper.from_array(new, init.name))
        path = out / f"variant{k}.onnx"
        onnx.save(model, str(path))
        paths.append(str(path))
    return paths


def _file_digest(path: str) -> str:
    line = f"{hashlib.sha256(Path(path).read_bytes()).hexdigest()}  \n"
    return hashlib.sha256(line.encode()).hexdigest()


def _run_all(procs) -> None:
    for p in procs:
        p.join(JOIN_S)
    codes = [p.exitcode for p in procs]
    assert codes == [0] * len(procs), f"child exit codes {codes}"


def _wait_for(path: Path, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.is_alive(), f"the writer exited ({proc.exitcode}) before reaching {path.name}"
        assert time.monotonic() < deadline, f"the writer never reached {path.name}"
        time.sleep(0.02)


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


# -------------------------------------------------------------------------------------- tests


def test_concurrent_adds_get_distinct_contiguous_numbers(registry_url, onnx_model, tmp_path):
    workers, each = (8, 3) if "://" not in registry_url else (4, 3)  # SQLite: 8 writers; PostgreSQL: 4
    paths = _variants(onnx_model, tmp_path / "models", workers * each)
    start = SPAWN.Event()
    procs = [SPAWN.Process(target=_adder, args=(registry_url, paths[w * each:(w + 1) * each], w, start))
             for w in range(workers)]
    for p in procs:
        p.start()
    start.set()  # the store does not exist yet: the writers also race to create it
    _run_all(procs)

    with Registry.open(registry_url, create=False) as reg:
        versions = reg.versions("shared")
        assert sorted(v.number for v in versions) == list(range(1, workers * each + 1))
        by_origin = {(int(v.tags["worker"]), int(v.tags["i"])): v for v in versions}
        assert len(by_origin) == workers * each  # every add landed once
        for (w, i), v in by_origin.items():
            assert v.files_sha256 == _file_digest(paths[w * each + i]), f"{v.ref} holds the wrong model"
        report = reg.fsck()
        assert report.ok, report.problems
        assert report.unreferenced == ()  # nothing written that did not get committed
        v = by_origin[(workers - 1, each - 1)]
        out = reg.get(v, tmp_path / "check.onnx")
        assert out.read_bytes() == Path(paths[-1]).read_bytes()


def test_two_writers_moving_one_alias_lose_no_update(registry_url, onnx_model, tmp_path):
    paths = _variants(onnx_model, tmp_path / "models", 2)
    with Registry.open(registry_url) as reg:
        reg.add(paths[0], "shared", alias="prod")
        reg.add(paths[1], "shared")
    moves = 10
    start = SPAWN.Event()
    procs = [SPAWN.Process(target=_mover, args=(registry_url, [1 + (k + j) % 2 for k in range(moves)], f"w{j}", start))
             for j in range(2)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    _run_all(procs)

    with Registry.open(registry_url, create=False) as reg:
        history = reg.alias_history("shared", "prod")
        assert len(history) == 1 + 2 * moves  # the add's, then every move of both writers
        for before, after in zip(history, history[1:]):
            assert after.old == before.new, f"event {after.id} overwrote a move it never saw"
        for who in ("w0", "w1"):
            mine = [e.new for e in history if e.who == who]
            assert mine == [1 + (k + int(who[1])) % 2 for k in range(moves)]  # each writer's moves, in its order
        assert reg.resolve("shared@prod").number == history[-1].new  # the last one wins
        assert reg.fsck().ok


def test_two_writers_registering_one_new_input_add_it_once(registry_url, onnx_model, tmp_path):
    from modelport.registry.record import files_sha256

    path = _variants(onnx_model, tmp_path / "models", 1)[0]
    Registry.open(registry_url).close()
    go = tmp_path / "go"
    procs = [SPAWN.Process(target=_input_registrar, args=(registry_url, path, str(tmp_path / f"reached{i}"), str(go),
                                                          str(tmp_path / f"result{i}")))
             for i in range(2)]
    for p in procs:
        p.start()
    for i, p in enumerate(procs):  # both looked the input up, found nothing and stored its blobs
        _wait_for(tmp_path / f"reached{i}", p)
    go.touch()
    _run_all(procs)

    results = [json.loads((tmp_path / f"result{i}").read_text()) for i in range(2)]
    assert sorted(r["added"] for r in results) == [False, True]  # one added it, the other found that one
    assert {r["ref"] for r in results} == {"m@1"}
    with Registry.open(registry_url, create=False) as reg:
        assert [v.ref for v in reg.versions()] == ["m@1"]
        assert reg.find_by_digest(files_sha256(path)).ref == "m@1"
        report = reg.fsck()
        assert report.ok and report.unreferenced == ()  # the second writer's blobs were the same ones


@pytest.mark.parametrize("point", PAUSE_POINTS)
def test_a_writer_killed_at_any_point_leaves_a_store_fsck_passes(registry_url, onnx_model, tmp_path, point):
    if "://" in registry_url and point != "rows-inserted":
        pytest.skip("blob-level crash points do not depend on the database: PostgreSQL runs the mid-transaction one")
    first, second, third = _variants(onnx_model, tmp_path / "models", 3)
    with Registry.open(registry_url) as reg:
        reg.add(first, "m", alias="prod")
    marker = tmp_path / "reached"
    proc = SPAWN.Process(target=_paused_adder, args=(registry_url, second, f"{point}={marker}"))
    proc.start()
    _wait_for(marker, proc)
    _kill(proc)

    with Registry.open(registry_url, create=False) as reg:
        report = reg.fsck()
        assert report.ok, report.problems
        committed = point == "committed"
        assert [v.number for v in reg.versions("m")] == ([1, 2] if committed else [1])
        assert reg.resolve("m@prod").number == (2 if committed else 1)
        assert len(reg.alias_history("m", "prod")) == (2 if committed else 1)
        if committed:
            assert report.unreferenced == ()
        else:
            assert report.unreferenced, "the killed writer had stored its blobs"
        gc = reg.gc()
        assert set(gc.removed) == set(report.unreferenced)
        after = reg.fsck()
        assert after.ok and after.unreferenced == ()
        again = reg.add(third, "m")  # the store takes writes again: the killed writer's lock is gone
        assert again.number == (3 if committed else 2)
        assert reg.get("m@1", tmp_path / "first.onnx").read_bytes() == Path(first).read_bytes()


def test_writers_killed_at_random_moments(tmp_path, onnx_model):
    url = str(tmp_path / "registry")
    paths = _variants(onnx_model, tmp_path / "models", 6)
    rng = random.Random(12)
    committed = 0
    for round_ in range(2):
        started = tmp_path / f"started{round_}"
        proc = SPAWN.Process(target=_looping_adder, args=(url, paths, str(started)))
        proc.start()
        _wait_for(started, proc)
        time.sleep(rng.uniform(0.05, 0.6))
        _kill(proc)
        with Registry.open(url, create=False) as reg:
            report = reg.fsck()
            assert report.ok, report.problems  # numbering, rows, blobs and alias history all consistent
            numbers = [v.number for v in reg.versions("m")] if reg.names() else []
            assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= committed
            committed = len(numbers)
            reg.gc(temp_grace_s=0)  # the killed writer's temp files are dead: remove them too
            after = reg.fsck()
            assert after.ok and after.unreferenced == () and after.temp_files == 0
