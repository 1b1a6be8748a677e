"""Knowledge distillation: train a PyTorch student to match a teacher in any format.

The teacher runs once over the data through its Runner (its outputs are cached); the
student trains on

    loss = alpha * T^2 * KL( softmax(t / T) || softmax(s / T) ) + (1 - alpha) * CE(s, labels)

(the cross-entropy term only when the data has ``labels``; without labels, alpha is 1).
A held-out share of the data scores every epoch (top-1 against labels, else agreement with
the teacher's top-1); the best epoch's weights are kept and exported as ONNX. The ONNX
file is then compiled by modelport.to_torch into a torch directory (model.py +
weights.safetensors + modelport_torch.json, the ``torch`` format), which must match the
ONNX file's outputs; both are staged beside their destinations and renamed into place.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelport.artifact import Artifact, StepRecord
from modelport.compress.report import ModelStats, any_model_stats, measure_latency, model_stats
from modelport.errors import BadInputError, UnsupportedError
from modelport.formats import detect
from modelport.pipeline import Pipeline, Staging, StepResult, read_lineage

__all__ = ["DistillReport", "EpochRecord", "default_torch_output", "distill", "load_student"]


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float
    metric: float


@dataclasses.dataclass(frozen=True)
class DistillReport:
    """A distillation run: per-epoch history, the best epoch, and teacher vs student stats."""

    teacher: str
    student: str
    out: str
    metric_name: str
    teacher_metric: float
    student_metric_before: float
    best_epoch: int
    history: tuple[EpochRecord, ...]
    before: ModelStats  # the teacher
    after: ModelStats  # the student as written
    temperature: float
    alpha: float
    seconds: float
    notes: tuple[str, ...] = ()
    torch_out: str | None = None  # the student as a modelport torch directory (None: not written)
    torch_parity: object | None = None  # the torch directory against the ONNX file

    @property
    def drop(self) -> float:
        return self.teacher_metric - self.after.metric


def default_torch_output(out: str | Path) -> Path:
    """``student.onnx`` -> ``student_torch/`` beside it (the name ``modelport convert --to torch`` picks)."""
    p = Path(out)
    return p.with_name(f"{p.stem}_torch")


def _torch_destination(out: Path, torch_out: str | Path | bool | None) -> Path | None:
    from modelport.formats import torch_dir

    if torch_out is False:
        return None
    dest = default_torch_output(out) if torch_out in (None, True) else Path(torch_out)
    if dest.resolve() == out.resolve():
        raise BadInputError("the torch directory and the ONNX output are the same path", path=dest)
    if dest.exists() and not (dest.is_dir() and torch_dir.detect(dest)):
        what = "a file" if not dest.is_dir() else "a directory that is not a modelport torch directory"
        raise BadInputError(f"the torch directory would replace {what}; choose another path", path=dest)
    return dest


def load_student(student: str | Path, weights: str | None = None, work: Path | None = None):
    """An nn.Module from ``file.py:Name`` (+ weights), a modelport torch directory, or ONNX (compiled)."""
    import torch

    from modelport.formats import detect

    fmt = detect(str(student))
    if fmt == "torch-module":
        from modelport.formats.torch_module import build_module

        net = build_module(str(student), weights)
    elif fmt == "torch":
        from modelport import to_torch

        net = to_torch.load(student)
    elif fmt == "onnx":
        from modelport import to_torch

        target = Path(tempfile.mkdtemp(prefix="student-", dir=work))
        try:
            to_torch.convert(str(student), target)
        except to_torch.UnsupportedOpsError as exc:
            raise UnsupportedError(f"cannot compile the student to PyTorch: {exc}"[:400]) from None
        net = to_torch.load(target)
    else:
        raise BadInputError(f"the student must be a PyTorch module (file.py:Name), a modelport torch directory "
                            f"or an ONNX model to compile; got {fmt}", path=student)
    for p in net.parameters():
        p.requires_grad_(True)
    return net.float() if isinstance(net, torch.nn.Module) else net


def _teacher_outputs(teacher: str, feeds: dict[str, np.ndarray], say) -> tuple[np.ndarray, list[str], object]:
    from modelport.formats import open_runner
    from modelport.compress.quantize import batches
    from modelport.inputs import check_feeds

    with open_runner(teacher) as runner:
        specs = runner.signature.inputs
        feeds = check_feeds(feeds, specs, "distillation data", extra_ok=("labels",))
        feeds = {k: v for k, v in feeds.items() if k in {s.name for s in specs}}
        say("running the teacher over the data (once)")
        first = runner.signature.output_names[0]
        outs = [np.asarray(runner.run(chunk)[first], dtype=np.float32) for chunk in batches(feeds, 128)]
        return np.concatenate(outs), [s.name for s in specs], runner.signature


def _check_student(net, x: list[np.ndarray], logits: np.ndarray, student: str) -> None:
    import torch

    try:
        with torch.no_grad():
            out = net(*[torch.from_numpy(a[:2]) for a in x])
    except Exception as exc:
        raise BadInputError(f"the student cannot run on the teacher's inputs: {type(exc).__name__}: {exc}"[:300],
                            path=student) from None
    out = out[0] if isinstance(out, (tuple, list)) else out
    if tuple(out.shape[1:]) != logits.shape[1:]:
        raise BadInputError(f"the student's output has shape {tuple(out.shape)}, the teacher's "
                            f"{(2,) + logits.shape[1:]} (per 2 samples): they must match", path=student)


def distill(
    teacher: str | Path,
    student: str | Path,
    out: str | Path,
    *,
    data: str | Path | dict[str, np.ndarray],
    student_weights: str | None = None,
    torch_out: str | Path | bool | None = None,
    epochs: int = 10,
    temperature: float = 4.0,
    alpha: float = 0.7,
    lr: float = 3e-3,
    batch_size: int = 64,
    val_fraction: float = 0.2,
    seed: int = 0,
    bench_runs: int = 20,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> DistillReport:
    """Train ``student`` on ``teacher``'s softened outputs; write the best epoch as ONNX.

    Args:
        teacher: a model in any supported format (run through its Runner).
        student: ``file.py:Name``, a modelport torch directory, or an ONNX model (e.g. a
            structurally pruned teacher), compiled to PyTorch.
        out: the ONNX file to write.
        torch_out: where to write the student as a modelport torch directory (default
            ``<out stem>_torch`` beside ``out``; False: ONNX only). An existing modelport
            torch directory there is replaced.
        data: .npz or dict: the teacher's inputs, plus optional integer ``labels``.
        epochs, temperature, alpha, lr, batch_size: training; alpha weighs the KL term.
        val_fraction: share of the data held out to pick the best epoch.
        threads: torch intra-op threads while training (small models train fastest on 1).

    Raises:
        BadInputError: bad data, or a student whose outputs do not match the teacher's.
        UnsupportedError: the exported student cannot be compiled to a torch directory.
        CheckFailedError: the torch directory does not compute what the ONNX file does.
        Nothing is written when any of these is raised.
    """
    from modelport.inputs import load_npz

    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    if epochs < 1 or not 0.0 < val_fraction < 1.0 or temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise BadInputError("epochs >= 1, 0 < val_fraction < 1, temperature > 0 and 0 <= alpha <= 1 are required")
    dest, torch_dest = _destinations(teacher, student, out, torch_out)
    arrays = load_npz(data) if not isinstance(data, dict) else dict(data)
    task = _task(str(teacher), arrays, data, seed, val_fraction, say)
    train = DistillStep(task, student, student_weights, _Training(epochs, temperature, alpha, lr, batch_size, seed, threads), say)
    source = Artifact(str(teacher), detect(str(teacher)), lineage=read_lineage(teacher))
    with Staging(dest) as staging:
        result = Pipeline([train], progress=say).run(source, staging)
        onnx_path, trained = Path(result.artifact.path), result.results[0].details
        staging.place(onnx_path, dest)
        torch_parity = None
        if torch_dest is not None:
            try:
                exported = _torch_pipeline(task, say).run(result.artifact, staging)
            except UnsupportedError as exc:
                raise UnsupportedError(f"cannot write the student as a torch directory: {exc} "
                                       "(pass torch_out=False / --onnx-only for ONNX alone)"[:400]) from None
            torch_parity = exported.verdict.parity
            staging.place(exported.artifact.path, torch_dest)
        say("latency")
        p50 = measure_latency([Path(str(teacher)), onnx_path], (1, 8), bench_runs, say)
        before = any_model_stats(str(teacher), p50[0], task.teacher_metric)
        after = model_stats(onnx_path, str(dest), p50[1], trained.best_metric)
    return DistillReport(str(teacher), str(student), str(dest), task.metric_name, task.teacher_metric,
                         trained.start_metric, trained.best_epoch, trained.history, before, after, float(temperature), alpha,
                         time.perf_counter() - t0, torch_out=str(torch_dest) if torch_dest is not None else None,
                         torch_parity=torch_parity)


def _destinations(teacher, student, out, torch_out) -> tuple[Path, Path | None]:
    dest = Path(out)
    if dest.resolve() in (Path(str(teacher)).resolve(), Path(str(student)).resolve()):
        raise BadInputError("the output would overwrite the teacher or the student", path=dest)
    torch_dest = _torch_destination(dest, torch_out)
    if torch_dest is not None and torch_dest.resolve() == Path(str(student)).resolve():
        raise BadInputError("the torch directory would replace the student's own directory; choose another path",
                            path=torch_dest)
    return dest, torch_dest


@dataclasses.dataclass(frozen=True)
class _Task:
    """The data distilled on: inputs, the teacher's outputs (run once), targets and the held-out split."""

    names: list[str]
    x: list[np.ndarray]
    logits: np.ndarray
    target: np.ndarray
    has_labels: bool
    output_names: list[str]
    val: np.ndarray
    train: np.ndarray

    @property
    def metric_name(self) -> str:
        return "top-1" if self.has_labels else "top-1 agreement with the teacher"

    @property
    def teacher_metric(self) -> float:
        return float(np.mean(self.logits[self.val].argmax(-1) == self.target[self.val]))


