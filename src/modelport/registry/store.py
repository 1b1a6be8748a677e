"""The registry store: SQLAlchemy metadata (SQLite embedded, or PostgreSQL) over a content-addressed blob directory.

A version is a manifest (see ``registry.tensors``) stored as a blob, plus rows: the version, the
blobs it references, its tensors (digest, dtype, shape, numel, blob) and its tags; aliases point
at versions and every move of one appends an ``alias_events`` row (who, when, old -> new, why);
a version may name parent versions and the step that made it (command, options, tool versions,
input and output digests, parity, metrics).

Writes follow one order, so a writer killed at any point leaves a consistent store: blobs land
first (temp + fsync + rename, by ``BlobStore``), then one transaction inserts every row that names
them. A killed writer leaves at most unreferenced blobs, which ``gc`` deletes.

Writers take one lock: SQLite ``BEGIN IMMEDIATE`` (WAL, busy timeout 30 s); on PostgreSQL a
``SELECT ... FOR UPDATE`` of one ``meta`` row (SQLite ignores it), so version numbers are assigned
per name without gaps and an alias moved by two writers at once records both moves, the last one
winning. ``gc`` deletes blobs under the same lock; an add re-checks its blobs under it before
committing, so a concurrent ``gc`` can never leave a version naming a deleted blob.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from modelport.artifact import StepRecord, to_jsonable
from modelport.errors import BadInputError, CheckFailedError, ModelportError, UnsafeError
from modelport.registry import refs
from modelport.registry.blobs import BlobError, BlobStore

__all__ = [
    "SCHEMA_VERSION",
    "Registry",
    "Version",
    "AliasEvent",
    "GcReport",
    "FsckProblem",
    "FsckReport",
    "UnknownRefError",
    "RegistryOpenError",
    "RegistryCorruptError",
    "open_registry",
    "storable_format",
    "metadata",
]

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30
# Crash tests: "POINT=/path/marker" makes a writer that reaches POINT create the marker and wait to be killed.
PAUSE_ENV = "MODELPORT_REGISTRY_TEST_PAUSE"
PAUSE_POINTS = ("blobs-written", "rows-inserted", "committed")
# ... and with "GO=/path/file" too, the writer waits at POINT until that file exists, then goes on (race tests).
PAUSE_GO_ENV = "MODELPORT_REGISTRY_TEST_GO"


class UnknownRefError(BadInputError):
    """An unknown model name, version or alias (exit 2); the message lists what exists."""


class RegistryOpenError(BadInputError):
    """The registry URL cannot be opened (exit 2); the message says why."""


class RegistryCorruptError(CheckFailedError):
    """A version cannot be read back as it was stored (exit 1); names the blob and the version."""


# ----------------------------------------------------------------------------------------- schema

metadata = MetaData()

meta_t = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
names_t = Table(
    "names", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("last_number", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False),
)
blobs_t = Table(  # every blob some version references (a blob file without a row is garbage)
    "blobs", metadata,
    Column("digest", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
)
manifests_t = Table(
    "manifests", metadata,
    Column("blob", String(64), ForeignKey("blobs.digest"), primary_key=True),
    Column("format", String(40), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("files", Integer, nullable=False),
    Column("tensors", Integer, nullable=False),
)
versions_t = Table(
    "versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name_id", Integer, ForeignKey("names.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("format", String(40), nullable=False),
    Column("filename", String(400), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("files_sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("stored_bytes", BigInteger, nullable=False),
    Column("manifest_blob", String(64), ForeignKey("manifests.blob"), nullable=False),
    Column("lineage", Text, nullable=False),
    UniqueConstraint("name_id", "number", name="uq_version_number"),
    Index("ix_versions_files_sha256", "files_sha256"),  # find_by_digest (created on open in older stores)
)
version_blobs_t = Table(
    "version_blobs", metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("blob", String(64), ForeignKey("blobs.digest"), nullable=False),
    PrimaryKeyConstraint("version_id", "blob"),
    Index("ix_version_blobs_blob", "blob"),
)
tensors_t = Table(  # one row per distinct tensor (dtype, shape, bytes); candidates of layout transforms
    "tensors", metadata,
    Column("digest", String(64), primary_key=True),
    Column("dtype", String(32), nullable=False),
    Column("shape", Text, nullable=False),  # JSON list (null: unknown, numel then -1)
    Column("numel", BigInteger, nullable=False),
    Column("nbytes", BigInteger, nullable=False),
    Column("blob", String(64), ForeignKey("blobs.digest"), nullable=True),  # null: stored as a transform
    Column("transform", Text, nullable=True),  # JSON {"of", "shape", "perm"}
    Index("ix_tensors_dtype_numel", "dtype", "numel"),
)
version_tensors_t = Table(
    "version_tensors", metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("file", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("digest", String(64), ForeignKey("tensors.digest"), nullable=False),
    PrimaryKeyConstraint("version_id", "position"),
    Index("ix_version_tensors_digest", "digest"),
)
tags_t = Table(
    "tags", metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("key", String(100), nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("version_id", "key"),
)
aliases_t = Table(
    "aliases", metadata,
    Column("name_id", Integer, ForeignKey("names.id"), nullable=False),
    Column("alias", String(100), nullable=False),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    PrimaryKeyConstraint("name_id", "alias"),
)
alias_events_t = Table(  # append-only
    "alias_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name_id", Integer, ForeignKey("names.id"), nullable=False),
    Column("alias", String(100), nullable=False),
    Column("old_version_id", Integer, ForeignKey("versions.id"), nullable=True),
    Column("new_version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("who", String(200), nullable=False),
    Column("at", DateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_alias_events_lookup", "name_id", "alias", "at"),
)
steps_t = Table(  # the step that made a version: command, options, tool versions, digests, parity, metrics
    "steps", metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("record", Text, nullable=False),
)
parents_t = Table(  # lineage edges: child was made from parent
    "parents", metadata,
    Column("child_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("parent_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("position", Integer, nullable=False),
    PrimaryKeyConstraint("child_id", "parent_id"),
    Index("ix_parents_parent", "parent_id"),
)
provenance_t = Table(  # the signed provenance bundle (OUT.intoto.jsonl) that came with a version, as a blob
    "provenance", metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("blob", String(64), ForeignKey("blobs.digest"), nullable=False),
    Column("statements", Integer, nullable=False),
    Column("key_ids", Text, nullable=False),  # JSON list: the key ids its first statement's signatures name
    Column("command", String(40), nullable=False),
)


# ---------------------------------------------------------------------------------------- reports


def _iso(ts: datetime) -> str:
    """A stored (naive UTC) or aware datetime as ISO 8601 UTC with a Z."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
    return ts.isoformat(timespec="microseconds") + "Z"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _db_time(ts: datetime) -> datetime:
    return refs.parse_timestamp(ts).replace(tzinfo=None)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):  # no login name in the environment or the password database
        return f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"


