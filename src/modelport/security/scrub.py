"""Scrub what an exported ONNX model leaks about the machine that made it.

Exporters write their debugging aids into the model: torch's dynamo exporter puts a Python stack
trace (``File "/home/alice/proj/model.py", line 12, in forward``), the module path of every class
(``namespace``, ``pkg.torch.onnx.class_hierarchy``) into each node's ``metadata_props``, and
other tools leave paths, user and host names in ``doc_string`` fields and model metadata. Scrubbing
removes, everywhere in the model (main graph, subgraphs, functions, nodes, attributes, values,
initializers):

- metadata entries whose key says they hold a stack trace or a source location
  (``*stack_trace*``, ``*traceback*``, ``namespace``, ``class_hierarchy``, ``source*``);
- metadata entries and doc strings whose text carries a stack frame, a path under a home or
  temporary directory (``/home/...``, ``/Users/...``, ``/tmp/...``, ``C:\\Users\\...``), a path to a
  ``.py`` file, this machine's working directory, home, temp dir or Python prefix, the user's name or
  the host's name (doc strings are emptied, metadata entries removed);
- the same in the producer name/version and the model's domain (emptied).

modelport's own lineage (``modelport.lineage``) is kept: only the paths, user and host names in
its records' text fields are replaced by ``<path>``, ``<user>``, ``<host>``, and a ``scrub`` record
is appended. The graph itself (nodes, attributes, initializers and their data, inputs, outputs,
opsets) is untouched: its fingerprint (the model with every doc string and metadata entry cleared,
serialized deterministically) is compared before and after, and the report says whether it held.
What scrubbing leaves alone (names of nodes and values, string constants) is searched too and
reported as remaining, not changed.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelport.artifact import StepRecord, to_jsonable
from modelport.errors import BadInputError, CheckFailedError, UnsupportedError
from modelport.pipeline.lineage import LINEAGE_KEY
from modelport.pipeline.staging import Staging

__all__ = ["Leaks", "Removal", "ScrubReport", "scrub", "scrub_in_place", "scrub_model", "graph_fingerprint"]

STACK_TRACE, SOURCE, PATH, USER, HOST = "stack trace", "source location", "path", "user name", "host name"
KINDS = (STACK_TRACE, SOURCE, PATH, USER, HOST)

_FRAME = re.compile(r'File "[^"\n]+", line \d+|Traceback \(most recent call last\)|\bat [\w.$<>]+\([\w.-]+\.\w+:\d+\)')
# An absolute path token (POSIX, a Windows drive, a UNC share), up to the next space or quote.
_PATH_TOKEN = re.compile(r"(?:(?<![\w.~-])/|\b[A-Za-z]:\\|\\\\)[^\s'\"`,;|<>()\[\]{}]+")
_PRIVATE_ROOT = re.compile(
    r"^(?:/(?:home|Users|root|tmp|var/tmp|var/folders|private|mnt|media|scratch|run/user)(?:/|$)"
    r"|[A-Za-z]:\\(?:Users|Documents and Settings|Windows\\Temp)\\|\\\\)", re.IGNORECASE)
_PY_FILE = re.compile(r"\.(?:py|pyx|ipynb)(?::\d+)?$")
_STACK_KEYS = ("stack_trace", "stacktrace", "traceback")
_SOURCE_KEYS = ("namespace", "class_hierarchy", "source", "source_file", "source_location", "filename", "file")
_MIN_NAME = 3  # user and host names shorter than this match too much ordinary text


@dataclasses.dataclass(frozen=True)
class Leaks:
    """What identifies this machine, and how to find it in text.

    Attributes:
        literals: (kind, text) found as plain substrings: the working directory, home, temp dir, Python prefixes.
        words: (kind, word) found as whole words: the user's name, the host's name.
    """

    literals: tuple[tuple[str, str], ...]
    words: tuple[tuple[str, str], ...]

    @classmethod
    def here(cls) -> Leaks:
        """The working directory, home, temp dir, Python prefixes, user and host names of this process."""
        literals: list[tuple[str, str]] = []
        for value in (os.getcwd(), os.path.expanduser("~"), tempfile.gettempdir(), os.path.realpath(tempfile.gettempdir()),
                      sys.prefix, sys.base_prefix, sys.exec_prefix):
            if value and len(value) > 1 and value not in ("/", "/usr", "/usr/local") and (PATH, value) not in literals:
                literals.append((PATH, value))
        words: list[tuple[str, str]] = []
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name in this environment
            user = ""
        if len(user) >= _MIN_NAME:
            words.append((USER, user))
        host = socket.gethostname()
        for name in dict.fromkeys((host, host.split(".")[0])):
            if len(name) >= _MIN_NAME:
                words.append((HOST, name))
        return cls(tuple(literals), tuple(words))

    def _word(self, word: str) -> re.Pattern[str]:
        return re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])")

    def _sensitive_path(self, token: str) -> bool:
        return bool(_PRIVATE_ROOT.match(token) or _PY_FILE.search(token)
                    or any(lit in token for _, lit in self.literals))

    def kinds(self, text: str) -> list[str]:
        """The kinds of leak in ``text``, most telling first (empty: nothing found)."""
        found: list[str] = []
        if _FRAME.search(text):
            found.append(STACK_TRACE)
        if any(self._sensitive_path(t) for t in _PATH_TOKEN.findall(text)) or any(lit in text for _, lit in self.literals):
            found.append(PATH)
        for kind, word in self.words:
            if kind not in found and self._word(word).search(text):
                found.append(kind)
        return found

    def redact(self, text: str) -> tuple[str, list[str]]:
        """``text`` with sensitive paths, user and host names replaced by ``<path>``, ``<user>``, ``<host>``."""
        kinds: list[str] = []

        def path(m: re.Match[str]) -> str:
            if self._sensitive_path(m.group(0)):
                kinds.append(PATH)
                return "<path>"
            return m.group(0)

        out = _PATH_TOKEN.sub(path, text)
        for _, lit in sorted(self.literals, key=lambda kv: -len(kv[1])):
            if lit in out:
                kinds.append(PATH)
                out = out.replace(lit, "<path>")
        for kind, word in self.words:
            out, n = self._word(word).subn(f"<{kind.split()[0]}>", out)
            kinds.extend([kind] * n)
        return out, kinds


@dataclasses.dataclass(frozen=True)
class Removal:
    """One thing scrubbing removed or redacted: its kind, where it was, and (the start of) what it said."""

    kind: str
    where: str
    text: str


@dataclasses.dataclass(frozen=True)
class ScrubReport:
    """What ``scrub`` removed from a model, and whether the graph stayed the same.

    Attributes:
        removed: kind -> count of metadata entries removed and doc strings or fields emptied.
        examples: a few of them, ``where: text`` (shortened).
        lineage_fields: text fields of modelport's lineage records redacted (the records are kept).
        graph_unchanged: the model's fingerprint without doc strings and metadata is the same before and after.
        remaining: leaks found where scrubbing does not change anything (node and value names, string constants).
        external_data: external data files the output refers to (copied beside it when it moved).
    """

    src: str
    out: str
    removed: dict[str, int]
    examples: tuple[str, ...]
    lineage_fields: int
    graph_unchanged: bool
    remaining: tuple[str, ...] = ()
    external_data: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    @property
    def ok(self) -> bool:
        return self.graph_unchanged

    def __bool__(self) -> bool:
        return self.ok

    def summary(self) -> str:
        if not self.total and not self.lineage_fields:
            return "nothing to remove"
        parts = [f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in self.removed.items() if n]
        if self.lineage_fields:
            parts.append(f"{self.lineage_fields} lineage field{'s' if self.lineage_fields != 1 else ''} redacted")
        return "removed " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def _short(text: str, n: int = 100) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 1] + "…"


class _Scrubber:
    def __init__(self, leaks: Leaks) -> None:
        self.leaks = leaks
        self.removals: list[Removal] = []
        self.lineage_fields = 0

    def note(self, kind: str, where: str, text: str) -> None:
        self.removals.append(Removal(kind, where, _short(text)))

    def key_kind(self, key: str) -> str | None:
        last = key.lower().rsplit(".", 1)[-1]
        if any(k in last for k in _STACK_KEYS):
            return STACK_TRACE
        if last in _SOURCE_KEYS or last.startswith("source"):
            return SOURCE
        return None

    def props(self, holder, where: str) -> None:
        if not hasattr(holder, "metadata_props"):
            return
        keep = []
        for prop in holder.metadata_props:
            if prop.key == LINEAGE_KEY and self.lineage(prop, where):
                keep.append((prop.key, prop.value))
                continue
            kind = self.key_kind(prop.key)
            kinds = self.leaks.kinds(prop.value) if kind is None else [kind]
            if kinds:
                self.note(kinds[0], f"{where} metadata {prop.key!r}", prop.value)
            else:
                keep.append((prop.key, prop.value))
        if len(keep) != len(holder.metadata_props):
            del holder.metadata_props[:]
            for key, value in keep:
                holder.metadata_props.add(key=key, value=value)

    def lineage(self, prop, where: str) -> bool:
        """Redact the lineage records in place; False when they are no lineage JSON (treated as any entry)."""
        try:
            records = json.loads(prop.value)
        except (ValueError, RecursionError):
            return False
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            return False
        for record in records:
            for field, value in record.items():
                if isinstance(value, str):
                    text, kinds = self.leaks.redact(value)
                    if kinds:
                        record[field] = text
                        self.lineage_fields += 1
        prop.value = json.dumps(records)
        return True

    def text(self, holder, field: str, where: str) -> None:
        value = getattr(holder, field)
        if value:
            kinds = self.leaks.kinds(value)
            if kinds:
                self.note(kinds[0], f"{where} {field}", value)
                setattr(holder, field, "")

    def values(self, items, what: str) -> None:
        for v in items:
            label = f"{what} {v.name!r}"
            self.text(v, "doc_string", label)
            self.props(v, label)

    def node(self, node, where: str) -> None:
        label = f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"
        label = f"{label} {where}" if where else label
        self.text(node, "doc_string", label)
        self.props(node, label)
        for a in node.attribute:
            self.text(a, "doc_string", f"attribute {a.name!r} of {label}")
            if a.HasField("g"):
                self.graph(a.g, f"in the {a.name} of {label}")
            for i, g in enumerate(a.graphs):
                self.graph(g, f"in the {a.name}[{i}] of {label}")

    def graph(self, graph, where: str = "") -> None:
        label = f"graph {graph.name!r}" + (f" {where}" if where else "")
        self.text(graph, "doc_string", label)
        self.props(graph, label)
        for n in graph.node:
            self.node(n, where)
        self.values(graph.input, "input")
        self.values(graph.output, "output")
        self.values(graph.value_info, "value")
        self.values(graph.initializer, "initializer")
        for sparse in graph.sparse_initializer:
            self.values([sparse.values], "sparse initializer")

    def model(self, model) -> None:
        for field in ("doc_string", "producer_name", "producer_version", "domain"):
            self.text(model, field, "the model's")
        self.props(model, "the model's")
        self.graph(model.graph)
        for fn in model.functions:
            label = f"function {fn.domain + '::' if fn.domain else ''}{fn.name}"
            self.text(fn, "doc_string", label)
            self.props(fn, label)
            for n in fn.node:
                self.node(n, f"in {label}")
            self.values(fn.value_info, f"value of {label}")
        for i, info in enumerate(model.training_info):
            self.graph(info.initialization, f"(training info {i}, initialization)")
            self.graph(info.algorithm, f"(training info {i}, algorithm)")


def scrub_model(model, leaks: Leaks | None = None) -> tuple[list[Removal], int]:
    """Scrub ``model`` (an onnx.ModelProto) in place; returns what was removed and how many lineage fields were redacted."""
    s = _Scrubber(leaks or Leaks.here())
    s.model(model)
    return s.removals, s.lineage_fields


def _strip(holder) -> None:
    if hasattr(holder, "metadata_props"):
        del holder.metadata_props[:]
    if hasattr(holder, "doc_string"):
        holder.doc_string = ""


def _strip_graph(graph) -> None:
    _strip(graph)
    for items in (graph.input, graph.output, graph.value_info, graph.initializer):
        for v in items:
            _strip(v)
    for sparse in graph.sparse_initializer:
        _strip(sparse.values)
    for node in graph.node:
        _strip_node(node)


def _strip_node(node) -> None:
    _strip(node)
    for a in node.attribute:
        a.doc_string = ""
        if a.HasField("g"):
            _strip_graph(a.g)
        for g in a.graphs:
            _strip_graph(g)


def graph_fingerprint(model) -> str:
    """sha256 of the model with every doc string, metadata entry, producer and domain cleared (deterministic bytes)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for field in ("doc_string", "producer_name", "producer_version", "domain"):
        setattr(copy, field, "")
    del copy.metadata_props[:]
    _strip_graph(copy.graph)
    for fn in copy.functions:
        _strip(fn)
        for v in fn.value_info:
            _strip(v)
        for node in fn.node:
            _strip_node(node)
    for info in copy.training_info:
        _strip_graph(info.initialization)
        _strip_graph(info.algorithm)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _untouched_strings(model) -> Iterator[tuple[str, str]]:
    """(where, text) of what scrubbing leaves alone: names, string attributes and string constants."""
    import onnx

    def graph(g, where: str) -> Iterator[tuple[str, str]]:
        yield f"graph name{where}", g.name
        for items, what in ((g.input, "input"), (g.output, "output"), (g.value_info, "value"), (g.initializer, "initializer")):
            for v in items:
                yield f"{what} name{where}", v.name
        for t in g.initializer:
            if t.data_type == onnx.TensorProto.STRING:
                for s in t.string_data:
                    yield f"string initializer {t.name!r}{where}", s.decode("utf-8", "replace")
        for n in g.node:
            yield f"node name{where}", n.name
            for a in n.attribute:
                if a.type == onnx.AttributeProto.STRING:
                    yield f"attribute {a.name!r} of node {n.name!r}{where}", a.s.decode("utf-8", "replace")
                for s in a.strings:
                    yield f"attribute {a.name!r} of node {n.name!r}{where}", s.decode("utf-8", "replace")
                if a.HasField("t") and a.t.data_type == onnx.TensorProto.STRING:
                    for s in a.t.string_data:
                        yield f"string constant of node {n.name!r}{where}", s.decode("utf-8", "replace")
                if a.HasField("g"):
                    yield from graph(a.g, f" (in a subgraph of {n.name!r})")
                for sub in a.graphs:
                    yield from graph(sub, f" (in a subgraph of {n.name!r})")

    yield from graph(model.graph, "")
    for fn in model.functions:
        for n in fn.node:
            yield f"node name in function {fn.name}", n.name