def _task(teacher: str, arrays: dict[str, np.ndarray], data, seed: int, val_fraction: float, say) -> _Task:
    labels = arrays.get("labels")
    logits, names, teacher_sig = _teacher_outputs(teacher, arrays, say)
    n = logits.shape[0]
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != n):
        raise BadInputError(f"{labels.shape} labels for {n} samples", path=str(data) if not isinstance(data, dict) else None)
    if logits.ndim != 2:
        raise UnsupportedError(f"distillation needs (batch, classes) teacher outputs, got shape {logits.shape}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    target = labels if labels is not None else logits.argmax(-1)
    return _Task(names, [np.asarray(arrays[k]) for k in names], logits, np.asarray(target, dtype=np.int64),
                 labels is not None, teacher_sig.output_names, order[:n_val], order[n_val:])


@dataclasses.dataclass(frozen=True)
class _Training:
    epochs: int
    temperature: float
    alpha: float
    lr: float
    batch_size: int
    seed: int
    threads: int | None


@dataclasses.dataclass(frozen=True)
class _Trained:
    start_metric: float
    best_metric: float
    best_epoch: int
    history: tuple[EpochRecord, ...]


class DistillStep:
    """Train the student on the teacher's softened outputs; the best epoch, exported to ONNX (in scratch)."""

    name = "distill"

    def __init__(self, task: _Task, student, weights: str | None, training: _Training, say) -> None:
        self.task, self.student, self.weights, self.training, self.say = task, student, weights, training, say

    def describe(self) -> str:
        return f"distilling into {self.student} ({self.training.epochs} epochs, T={self.training.temperature:g})"

    def run(self, artifact: Artifact, staging: Staging) -> StepResult:
        import torch

        work = staging.scratch("distill")
        restore = torch.get_num_threads()
        try:
            if self.training.threads:
                torch.set_num_threads(self.training.threads)
            net = load_student(self.student, self.weights, work)
            _check_student(net, self.task.x, self.task.logits, str(self.student))
            trained = _train(net, self.task, self.training, self.say)
            onnx_path = work / "student.onnx"
            _export(net, [torch.from_numpy(a) for a in self.task.x], self.task.names, onnx_path, self.task.output_names[:1])
        finally:
            torch.set_num_threads(restore)
        t = self.training
        detail = (f"student {self.student}; {t.epochs} epochs, T={t.temperature:g}, alpha={t.alpha:g}; best epoch "
                  f"{trained.best_epoch}; held-out {self.task.metric_name} {100 * self.task.teacher_metric:.2f}% (teacher) "
                  f"-> {100 * trained.best_metric:.2f}% (student)")
        record = StepRecord("distill", artifact.format, "onnx", "modelport.compress.distill",
                            (("torch", torch.__version__),), detail)
        return StepResult(Artifact(str(onnx_path), "onnx"), record, details=trained)


def _train(net, task: _Task, t: _Training, say) -> _Trained:
    """The distillation loop; the best held-out epoch's weights are loaded back into ``net``."""
    import torch

    rng = np.random.default_rng(t.seed)
    rng.permutation(len(task.logits))  # the split's draw (kept so the epochs' shuffles stay as before)
    use_ce = task.has_labels and t.alpha < 1.0
    xt = [torch.from_numpy(a) for a in task.x]
    tt, yt = torch.from_numpy(task.logits), torch.from_numpy(task.target)
    val, n_val = task.val, len(task.val)

    def score() -> float:
        net.eval()
        with torch.no_grad():
            preds = torch.cat([_first(net(*[a[val[i:i + 256]] for a in xt])).argmax(-1) for i in range(0, n_val, 256)])
        return float((preds == yt[val]).float().mean())

    start_metric = score()
    best = (start_metric, 0, copy.deepcopy(net.state_dict()))
    history = []
    torch.manual_seed(t.seed)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=t.lr)
    T = float(t.temperature)
    for epoch in range(1, t.epochs + 1):
        net.train()
        perm = torch.from_numpy(rng.permutation(task.train))
        total = 0.0
        for i in range(0, len(perm), t.batch_size):
            idx = perm[i:i + t.batch_size]
            s = _first(net(*[a[idx] for a in xt]))
            kl = torch.nn.functional.kl_div(torch.log_softmax(s / T, -1), torch.softmax(tt[idx] / T, -1),
                                            reduction="batchmean") * T * T
            loss = (t.alpha * kl + (1 - t.alpha) * torch.nn.functional.cross_entropy(s, yt[idx])) if use_ce else kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        metric = score()
        history.append(EpochRecord(epoch, total / max(1, len(task.train)), metric))
        say(f"epoch {epoch}/{t.epochs}: loss {total / max(1, len(task.train)):.4f}, held-out {task.metric_name} {100 * metric:.2f}%")
        if metric > best[0]:
            best = (metric, epoch, copy.deepcopy(net.state_dict()))
    net.load_state_dict(best[2])
    net.eval()
    return _Trained(start_metric, best[0], best[1], tuple(history))


