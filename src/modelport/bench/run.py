"""Latency and throughput of models in any format, measured side by side.

Runs are interleaved across models (A, B, C, A, B, C, ...) so that machine noise (other
processes, frequency scaling, thermal drift) falls on every model alike; the ratio column
compares each model's median with the first model's at the same batch size.

Models sharing a process must not steal each other's cores between runs: onnxruntime's
pool threads and OpenMP's (torch) spin-wait after each run by default. With several models,
onnxruntime sessions are rebuilt with spinning off, and OMP_WAIT_POLICY=PASSIVE is set when
torch is not loaded yet (measured on a busy 2-core machine: a small torch CNN took 0.5 ms
alone and 100-240 ms interleaved with spinning onnxruntime threads).

    p50, p90, mean: per-run wall time in ms, numpy in -> numpy out
    throughput:     batch / p50, in samples per second
    ratio:          p50 / p50 of the baseline (the first model measured at that batch)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from modelport.artifact import TensorSpec
from modelport.errors import BadInputError, ModelportError
from modelport.formats import LoadOptions, Runner, open_runner
from modelport.inputs import dim_sizes, make_inputs

__all__ = ["BenchRow", "BenchReport", "MachineInfo", "bench", "batch_specs"]


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One model at one batch size; timings are None when ``skipped`` says why."""

    model: str
    format: str
    batch: int
    input_shapes: dict[str, tuple[int, ...]]
    runs: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    throughput: float | None = None
    ratio: float | None = None
    skipped: str | None = None

    @property
    def measured(self) -> bool:
        return self.skipped is None


@dataclasses.dataclass(frozen=True)
class MachineInfo:
    cpu_count: int | None
    cpus_usable: int | None
    cpu_model: str
    machine: str
    system: str
    python: str


@dataclasses.dataclass(frozen=True)
class BenchReport:
    """Rows ordered by batch, then by model in the order given."""

    models: tuple[str, ...]
    batches: tuple[int, ...]
    rows: tuple[BenchRow, ...]
    threads: int | None
    warmup: int
    runs: int
    seed: int
    machine: MachineInfo
    versions: dict[str, str]
    notes: tuple[str, ...] = ()

    def row(self, model: int | str, batch: int) -> BenchRow:
        """The row of a model (its index, or its path) at a batch size."""
        name = self.models[model] if isinstance(model, int) else model
        for r in self.rows:
            if r.model == name and r.batch == batch:
                return r
        raise KeyError((model, batch))


def machine_info() -> MachineInfo:
    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu_model)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return MachineInfo(os.cpu_count(), usable, cpu_model, platform.machine(), platform.system(), platform.python_version())


def _versions() -> dict[str, str]:
    """Versions of numpy, modelport, and each framework this process has imported."""
    out = {"numpy": np.__version__}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        out["modelport"] = version("modelport")
    for mod in ("onnxruntime", "torch", "tensorflow", "keras", "ai_edge_litert"):
        if mod in sys.modules:
            out[mod] = str(getattr(sys.modules[mod], "__version__", "?"))
    return out


def batch_specs(specs: Sequence[TensorSpec], batch: int, dims: dict[str, int] | None = None) -> tuple[tuple[TensorSpec, ...] | None, str]:
    """Concrete input specs at a batch size, or (None, why not).

    Dim 0 of each input is the batch dim: a symbolic one takes ``batch``; a static one
    that differs from ``batch`` makes the batch size unreachable. Other symbolic dims take
    ``dims[name]`` or the defaults of ``make_inputs``. Scalars are left alone.
    """
    out = []
    for s in specs:
        if s.shape is None:
            return None, f"input {s.name!r} has an unknown rank; give --input with its shape"
        shape = list(s.shape)
        if shape:
            d0 = shape[0]
            if isinstance(d0, int) and d0 >= 0:
                if d0 != batch:
                    return None, f"input {s.name!r} has a static batch of {d0} ({s.shape_str()})"
            else:
                shape[0] = batch
        concrete = TensorSpec(s.name, s.dtype, tuple(shape))
        out.append(TensorSpec(s.name, s.dtype, dim_sizes(concrete, dims or {}, 0)))
    return tuple(out), ""


@contextlib.contextmanager
def _threads(threads: int | None, notes: list[str]) -> Iterator[None]:
    """torch's and TensorFlow's intra-op threads for the duration (onnxruntime: LoadOptions)."""
    if not threads:
        yield
        return
    restore = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        restore = torch.get_num_threads()
        torch.set_num_threads(threads)
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:
            notes.append("TensorFlow was already initialized: its thread count could not be changed")
    try:
        yield
    finally:
        if restore is not None:
            sys.modules["torch"].set_num_threads(restore)


def _prepare_frameworks(models: Sequence[str | Runner], threads: int | None) -> None:
    """Import TF before any model loads when threads are set, so its pool can still be sized."""
    if not threads:
        return
    from modelport.formats import detect

    for m in models:
        fmt = None
        if isinstance(m, str):
            with contextlib.suppress(ModelportError):
                fmt = detect(m)
        if fmt in ("keras", "savedmodel"):
            import tensorflow  # noqa: F401
        elif fmt in ("torch-module", "torch", "torch-export", "torchscript"):
            import torch  # noqa: F401


