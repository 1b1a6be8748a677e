"""modelport.bench.run on real models: ONNX graphs of different sizes, a torch module file and
its ONNX export, a static-batch model. No assertion depends on how fast this machine is,
except one comparison between models whose work differs by orders of magnitude."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from modelport.artifact import Signature, TensorSpec, to_jsonable
from modelport.errors import BadInputError
from modelport.formats import BaseRunner, LoadOptions, open_runner
from modelport.bench.run import BenchReport, batch_specs, bench

RUNS = 7
WARMUP = 2


def _mlp(path: Path, width: int, layers: int, *, batch: int | str = "batch", extra_dim: str | None = None) -> str:
    """x[batch, width] -> `layers` MatMul+Relu of width x width: work grows as layers * width^2."""
    dims = f"{batch}, {extra_dim}, {width}" if extra_dim else f"{batch}, {width}"
    body, prev = [], "x"
    for i in range(layers):
        out = "y" if i == layers - 1 else f"h{i}"
        body.append(f"m{i} = MatMul ({prev}, w{i})")
        body.append(f"{out} = Relu (m{i})")
        prev = out
    model = onnx.parser.parse_model(
        f"""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[{dims}] x) => (float[{dims}] y) {{
            {chr(10).join(body)}
        }}
        """
    )
    rng = np.random.default_rng(width)
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(w, f"w{i}"))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def small_and_big(tmp_path_factory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("bench")
    return _mlp(d / "small.onnx", 8, 1), _mlp(d / "big.onnx", 512, 6)


class RecordingRunner(BaseRunner):
    """A real Runner over onnxruntime that logs the order in which it is run."""

    format = "onnx"

    def __init__(self, path: str, tag: str, log: list[tuple[str, int]]) -> None:
        super().__init__(path)
        self.inner = open_runner(path, options=LoadOptions(threads=1))
        self.tag, self.log = tag, log

    @property
    def signature(self) -> Signature:
        return self.inner.signature

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.log.append((self.tag, next(iter(feeds.values())).shape[0]))
        return self.inner.run(feeds)

    def close(self) -> None:
        self.inner.close()


def test_two_onnx_models_report(small_and_big):
    small, big = small_and_big
    phases: list[str] = []
    report = bench([small, big], batches=(1, 8), warmup=WARMUP, runs=RUNS, threads=1, progress=phases.append)
    assert isinstance(report, BenchReport)
    assert report.models == (small, big) and report.batches == (1, 8)
    assert [(r.model, r.batch) for r in report.rows] == [(small, 1), (big, 1), (small, 8), (big, 8)]
    for r in report.rows:
        assert r.measured and r.format == "onnx" and r.runs == RUNS
        assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms
        assert r.mean_ms > 0
        assert r.throughput == pytest.approx(r.batch / (r.p50_ms / 1e3))
    width = {small: 8, big: 512}
    for r in report.rows:
        assert r.input_shapes == {"x": (r.batch, width[r.model])}
    for batch in (1, 8):
        first, second = report.row(0, batch), report.row(1, batch)
        assert first.ratio == 1.0
        assert second.ratio == pytest.approx(second.p50_ms / first.p50_ms)
    # 6 layers of 512x512 against one 8x8 layer: about 25,000 times the work at batch 8
    assert report.row(big, 8).p50_ms > report.row(small, 8).p50_ms
    assert report.threads == 1 and report.runs == RUNS and report.warmup == WARMUP
    assert report.machine.cpu_count and report.machine.cpu_count >= 1
    assert "onnxruntime" in report.versions and "numpy" in report.versions
    assert any(p.startswith("loading") for p in phases) and any("measuring" in p for p in phases)
    data = json.loads(json.dumps(to_jsonable(report)))
    assert data["rows"][0]["ratio"] == 1.0 and data["rows"][2]["input_shapes"] == {"x": [8, 8]}


def test_runs_are_interleaved_across_models(small_and_big):
    small, big = small_and_big
    log: list[tuple[str, int]] = []
    with RecordingRunner(small, "A", log) as a, RecordingRunner(big, "B", log) as b:
        report = bench([a, b], batches=(2, 3), warmup=WARMUP, runs=RUNS)
        assert report.models == (small, big)
    expected = []
    for batch in (2, 3):
        expected += [("A", batch)] * WARMUP + [("B", batch)] * WARMUP  # warmup: model by model
        expected += [("A", batch), ("B", batch)] * RUNS  # measured: round-robin
    assert log == expected


def test_static_batch_model_is_skipped_not_failed(tmp_path, small_and_big):
    small, _ = small_and_big
    static = _mlp(tmp_path / "static.onnx", 8, 1, batch=1)
    report = bench([static, small], batches=(1, 8), warmup=1, runs=3)
    assert report.row(static, 1).measured and report.row(static, 1).ratio == 1.0
    skipped = report.row(static, 8)
    assert not skipped.measured and skipped.runs == 0 and skipped.p50_ms is None
    assert "static batch of 1" in skipped.skipped and "'x'" in skipped.skipped
    # the baseline at batch 8 is the first model measured there
    assert report.row(small, 8).measured and report.row(small, 8).ratio == 1.0


def test_symbolic_non_batch_dims_take_given_sizes(tmp_path):
    path = _mlp(tmp_path / "seq.onnx", 4, 1, extra_dim="seq")
    report = bench([path], batches=(3,), warmup=0, runs=2, dims={"seq": 5})
    assert report.rows[0].input_shapes == {"x": (3, 5, 4)}
    specs, why = batch_specs((TensorSpec("ids", "int64", ("batch", "seq")),), 8, {"seq": 16})
    assert specs == (TensorSpec("ids", "int64", (8, 16)),) and why == ""


def test_bad_arguments_raise(small_and_big):
    small, _ = small_and_big
    with pytest.raises(BadInputError):
        bench([])
    with pytest.raises(BadInputError):
        bench([small], options=[None, None])
    with pytest.raises(BadInputError):
        bench([small], batches=(0,))


TORCH_SOURCE = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)
"""


