"""adapt and check: make an ONNX model fit a target, and prove the result still computes the same thing.

    >>> report = check("model.onnx", "onnxruntime-opset13")      # every problem, each with its fix
    >>> adapt("model.onnx", "model13.onnx", target="onnxruntime-opset13")

``adapt`` runs on the pipeline (``modelport.pipeline``): one step, ``AdaptPassesStep``, composes
the ``onnx_ir`` passes of ``modelport.adapt.passes`` with ``Sequential`` in this order: rewrite
rules (``replace``), opset conversion, then the boundary passes (normalize, layout, io dtype,
batch, dynamic batch, rename). The pipeline's verifier checks the result against its input on
the same data (the inputs mapped through the boundary changes: transposed, normalized, cast), at
rel err <= 1e-5 for exact changes and at float16 tolerance when the io dtype is float16;
approximations are measured and reported (and judged on ``eval_data``'s labels when given)
rather than failed. The output is written in a ``Staging`` area beside ``out`` and placed only
when everything passed; its lineage is the input's plus this step's record.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.artifact import Artifact, StepRecord
from modelport.errors import BadInputError, CheckFailedError, UnsupportedError
from modelport.pipeline import Pipeline, PipelineResult, Staging, StepResult, Verdict, Verifier, read_lineage
from modelport.verify import failure_path
from modelport.verify.localize import localize_failure

if TYPE_CHECKING:  # light at import: `import modelport` may import this module eagerly
    from onnx_ir.passes import PassBase

    from modelport.adapt.check import CheckReport
    from modelport.adapt.io import Boundary
    from modelport.adapt.rules import Rule, RuleApplication
    from modelport.targets.profile import Profile
    from modelport.verify.parity import ParityReport

__all__ = ["adapt", "check", "AdaptReport", "AdaptStep", "AdaptPlan", "AdaptPassesStep", "EXACT_RTOL"]

EXACT_RTOL = 1e-5


@dataclasses.dataclass(frozen=True)
class AdaptStep:
    """One change adapt made: what, to which nodes or tensors, and whether it is exact."""

    name: str
    detail: str
    exact: bool = True


@dataclasses.dataclass(frozen=True)
class AdaptReport:
    """What adapt did, the parity of the result against the input, and the target check after."""

    src: str
    out: str | None
    target: str | None
    steps: tuple[AdaptStep, ...]
    approximations: tuple[str, ...]
    parity: ParityReport | None
    metric: dict[str, Any] | None
    check: CheckReport | None
    artifact: Artifact | None
    warnings: tuple[str, ...]
    seconds: float
    ok: bool

    def __bool__(self) -> bool:
        return self.ok


def check(model: str | Path, target: str | Path) -> CheckReport:
    """Check an ONNX model against a target (built-in name or profile .json): every problem, each with its fix.

    ``bool(report)`` is the verdict; the CLI exits 3 when it is false.
    """
    from modelport.adapt.check import check as run_check

    return run_check(model, target)


def _pairs(values: Mapping[str, str] | Sequence[str] | None, flag: str) -> dict[str, str]:
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return dict(values)
    out = {}
    for item in values:
        key, sep, value = str(item).partition("=")
        if not sep or not key or not value:
            raise BadInputError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _rules(replace: dict[str, str]):
    from modelport.adapt.rules import all_rules, find_rule, rules_for

    chosen = []
    for op, name in replace.items():
        rule = find_rule(op, name)
        if rule is None:
            have = [r.key for r in rules_for(op, "")] or [r.key for r in all_rules() if not r.domain]
            raise BadInputError(f"--replace {op}={name}: no such rewrite rule; known: {', '.join(have)}")
        chosen.append(rule)
    return chosen


def _plan_from_target(report: CheckReport, user_replaced: set[str]) -> tuple[dict[str, str], int | None, int | None, str | None]:
    unfixable = [p for p in report.unfixable if not (p.kind == "op" and p.op in user_replaced)]
    if unfixable:
        listed = "; ".join(f"{p.message} ({p.fix})" for p in unfixable[:10])
        more = f" and {len(unfixable) - 10} more" if len(unfixable) > 10 else ""
        raise UnsupportedError(f"cannot adapt to {report.target}: {len(unfixable)} problem(s) without an automatic fix: {listed}{more}",
                               path=report.model or None)
    replace: dict[str, str] = {}
    opset = batch = None
    io_dtype = None
    for kind, value in report.actions:
        if kind == "replace":
            op, _, rule = value.partition("=")
            replace[op] = rule
        elif kind == "opset":
            opset = int(value) if opset is None else opset
        elif kind == "batch":
            batch = int(value)
        elif kind == "io_dtype":
            io_dtype = value
    return replace, opset, batch, io_dtype


def _map_feed(feed: dict[str, np.ndarray], boundaries, orig_dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """Feeds for the adapted model -> the equivalent feeds for the original (undo each boundary change)."""
    out = dict(feed)
    for b in reversed(boundaries):
        if b.kind == "rename":
            back = {new: old for old, new in b.params["mapping"].items()}
            out = {back.get(k, k): v for k, v in out.items()}
        elif b.kind == "io_dtype":
            out = {k: (v.astype(orig_dtypes[k]) if k in b.names and k in orig_dtypes else v) for k, v in out.items()}
        elif b.kind == "layout":
            out = {k: (np.ascontiguousarray(v.transpose(*b.params["perm"])) if k in b.names else v) for k, v in out.items()}
        elif b.kind == "normalize":
            name = b.names[0]
            x = out[name]
            shape = (1, -1, 1, 1) if b.params["axis"] == 1 and x.ndim == 4 else (-1,)
            if b.params.get("scale"):
                x = x * np.asarray(1.0 / b.params["scale"], dtype=x.dtype)
            x = (x - np.asarray(b.params["mean"], dtype=x.dtype).reshape(shape)) / np.asarray(b.params["std"], dtype=x.dtype).reshape(shape)
            out[name] = x.astype(feed[name].dtype if name in feed else x.dtype)
    return out


def _run_reference(runner, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the original; when it has a static batch B and the feed another, run it in chunks of B."""
    static = {s.name: s.shape[0] for s in runner.signature.inputs if s.shape and isinstance(s.shape[0], int)}
    sizes = {v.shape[0] for v in feed.values() if v.ndim}
    if not static or len(sizes) != 1:
        return runner.run(feed)
    (k,) = sizes
    b = next(iter(static.values()))
    if k == b or any(v != b for v in static.values()):
        return runner.run(feed)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, k, b):
        chunk = {}
        for name, v in feed.items():
            piece = v[start:start + b]
            if piece.shape[0] < b:
                piece = np.concatenate([piece, np.repeat(piece[-1:], b - piece.shape[0], axis=0)])
            chunk[name] = piece
        parts.append(runner.run(chunk))
    return {n: np.concatenate([p[n] for p in parts])[:k] for n in parts[0]}


