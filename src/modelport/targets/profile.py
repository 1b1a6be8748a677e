"""Target profiles: what a deployment target runs, as data.

A profile is a JSON file (format ``modelport-target/1``)::

    {
      "format": "modelport-target/1",
      "name": "onnxruntime-cpu",
      "description": "...", "source": "how the file was made",
      "reduced": false,              # true: a known subset, not the target's full list
      "opsets": {"": [7, 23]},       # per ONNX domain: [min, max] opset the target loads
      "dtypes": ["float32", ...],    # numpy names of tensor dtypes the target computes in
      "layout": "nchw" | "nhwc" | "any",
      "dynamic_dims": "all" | "batch" | "none",
      "casts": {"float16": "float32"},  # optional: dtypes the runtime computes through inserted Casts
      "ops": {"": {"Gelu": [{"since": 20, "until": null, "dtypes": ["float32"]}]}}
    }

An op entry's ``since``/``until`` are ONNX op versions (a node's version is the newest
schema version <= the model's opset for its domain); ``until: null`` is open-ended;
``dtypes`` (optional) are the dtypes its kernels take; ``via: "function"`` marks an op
the runtime runs by inlining its ONNX function body; ``note`` carries a caveat.

Built-in profiles live in ``targets/profiles/`` (regenerate them with
``python -m modelport.targets.generate_profiles``); ``torch`` is built at check time from
our ONNX -> PyTorch converter's registry. A user passes their own file by path.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from modelport.errors import BadInputError, UnsupportedError

__all__ = ["OpVersion", "Profile", "known_targets", "load_profile", "profile_from_dict", "PROFILE_DIR", "FORMAT"]

FORMAT = "modelport-target/1"
PROFILE_DIR = Path(__file__).with_name("profiles")
LAYOUTS = ("nchw", "nhwc", "any")
DYNAMIC = ("all", "batch", "none")
DEFAULT_DOMAINS = ("", "ai.onnx")
LAZY_TARGETS = ("torch",)


def norm_domain(domain: str) -> str:
    return "" if domain in DEFAULT_DOMAINS else domain


@dataclasses.dataclass(frozen=True)
class OpVersion:
    """One supported version range of an op, inclusive at both ends (``until`` None: open)."""

    since: int
    until: int | None = None
    dtypes: tuple[str, ...] | None = None
    via: str = "kernel"
    note: str = ""

    def covers(self, version: int) -> bool:
        return self.since <= version and (self.until is None or version <= self.until)


@dataclasses.dataclass(frozen=True)
class Profile:
    """What a target runs: ops by (domain, op) with version ranges, opsets, dtypes, layout, dynamic dims."""

    name: str
    description: str
    source: str
    reduced: bool
    opsets: dict[str, tuple[int, int]]
    dtypes: tuple[str, ...]
    layout: str
    dynamic_dims: str
    ops: dict[tuple[str, str], tuple[OpVersion, ...]]
    path: str = ""
    casts: dict[str, str] = dataclasses.field(default_factory=dict)

    def op_versions(self, domain: str, op: str) -> tuple[OpVersion, ...]:
        return self.ops.get((norm_domain(domain), op), ())

    def supports(self, domain: str, op: str, version: int) -> OpVersion | None:
        """The entry that runs this op at this op version, or None."""
        return next((v for v in self.op_versions(domain, op) if v.covers(version)), None)

    def opset_range(self, domain: str) -> tuple[int, int] | None:
        return self.opsets.get(norm_domain(domain))

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "reduced": self.reduced,
                "opsets": {k or "ai.onnx": list(v) for k, v in self.opsets.items()}, "ops": len(self.ops),
                "layout": self.layout, "dynamic_dims": self.dynamic_dims}


def known_targets() -> list[str]:
    """Names of the built-in profiles (data files plus the lazily built ones)."""
    return sorted([p.stem for p in PROFILE_DIR.glob("*.json")] + list(LAZY_TARGETS))


@functools.cache
def _onnx_dtype_names() -> frozenset[str]:
    import onnx

    return frozenset(n.lower() for n in onnx.TensorProto.DataType.keys())


def _fail(where: str, problem: str) -> BadInputError:
    return BadInputError(f"malformed target profile: {problem}", path=where)


def _int_pair(value: Any, where: str, what: str) -> tuple[int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value) or value[0] > value[1]):
        raise _fail(where, f"{what} must be [min, max] integers with min <= max, got {value!r}")
    return int(value[0]), int(value[1])


def _dtypes(value: Any, where: str, what: str) -> tuple[str, ...]:
    import numpy as np

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, f"{what} must be a list of dtype names, got {value!r}")
    for v in value:
        if v.lower() in _onnx_dtype_names():
            continue
        try:
            np.dtype(v)
        except TypeError:
            raise _fail(where, f"{what}: unknown dtype {v!r}") from None
    return tuple(value)


def _op_version(entry: Any, where: str, what: str) -> OpVersion:
    if not isinstance(entry, dict) or "since" not in entry:
        raise _fail(where, f"{what} must be an object with 'since' (and optional until, dtypes, via, note), got {entry!r}")
    unknown = set(entry) - {"since", "until", "dtypes", "via", "note"}
    if unknown:
        raise _fail(where, f"{what} has unknown keys {sorted(unknown)}")
    since, until = entry["since"], entry.get("until")
    if not isinstance(since, int) or isinstance(since, bool) or since < 1:
        raise _fail(where, f"{what}.since must be a positive integer, got {since!r}")
    if until is not None and (not isinstance(until, int) or isinstance(until, bool) or until < since):
        raise _fail(where, f"{what}.until must be null or an integer >= since, got {until!r}")
    dtypes = _dtypes(entry["dtypes"], where, f"{what}.dtypes") if entry.get("dtypes") is not None else None
    return OpVersion(since, until, dtypes, str(entry.get("via", "kernel")), str(entry.get("note", "")))


def profile_from_dict(data: Any, where: str = "<profile>") -> Profile:
    """Validate a profile's JSON data; a BadInputError names the file and the problem."""
    if not isinstance(data, dict):
        raise _fail(where, f"the top level must be a JSON object, got {type(data).__name__}")
    if data.get("format", FORMAT) != FORMAT:
        raise _fail(where, f"format must be {FORMAT!r}, got {data.get('format')!r}")
    missing = [k for k in ("name", "opsets", "ops") if k not in data]
    if missing:
        raise _fail(where, f"missing required key(s) {missing}")
    if not isinstance(data["name"], str) or not data["name"]:
        raise _fail(where, "name must be a non-empty string")
    if not isinstance(data["opsets"], dict) or not data["opsets"]:
        raise _fail(where, "opsets must be an object mapping a domain ('' is ai.onnx) to [min, max]")
    opsets = {norm_domain(d): _int_pair(v, where, f"opsets[{d!r}]") for d, v in data["opsets"].items()}
    layout = data.get("layout", "any")
    if layout not in LAYOUTS:
        raise _fail(where, f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    dynamic = data.get("dynamic_dims", "all")
    if dynamic is True or dynamic is False:
        dynamic = "all" if dynamic else "none"
    if dynamic not in DYNAMIC:
        raise _fail(where, f"dynamic_dims must be one of {list(DYNAMIC)} (or true/false), got {dynamic!r}")
    if not isinstance(data["ops"], dict):
        raise _fail(where, "ops must be an object: domain -> {op: [version entries]}")
    ops: dict[tuple[str, str], tuple[OpVersion, ...]] = {}
    for domain, table in data["ops"].items():
        if not isinstance(table, dict):
            raise _fail(where, f"ops[{domain!r}] must be an object mapping op names to lists of version entries")
        for op, entries in table.items():
            if not isinstance(entries, list) or not entries:
                raise _fail(where, f"ops[{domain!r}][{op!r}] must be a non-empty list of version entries")
            ops[(norm_domain(domain), op)] = tuple(
                _op_version(e, where, f"ops[{domain!r}][{op!r}][{i}]") for i, e in enumerate(entries))
    dtypes = _dtypes(data.get("dtypes", []), where, "dtypes")
    casts = data.get("casts", {})
    if not isinstance(casts, dict):
        raise _fail(where, f"casts must be an object mapping a dtype to the dtype it is computed in, got {casts!r}")
    _dtypes(list(casts) + list(casts.values()), where, "casts")
    return Profile(data["name"], str(data.get("description", "")), str(data.get("source", "")), bool(data.get("reduced", False)),
                   opsets, dtypes, layout, dynamic, ops, where, dict(casts))


def _read(path: Path) -> Profile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot read target profile: {exc.strerror}", path=path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(str(path), f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return profile_from_dict(data, str(path))


def torch_profile() -> Profile:
    """The ONNX ops our ONNX -> PyTorch converter handles, from its registry (built at call time)."""
    try:
        from modelport.to_torch import supported_ops
        triples = supported_ops()
    except Exception as exc:  # the converter is optional here
        raise UnsupportedError(f"target 'torch' is unavailable: modelport.to_torch cannot list its ops ({type(exc).__name__}: {exc})") from None
    import onnx.defs

    lowest: dict[tuple[str, str], int] = {}
    for domain, op, since in triples:
        key = (norm_domain(domain), op)
        lowest[key] = min(since, lowest.get(key, since))
    ops = {k: (OpVersion(v, None),) for k, v in lowest.items()}
    domains = {d for d, _ in ops} | {""}
    opsets = {d: (1, onnx.defs.onnx_opset_version() if d == "" else 99) for d in domains}
    return Profile("torch", "modelport's ONNX -> PyTorch converter (modelport.to_torch)",
                   "modelport.to_torch.supported_ops() at check time", False, opsets, (), "any", "all", ops, "torch")


def load_profile(target: str | Path | Profile) -> Profile:
    """A profile by built-in name (``onnxruntime-cpu``, ``tflite``, ``torch``, …) or by path to a JSON file."""
    if isinstance(target, Profile):
        return target
    text = str(target)
    if text in LAZY_TARGETS:
        return torch_profile()
    builtin = PROFILE_DIR / f"{text}.json"
    if "/" not in text and "\\" not in text and not text.endswith(".json"):
        if builtin.is_file():
            return _read(builtin)
        raise UnsupportedError(f"unknown target {text!r}; known targets: {', '.join(known_targets())} (or a path to a profile .json)")
    path = Path(text)
    if not path.exists():
        raise BadInputError(f"no such target profile file (known targets: {', '.join(known_targets())})", path=path)
    return _read(path)