@dataclasses.dataclass(frozen=True)
class Version:
    """One stored version of a model. Times are ISO 8601 UTC; sizes in bytes.

    ``files_sha256`` is the sha256 of the lines ``"<file sha256>  <path>\\n"`` over the files sorted
    by path (``sha256sum`` style; a single file has the path ""); ``stored_bytes`` is what this
    version added to the blob store (0 when every blob was already there).
    """

    name: str
    number: int
    format: str
    created_at: str
    created_by: str
    files_sha256: str
    size: int
    stored_bytes: int
    manifest_blob: str
    filename: str
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    lineage: tuple[StepRecord, ...] = ()
    step: dict[str, Any] | None = None
    parents: tuple[str, ...] = ()
    # the signed provenance stored with it: {"blob", "statements", "key_ids", "command"} (None: unsigned);
    # the key ids are what the bundle claims: ``modelport provenance verify NAME@V --pub KEY`` checks them
    provenance: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.number}"

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, **to_jsonable(self)}


@dataclasses.dataclass(frozen=True)
class AliasEvent:
    """One move of an alias: ``old`` (None when the alias was new) -> ``new`` version number."""

    name: str
    alias: str
    old: int | None
    new: int
    who: str
    at: str
    reason: str
    id: int

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclasses.dataclass(frozen=True)
class GcReport:
    registry: str
    removed: tuple[str, ...]
    bytes_freed: int
    kept: int
    temp_files_removed: int

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclasses.dataclass(frozen=True)
class FsckProblem:
    kind: str  # missing-blob | corrupt-blob | blob-size | manifest | rows | numbers | alias | tensor | step
    what: str  # the blob digest, version ref or alias it concerns
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.what}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class FsckReport:
    """What ``fsck`` checked and what it found broken; ``ok`` when nothing is (unreferenced blobs are garbage, not damage)."""

    registry: str
    versions_checked: int
    blobs_checked: int
    bytes_hashed: int
    problems: tuple[FsckProblem, ...]
    unreferenced: tuple[str, ...]
    temp_files: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **to_jsonable(self)}


# --------------------------------------------------------------------------------------- helpers


def _pause(point: str) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    want, _, marker = spec.partition("=")
    if want == point:
        Path(marker).write_text(str(os.getpid()))
        go = os.environ.get(PAUSE_GO_ENV)
        while not (go and Path(go).exists()):  # the crash test kills us here; a race test lets us go on
            time.sleep(0.02 if go else 0.5)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return " ".join(text.split()) or type(exc).__name__