def _open(path: str, device: str, warnings: list[str]):
    from modelport.formats import LoadOptions, open_runner

    if device == "cuda":
        from modelport.formats.onnx_format import providers_for

        try:
            providers_for("cuda")
        except UnsupportedError:
            warnings.append("device cuda: onnxruntime has no CUDAExecutionProvider here; verified on CPU")
            device = "cpu"
    elif device != "cpu":
        raise BadInputError(f"--device {device!r}: choose cpu or cuda")
    return open_runner(path, "onnx", LoadOptions(device=device))


def _verify(src: str, out: str, boundaries, orig_dtypes, *, device: str, inputs, dims, rtol, atol, seed,
            eval_data, warnings: list[str], tolerances=None, keep_failure: Path | None = None,
            metric_fn: str | None = None) -> tuple[ParityReport, dict[str, Any] | None]:
    """Run the original (on the inputs mapped back through the boundary changes) and the adapted model; compare.

    The first failing input set (the adapted model's inputs) and both outputs go to ``keep_failure``.
    """
    from modelport.verify import feeds_for, keep_failure_file
    from modelport.verify.noise import NoiseJudge
    from modelport.verify.parity import ParityReport, RunParity, compare_outputs

    out_names: dict[str, str] = {}
    for b in boundaries:
        if b.kind == "rename":
            out_names.update({new: old for old, new in b.params["mapping"].items()})
    from modelport.formats import onnx_data

    if eval_data is None and onnx_data.is_large(src):
        return _verify_in_turn(src, out, boundaries, orig_dtypes, out_names, device=device, inputs=inputs, dims=dims,
                               rtol=rtol, atol=atol, seed=seed, warnings=warnings, tolerances=tolerances,
                               keep_failure=keep_failure), None
    with _open(src, device, warnings) as ra, _open(out, device, warnings) as rb, NoiseJudge(ra) as judge:
        feeds, source = feeds_for(rb, inputs=inputs, dims=dims, seed=seed)
        runs, kept = [], []
        for feed in feeds:
            mapped = _map_feed(feed, boundaries, orig_dtypes)
            ref = _run_reference(ra, mapped)
            try:
                got = {out_names.get(k, k): v for k, v in rb.run(feed).items()}
            except Exception as exc:
                shapes = ", ".join(f"{k}={'x'.join(map(str, v.shape))}" for k, v in feed.items())
                msg = " ".join(str(exc).split())[:300]
                raise CheckFailedError(f"the adapted model fails on inputs {shapes}: {msg}", path=src) from None
            shapes = {k: tuple(int(n) for n in v.shape) for k, v in feed.items()}
            outputs = compare_outputs(ref, got, rtol=rtol, atol=atol, per_output=tolerances)
            runs.append(RunParity(shapes, judge(mapped, ref, got, outputs, rtol=rtol, atol=atol, per_output=tolerances)))
            if not runs[-1] and keep_failure is not None and not kept:
                keep_failure_file(keep_failure, feed, ref, got)
                kept.append(str(keep_failure))
        parity = ParityReport(src, out, "onnx", "onnx", tuple(runs), all(runs), source,
                              failure_file=kept[0] if kept else None)
        metric = (_task_metric(ra, rb, eval_data, boundaries, orig_dtypes, out_names, metric_fn)
                  if eval_data is not None else None)
    return parity, metric


