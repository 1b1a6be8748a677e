"""The compatibility check: every reason an ONNX model will not run on a target, each with its fix.

Ops are judged at the opset the model would have after the automatic opset fix (its own
opset clamped into the target's range), so one out-of-range opset is one problem, not one
per node. A problem's ``action`` is what ``adapt`` applies (``("opset", "13")``,
``("replace", "Gelu=decompose")``, ``("batch", "1")``, ``("io_dtype", "float32")``); a
problem without one says "no automatic fix".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import onnx.defs

from modelport.formats.onnx_format import iter_nodes
from modelport.targets.profile import Profile, load_profile, norm_domain

__all__ = ["Problem", "CheckReport", "check_model", "check"]

NO_FIX = "no automatic fix"
# Data, not kernels: runtimes fold these into initializers at load (onnxruntime, TFLite converters, EP partitioners).
DATA_OPS = ("Constant",)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One incompatibility: what, where, and how adapt fixes it (``action`` None: no automatic fix)."""

    kind: str  # opset | domain | op | dtype | dynamic_dim
    where: str
    op: str
    message: str
    fix: str
    action: tuple[str, str] | None = None

    @property
    def automatic(self) -> bool:
        return self.action is not None


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """Does the model fit the target? ``bool(report)`` is the verdict; ``problems`` lists every reason."""

    model: str
    target: str
    target_description: str
    reduced: bool
    opsets: dict[str, int]
    effective_opset: int
    problems: tuple[Problem, ...]
    notes: tuple[str, ...]
    ok: bool

    def __bool__(self) -> bool:
        return self.ok

    @property
    def actions(self) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        for p in self.problems:
            if p.action and p.action not in seen:
                seen.append(p.action)
        return seen

    @property
    def unfixable(self) -> list[Problem]:
        return [p for p in self.problems if p.action is None]

    def summary(self) -> str:
        if self.ok:
            return f"compatible with {self.target}"
        auto = sum(1 for p in self.problems if p.automatic)
        return (f"{len(self.problems)} problem(s) for {self.target}: {auto} with an automatic fix (modelport adapt), "
                f"{len(self.problems) - auto} without")


def _dtype_name(elem_type: int) -> str:
    name = onnx.TensorProto.DataType.Name(elem_type).lower()
    return {"float": "float32", "double": "float64"}.get(name, name)


def _label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index}"


def _op_name(domain: str, op: str) -> str:
    return f"{domain}::{op}" if norm_domain(domain) else op


def _resolve(op: str, domain: str, opset: int) -> int | None:
    """The op version a node uses at ``opset``: its newest schema <= opset (None: no such op then)."""
    try:
        return onnx.defs.get_schema(op, opset, norm_domain(domain)).since_version
    except onnx.defs.SchemaError:
        return None if norm_domain(domain) == "" else opset


def _supported(profile: Profile, op: str, domain: str, opset: int):
    version = _resolve(op, domain, opset)
    if version is None:
        return None
    entry = profile.supports(domain, op, version)
    if entry is None and norm_domain(domain) == "" and profile.op_versions(domain, op) and not onnx.defs.has(op):
        entry = profile.supports(domain, op, opset)
    return entry


def _fix_for_op(profile: Profile, op: str, domain: str, opset: int) -> tuple[str, tuple[str, str] | None]:
    from modelport.adapt.rules import rules_for

    if norm_domain(domain) == "":
        exact = [r for r in rules_for(op, "") if r.exact]
        for rule in exact:
            if all(_supported(profile, e, "", opset) for e in rule.emits if onnx.defs.has(e) and _resolve(e, "", opset)):
                approx = [r.key for r in rules_for(op, "") if not r.exact]
                alt = f" (or the approximation{'s' if len(approx) > 1 else ''} {', '.join(approx)})" if approx else ""
                return f"adapt --replace {rule.key} (exact){alt}", ("replace", rule.key)
        lo_hi = profile.opset_range("")
        if lo_hi:
            for o in range(lo_hi[1], lo_hi[0] - 1, -1):
                if o != opset and _supported(profile, op, domain, o):
                    return f"adapt --opset {o}", ("opset", str(o))
        approx = [r.key for r in rules_for(op, "") if not r.exact and all(
            _supported(profile, e, "", opset) for e in r.emits if onnx.defs.has(e) and _resolve(e, "", opset))]
        if approx:
            return f"{NO_FIX} (approximation: adapt --replace {' or '.join(approx)})", None
    return NO_FIX, None