class ThreadProbe(BaseRunner):
    """A real torch Runner that records torch's intra-op thread count at each run."""

    def __init__(self, inner) -> None:
        super().__init__(inner.path)
        self.inner, self.format, self.seen = inner, inner.format, []

    @property
    def signature(self) -> Signature:
        return self.inner.signature

    def run(self, feeds):
        import torch

        self.seen.append(torch.get_num_threads())
        return self.inner.run(feeds)


@pytest.mark.slow
def test_torch_module_and_its_onnx_side_by_side(tmp_path):
    import torch

    from modelport.convert.run import convert
    from modelport.convert.registry import ConvertOptions

    (tmp_path / "tiny.py").write_text(TORCH_SOURCE)
    spec = f"{tmp_path / 'tiny.py'}:Tiny"
    specs = (TensorSpec("x", "float32", ("batch", 16)),)
    converted = convert(spec, "onnx", tmp_path / "tiny.onnx", options=ConvertOptions(inputs=specs))
    assert converted.ok
    onnx_path = converted.artifact.path
    report = bench([spec, onnx_path], batches=(1, 8), warmup=1, runs=5, options=[LoadOptions(inputs=specs), None])
    assert [(r.format, r.batch) for r in report.rows] == [("torch-module", 1), ("onnx", 1), ("torch-module", 8), ("onnx", 8)]
    for r in report.rows:
        assert r.measured and r.p50_ms > 0 and r.input_shapes == {"x": (r.batch, 16)}
    assert report.row(0, 8).ratio == 1.0 and report.row(1, 8).ratio > 0
    assert "torch" in report.versions and "onnxruntime" in report.versions

    before = torch.get_num_threads()
    with open_runner(spec, options=LoadOptions(inputs=specs)) as inner:
        probe = ThreadProbe(inner)
        bench([probe], batches=(2,), warmup=1, runs=2, threads=1)
    assert probe.seen == [1, 1, 1]  # torch ran single-threaded while measured
    assert torch.get_num_threads() == before  # and the global setting is restored