def _verify_in_turn(src: str, out: str, boundaries, orig_dtypes, out_names, *, device: str, inputs, dims, rtol, atol,
                    seed, warnings: list[str], tolerances=None, keep_failure: Path | None = None) -> ParityReport:
    """:func:`_verify` for a model whose weights exceed the external-data threshold: the adapted model runs
    every feed and is closed before the original opens, so only one copy of the weights is ever resident
    (the noise-floor judge, which reruns the original, is not applied)."""
    import gc

    from modelport.verify import feeds_for, keep_failure_file
    from modelport.verify.parity import ParityReport, RunParity, compare_outputs

    with _open(out, device, warnings) as rb:
        feeds, source = feeds_for(rb, inputs=inputs, dims=dims, seed=seed)
        gots = []
        for feed in feeds:
            try:
                gots.append({out_names.get(k, k): v for k, v in rb.run(feed).items()})
            except Exception as exc:
                shapes = ", ".join(f"{k}={'x'.join(map(str, v.shape))}" for k, v in feed.items())
                msg = " ".join(str(exc).split())[:300]
                raise CheckFailedError(f"the adapted model fails on inputs {shapes}: {msg}", path=src) from None
        del rb
    gc.collect()
    with _open(src, device, warnings) as ra:
        refs = [_run_reference(ra, _map_feed(feed, boundaries, orig_dtypes)) for feed in feeds]
        del ra
    gc.collect()
    runs, kept = [], None
    for feed, ref, got in zip(feeds, refs, gots):
        shapes = {k: tuple(int(n) for n in v.shape) for k, v in feed.items()}
        runs.append(RunParity(shapes, compare_outputs(ref, got, rtol=rtol, atol=atol, per_output=tolerances)))
        if not runs[-1] and keep_failure is not None and kept is None:
            keep_failure_file(keep_failure, feed, ref, got)
            kept = str(keep_failure)
    return ParityReport(src, out, "onnx", "onnx", tuple(runs), all(runs), source, failure_file=kept)