def _types(model: onnx.ModelProto) -> tuple[dict[str, int], str]:
    """Element types of every value (shape inference where it can), and a note when it could not run."""
    note = ""
    try:
        from modelport.formats.onnx_data import without_weights

        # weights as typed inputs: their values never matter here, and a model over 2 GiB cannot be serialized
        inferred = onnx.shape_inference.infer_shapes(without_weights(model), strict_mode=False)
    except Exception as exc:  # noqa: BLE001  (the check goes on with the types the file declares)
        inferred = model
        why = " ".join(str(exc).split())[:160] or type(exc).__name__
        note = (f"shape inference failed ({type(exc).__name__}: {why}): dtype problems were checked only for values "
                "whose type the file declares; intermediate values of unknown type were skipped")
    g = inferred.graph
    types = {i.name: i.data_type for i in g.initializer}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types, note


def _opset_problems(model: onnx.ModelProto, profile: Profile, used: set[str]) -> tuple[list[Problem], dict[str, int], int]:
    problems = []
    opsets = {norm_domain(i.domain): int(i.version) for i in model.opset_import}
    effective = opsets.get("", 1)
    local = {f.domain for f in model.functions}
    for domain in sorted(used | {""}):
        if domain in local:
            continue
        version = opsets.get(domain)
        rng = profile.opset_range(domain)
        label = domain or "ai.onnx"
        if rng is None:
            problems.append(Problem("domain", label, "", f"{profile.name} runs no ops of domain {label!r}", NO_FIX))
            continue
        lo, hi = rng
        if version is not None and not lo <= version <= hi:
            to = min(max(version, lo), hi)
            action = ("opset", str(to)) if domain == "" else None
            fix = f"adapt --opset {to}" if action else NO_FIX
            problems.append(Problem("opset", label, "", f"opset {version} of {label} is outside {profile.name}'s range {lo}..{hi}", fix, action))
            if domain == "":
                effective = to
    return problems, opsets, effective