def _remaining(model, leaks: Leaks) -> tuple[str, ...]:
    found: dict[str, int] = {}
    for where, text in _untouched_strings(model):
        kinds = leaks.kinds(text) if text else []
        if kinds:
            key = f"{kinds[0]} in {where}: {_short(text, 80)}"
            found[key] = found.get(key, 0) + 1
    return tuple(list(found)[:10])


def _read(path: Path):
    from modelport.security.loaders import read_onnx

    if not path.exists():
        raise BadInputError("no such file", path=path)
    if path.is_dir():
        raise UnsupportedError("is a directory; scrub works on ONNX model files", path=path)
    with open(path, "rb") as fh:
        head = fh.read(1)
    if head != b"\x08":
        raise UnsupportedError("not an ONNX model; scrub works on ONNX model files", path=path)
    model = read_onnx(path, load_external_data=False)
    if not model.graph.node and not model.graph.output:
        raise BadInputError("corrupt or truncated ONNX file (empty graph)", path=path)
    return model


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _scrub_record(removals: list[Removal], lineage_fields: int, unchanged: bool) -> dict[str, Any]:
    import onnx

    from modelport.versions import __version__

    counts = {k: sum(1 for r in removals if r.kind == k) for k in KINDS}
    detail = ", ".join(f"{n} {k}(s)" for k, n in counts.items() if n) or "nothing"
    detail = f"removed {detail}; {lineage_fields} lineage field(s) redacted; graph fingerprint unchanged: {unchanged}"
    record = StepRecord("scrub", "onnx", "onnx", "modelport scrub",
                        (("modelport", __version__), ("onnx", onnx.__version__)), detail, unchanged)
    return dataclasses.asdict(record)