def _task_metric(ra, rb, eval_data, boundaries, orig_dtypes, out_names, metric: str | None = None) -> dict[str, Any]:
    """The task metric (top-1, or ``metric`` = file.py:fn) of the original and the adapted model on labelled
    data (keys: the adapted model's inputs + labels)."""
    from modelport.inputs import check_feeds
    from modelport.verify.metrics import load_eval, load_metric, score

    data, labels, source = load_eval(eval_data)
    name, fn = load_metric(metric)
    feed = check_feeds(data, rb.signature.inputs, source)
    ref = _run_reference(ra, _map_feed(feed, boundaries, orig_dtypes))
    got = {out_names.get(k, k): v for k, v in rb.run(feed).items()}
    before, after = score(name, fn, ref, labels), score(name, fn, got, labels)
    return {"metric": "top1" if metric is None else name, "output": next(iter(ref)), "samples": int(labels.shape[0]),
            "before": before, "after": after, "delta": after - before}


def _versions() -> tuple[tuple[str, str], ...]:
    import onnx
    import onnx_ir
    import onnxruntime

    return (("onnx", onnx.__version__), ("onnx_ir", onnx_ir.__version__), ("onnxruntime", onnxruntime.__version__))


# --------------------------------------------------------------------------- options and plan


@dataclasses.dataclass(frozen=True)
class _Options:
    """The user's options, parsed and validated (nothing is loaded yet)."""

    src: str
    out: Path
    opset: int | None
    layout: str | None
    batch: int | None
    dynamic_batch: bool
    rename: dict[str, str]
    io_dtype: str | None
    normalize: dict[str, Any] | None
    replace: dict[str, str]


def _parse_options(model, out, *, opset, layout, batch, dynamic_batch, rename, io_dtype, normalize, replace) -> _Options:
    from modelport.adapt.io import parse_normalize
    from modelport.formats import detect

    src = str(model)
    if detect(src) != "onnx":
        raise UnsupportedError("adapt takes an ONNX model; convert it first: modelport convert MODEL --to onnx", path=src)
    if layout not in (None, "nhwc", "nchw"):
        raise BadInputError(f"--layout {layout!r}: choose nhwc (an NCHW model takes NHWC data) or nchw (the reverse)")
    if batch is not None and dynamic_batch:
        raise BadInputError("--batch and --dynamic-batch exclude each other")
    norm = parse_normalize(normalize) if isinstance(normalize, str) else (dict(normalize) if normalize else None)
    replace_map, rename_map = _pairs(replace, "--replace"), _pairs(rename, "--rename")
    out_path = Path(out)
    if out_path.is_dir():
        raise BadInputError("output is a directory", path=out_path)
    return _Options(src, out_path, opset, layout, batch, dynamic_batch, rename_map, io_dtype, norm, replace_map)


def _check_opset(opset: int | None) -> None:
    if opset is None:
        return
    import onnx

    from modelport.adapt.opset import MIN_OPSET, max_opset

    if not MIN_OPSET <= opset <= max_opset():
        raise BadInputError(f"opset {opset} is impossible: it must be between {MIN_OPSET} and {max_opset()} (the newest onnx {onnx.__version__} knows)")


