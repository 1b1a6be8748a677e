"""One pipeline for every command: the staging area places all outputs or none, and lineage has one writer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import zoo
from modelport.artifact import Artifact, StepRecord
from modelport.errors import CheckFailedError
from modelport.pipeline import Pipeline, Staging, StepResult, Verdict, read_lineage, write_lineage


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------- Staging


def test_staging_places_files_and_directories_together(tmp_path):
    (tmp_path / "old.onnx").write_text("old model")
    with Staging(tmp_path / "old.onnx") as staging:
        work = staging.scratch()
        (work / "m.onnx").write_text("new model")
        (work / "d").mkdir()
        (work / "d" / "model.py").write_text("x = 1")
        staging.place(work / "m.onnx", tmp_path / "old.onnx")
        staging.place(work / "d", tmp_path / "torch_dir")
        assert not (tmp_path / "torch_dir").exists()  # nothing placed before the block ends
    assert (tmp_path / "old.onnx").read_text() == "new model"
    assert (tmp_path / "torch_dir" / "model.py").read_text() == "x = 1"
    assert _listing(tmp_path) == ["old.onnx", "torch_dir"]  # no scratch, no backup left


def test_staging_places_nothing_when_the_block_raises(tmp_path):
    (tmp_path / "out.onnx").write_text("keep me")
    with pytest.raises(RuntimeError, match="late failure"):
        with Staging(tmp_path / "out.onnx") as staging:
            work = staging.scratch()
            (work / "m.onnx").write_text("half")
            staging.place(work / "m.onnx", tmp_path / "out.onnx")
            raise RuntimeError("late failure")
    assert (tmp_path / "out.onnx").read_text() == "keep me"
    assert _listing(tmp_path) == ["out.onnx"]


def test_staging_rolls_back_when_one_output_is_missing(tmp_path):
    (tmp_path / "a.onnx").write_text("old a")
    with pytest.raises(FileNotFoundError, match="never written"):
        with Staging(tmp_path / "a.onnx") as staging:
            work = staging.scratch()
            (work / "a.onnx").write_text("new a")
            staging.place(work / "a.onnx", tmp_path / "a.onnx")
            staging.place(work / "b_dir", tmp_path / "b_dir")  # never written
    assert (tmp_path / "a.onnx").read_text() == "old a"
    assert _listing(tmp_path) == ["a.onnx"]


def test_staging_restores_every_destination_when_a_rename_fails(tmp_path):
    (tmp_path / "a.onnx").write_text("old a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("old b")
    with pytest.raises(OSError):
        with Staging(tmp_path / "a.onnx") as staging:
            work = staging.scratch()
            (work / "a.onnx").write_text("new a")
            (work / "b").write_text("a file where a directory is")
            staging.place(work / "a.onnx", tmp_path / "a.onnx")
            staging.place(work / "b", tmp_path / "missing_parent_is_a_file" / "b")
            (tmp_path / "missing_parent_is_a_file").write_text("blocks mkdir")
    assert (tmp_path / "a.onnx").read_text() == "old a"
    assert (tmp_path / "b" / "f").read_text() == "old b"
    assert not any(n.startswith(".") for n in _listing(tmp_path))


# ---------------------------------------------------------------- Pipeline and lineage


class _Copy:
    name = "copy"

    def __init__(self, text: str) -> None:
        self.text = text

    def describe(self) -> str:
        return f"copy {self.text}"

    def run(self, artifact: Artifact, staging: Staging) -> StepResult:
        out = staging.scratch() / "out"
        out.mkdir()
        (out / "payload").write_text(Path(artifact.path, "payload").read_text() + self.text)
        return StepResult(Artifact(str(out), "dir"), StepRecord(self.name, "dir", "dir", f"copy {self.text}"),
                          warnings=(f"copied {self.text}",))


def test_pipeline_runs_steps_in_order_records_each_and_appends_to_the_source_lineage(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "payload").write_text("0")
    earlier = (StepRecord("convert", "keras", "onnx", "tf2onnx", verified=True),)
    write_lineage(src, "dir", earlier)
    said = []
    with Staging(tmp_path / "out") as staging:
        result = Pipeline([_Copy("a"), _Copy("b")], progress=said.append).run(
            Artifact(str(src), "dir", lineage=read_lineage(src)), staging)
        staging.place(result.artifact.path, tmp_path / "out")
    assert (tmp_path / "out" / "payload").read_text() == "0ab"
    assert said == ["copy a", "copy b"]
    assert result.warnings == ("copied a", "copied b")
    assert [r.tool for r in read_lineage(tmp_path / "out")] == ["tf2onnx", "copy a", "copy b"]


def test_a_failed_verdict_raises_and_places_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "payload").write_text("0")

    def disagree(source, result, tolerance):
        return Verdict(False, "outputs differ", parity=None)

    with pytest.raises(CheckFailedError, match="outputs differ"):
        with Staging(tmp_path / "out") as staging:
            result = Pipeline([_Copy("a")], verify=disagree).run(Artifact(str(src), "dir"), staging)
            staging.place(result.artifact.path, tmp_path / "out")
    assert _listing(tmp_path) == ["src"]


def test_an_unenforced_verdict_is_reported_but_does_not_mark_the_step(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "payload").write_text("0")
    with Staging(tmp_path / "out") as staging:
        result = Pipeline([_Copy("a")], verify=lambda s, r, t: Verdict(False, "informational", enforce=False)).run(
            Artifact(str(src), "dir"), staging)
    assert result.verdict.ok is False and result.artifact.lineage[-1].verified is None


# ---------------------------------------------------------------- every command: nothing half-written


def test_convert_to_torch_that_fails_verification_leaves_nothing(cnn_onnx, tmp_path):
    """The route runs to its end; parity then fails (a tolerance no result can meet): no model is placed,
    only the kept failing inputs."""
    from modelport.convert.run import convert

    out = tmp_path / "cnn_torch"
    with pytest.raises(CheckFailedError, match="does not match the source"):
        convert(cnn_onnx, "torch", out, rtol=0.0, atol=-1.0)
    assert _listing(tmp_path) == ["cnn_torch.parity-failure.npz"]


def test_convert_appends_to_the_lineage_of_its_source(cnn_onnx, tmp_path):
    from modelport.convert.run import convert

    before = read_lineage(cnn_onnx)
    assert before and before[0].step == "convert"  # the fixture was itself converted by modelport
    report = convert(cnn_onnx, "torch", tmp_path / "cnn_torch")
    lineage = read_lineage(tmp_path / "cnn_torch")
    assert lineage[:len(before)] == before
    assert [r.tool for r in lineage[len(before):]] == ["modelport onnx2torch"] and lineage[-1].verified is True
    assert report.artifact.lineage == lineage


def test_compress_failing_after_its_steps_leaves_nothing_and_keeps_an_old_output(cnn_onnx, tmp_path, monkeypatch):
    from modelport.compress import run

    out = tmp_path / "cnn.pruned.onnx"
    out.write_bytes(b"an older result")

    def broken(*_a, **_k):
        raise RuntimeError("latency measurement broke")

    monkeypatch.setattr(run, "measure_latency", broken)
    with pytest.raises(RuntimeError, match="latency measurement broke"):
        run.compress(cnn_onnx, out, prune=0.5, bench_runs=0)
    assert out.read_bytes() == b"an older result"
    assert _listing(tmp_path) == ["cnn.pruned.onnx"]


def test_compress_records_its_step_after_the_source_lineage(cnn_onnx, tmp_path):
    from modelport.compress.run import compress

    report = compress(cnn_onnx, tmp_path / "p.onnx", prune=0.5, bench_runs=0)
    lineage = read_lineage(tmp_path / "p.onnx")
    assert [r.step for r in lineage] == [r.step for r in read_lineage(cnn_onnx)] + ["compress"]
    assert "prune 0.5" in lineage[-1].detail and report.artifact.lineage == lineage


def test_distill_failing_in_its_last_step_leaves_neither_output(cnn, cnn_onnx, tmp_path, monkeypatch):
    """The ONNX student is staged and its torch directory written to scratch; that directory's
    verification then fails: neither output is placed."""
    from modelport.convert import run as convert_run
    from modelport.compress.distill import distill

    spec = zoo.input_specs(cnn)[0]
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, **{spec.name: rng.standard_normal((24, *spec.shape[1:])).astype(np.float32)})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    seen = []

    def failing_verifier(*args):
        def verify(source, result, tolerance):
            seen.append(sorted(p.name for p in Path(result.path).iterdir()))
            return Verdict(False, "injected: the torch directory disagrees")
        return verify

    monkeypatch.setattr(convert_run, "parity_verifier", failing_verifier)
    with pytest.raises(CheckFailedError, match="injected"):
        distill(cnn_onnx, cnn_onnx, out_dir / "student.onnx", data=data, epochs=1, bench_runs=0)
    assert seen and "model.py" in seen[0]  # the failure came after the torch directory was written
    assert _listing(out_dir) == []
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