def _op_problems(model: onnx.ModelProto, profile: Profile, opsets: dict[str, int], effective: int, types: dict[str, int],
                 caveats: dict[tuple[str, str], list[str]], cast_nodes: dict[str, list[str]]) -> list[Problem]:
    problems: list[Problem] = []
    local = {(f.domain, f.name) for f in model.functions}
    bad_dtypes: dict[str, list[str]] = {}
    nodes = list(iter_nodes(model.graph)) + [n for f in model.functions for n in f.node]
    for i, node in enumerate(nodes):
        domain = norm_domain(node.domain)
        if (node.domain, node.op_type) in local or (domain == "" and node.op_type in DATA_OPS):
            continue
        opset = effective if domain == "" else opsets.get(domain, 1)
        entry = _supported(profile, node.op_type, domain, opset)
        label = _label(node, i)
        name = _op_name(domain, node.op_type)
        if entry is None:
            if profile.opset_range(domain) is None:
                continue  # reported once as a domain problem
            version = _resolve(node.op_type, domain, opset)
            at = f"at opset {opset}" + ("" if version is None or version == opset else f" (version {version})")
            why = "does not exist" if version is None else f"is not supported by {profile.name}"
            fix, action = _fix_for_op(profile, node.op_type, domain, opset)
            problems.append(Problem("op", label, name, f"{name} node {label!r} {why} {at}", fix, action))
            continue
        if entry.note:
            caveats.setdefault((name, entry.note), []).append(label)
        tensor_dtypes = {_dtype_name(types[t]) for t in [*node.input, *node.output] if t and t in types}
        for d in sorted(tensor_dtypes):
            if profile.dtypes and d not in profile.dtypes:
                bad_dtypes.setdefault(d, []).append(label)
            elif entry.dtypes and d.startswith(("float", "bfloat")) and d not in entry.dtypes and any(
                    x.startswith(("float", "bfloat")) for x in entry.dtypes):
                if profile.casts.get(d) in entry.dtypes:
                    cast_nodes.setdefault(d, []).append(label)
                    continue
                problems.append(Problem("dtype", label, name, f"{name} node {label!r} computes in {d}; {profile.name}'s {node.op_type} "
                                        f"takes {', '.join(x for x in entry.dtypes if x.startswith(('float', 'bfloat')))}", NO_FIX))
    for d, labels in bad_dtypes.items():
        shown = ", ".join(repr(x) for x in labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
        problems.append(Problem("dtype", shown, "", f"{len(labels)} node(s) use {d}, which {profile.name} does not compute in: {shown}", NO_FIX))
    return problems


def _boundary_problems(model: onnx.ModelProto, profile: Profile) -> tuple[list[Problem], list[str]]:
    problems, notes = [], []
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = _dtype_name(tt.elem_type) if tt.elem_type else ""
        if profile.dtypes and dtype and dtype not in profile.dtypes and dtype.startswith("float") and "float32" in profile.dtypes:
            problems.append(Problem("dtype", vi.name, "", f"input {vi.name!r} is {dtype}, which {profile.name} does not take",
                                    "adapt --io-dtype float32", ("io_dtype", "float32")))
        dims = [d for d in tt.shape.dim] if tt.HasField("shape") else []
        for pos, d in enumerate(dims):
            if d.HasField("dim_value"):
                continue
            if profile.dynamic_dims == "all" or (profile.dynamic_dims == "batch" and pos == 0):
                continue
            sym = d.dim_param or "?"
            if pos == 0:
                problems.append(Problem("dynamic_dim", vi.name, "", f"input {vi.name!r} has a dynamic batch dim ({sym}); "
                                        f"{profile.name} needs static shapes", "adapt --batch 1", ("batch", "1")))
            else:
                problems.append(Problem("dynamic_dim", vi.name, "", f"input {vi.name!r} dim {pos} is dynamic ({sym}); {profile.name} "
                                        f"allows {'only a dynamic batch' if profile.dynamic_dims == 'batch' else 'no dynamic dims'}",
                                        f"{NO_FIX} (export with a static size for {sym})"))
        if profile.layout == "nhwc" and len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value in (1, 3, 4) \
                and all(x.HasField("dim_value") and x.dim_value > dims[1].dim_value for x in dims[2:]):
            notes.append(f"{profile.name} prefers NHWC: input {vi.name!r} looks NCHW; adapt --layout nhwc feeds it NHWC")
    return problems, notes


def check_model(model: onnx.ModelProto, target: str | Path | Profile, *, path: str = "") -> CheckReport:
    """Check an in-memory ONNX model against a target profile; lists every problem at once."""
    profile = load_profile(target)
    used = {norm_domain(n.domain) for n in iter_nodes(model.graph)} | {norm_domain(n.domain) for f in model.functions for n in f.node}
    problems, opsets, effective = _opset_problems(model, profile, used)
    caveats: dict[tuple[str, str], list[str]] = {}
    cast_nodes: dict[str, list[str]] = {}
    types, types_note = _types(model)
    problems += _op_problems(model, profile, opsets, effective, types, caveats, cast_nodes)
    boundary, notes = _boundary_problems(model, profile)
    problems += boundary
    if types_note:
        notes.append(types_note)
    for d, labels in cast_nodes.items():
        notes.append(f"{len(labels)} {d} node(s) (e.g. {labels[0]!r}) have no {d} kernel on {profile.name}: "
                     f"it runs them in {profile.casts[d]} through inserted Casts (slower)")
    for (name, note), labels in caveats.items():
        if not note.startswith(("lowers to", "folded")):
            notes.append(f"{name} ({len(labels)} node(s), e.g. {labels[0]!r}): {profile.name} says: {note}")
    if profile.reduced:
        notes.append(f"{profile.name} is a reduced profile ({profile.description}); an op missing from it may still run")
    return CheckReport(path, profile.name, profile.description, profile.reduced, {k or "ai.onnx": v for k, v in opsets.items()},
                       effective, tuple(problems), tuple(notes), not problems)


def check(model: str | Path, target: str | Path | Profile) -> CheckReport:
    """Check the ONNX model at ``model`` against ``target`` (a built-in name or a profile .json path)."""
    from modelport.formats import detect
    from modelport.errors import UnsupportedError
    from modelport.formats.onnx_format import load_model

    fmt = detect(model)
    if fmt != "onnx":
        raise UnsupportedError(f"check takes an ONNX model, this is {fmt}; convert it first: modelport convert {model} --to onnx", path=model)
    profile = load_profile(target)
    return check_model(load_model(model, load_external_data=False), profile, path=str(model))  # weights never read