@dataclasses.dataclass(frozen=True)
class AdaptPlan:
    """What adapt does, in order (rewrite rules, opset conversion, boundary changes), and the target to meet."""

    src: str
    out: Path
    rules: tuple[Rule, ...]
    required: frozenset[str]  # the op types the user named in --replace: their rule must match a node
    opset: int | None
    normalize: dict[str, Any] | None
    layout: str | None
    io_dtype: str | None
    batch: int | None
    dynamic_batch: bool
    rename: dict[str, str]
    profile: Profile | None = None
    before: CheckReport | None = None  # the input checked against the target

    @property
    def empty(self) -> bool:
        return not (self.rules or self.opset is not None or self.normalize or self.layout or self.io_dtype
                    or self.batch is not None or self.dynamic_batch or self.rename)

    def passes(self) -> list[PassBase]:
        """Fresh onnx_ir passes for the plan, in order (each keeps what it did)."""
        from modelport.adapt import passes as p

        out: list[PassBase] = [p.RewriteRulePass(r, on_unmatched=self._unmatched if r.op_type in self.required else None) for r in self.rules]
        if self.opset is not None:
            out.append(p.OpsetPass(self.opset))
        if self.normalize:
            n = self.normalize
            out.append(p.NormalizePass(list(n["mean"]), list(n["std"]), n.get("scale"), n.get("input")))
        if self.layout:
            out.append(p.LayoutPass(self.layout))
        if self.io_dtype:
            out.append(p.IoDtypePass(self.io_dtype))
        if self.batch is not None:
            out.append(p.BatchPass(self.batch))
        if self.dynamic_batch:
            out.append(p.DynamicBatchPass())
        if self.rename:
            out.append(p.RenamePass(self.rename))
        return out

    def _unmatched(self, application: RuleApplication) -> None:
        op = application.rule.partition("=")[0]
        why = f" ({application.skipped[0][0]}: {application.skipped[0][1]})" if application.skipped else ""
        raise BadInputError(f"--replace {application.rule} matched no node: the model has no {op} it applies to{why}", path=self.src)


def _plan(options: _Options, target: str | Path | None, say: Callable[[str], None]) -> AdaptPlan:
    """The user's changes, plus every automatic fix the target's check lists (the user's choices win)."""
    replace, opset, batch, io_dtype = options.replace, options.opset, options.batch, options.io_dtype
    profile = before = None
    if target is not None:
        from modelport.adapt.check import check_model
        from modelport.formats.onnx_format import load_model
        from modelport.targets.profile import load_profile

        profile = load_profile(target)
        say(f"checking against {profile.name}")
        before = check_model(load_model(options.src, load_external_data=False), profile, path=options.src)  # weights unread
        t_replace, t_opset, t_batch, t_dtype = _plan_from_target(before, set(options.replace))
        replace = {**t_replace, **options.replace}
        opset = opset if opset is not None else t_opset
        batch = batch if batch is not None or options.dynamic_batch else t_batch
        io_dtype = io_dtype or t_dtype
    rules = _rules(replace)
    _check_opset(opset)
    return AdaptPlan(options.src, options.out, tuple(rules), frozenset(options.replace), opset, options.normalize,
                     options.layout, io_dtype, batch, options.dynamic_batch, options.rename, profile, before)


# --------------------------------------------------------------------------- the step and its verifier