def _listing(items: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _numbers(numbers: Sequence[int]) -> str:
    """[1, 2, 3, 5] -> '1..3, 5'."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("..")[-1] == str(n - 1):
            start = out[-1].split("..")[0]
            out[-1] = f"{start}..{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def _files_sha256(manifest: dict) -> str:
    lines = "".join(f"{f['sha256']}  {f['path']}\n" for f in sorted(manifest["files"], key=lambda f: f["path"]))
    return hashlib.sha256(lines.encode()).hexdigest()


def _manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def _lineage_json(lineage: Iterable[StepRecord | dict]) -> str:
    items = [dataclasses.asdict(s) if isinstance(s, StepRecord) else dict(s) for s in lineage]
    return json.dumps(to_jsonable(items))


def _lineage_of(text: str) -> tuple[StepRecord, ...]:
    fields = {f.name for f in dataclasses.fields(StepRecord)}
    out = []
    for item in json.loads(text or "[]"):
        kw = {k: v for k, v in item.items() if k in fields}
        kw["versions"] = tuple(tuple(v) for v in kw.get("versions", ()))
        out.append(StepRecord(**kw))
    return tuple(out)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class _Retry(Exception):
    """A blob vanished (a concurrent gc) between writing it and committing the rows: add again."""


# -------------------------------------------------------------------------------------- registry


class Registry:
    """A model registry: versions, tags, aliases with history, lineage edges, deduplicated tensors.

    Open one with ``Registry.open(url)`` (see ``registry.refs`` for URLs); it is a context manager.
    """

    def __init__(self, location: refs.Location, engine: Engine) -> None:
        self.location = location
        self.url = location.url
        self.blobs = BlobStore(location.blobs)
        self._engine = engine
        self._writer = engine.execution_options(modelport_write=True)

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str | os.PathLike | None = None, *, create: bool = True) -> Registry:
        """Open the registry at ``url`` (default: ``MODELPORT_REGISTRY`` or ``~/.modelport/registry``).

        Args:
            url: a directory, ``sqlite:///path/registry.db`` or ``postgresql+psycopg://...?blobs=DIR``.
            create: create the registry when there is none; else refuse (exit 2).
        """
        loc = refs.parse_location(url)
        if loc.dialect == "sqlite":
            assert loc.db_path is not None
            parent = loc.db_path.parent
            if parent.exists() and not parent.is_dir():
                raise RegistryOpenError(f"cannot open registry {loc.url}: {parent} is not a directory")
            if loc.db_path.is_dir():
                raise RegistryOpenError(f"cannot open registry {loc.url}: {loc.db_path} is a directory")
            if not loc.db_path.exists():
                if not create:
                    raise RegistryOpenError(f"no registry at {loc.url} (`modelport registry add` creates one)")
                try:
                    parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise RegistryOpenError(f"cannot create registry {loc.url}: {exc.strerror or exc}") from None
            engine = create_engine(loc.db_url, connect_args={"timeout": BUSY_TIMEOUT_S})
            _sqlite_hooks(engine)
        else:
            try:
                engine = create_engine(loc.db_url, connect_args={"connect_timeout": 10}, pool_pre_ping=True)
            except (SQLAlchemyError, ImportError, ValueError) as exc:
                raise RegistryOpenError(f"cannot open registry {loc.url}: {_reason(exc)}") from None
        registry = cls(loc, engine)
        try:
            registry._init_schema(create)
        except ModelportError:
            engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as exc:
            engine.dispose()
            raise RegistryOpenError(f"cannot open registry {loc.url}: {_reason(exc)}") from None
        return registry

    def _init_schema(self, create: bool) -> None:
        for attempt in range(3):
            if inspect(self._engine).has_table("meta"):
                break
            if not create:
                raise RegistryOpenError(f"no registry at {self.url} (the database has no registry tables)")
            try:
                with self._writer.begin() as conn:
                    metadata.create_all(conn)
                    have = set(conn.scalars(select(meta_t.c.key)))
                    for key, value in (("schema", str(SCHEMA_VERSION)), ("lock", "writers take this row")):
                        if key not in have:
                            conn.execute(meta_t.insert().values(key=key, value=value))
                break
            except (IntegrityError, DBAPIError):  # another process created it at the same moment
                if attempt == 2:
                    raise
        with self._engine.connect() as conn:
            found = conn.scalar(select(meta_t.c.value).where(meta_t.c.key == "schema"))
        if found is None or not str(found).isdigit():
            raise RegistryOpenError(f"cannot open registry {self.url}: its meta table has no schema version")
        if int(found) > SCHEMA_VERSION:
            raise RegistryOpenError(
                f"cannot open registry {self.url}: schema version {found} is newer than this modelport's ({SCHEMA_VERSION})")
        # (schema migrations, when there is more than one version, run here, explicitly, under the writer lock)
        self._ensure_tables()
        self._ensure_indexes()
        try:
            self.blobs.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryOpenError(
                f"cannot open registry {self.url}: blob directory {self.blobs.root}: {exc.strerror or exc}") from None

    def _ensure_tables(self) -> None:
        """Create the tables added after a store was made (``provenance``; same schema version: a new
        table changes no row), under the writer lock."""
        have = set(inspect(self._engine).get_table_names())
        missing = [t for t in metadata.sorted_tables if t.name not in have]
        if not missing:
            return
        with contextlib.suppress(SQLAlchemyError):  # a store we may not write: reads of the new table then fail
            with self._writer.begin() as conn:
                conn.execute(select(meta_t.c.value).where(meta_t.c.key == "lock").with_for_update())
                metadata.create_all(conn, tables=missing, checkfirst=True)

    def _ensure_indexes(self) -> None:
        """Create the indexes added after a store was made (same schema version: an index changes
        no row), under the writer lock so that two processes opening it at once create each once."""
        missing = [ix for ix in versions_t.indexes
                   if ix.name not in {i["name"] for i in inspect(self._engine).get_indexes("versions")}]
        if not missing:
            return
        with contextlib.suppress(SQLAlchemyError):  # a store we may not write (read-only): queries still work, unindexed
            with self._writer.begin() as conn:
                conn.execute(select(meta_t.c.value).where(meta_t.c.key == "lock").with_for_update())
                for ix in missing:
                    ix.create(conn, checkfirst=True)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    # -- transactions --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """One writer transaction at a time (BEGIN IMMEDIATE on SQLite, a row lock on PostgreSQL)."""
        with self._db_errors(), self._writer.begin() as conn:
            conn.execute(select(meta_t.c.value).where(meta_t.c.key == "lock").with_for_update())
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._db_errors(), self._engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _db_errors(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            raise BadInputError(f"registry {self.url}: {_reason(exc)}") from None

    # -- lookups -------------------------------------------------------------------------------

    def _name_id(self, conn: Connection, name: str) -> int:
        refs.check_name(name)
        found = conn.scalar(select(names_t.c.id).where(names_t.c.name == name))
        if found is None:
            names = list(conn.scalars(select(names_t.c.name).order_by(names_t.c.name)))
            what = f"names: {_listing(names)}" if names else "the registry is empty"
            raise UnknownRefError(f"no model named {name!r} in registry {self.url} ({what})")
        return found

    def _version_id(self, conn: Connection, name: str, name_id: int, number: int) -> int:
        found = conn.scalar(select(versions_t.c.id).where(versions_t.c.name_id == name_id,
                                                          versions_t.c.number == number))
        if found is None:
            have = list(conn.scalars(select(versions_t.c.number).where(versions_t.c.name_id == name_id)))
            raise UnknownRefError(f"{name!r} has no version {number} (versions: {_numbers(have) or 'none'})")
        return found

    def _aliases_listing(self, conn: Connection, name_id: int) -> str:
        rows = conn.execute(
            select(aliases_t.c.alias, versions_t.c.number)
            .join(versions_t, versions_t.c.id == aliases_t.c.version_id)
            .where(aliases_t.c.name_id == name_id).order_by(aliases_t.c.alias)).all()
        return f"aliases: {_listing([f'{a} -> {n}' for a, n in rows])}" if rows else "it has no aliases"

    def _resolve_id(self, conn: Connection, ref: str | refs.Ref | Version, at: datetime | None = None) -> int:
        if isinstance(ref, Version):
            ref = refs.Ref(ref.name, number=ref.number)
        r = ref if isinstance(ref, refs.Ref) else refs.parse_ref(str(ref))
        name_id = self._name_id(conn, r.name)
        when = None if at is None else _db_time(at)
        if r.number is not None:
            return self._version_id(conn, r.name, name_id, r.number)
        if r.alias is None:
            q = select(versions_t.c.id).where(versions_t.c.name_id == name_id)
            if when is not None:
                q = q.where(versions_t.c.created_at <= when)
            found = conn.scalar(q.order_by(versions_t.c.number.desc()).limit(1))
            if found is None:
                raise UnknownRefError(f"{r.name!r} had no version yet at {_iso(when)}")
            return found
        if when is None:
            found = conn.scalar(select(aliases_t.c.version_id).where(aliases_t.c.name_id == name_id,
                                                                     aliases_t.c.alias == r.alias))
            if found is None:
                raise UnknownRefError(f"{r.name!r} has no alias {r.alias!r} ({self._aliases_listing(conn, name_id)})")
            return found
        events = select(alias_events_t).where(alias_events_t.c.name_id == name_id, alias_events_t.c.alias == r.alias)
        found = conn.scalar(events.with_only_columns(alias_events_t.c.new_version_id)
                            .where(alias_events_t.c.at <= when)
                            .order_by(alias_events_t.c.at.desc(), alias_events_t.c.id.desc()).limit(1))
        if found is None:
            first = conn.scalar(events.with_only_columns(func.min(alias_events_t.c.at)))
            if first is None:
                raise UnknownRefError(f"{r.name!r} has no alias {r.alias!r} ({self._aliases_listing(conn, name_id)})")
            raise UnknownRefError(f"{r.name}@{r.alias} did not exist at {_iso(when)} (first set at {_iso(first)})")
        return found

    def _load_versions(self, conn: Connection, ids: Sequence[int]) -> list[Version]:
        if not ids:
            return []
        rows = conn.execute(
            select(versions_t, names_t.c.name).join(names_t, names_t.c.id == versions_t.c.name_id)
            .where(versions_t.c.id.in_(ids))).mappings().all()
        tags: dict[int, dict[str, str]] = {}
        for vid, k, v in conn.execute(select(tags_t.c.version_id, tags_t.c.key, tags_t.c.value)
                                      .where(tags_t.c.version_id.in_(ids)).order_by(tags_t.c.key)):
            tags.setdefault(vid, {})[k] = v
        aliases: dict[int, list[str]] = {}
        for vid, a in conn.execute(select(aliases_t.c.version_id, aliases_t.c.alias)
                                   .where(aliases_t.c.version_id.in_(ids)).order_by(aliases_t.c.alias)):
            aliases.setdefault(vid, []).append(a)
        steps = {vid: json.loads(rec) for vid, rec in conn.execute(
            select(steps_t.c.version_id, steps_t.c.record).where(steps_t.c.version_id.in_(ids)))}
        parents: dict[int, list[str]] = {}
        pv = versions_t.alias("pv")
        pn = names_t.alias("pn")
        for child, pname, pnum in conn.execute(
                select(parents_t.c.child_id, pn.c.name, pv.c.number)
                .join(pv, pv.c.id == parents_t.c.parent_id).join(pn, pn.c.id == pv.c.name_id)
                .where(parents_t.c.child_id.in_(ids)).order_by(parents_t.c.position)):
            parents.setdefault(child, []).append(f"{pname}@{pnum}")
        provenance = {vid: {"blob": blob, "statements": n, "key_ids": json.loads(ids), "command": command}
                      for vid, blob, n, ids, command in conn.execute(
                          select(provenance_t.c.version_id, provenance_t.c.blob, provenance_t.c.statements,
                                 provenance_t.c.key_ids, provenance_t.c.command)
                          .where(provenance_t.c.version_id.in_(ids)))}
        by_id = {}
        for r in rows:
            by_id[r["id"]] = Version(
                name=r["name"], number=r["number"], format=r["format"], created_at=_iso(r["created_at"]),
                created_by=r["created_by"], files_sha256=r["files_sha256"], size=r["size"],
                stored_bytes=r["stored_bytes"], manifest_blob=r["manifest_blob"], filename=r["filename"],
                tags=tags.get(r["id"], {}), aliases=tuple(aliases.get(r["id"], ())),
                lineage=_lineage_of(r["lineage"]), step=steps.get(r["id"]), parents=tuple(parents.get(r["id"], ())),
                provenance=provenance.get(r["id"]))
        return [by_id[i] for i in ids if i in by_id]

    # -- reading -------------------------------------------------------------------------------

    def resolve(self, ref: str | Version, at: datetime | str | None = None) -> Version:
        """The version ``ref`` names: ``NAME`` (latest), ``NAME@3``, ``NAME@alias``, ``NAME@latest``.

        With ``at`` (a datetime or ISO 8601 text; no zone means UTC), what it named then: an alias
        is looked up in its event history, ``NAME`` gives the newest version created by then.
        """
        if isinstance(at, str):
            at = refs.parse_timestamp(at)
        with self._read() as conn:
            return self._load_versions(conn, [self._resolve_id(conn, ref, at)])[0]

    def names(self) -> list[str]:
        with self._read() as conn:
            return list(conn.scalars(select(names_t.c.name).order_by(names_t.c.name)))

    def versions(self, name: str | None = None) -> list[Version]:
        """Every version (of ``name``), by name then number."""
        with self._read() as conn:
            q = select(versions_t.c.id).join(names_t, names_t.c.id == versions_t.c.name_id)
            if name is not None:
                q = q.where(versions_t.c.name_id == self._name_id(conn, name))
            ids = list(conn.scalars(q.order_by(names_t.c.name, versions_t.c.number)))
            return self._load_versions(conn, ids)

    def find_by_digest(self, digest: str, *, prefer: str | None = None) -> Version | None:
        """The newest version whose ``files_sha256`` is ``digest`` (a version of ``prefer`` first),
        or None; one indexed query."""
        with self._read() as conn:
            vid = self._digest_id(conn, digest, prefer)
            return None if vid is None else self._load_versions(conn, [vid])[0]

    @staticmethod
    def _digest_id(conn: Connection, digest: str, prefer: str | None) -> int | None:
        q = (select(versions_t.c.id).join(names_t, names_t.c.id == versions_t.c.name_id)
             .where(versions_t.c.files_sha256 == digest))
        order = [versions_t.c.created_at.desc(), versions_t.c.number.desc(), versions_t.c.id.desc()]
        if prefer is not None:
            order.insert(0, case((names_t.c.name == prefer, 1), else_=0).desc())
        return conn.scalar(q.order_by(*order).limit(1))

    def manifest(self, ref: str | Version) -> dict:
        """The manifest of a version (see ``registry.tensors``)."""
        version = ref if isinstance(ref, Version) else self.resolve(ref)
        return self._manifest(version)

    def _manifest(self, version: Version) -> dict:
        return self._manifest_of(version.ref, version.manifest_blob)

    def _manifest_of(self, ref: str, blob: str) -> dict:
        try:
            return json.loads(self.blobs.get(blob))
        except BlobError as exc:
            raise RegistryCorruptError(f"{ref} cannot be read: {exc}") from None
        except ValueError as exc:
            raise RegistryCorruptError(f"{ref} cannot be read: manifest blob {blob} is no JSON ({exc})") from None

    def _locate(self, ref: str | Version) -> tuple[str, str, str]:
        """(``NAME@N``, the name it is materialized under, its manifest blob): what ``get`` needs,
        in one short read (``resolve`` also loads tags, aliases, the step and the parents)."""
        if isinstance(ref, Version):
            return ref.ref, ref.filename or ref.name.replace("/", "_"), ref.manifest_blob
        with self._read() as conn:
            vid = self._resolve_id(conn, ref)
            name, number, filename, blob = conn.execute(
                select(names_t.c.name, versions_t.c.number, versions_t.c.filename, versions_t.c.manifest_blob)
                .join(names_t, names_t.c.id == versions_t.c.name_id).where(versions_t.c.id == vid)).one()
        return f"{name}@{number}", filename or name.replace("/", "_"), blob

    def provenance_bytes(self, ref: str | Version) -> bytes | None:
        """The provenance bundle stored with a version (re-hashed), or None when it came without one."""
        version = ref if isinstance(ref, Version) else self.resolve(ref)
        if not version.provenance:
            return None
        try:
            return self.blobs.get(version.provenance["blob"])
        except BlobError as exc:
            raise RegistryCorruptError(f"{version.ref}: its provenance cannot be read: {exc}") from None

    def tensors_of(self, ref: str | Version) -> list[dict]:
        """Every tensor of a version: key, file, digest, dtype, shape, nbytes, blob (and transform)."""
        from modelport.registry.tensors import manifest_tensors

        return manifest_tensors(self.manifest(ref))

    def alias_history(self, name: str, alias: str) -> list[AliasEvent]:
        """Every move of ``name@alias``, oldest first (append-only)."""
        refs.check_alias(alias)
        with self._read() as conn:
            name_id = self._name_id(conn, name)
            old_v = versions_t.alias("old_v")
            new_v = versions_t.alias("new_v")
            rows = conn.execute(
                select(alias_events_t, old_v.c.number.label("old"), new_v.c.number.label("new"))
                .outerjoin(old_v, old_v.c.id == alias_events_t.c.old_version_id)
                .join(new_v, new_v.c.id == alias_events_t.c.new_version_id)
                .where(alias_events_t.c.name_id == name_id, alias_events_t.c.alias == alias)
                .order_by(alias_events_t.c.id)).mappings().all()
            if not rows:
                raise UnknownRefError(f"{name!r} has no alias {alias!r} ({self._aliases_listing(conn, name_id)})")
        return [AliasEvent(name=name, alias=alias, old=r["old"], new=r["new"], who=r["who"], at=_iso(r["at"]),
                           reason=r["reason"], id=r["id"]) for r in rows]

    def get(self, ref: str | Version, out: str | os.PathLike, *, provenance: bool = True) -> Path:
        """Write the version's files, byte-identical to what was added, at ``out`` (a new path, or
        an existing directory to write ``out/<original name>`` in); returns the path written.

        A version stored with signed provenance gets it back beside the files, as
        ``OUT.intoto.jsonl`` (``provenance=False``: not), so ``modelport provenance verify OUT``
        walks the chain of what was fetched.

        The files are rebuilt beside the destination (``registry.tensors.rebuild``) and renamed
        into place once every file matched its recorded checksum (BLAKE3, or SHA-256 for versions
        added before BLAKE3 was recorded): a corrupt or missing blob raises RegistryCorruptError
        (exit 1) naming it and leaves nothing at the destination.
        """
        from modelport.registry.tensors import rebuild

        ref_text, leaf, manifest_blob = self._locate(ref)
        dest = Path(out)
        if dest.is_dir() and not dest.is_symlink():
            dest = dest / leaf
        manifest = self._manifest_of(ref_text, manifest_blob)
        # a single-file model may have companions (ONNX external data, an OpenVINO .bin) beside it
        companions = [f["path"] for f in manifest.get("files", []) if f.get("path")] \
            if manifest.get("kind") == "file" else []
        bundle, bundle_dest = None, None
        if provenance:
            from modelport.security.provenance import bundle_path

            bundle = self.provenance_bytes(ref if isinstance(ref, Version) else ref_text)
            bundle_dest = bundle_path(dest) if bundle is not None else None
        for target in [dest, *(dest.parent / rel for rel in companions), *([bundle_dest] if bundle_dest else [])]:
            if target.exists() or target.is_symlink():
                raise BadInputError(f"{target} already exists: remove it or choose another output path")
        tmp = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if bundle_dest is not None:  # beside the files before they land, renamed after: never half of the pair
                tmp = bundle_dest.with_name(f".{bundle_dest.name}.{os.getpid()}.tmp")
                tmp.write_bytes(bundle)
            rebuild(manifest, self.blobs, dest)
            if tmp is not None:
                os.replace(tmp, bundle_dest)
                tmp = None
        except BlobError as exc:
            raise RegistryCorruptError(f"{ref_text} cannot be materialized: {exc}") from None
        except CheckFailedError as exc:
            raise RegistryCorruptError(f"{ref_text} cannot be materialized: {exc}") from None
        except OSError as exc:
            raise BadInputError(f"cannot write {dest}: {exc.strerror or exc}") from None
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        return dest

    # -- writing -------------------------------------------------------------------------------

    def _known(self):
        """The ``known`` callback of ``decompose``: stored tensors with a dtype and element count."""
        cache: dict[tuple[str, int], list[tuple[str, tuple[int, ...]]]] = {}

        def known(dtype: str, numel: int) -> list[tuple[str, tuple[int, ...]]]:
            key = (str(dtype), int(numel))
            if key not in cache:
                with self._read() as conn:
                    rows = conn.execute(
                        select(tensors_t.c.blob, tensors_t.c.shape).distinct()
                        .where(tensors_t.c.dtype == key[0], tensors_t.c.numel == key[1],
                               tensors_t.c.blob.is_not(None))).all()
                cache[key] = [(b, tuple(json.loads(s))) for b, s in rows if self.blobs.has(b)]
            return cache[key]

        return known

    def add(
        self,
        path: str | os.PathLike,
        name: str,
        *,
        alias: str | None = None,
        tags: dict[str, str] | None = None,
        lineage: Sequence[StepRecord] | None = None,
        step: dict[str, Any] | None = None,
        parents: Sequence[str | Version] = (),
        metrics: dict[str, Any] | None = None,
        parity: dict[str, Any] | None = None,
        fmt: str | None = None,
        reason: str = "",
        provenance: str | os.PathLike | bool = True,
    ) -> Version:
        """Store the model at ``path`` as the next version of ``name``.

        Args:
            path: a model file or directory in any format modelport detects.
            name: the model's name; versions are numbered 1, 2, ... per name.
            alias: move this alias to the new version (recorded in its history with ``reason``).
            tags: key=value labels.
            lineage: the model's history (default: what the model itself records, if anything).
            step: the step that made it (command, options, tool versions, ...), stored as JSON.
            parents: the versions it was made from.
            metrics, parity: task metrics and the parity report of that step (kept in the step record).
            fmt: the format, when detection should be skipped.
            provenance: the signed provenance bundle to store with it; True (default): ``PATH.intoto.jsonl``
                beside the model when there is one; False: none. A bundle whose first statement's subject
                is not exactly this model's files is refused (UnsafeError, exit 4), and nothing is added.
        """
        return self._add(path, name, alias=alias, tags=tags, lineage=lineage, step=step, parents=parents,
                         metrics=metrics, parity=parity, fmt=fmt, reason=reason, reuse=False,
                         provenance=provenance)[0]

    def find_or_add(self, path: str | os.PathLike, name: str, *, digest: str | None = None,
                    **add: Any) -> tuple[Version, bool]:
        """The version holding exactly the files at ``path`` (by content digest, ``files_sha256``:
        a version of ``name`` first, else the newest of any name), or else a new version of
        ``name`` made from them (``add``'s keyword arguments); True when it was added.

        Atomic: the lookup is repeated under the writer lock, in the transaction that would add
        the version, so two processes registering the same files at once add them once (the
        second gets the first's version). ``digest``: the content digest when the caller has it
        (``record.files_sha256``), to skip storing the files when a version already holds them.
        """
        if digest is not None:
            found = self.find_by_digest(digest, prefer=name)
            if found is not None:
                return found, False
        return self._add(path, name, reuse=True, **add)

    def _add(self, path, name, *, alias=None, tags=None, lineage=None, step=None, parents=(), metrics=None,
             parity=None, fmt=None, reason="", reuse: bool, provenance: str | os.PathLike | bool = True
             ) -> tuple[Version, bool]:
        from modelport.pipeline.lineage import read_lineage
        from modelport.registry.tensors import decompose, manifest_blobs, manifest_tensors

        refs.check_name(name)
        if alias is not None:
            refs.check_alias(alias)
        tags = {refs.check_tag_key(k): str(v) for k, v in (tags or {}).items()}
        src = Path(path)
        fmt = storable_format(src, fmt)
        if lineage is None:
            lineage = read_lineage(src)
        parent_refs = [p.ref if isinstance(p, Version) else str(p) for p in parents]
        if parent_refs:
            with self._read() as conn:
                for p in parent_refs:
                    self._resolve_id(conn, p)
        record = dict(step or {})
        if metrics is not None:
            record["metrics"] = metrics
        if parity is not None:
            record["parity"] = parity
        bundle_file, bundle = _bundle_for(src, provenance)
        if bundle is not None:  # a first check on the files as they are now, before any blob is written
            from modelport.security.provenance import check_bundle, describe

            check_bundle(bundle, describe(src, "output"), bundle_file)
        for attempt in range(3):
            try:
                manifest = decompose(src, fmt, self.blobs, known=self._known())
            except OSError as exc:  # (reading the model is decompose's to report; this is the store failing)
                raise BadInputError(f"registry {self.url}: cannot store {src}: {exc.strerror or exc}") from None
            signed = None
            if bundle is not None:  # checked against the digests of what was stored, before any row names it
                from modelport.security.provenance import check_bundle, manifest_descriptors

                signed = check_bundle(bundle, manifest_descriptors(manifest, src.name), bundle_file)
            try:
                manifest_blob = self.blobs.put(_manifest_bytes(manifest))
                bundle_blob = self.blobs.put(bundle) if bundle is not None else None
            except OSError as exc:
                raise BadInputError(f"registry {self.url}: cannot store {src}: {exc.strerror or exc}") from None
            needed = set(manifest_blobs(manifest)) | {manifest_blob} | ({bundle_blob} if bundle_blob else set())
            stored_provenance = None if signed is None else {
                "blob": bundle_blob, "statements": signed.statements, "key_ids": list(signed.key_ids),
                "command": signed.command[:40]}
            tensors = manifest_tensors(manifest)
            _pause("blobs-written")
            try:
                return self._commit_version(
                    name, fmt, src, manifest, manifest_blob, needed, tensors, alias=alias, tags=tags,
                    lineage=lineage, record=record, parent_refs=parent_refs, reason=reason, reuse=reuse,
                    provenance=stored_provenance)
            except _Retry:
                if attempt == 2:
                    raise RegistryCorruptError(
                        f"blobs of {name} kept vanishing before they could be committed (is a gc running in a loop?)"
                    ) from None
        raise AssertionError("unreachable")

    def _commit_version(self, name, fmt, src, manifest, manifest_blob, needed, tensors, *, alias, tags, lineage,
                        record, parent_refs, reason, reuse, provenance=None) -> tuple[Version, bool]:
        sizes = {}
        with self._write() as conn:
            if reuse:  # find-or-add: looked up again under the lock, so two writers add the files once
                found = self._digest_id(conn, _files_sha256(manifest), name)
                if found is not None:
                    return self._load_versions(conn, [found])[0], False
            for b in needed:
                if not self.blobs.has(b):
                    raise _Retry(b)
                sizes[b] = self.blobs.size(b)
            now = _now()
            name_id = conn.scalar(select(names_t.c.id).where(names_t.c.name == name))
            if name_id is None:
                name_id = conn.execute(names_t.insert().values(name=name, last_number=0, created_at=now)
                                       ).inserted_primary_key[0]
            number = conn.scalar(names_t.update().where(names_t.c.id == name_id)
                                 .values(last_number=names_t.c.last_number + 1).returning(names_t.c.last_number))
            parent_ids = [self._resolve_id(conn, p) for p in parent_refs]
            have = self._existing(conn, blobs_t.c.digest, needed)
            new_blobs = sorted(needed - have)
            if new_blobs:
                conn.execute(blobs_t.insert(), [{"digest": b, "size": sizes[b]} for b in new_blobs])
            if not conn.scalar(select(manifests_t.c.blob).where(manifests_t.c.blob == manifest_blob)):
                conn.execute(manifests_t.insert().values(
                    blob=manifest_blob, format=fmt, kind=manifest.get("kind", "file"),
                    files=len(manifest["files"]), tensors=len(tensors)))
            if record or parent_refs:
                record.setdefault("output", {"files_sha256": _files_sha256(manifest), "format": fmt})
            vid = conn.execute(versions_t.insert().values(
                name_id=name_id, number=number, format=fmt, filename=src.name, created_at=now, created_by=_user(),
                files_sha256=_files_sha256(manifest), size=sum(int(f["size"]) for f in manifest["files"]),
                stored_bytes=sum(sizes[b] for b in new_blobs), manifest_blob=manifest_blob,
                lineage=_lineage_json(lineage))).inserted_primary_key[0]
            conn.execute(version_blobs_t.insert(), [{"version_id": vid, "blob": b} for b in sorted(needed)])
            self._insert_tensors(conn, vid, tensors)
            if tags:
                conn.execute(tags_t.insert(), [{"version_id": vid, "key": k, "value": v} for k, v in tags.items()])
            for i, pid in enumerate(dict.fromkeys(parent_ids)):
                conn.execute(parents_t.insert().values(child_id=vid, parent_id=pid, position=i))
            if record or parent_refs:
                conn.execute(steps_t.insert().values(version_id=vid, record=json.dumps(to_jsonable(record))))
            if provenance is not None:
                conn.execute(provenance_t.insert().values(
                    version_id=vid, blob=provenance["blob"], statements=provenance["statements"],
                    key_ids=json.dumps(provenance["key_ids"]), command=provenance["command"]))
            if alias is not None:
                self._move_alias(conn, name_id, alias, vid, reason or f"registry add {name}@{number}", None, at=now)
            _pause("rows-inserted")
        _pause("committed")
        with self._read() as conn:
            return self._load_versions(conn, [vid])[0], True

    @staticmethod
    def _existing(conn: Connection, column, values: Iterable[str]) -> set[str]:
        values = list(values)
        have: set[str] = set()
        for i in range(0, len(values), 500):
            have.update(conn.scalars(select(column).where(column.in_(values[i:i + 500]))))
        return have

    def _insert_tensors(self, conn: Connection, vid: int, tensors: list[dict]) -> None:
        if not tensors:
            return
        rows = {}
        for t in tensors:
            rows.setdefault(t["digest"], {
                "digest": t["digest"], "dtype": str(t["dtype"]),
                "shape": json.dumps(None if t["shape"] is None else [int(d) for d in t["shape"]]),
                "numel": -1 if t["shape"] is None else _numel(t["shape"]), "nbytes": int(t["nbytes"]),
                "blob": t.get("blob"),
                "transform": json.dumps(t["transform"]) if t.get("transform") else None})
        new = [rows[d] for d in sorted(set(rows) - self._existing(conn, tensors_t.c.digest, rows))]
        if new:
            conn.execute(tensors_t.insert(), new)
        conn.execute(version_tensors_t.insert(), [
            {"version_id": vid, "position": i, "file": t["file"], "key": str(t["key"]), "digest": t["digest"]}
            for i, t in enumerate(tensors)])

    def _move_alias(self, conn: Connection, name_id: int, alias: str, vid: int, reason: str, who: str | None,
                    at: datetime | None = None) -> int:
        where = (aliases_t.c.name_id == name_id, aliases_t.c.alias == alias)
        old = conn.scalar(select(aliases_t.c.version_id).where(*where).with_for_update())
        if old is None:
            conn.execute(aliases_t.insert().values(name_id=name_id, alias=alias, version_id=vid))
        else:
            conn.execute(aliases_t.update().where(*where).values(version_id=vid))
        return conn.execute(alias_events_t.insert().values(
            name_id=name_id, alias=alias, old_version_id=old, new_version_id=vid, who=who or _user(),
            at=at or _now(), reason=reason)).inserted_primary_key[0]

    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "", who: str | None = None) -> AliasEvent:
        """Point ``name@alias`` at version ``version``; the move is appended to the alias's history."""
        refs.check_alias(alias)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise BadInputError(f"version {version!r} is not a version number (1, 2, ...)")
        with self._write() as conn:
            name_id = self._name_id(conn, name)
            vid = self._version_id(conn, name, name_id, version)
            event_id = self._move_alias(conn, name_id, alias, vid, reason, who)
        return next(e for e in reversed(self.alias_history(name, alias)) if e.id == event_id)

    def set_tag(self, ref: str | Version, key: str, value: str) -> Version:
        """Set (or replace) the tag ``key`` of a version."""
        refs.check_tag_key(key)
        with self._write() as conn:
            vid = self._resolve_id(conn, ref)
            where = (tags_t.c.version_id == vid, tags_t.c.key == key)
            if conn.scalar(select(tags_t.c.key).where(*where)) is None:
                conn.execute(tags_t.insert().values(version_id=vid, key=key, value=str(value)))
            else:
                conn.execute(tags_t.update().where(*where).values(value=str(value)))
        with self._read() as conn:
            return self._load_versions(conn, [vid])[0]

    # -- maintenance ---------------------------------------------------------------------------

    def gc(self, *, temp_grace_s: float = 3600.0) -> GcReport:
        """Delete every blob no version references, and temp files older than ``temp_grace_s``
        (those of writers that died; a live writer's are younger)."""
        removed: list[str] = []
        freed = 0
        with self._write() as conn:
            referenced = set(conn.scalars(select(blobs_t.c.digest)))
            for digest in list(self.blobs.digests()):
                if digest in referenced:
                    continue
                with contextlib.suppress(BlobError):
                    freed += self.blobs.size(digest)
                self.blobs.remove(digest)
                removed.append(digest)
            temps = 0
            for f in self.blobs.stale_temps(temp_grace_s):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    temps += 1
        return GcReport(registry=self.url, removed=tuple(sorted(removed)), bytes_freed=freed,
                        kept=len(referenced), temp_files_removed=temps)

    def fsck(self) -> FsckReport:
        """Re-hash every blob and check every row against the manifests; names what is broken."""
        from modelport.registry.tensors import manifest_blobs, manifest_tensors

        problems: list[FsckProblem] = []
        with self._read() as conn:
            owners: dict[str, list[str]] = {}
            for blob, name, number in conn.execute(
                    select(version_blobs_t.c.blob, names_t.c.name, versions_t.c.number)
                    .join(versions_t, versions_t.c.id == version_blobs_t.c.version_id)
                    .join(names_t, names_t.c.id == versions_t.c.name_id)
                    .order_by(names_t.c.name, versions_t.c.number)):
                owners.setdefault(blob, []).append(f"{name}@{number}")
            sizes = dict(conn.execute(select(blobs_t.c.digest, blobs_t.c.size)).all())
            hashed = 0
            for digest, size in sorted(sizes.items()):
                used = f" (used by {_listing(owners.get(digest, []), 5) or 'no version'})"
                if not self.blobs.has(digest):
                    problems.append(FsckProblem("missing-blob", digest, "not in the blob directory" + used))
                    continue
                actual = self.blobs.size(digest)
                hashed += actual
                if not self.blobs.verify(digest):
                    problems.append(FsckProblem("corrupt-blob", digest, "its bytes no longer hash to its name" + used))
                elif actual != size:
                    problems.append(FsckProblem("blob-size", digest, f"{actual} bytes, the row says {size}" + used))
                if digest not in owners:
                    problems.append(FsckProblem("rows", digest, "a blob row no version references"))
            broken = {p.what for p in problems}
            unreferenced = sorted(d for d in self.blobs.digests() if d not in sizes)

            rows = conn.execute(select(versions_t, names_t.c.name).join(
                names_t, names_t.c.id == versions_t.c.name_id).order_by(names_t.c.name, versions_t.c.number)
            ).mappings().all()
            vblobs: dict[int, set[str]] = {}
            for vid, b in conn.execute(select(version_blobs_t.c.version_id, version_blobs_t.c.blob)):
                vblobs.setdefault(vid, set()).add(b)
            vtensors: dict[int, list[str]] = {}
            for vid, d in conn.execute(select(version_tensors_t.c.version_id, version_tensors_t.c.digest)
                                       .order_by(version_tensors_t.c.version_id, version_tensors_t.c.position)):
                vtensors.setdefault(vid, []).append(d)
            vprov = dict(conn.execute(select(provenance_t.c.version_id, provenance_t.c.blob)).all())
            for r in rows:
                ref = f"{r['name']}@{r['number']}"
                mb = r["manifest_blob"]
                if mb in broken or mb not in sizes:
                    problems.append(FsckProblem("manifest", ref, f"its manifest blob {mb} is unreadable"))
                    continue
                try:
                    manifest = json.loads(self.blobs.get(mb))
                    need = set(manifest_blobs(manifest)) | {mb} | ({vprov[r["id"]]} if r["id"] in vprov else set())
                    tensors = manifest_tensors(manifest)
                except (ValueError, KeyError, TypeError, BlobError) as exc:
                    problems.append(FsckProblem("manifest", ref, f"manifest blob {mb} does not parse: {exc}"))
                    continue
                if need != vblobs.get(r["id"], set()):
                    diff = sorted(need ^ vblobs.get(r["id"], set()))
                    problems.append(FsckProblem("rows", ref, f"its blob rows differ from its manifest ({_listing(diff, 3)})"))
                if _files_sha256(manifest) != r["files_sha256"] or \
                        sum(int(f["size"]) for f in manifest["files"]) != r["size"]:
                    problems.append(FsckProblem("rows", ref, "files_sha256 or size differ from its manifest"))
                if [t["digest"] for t in tensors] != vtensors.get(r["id"], []):
                    problems.append(FsckProblem("tensor", ref, "its tensor rows differ from its manifest"))

            for name, name_id, last in conn.execute(select(names_t.c.name, names_t.c.id, names_t.c.last_number)):
                numbers = sorted(conn.scalars(select(versions_t.c.number).where(versions_t.c.name_id == name_id)))
                if numbers != list(range(1, last + 1)):
                    problems.append(FsckProblem("numbers", name, f"versions {_numbers(numbers)}, expected 1..{last}"))

            for blob, tshape, tdigest, transform in conn.execute(
                    select(tensors_t.c.blob, tensors_t.c.shape, tensors_t.c.digest, tensors_t.c.transform)):
                src = blob if blob is not None else (json.loads(transform or "{}").get("of"))
                if src is not None and src not in sizes:  # (neither: kept inline in the manifest)
                    problems.append(FsckProblem("tensor", tdigest, f"its bytes (blob {src}) are not a stored blob"))

            current = {(n, a): v for n, a, v in conn.execute(
                select(aliases_t.c.name_id, aliases_t.c.alias, aliases_t.c.version_id))}
            last_event: dict[tuple[int, str], int] = {}
            for n, a, old, new in conn.execute(
                    select(alias_events_t.c.name_id, alias_events_t.c.alias, alias_events_t.c.old_version_id,
                           alias_events_t.c.new_version_id).order_by(alias_events_t.c.id)):
                if last_event.get((n, a)) != old:
                    problems.append(FsckProblem("alias", f"{n}:{a}", "an event's old version is not the previous event's new one"))
                last_event[(n, a)] = new
            if current != last_event:
                bad = sorted(set(current.items()) ^ set(last_event.items()))
                problems.append(FsckProblem("alias", str(bad[:3]), "aliases differ from their event history"))

            for vid, record in conn.execute(select(steps_t.c.version_id, steps_t.c.record)):
                try:
                    json.loads(record)
                except ValueError:
                    problems.append(FsckProblem("step", str(vid), "its step record is no JSON"))

        alias_names = {}
        if any(p.kind == "alias" for p in problems):
            with self._read() as conn:
                alias_names = dict(conn.execute(select(names_t.c.id, names_t.c.name)).all())
        problems = [dataclasses.replace(p, what=_alias_what(p.what, alias_names)) if p.kind == "alias" else p
                    for p in problems]
        return FsckReport(registry=self.url, versions_checked=len(rows), blobs_checked=len(sizes), bytes_hashed=hashed,
                          problems=tuple(problems), unreferenced=tuple(unreferenced),
                          temp_files=len(self.blobs.stale_temps(0.0)))


def _alias_what(what: str, names: dict[int, str]) -> str:
    head, sep, alias = what.partition(":")
    return f"{names.get(int(head), head)}@{alias}" if sep and head.isdigit() else what


def _bundle_for(src: Path, provenance: str | os.PathLike | bool) -> tuple[Path | None, bytes | None]:
    """(where, bytes) of the provenance bundle to store with the model at ``src`` (see ``Registry.add``)."""
    if provenance is False or provenance is None:
        return None, None
    from modelport.security.provenance import _MAX_BUNDLE_BYTES, bundle_path

    where = bundle_path(src) if provenance is True else Path(provenance)
    if provenance is True and not where.is_file():
        return None, None
    try:
        if where.stat().st_size > _MAX_BUNDLE_BYTES:
            raise UnsafeError("refused: provenance bundle larger than 64 MiB", path=where)
        return where, where.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read the provenance: {exc.strerror or exc}", path=where) from None


def storable_format(src: str | os.PathLike, fmt: str | None = None) -> str:
    """The format of the model at ``src``, or BadInputError (exit 2) when it is no model the registry can store."""
    from modelport.errors import UnsupportedError
    from modelport.formats import detect

    src = Path(src)
    if not src.exists():
        raise BadInputError("no such file or directory", path=src)
    try:
        found = detect(src, fmt)
    except UnsupportedError as exc:
        if fmt:
            raise
        raise BadInputError(f"is no model modelport can store: {exc}") from None
    if found == "torch-module":
        raise BadInputError("a module spec is no model file: convert it first, or store its weights' directory",
                            path=src)
    return found


def _sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # transactions are ours (BEGIN below), not pysqlite's
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("modelport_write") else "BEGIN")


def open_registry(url: str | os.PathLike | None = None, *, create: bool = True) -> Registry:
    """``Registry.open(url)``."""
    return Registry.open(url, create=create)