def _append_record(model, record: dict[str, Any]) -> None:
    for prop in model.metadata_props:
        if prop.key == LINEAGE_KEY:
            try:
                records = json.loads(prop.value)
            except (ValueError, RecursionError):
                records = None
            if isinstance(records, list):
                prop.value = json.dumps(records + [record])
                return
            prop.value = json.dumps([record])
            return
    model.metadata_props.add(key=LINEAGE_KEY, value=json.dumps([record]))


def scrub(path: str | os.PathLike, out: str | os.PathLike | None = None, *, leaks: Leaks | None = None,
          record: bool = True) -> ScrubReport:
    """Write a copy of the ONNX model at ``path`` to ``out`` without what leaks the exporting machine.

    Args:
        path: the ONNX model; its external data is checked (never read) and referred to by the output too
            (copied beside ``out`` when ``out`` is in another directory).
        out: where to write (default ``NAME.scrubbed.onnx`` beside the source); may be ``path`` itself.
        leaks: what identifies the machine (default: this process's working dir, home, temp dir, user, host).
        record: append a ``scrub`` record to the model's lineage.

    Raises:
        BadInputError: unreadable model, an output that is a directory, an external data file already
            beside the output with other content.
        UnsupportedError: not an ONNX model.
        UnsafeError: external data that escapes the model's directory.
        CheckFailedError: the graph's fingerprint changed (a bug; nothing is written).
    """
    from modelport.security.loaders import external_data

    src = Path(path)
    dest = Path(out) if out is not None else src.with_name(src.stem + ".scrubbed.onnx")
    model = _read(src)
    if dest.is_dir():
        raise BadInputError("output is a directory", path=dest)
    refs = external_data(model, src)
    leaks = leaks or Leaks.here()
    before = graph_fingerprint(model)
    removals, lineage_fields = scrub_model(model, leaks)
    unchanged = graph_fingerprint(model) == before
    if not unchanged:  # scrubbing touches doc strings and metadata only; anything else is a bug, and nothing is written
        raise CheckFailedError("scrubbing changed the graph's fingerprint; nothing written", path=src)
    if record:
        _append_record(model, _scrub_record(removals, lineage_fields, unchanged))
    same_dir = os.path.realpath(src.parent if str(src.parent) else ".") == os.path.realpath(dest.parent if str(dest.parent) else ".")
    copies: list[tuple[Path, Path]] = []
    if not same_dir:
        for location, file in dict.fromkeys((r.location, r.file) for r in refs):
            target = dest.parent / location
            if target.exists() and not _same_file(target, file):
                if target.is_dir() or _digest(target) != _digest(file):
                    raise BadInputError(f"external data file {location!r} already exists beside the output with other "
                                        "content", path=target)
                continue
            copies.append((file, target))
    with Staging(dest) as staging:
        work = staging.scratch("scrub")
        staged = work / dest.name
        staged.write_bytes(model.SerializeToString())
        for i, (file, target) in enumerate(copies):
            tmp = work / f"data{i}"
            shutil.copyfile(file, tmp)
            staging.place(tmp, target)
        staging.place(staged, dest)
    counts = {k: n for k in KINDS if (n := sum(1 for r in removals if r.kind == k))}
    examples: list[str] = []
    for kind in KINDS:  # one example of each kind first, then more
        examples.extend([f"{r.where}: {r.text}" for r in removals if r.kind == kind][:1])
    examples.extend(f"{r.where}: {r.text}" for r in removals if f"{r.where}: {r.text}" not in examples)
    return ScrubReport(str(src), str(dest), counts, tuple(examples[:5]), lineage_fields, unchanged,
                       _remaining(model, leaks), tuple(dict.fromkeys(r.location for r in refs)))


def scrub_in_place(path: str | os.PathLike, *, leaks: Leaks | None = None, record: bool = True) -> ScrubReport:
    """:func:`scrub` with the output replacing the input (atomically)."""
    return scrub(path, path, leaks=leaks, record=record)