class _NothingChanged(Exception):
    """The passes made no change: adapt writes the input as it is (with a target) or refuses."""


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What one run of the passes changed."""

    changes: tuple[AdaptStep, ...]
    approximations: tuple[str, ...]
    boundaries: tuple[Boundary, ...]  # inverted by the verifier to feed the original
    orig_dtypes: dict[str, str]  # the input's input dtypes
    check: CheckReport | None  # the result checked against the target


class AdaptPassesStep:
    """adapt as one pipeline step: the plan's onnx_ir passes, composed with ``Sequential``, on the input.

    Writes the adapted model into a scratch dir; ``outcome`` keeps what the last run changed.
    """

    name = "adapt"

    def __init__(self, plan: AdaptPlan) -> None:
        self.plan = plan
        self.outcome: _Outcome | None = None

    def describe(self) -> str:
        plan = self.plan
        parts = [f"rewriting {r.key}" for r in plan.rules] + ([f"converting to opset {plan.opset}"] if plan.opset is not None else [])
        boundary = [k for k, v in (("normalize", plan.normalize), ("layout", plan.layout), ("io dtype", plan.io_dtype),
                                   ("batch", plan.batch is not None), ("dynamic batch", plan.dynamic_batch), ("rename", plan.rename)) if v]
        return "; ".join(parts + ([f"changing the {', '.join(boundary)}"] if boundary else []))

    def run(self, artifact: Artifact, staging: Staging) -> StepResult:
        import onnx
        import onnx_ir as ir

        from modelport.adapt.check import check_model
        from modelport.adapt.passes import BoundaryPass, run_passes
        from modelport.formats.onnx_format import graph_signature, load_model

        from modelport.formats import onnx_data

        plan = self.plan
        large = onnx_data.is_large(artifact.path)  # weights stay in their files: passes see tensor metadata only
        model = ir.serde.deserialize_model(load_model(artifact.path, load_external_data=not large))
        orig_dtypes = {v.name: v.dtype.numpy().name for v in model.graph.inputs if v.dtype is not None}
        passes = plan.passes()
        model = run_passes(ir.passes.Sequential(*passes), model).model
        # A rule or opset conversion is a change where it modified the model; a boundary change asked
        # for is listed (and verified) even where the model already had it, as adapt always did.
        done = [p for p in passes if p.modified or isinstance(p, BoundaryPass)]
        if not done:
            raise _NothingChanged
        proto = ir.serde.serialize_model(model)
        try:
            from modelport.formats.onnx_data import checkable

            onnx.checker.check_model(checkable(proto))  # external data: checked without its weights
        except onnx.checker.ValidationError as exc:
            raise UnsupportedError(f"the adapted model is invalid: {' '.join(str(exc).split())[:300]}", path=artifact.path) from None
        after = check_model(proto, plan.profile, path=str(plan.out)) if plan.profile is not None else None
        if after is not None and not after:
            raise UnsupportedError(f"still incompatible with {plan.profile.name} after adapting: "
                                   + "; ".join(p.message for p in after.problems[:8]), path=artifact.path)
        out = staging.scratch("adapt") / (Path(plan.out).name if large else "model.onnx")
        if large:  # the source's external tensors copied in chunks into OUT.data (named for the destination)
            onnx_data.save(proto, out, base_dir=Path(artifact.path).parent, external=True)
        else:
            onnx.save(proto, str(out))
        changes = tuple(AdaptStep(p.kind, p.detail(), p.exact) for p in done)
        boundaries = tuple(p.boundary for p in done if isinstance(p, BoundaryPass))
        approximations = tuple(p.rule.key for p in done if not p.exact)
        self.outcome = _Outcome(changes, approximations, boundaries, orig_dtypes, after)
        fp16 = any(b.kind == "io_dtype" and b.params["dtype"] != "float32" for b in boundaries)
        record = StepRecord("adapt", "onnx", "onnx", "modelport.adapt.run", _versions(), "; ".join(f"{c.name}: {c.detail}" for c in changes))
        tolerance = (EXACT_RTOL, 0.0) if not approximations and not fp16 else None  # else: dtype defaults
        return StepResult(Artifact(str(out), "onnx", graph_signature(proto)), record, (), tolerance, self.outcome)


def _verifier(step: AdaptPassesStep, warnings: list[str], *, device: str, inputs, dims, rtol, atol, seed, eval_data,
              tolerances=None, report_dir=None, metric=None, max_drop: float | None = None) -> Verifier:
    """adapt's verification: the result against its input on the same data, mapped through the boundary changes.

    Exact changes must match (rel err <= 1e-5, or the dtype default for a float16 io dtype); approximations are
    measured and reported, and enforced only at a tolerance the user gave. With ``max_drop`` (and eval data) the
    result is judged on the task metric instead. Notes (device fallback) go to ``warnings``.
    """
    given = rtol is not None or atol is not None or bool(tolerances)  # a tolerance the user asked for is enforced

    def verify(source: Artifact, result: Artifact, tolerance: tuple[float, float] | None) -> Verdict:
        done = step.outcome
        r, a = (rtol, atol) if given or tolerance is None else tolerance
        enforce = not done.approximations or given
        parity, task = _verify(source.path, result.path, done.boundaries, done.orig_dtypes, device=device, inputs=inputs, dims=dims,
                               rtol=r, atol=a, seed=seed, eval_data=eval_data, warnings=warnings, tolerances=tolerances,
                               keep_failure=failure_path(step.plan.out, report_dir) if enforce and max_drop is None else None,
                               metric_fn=metric)
        if max_drop is not None:
            drop = task["before"] - task["after"]
            return Verdict(drop <= max_drop, f"adapted model misses the task budget: {task['metric']} {task['before']:.4f} -> "
                           f"{task['after']:.4f} (drop {drop:.4f} > {max_drop:g})",
                           dataclasses.replace(parity, b=str(step.plan.out)), {**task, "max_drop": max_drop})
        summary = f"adapted model does not match its input: {parity.summary()}"
        if parity.failure_file and not done.boundaries:  # the same inputs on both sides: localizable
            summary += f"; {localize_failure(source.path, result.path, parity.failure_file, rtol=r, atol=a)}"
        parity = dataclasses.replace(parity, b=str(step.plan.out))  # not the scratch file it ran from
        if parity.failure_file:
            summary += (f"; failing inputs (the adapted model's) and both outputs kept in {parity.failure_file}; "
                        f"reproduce: the same adapt command with --inputs {shlex.quote(parity.failure_file)}")
        return Verdict(parity.ok, summary, parity, task, enforce=enforce)

    return verify


# --------------------------------------------------------------------------- results


def _unchanged(plan: AdaptPlan, started: float) -> AdaptReport:
    """Nothing to change: without a target, refuse; with one (already met), write the input as it is."""
    from modelport.formats.onnx_format import graph_signature, load_model

    if plan.profile is None:
        raise BadInputError("nothing to adapt: give --target or at least one change (--opset, --layout, --batch, --rename, …)", path=plan.src)
    with Staging(plan.out) as staging:
        from modelport.formats import onnx_data

        if onnx_data.file_has_external(plan.src):  # its tensors copied, in chunks, into OUT.data
            copy = staging.scratch("adapt") / Path(plan.out).name
            onnx_data.save(load_model(plan.src, load_external_data=False), copy, base_dir=Path(plan.src).parent,
                           external=True)
            staging.place(Path(str(copy) + ".data"), Path(str(plan.out) + ".data"))
        else:
            copy = staging.scratch("adapt") / "model.onnx"
            shutil.copyfile(plan.src, copy)
        staging.place(copy, plan.out)
    artifact = Artifact(str(plan.out), "onnx", graph_signature(load_model(plan.out, load_external_data=False)), read_lineage(plan.out))
    return AdaptReport(plan.src, str(plan.out), plan.profile.name, (), (), None, None, plan.before, artifact,
                       (f"already compatible with {plan.profile.name}: written unchanged",), time.perf_counter() - started,
                       bool(plan.before))


def _report(plan: AdaptPlan, result: PipelineResult, notes: list[str], started: float) -> AdaptReport:
    outcome: _Outcome = result.results[-1].details
    verdict = result.verdict
    warnings = [*result.warnings, *notes]
    if outcome.approximations:
        worst = max((o.max_rel for r in verdict.parity.runs for o in r.outputs), default=0.0)
        warnings.append(f"approximation(s) {', '.join(outcome.approximations)}: max rel err {worst:.2e} vs the input"
                        + (f"; {verdict.metric['metric']} {verdict.metric['before']:.4f} -> {verdict.metric['after']:.4f}"
                           if verdict.metric else ""))
    ok = (verdict.ok or not verdict.enforce) and (outcome.check is None or bool(outcome.check))
    return AdaptReport(plan.src, str(plan.out), plan.profile.name if plan.profile else None, outcome.changes, outcome.approximations,
                       verdict.parity, verdict.metric, outcome.check, dataclasses.replace(result.artifact, path=str(plan.out)),
                       tuple(warnings), time.perf_counter() - started, ok)


def adapt(
    model: str | Path,
    out: str | Path,
    *,
    target: str | Path | None = None,
    opset: int | None = None,
    layout: str | None = None,
    batch: int | None = None,
    dynamic_batch: bool = False,
    rename: Mapping[str, str] | Sequence[str] | None = None,
    io_dtype: str | None = None,
    normalize: str | Mapping[str, Any] | None = None,
    replace: Mapping[str, str] | Sequence[str] | None = None,
    device: str = "cpu",
    eval_data: str | Path | dict[str, np.ndarray] | None = None,
    inputs: str | Path | dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    tolerances: dict[str, tuple[float, float]] | None = None,
    report_dir: str | Path | None = None,
    metric: str | None = None,
    max_drop: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> AdaptReport:
    """Adapt an ONNX model to a target and/or by explicit changes; verify; write ``out`` atomically.

    Args:
        model: the ONNX model to adapt.
        out: where to write the adapted model (nothing is written on any failure).
        target: a built-in target name or a profile .json: apply every automatic fix ``check`` lists.
        opset: convert the default-domain opset up or down.
        layout: ``"nhwc"``: rank-4 NCHW inputs take NHWC data (boundary transposes only); ``"nchw"``: the reverse.
        batch: a static batch size for every input; ``dynamic_batch``: a symbolic one.
        rename: ``{"old": "new"}`` or ``["old=new"]`` for inputs and outputs.
        io_dtype: ``"float16"``: float inputs/outputs in float16 (casts at the boundary).
        normalize: ``"mean=..,std=..[,scale=255][,input=x]"`` or a dict: bake normalization into the graph.
        replace: ``{"Gelu": "tanh-approx"}`` or ``["LayerNormalization=decompose"]``: rewrite rules to apply.
        device: ``cpu`` or ``cuda`` (onnxruntime execution providers for verification; CUDA falls back to CPU).
        eval_data: an .npz of the adapted model's inputs plus ``labels``: report top-1 before and after.
        inputs, dims, rtol, atol, seed: verification data and tolerances (defaults: rel err <= 1e-5 for
            exact changes, float16 tolerance for a float16 io dtype).
        metric: ``file.py:fn(outputs, labels) -> float`` for the eval data instead of top-1.
        max_drop: judge the result on the task: the largest acceptable metric drop (needs ``eval_data``).
        tolerances: (rtol, atol) per output name; report_dir: where a failed verification keeps its
            inputs and both outputs (default: ``NAME.parity-failure.npz`` beside ``out``).

    Returns:
        An AdaptReport; raises CheckFailedError (nothing written) when an exact change does not verify.

    Raises:
        BadInputError: bad options, a ``replace`` rule that matches no node, an impossible opset.
        UnsupportedError: a problem the target has no automatic fix for, or an op an opset cannot express.
    """
    started = time.perf_counter()
    say = progress or (lambda msg: None)
    if max_drop is not None and eval_data is None:
        raise BadInputError("a task budget (--max-drop) needs labelled eval data (--eval data.npz)")
    options = _parse_options(model, out, opset=opset, layout=layout, batch=batch, dynamic_batch=dynamic_batch, rename=rename,
                             io_dtype=io_dtype, normalize=normalize, replace=replace)
    plan = _plan(options, target, say)
    if plan.empty:
        return _unchanged(plan, started)
    step, notes = AdaptPassesStep(plan), []
    verifier = _verifier(step, notes, device=device, inputs=inputs, dims=dims, rtol=rtol, atol=atol, seed=seed, eval_data=eval_data,
                         tolerances=tolerances, report_dir=report_dir, metric=metric, max_drop=max_drop)
    source = Artifact(plan.src, "onnx", lineage=read_lineage(plan.src))
    try:
        with Staging(plan.out) as staging:
            result = Pipeline([step], verify=verifier, progress=say).run(source, staging)
            staging.place(result.artifact.path, plan.out)
            data = Path(result.artifact.path + ".data")
            if data.is_file():  # external data (a model above the threshold), placed with its model
                staging.place(data, Path(str(plan.out) + ".data"))
    except _NothingChanged:
        return _unchanged(plan, started)
    return _report(plan, result, notes, started)