def _no_spinning(runner: Runner, notes: list[str]) -> None:
    """Rebuild an onnxruntime session whose idle threads sleep instead of spinning.

    By default onnxruntime's pool threads spin for a while after each run; interleaved with
    another model in the same process they steal its cores (measured: a torch CNN 300x slower).
    """
    session = getattr(runner, "session", None)
    if getattr(runner, "format", None) != "onnx" or session is None:
        return
    import onnxruntime as ort

    so = session.get_session_options()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    runner.session = ort.InferenceSession(runner.path, sess_options=so, providers=session.get_providers())
    if not any("spinning" in n for n in notes):
        notes.append("onnxruntime thread spinning disabled, so that interleaved models do not steal each other's cores")


def _stats(times_ns: list[int], batch: int) -> dict[str, float]:
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50 = float(np.percentile(ms, 50))
    return {
        "p50_ms": p50,
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "throughput": batch / (p50 / 1e3) if p50 > 0 else float("inf"),
    }


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def bench(
    models: Sequence[str | Runner],
    *,
    batches: Sequence[int] = (1, 8),
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 20,
    options: Sequence[LoadOptions | None] | None = None,
    dims: dict[str, int] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure the latency of models side by side, runs interleaved across models.

    Args:
        models: model paths (any format, ``file.py:Name`` for PyTorch modules), or open
            Runners (left open; the caller owns them).
        batches: batch sizes; a model whose batch dim is static and differs is skipped.
        threads: intra-op threads (onnxruntime, torch, TensorFlow where still possible).
        warmup: untimed runs per model and batch before measuring (at least one).
        runs: timed runs per model and batch.
        options: LoadOptions per model (weights, input specs), in the order of ``models``.
        dims: sizes of symbolic non-batch dims (``{"sequence": 128}``).
        seed: seed of the random inputs.
        progress: called with a line per phase.

    Raises:
        BadInputError: no models, bad batch sizes or run counts, options of the wrong length.
    """
    if not models:
        raise BadInputError("no models to benchmark")
    if runs < 1 or warmup < 0 or not batches or any(int(b) < 1 for b in batches):
        raise BadInputError("runs must be >= 1, warmup >= 0, and batch sizes >= 1")
    if options is not None and len(options) != len(models):
        raise BadInputError(f"{len(options)} LoadOptions given for {len(models)} models")
    say = progress or (lambda _msg: None)
    batches = tuple(dict.fromkeys(int(b) for b in batches))
    notes: list[str] = []
    opts = [dataclasses.replace(o or LoadOptions(), threads=threads or (o.threads if o else None))
            for o in (options or [None] * len(models))]
    if len(models) > 1 and "torch" not in sys.modules:
        # OpenMP threads that spin-wait between runs steal cores from the interleaved models
        # (and collapse under oversubscription); read once, when torch loads libgomp.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _prepare_frameworks(models, threads)
    rows: list[BenchRow] = []
    with contextlib.ExitStack() as stack, _threads(threads, notes):
        runners: list[Runner] = []
        for m, o in zip(models, opts):
            if isinstance(m, str):
                say(f"loading {m}")
                runners.append(stack.enter_context(open_runner(m, options=o)))
                if len(models) > 1:
                    _no_spinning(runners[-1], notes)
            else:
                runners.append(m)
        names = tuple(str(getattr(r, "path", f"model {i}")) for i, r in enumerate(runners))
        for batch in batches:
            rows.extend(_bench_batch(runners, names, batch, warmup, runs, dims, seed, say))
    return BenchReport(names, batches, tuple(rows), threads, warmup, runs, seed, machine_info(), _versions(), tuple(notes))


def _bench_batch(runners, names, batch, warmup, runs, dims, seed, say) -> list[BenchRow]:
    feeds: dict[int, dict[str, np.ndarray]] = {}
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}
    skipped: dict[int, str] = {}
    for i, r in enumerate(runners):
        specs, why = batch_specs(r.signature.inputs, batch, dims)
        if specs is None:
            skipped[i] = why
            continue
        feeds[i] = make_inputs(specs, seed=seed, bounds=r.index_bounds())[0]
        shapes[i] = {k: tuple(int(n) for n in v.shape) for k, v in feeds[i].items()}
    say(f"batch {batch}: warming up ({warmup} runs each)")
    for i, feed in list(feeds.items()):
        try:
            for _ in range(max(1, warmup)):  # one untimed run at least: it catches failures early
                runners[i].run(feed)
        except ModelportError as exc:
            skipped[i] = f"failed: {str(exc)}"[:200]
        except Exception as exc:  # a framework's own error on this batch size: reported, not raised
            skipped[i] = f"failed: {_short(exc)}"
        if i in skipped:
            del feeds[i]
    times: dict[int, list[int]] = {i: [] for i in feeds}
    say(f"batch {batch}: measuring ({runs} runs, interleaved across {len(feeds)} model(s))")
    for _ in range(runs):
        for i, feed in feeds.items():
            t0 = time.perf_counter_ns()
            runners[i].run(feed)
            times[i].append(time.perf_counter_ns() - t0)
    stats = {i: _stats(t, batch) for i, t in times.items()}
    base = next((stats[i]["p50_ms"] for i in sorted(stats)), None)
    rows = []
    for i, r in enumerate(runners):
        fmt = getattr(r, "format", "?")
        if i in skipped:
            rows.append(BenchRow(names[i], fmt, batch, shapes.get(i, {}), 0, skipped=skipped[i]))
            continue
        s = stats[i]
        ratio = s["p50_ms"] / base if base else None
        rows.append(BenchRow(names[i], fmt, batch, shapes[i], runs, ratio=ratio, **s))
    return rows
