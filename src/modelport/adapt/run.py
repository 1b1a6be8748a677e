"""adapt and check: make an ONNX model fit a target, and prove the result still computes the same thing.

    >>> report = check("model.onnx", "onnxruntime-opset13")      # every problem, each with its fix
    >>> adapt("model.onnx", "model13.onnx", target="onnxruntime-opset13")

``adapt`` applies, in this order: rewrite rules (``replace``), opset conversion, then the
boundary passes (normalize, layout, io dtype, batch, rename). It verifies the result
against its input on the same data (the inputs mapped through the boundary changes:
transposed, normalized, cast), at rel err <= 1e-5 for exact changes and at float16
tolerance when the io dtype is float16; approximations are measured and reported (and
judged on ``eval_data``'s labels when given) rather than failed. The output is written
to a temporary file beside ``out`` and renamed into place only when everything passed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.artifact import Artifact, StepRecord
from modelport.errors import BadInputError, CheckFailedError, UnsupportedError

if TYPE_CHECKING:  # light at import: `import modelport` may import this module eagerly
    from modelport.adapt.check import CheckReport
    from modelport.verify.parity import ParityReport

__all__ = ["adapt", "check", "AdaptReport", "AdaptStep", "EXACT_RTOL"]

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
            have = [r.key for r in rules_for(op)] or [r.key for r in all_rules()]
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


def _verify(src: str, out: str, boundaries, orig_dtypes, *, device: str, exact: bool, inputs, dims, rtol, atol, seed,
            eval_data, warnings: list[str]) -> tuple[ParityReport, dict[str, Any] | None]:
    from modelport.verify import feeds_for
    from modelport.verify.parity import ParityReport, RunParity, compare_outputs

    out_names: dict[str, str] = {}
    for b in boundaries:
        if b.kind == "rename":
            out_names.update({new: old for old, new in b.params["mapping"].items()})
    fp16 = any(b.kind == "io_dtype" and b.params["dtype"] != "float32" for b in boundaries)
    if rtol is None and atol is None and exact and not fp16:
        rtol, atol = EXACT_RTOL, 0.0
    with _open(src, device, warnings) as ra, _open(out, device, warnings) as rb:
        feeds, source = feeds_for(rb, inputs=inputs, dims=dims, seed=seed)
        runs = []
        for feed in feeds:
            ref = _run_reference(ra, _map_feed(feed, boundaries, orig_dtypes))
            try:
                got = {out_names.get(k, k): v for k, v in rb.run(feed).items()}
            except Exception as exc:
                shapes = ", ".join(f"{k}={'x'.join(map(str, v.shape))}" for k, v in feed.items())
                msg = " ".join(str(exc).split())[:300]
                raise CheckFailedError(f"the adapted model fails on inputs {shapes}: {msg}", path=src) from None
            shapes = {k: tuple(int(n) for n in v.shape) for k, v in feed.items()}
            runs.append(RunParity(shapes, compare_outputs(ref, got, rtol=rtol, atol=atol)))
        parity = ParityReport(src, out, "onnx", "onnx", tuple(runs), all(runs), source)
        metric = _task_metric(ra, rb, eval_data, boundaries, orig_dtypes, out_names) if eval_data is not None else None
    return parity, metric


def _task_metric(ra, rb, eval_data, boundaries, orig_dtypes, out_names) -> dict[str, Any]:
    """Top-1 accuracy of the original and the adapted model on labelled data (keys: the adapted model's inputs + labels)."""
    from modelport.inputs import check_feeds, load_npz

    data = load_npz(eval_data) if not isinstance(eval_data, dict) else dict(eval_data)
    if "labels" not in data:
        raise BadInputError("eval data needs a 'labels' array beside the inputs", path=str(eval_data))
    labels = np.asarray(data.pop("labels"))
    feed = check_feeds(data, rb.signature.inputs, str(eval_data))
    ref = _run_reference(ra, _map_feed(feed, boundaries, orig_dtypes))
    got = {out_names.get(k, k): v for k, v in rb.run(feed).items()}
    name = next(iter(ref))
    before = float(np.mean(np.argmax(ref[name], axis=-1) == labels))
    after = float(np.mean(np.argmax(got[name], axis=-1) == labels))
    return {"metric": "top1", "output": name, "samples": int(labels.shape[0]), "before": before, "after": after, "delta": after - before}


def _lineage(model, step: StepRecord) -> tuple[StepRecord, ...]:
    prior: list[dict[str, Any]] = []
    for prop in list(model.metadata_props):
        if prop.key == "modelport.lineage":
            try:
                prior = json.loads(prop.value)
            except ValueError:
                prior = []
            model.metadata_props.remove(prop)
    steps = [*prior, dataclasses.asdict(step)]
    model.metadata_props.add(key="modelport.lineage", value=json.dumps(steps))
    return tuple(StepRecord(**{k: (tuple(tuple(x) for x in v) if k == "versions" else v) for k, v in s.items()})
                 for s in steps if isinstance(s, dict) and "step" in s)


def _versions() -> tuple[tuple[str, str], ...]:
    import onnx
    import onnx_ir
    import onnxruntime

    return (("onnx", onnx.__version__), ("onnx_ir", onnx_ir.__version__), ("onnxruntime", onnxruntime.__version__))


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

    Returns:
        An AdaptReport; raises CheckFailedError (nothing written) when an exact change does not verify.

    Raises:
        BadInputError: bad options, a ``replace`` rule that matches no node, an impossible opset.
        UnsupportedError: a problem the target has no automatic fix for, or an op an opset cannot express.
    """
    import onnx
    import onnx_ir as ir

    from modelport.formats import detect
    from modelport.formats.onnx_format import load_model
    from modelport.adapt import io as io_pass
    from modelport.adapt.opset import convert_opset, model_opset
    from modelport.adapt.rules import apply_rule
    from modelport.adapt.check import check_model
    from modelport.targets.profile import load_profile

    started = time.perf_counter()
    say = progress or (lambda msg: None)
    src = str(model)
    if detect(src) != "onnx":
        raise UnsupportedError("adapt takes an ONNX model; convert it first: modelport convert MODEL --to onnx", path=src)
    if layout not in (None, "nhwc", "nchw"):
        raise BadInputError(f"--layout {layout!r}: choose nhwc (an NCHW model takes NHWC data) or nchw (the reverse)")
    if batch is not None and dynamic_batch:
        raise BadInputError("--batch and --dynamic-batch exclude each other")
    norm = io_pass.parse_normalize(normalize) if isinstance(normalize, str) else (dict(normalize) if normalize else None)
    replace_map = _pairs(replace, "--replace")
    rename_map = _pairs(rename, "--rename")
    proto = load_model(src)
    steps: list[AdaptStep] = []
    warnings: list[str] = []
    profile = before = None
    explicit_replace = dict(replace_map)
    if target is not None:
        profile = load_profile(target)
        say(f"checking against {profile.name}")
        before = check_model(proto, profile, path=src)
        t_replace, t_opset, t_batch, t_dtype = _plan_from_target(before, set(replace_map))
        replace_map = {**t_replace, **replace_map}
        opset = opset if opset is not None else t_opset
        batch = batch if batch is not None or dynamic_batch else t_batch
        io_dtype = io_dtype or t_dtype
    rules = _rules(replace_map)
    if opset is not None:
        from modelport.adapt.opset import MIN_OPSET, max_opset

        if not MIN_OPSET <= opset <= max_opset():
            raise BadInputError(f"opset {opset} is impossible: it must be between {MIN_OPSET} and {max_opset()} (the newest onnx {onnx.__version__} knows)")

    approximations: list[str] = []
    if rules:
        irm = ir.serde.deserialize_model(proto)
        for rule in rules:
            say(f"rewriting {rule.key}")
            res = apply_rule(irm, rule)
            if not res.nodes:
                if rule.op_type in explicit_replace:
                    why = f" ({res.skipped[0][0]}: {res.skipped[0][1]})" if res.skipped else ""
                    raise BadInputError(f"--replace {rule.key} matched no node: the model has no {rule.op_type} it applies to{why}", path=src)
                continue
            steps.append(AdaptStep("replace", f"{rule.key} on {len(res.nodes)} node(s): {', '.join(res.nodes[:6])}", rule.exact))
            if not rule.exact:
                approximations.append(rule.key)
        proto = ir.serde.serialize_model(irm)
    if opset is not None and opset != model_opset(proto):
        say(f"converting to opset {opset}")
        res = convert_opset(proto, opset)
        proto = res.model
        steps.append(AdaptStep("opset", f"{res.src} -> {res.dst}" + (f"; decomposed {', '.join(res.rewrites)}" if res.rewrites else "")
                               + (f"; {'; '.join(res.notes)}" if res.notes else "")))
    boundaries = []
    orig_dtypes: dict[str, str] = {}
    if norm or layout or io_dtype or batch is not None or dynamic_batch or rename_map:
        irm = ir.serde.deserialize_model(proto)
        orig_dtypes = {v.name: v.dtype.numpy().name for v in irm.graph.inputs if v.dtype is not None}
        if norm:
            boundaries.append(io_pass.normalize(irm, list(norm["mean"]), list(norm["std"]), norm.get("scale"), norm.get("input")))
        if layout:
            boundaries.append(io_pass.to_layout(irm, layout))
        if io_dtype:
            boundaries.append(io_pass.set_io_dtype(irm, io_dtype))
        if batch is not None:
            boundaries.append(io_pass.set_batch(irm, batch))
        if dynamic_batch:
            boundaries.append(io_pass.dynamic_batch(irm))
        if rename_map:
            boundaries.append(io_pass.rename(irm, rename_map))
        steps.extend(AdaptStep(b.kind, b.describe()) for b in boundaries)
        proto = ir.serde.serialize_model(irm)
    if not steps and target is None:
        raise BadInputError("nothing to adapt: give --target or at least one change (--opset, --layout, --batch, --rename, …)", path=src)
    if not steps:
        warnings.append(f"already compatible with {profile.name}: written unchanged")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise UnsupportedError(f"the adapted model is invalid: {' '.join(str(exc).split())[:300]}", path=src) from None

    after = check_model(proto, profile, path=str(out)) if profile is not None else None
    if after is not None and not after:
        raise UnsupportedError(f"still incompatible with {profile.name} after adapting: "
                               + "; ".join(p.message for p in after.problems[:8]), path=src)
    out_path = Path(out)
    if out_path.is_dir():
        raise BadInputError("output is a directory", path=out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".onnx", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save(proto, str(tmp))
        say("verifying against the input")
        exact = not approximations
        if not steps:
            import shutil

            shutil.copyfile(src, tmp)
            os.replace(tmp, out_path)
            from modelport.formats.onnx_format import graph_signature

            return AdaptReport(src, str(out_path), profile.name, (), (), None, None, before,
                               Artifact(str(out_path), "onnx", graph_signature(proto)),
                               tuple(warnings), time.perf_counter() - started, True)
        parity, metric = _verify(src, str(tmp), boundaries, orig_dtypes, device=device, exact=exact, inputs=inputs, dims=dims,
                                 rtol=rtol, atol=atol, seed=seed, eval_data=eval_data, warnings=warnings)
        parity = dataclasses.replace(parity, b=str(out_path))
        if not parity and (exact or rtol is not None or atol is not None):  # approximations fail only on given tolerances
            raise CheckFailedError(f"adapted model does not match its input: {parity.summary()}", report=parity, path=src)
        if approximations:
            worst = max((o.max_rel for r in parity.runs for o in r.outputs), default=0.0)
            warnings.append(f"approximation(s) {', '.join(approximations)}: max rel err {worst:.2e} vs the input"
                            + (f"; top-1 {metric['before']:.4f} -> {metric['after']:.4f}" if metric else ""))
        detail = "; ".join(f"{s.name}: {s.detail}" for s in steps)
        record = StepRecord("adapt", "onnx", "onnx", "modelport.adapt.run", _versions(), detail, bool(parity) or not exact)
        lineage = _lineage(proto, record)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    from modelport.formats.onnx_format import graph_signature

    artifact = Artifact(str(out_path), "onnx", graph_signature(proto), lineage)
    return AdaptReport(src, str(out_path), profile.name if profile else None, tuple(steps), tuple(approximations), parity, metric,
                       after, artifact, tuple(warnings), time.perf_counter() - started, True)