def _torch_pipeline(task: _Task, say) -> Pipeline:
    """The student as a modelport torch directory: convert's ONNX -> PyTorch step, verified against the ONNX file."""
    from modelport.convert.registry import ConvertOptions, plan
    from modelport.convert.run import ConvertStep, parity_verifier

    feeds = {k: a[task.val[:16]] for k, a in zip(task.names, task.x)}
    say("compiling the student to a torch directory")
    return Pipeline([ConvertStep(plan("onnx", "torch")[0], ConvertOptions(), 0)],
                    verify=parity_verifier("onnx", ConvertOptions(), feeds, None, None, None, 0), progress=say)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _export(net, xt, names: list[str], path: Path, output_names: list[str] | None = None) -> None:
    import torch

    from modelport.quiet import quiet

    for p in net.parameters():
        p.requires_grad_(False)
    batch = torch.export.Dim("batch")
    example = tuple(a[:2] for a in xt)
    with torch.no_grad():
        single = not isinstance(net(*example), (tuple, list))
    output_names = output_names if single else None  # the teacher's name for the one output distilled
    with quiet():  # torch.onnx's progress lines and warnings
        program = torch.onnx.export(net, example, dynamo=True, input_names=names, output_names=output_names or None,
                                    dynamic_shapes=tuple({0: batch} for _ in names), verbose=False)
    program.save(str(path))
