"""Names in the registry: model references (``NAME``, ``NAME@3``, ``NAME@prod``, ``NAME@latest``),
alias and tag names, timestamps, and registry URLs.

A registry URL is one of:

- a directory (``~/.modelport/registry``, the default): ``registry.db`` (SQLite) and ``blobs/`` inside;
- ``sqlite:///path/registry.db``: blobs in ``blobs/`` beside the database file;
- ``postgresql+psycopg://user@host:port/db?blobs=/path`` (``postgresql://`` means the same): metadata on
  the server, blobs in the directory given by ``?blobs=`` or by ``MODELPORT_REGISTRY_BLOBS``.

With no URL, ``MODELPORT_REGISTRY`` is used, then the default directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from modelport.errors import BadInputError

__all__ = [
    "REGISTRY_ENV",
    "BLOBS_ENV",
    "DEFAULT_REGISTRY",
    "Ref",
    "Location",
    "parse_ref",
    "check_name",
    "check_alias",
    "check_tag_key",
    "parse_tag",
    "parse_timestamp",
    "parse_location",
]

REGISTRY_ENV = "MODELPORT_REGISTRY"
BLOBS_ENV = "MODELPORT_REGISTRY_BLOBS"
DEFAULT_REGISTRY = "~/.modelport/registry"
LATEST = "latest"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,99}")
_TAG_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,99}")


@dataclasses.dataclass(frozen=True)
class Ref:
    """A parsed model reference: a name and at most one of a version number or an alias."""

    name: str
    number: int | None = None
    alias: str | None = None  # None with number None: the latest version

    def __str__(self) -> str:
        if self.number is not None:
            return f"{self.name}@{self.number}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def check_name(name: str) -> str:
    """``name`` when it is a valid model name (letters, digits, ``. _ - /``; no ``@``), else BadInputError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or "//" in name or name.endswith("/"):
        raise BadInputError(
            f"{name!r} is not a valid model name (letters, digits and . _ - /, starting with a letter or digit)")
    return name


def check_alias(alias: str) -> str:
    """``alias`` when it is a valid alias (a letter first; not a number, not ``latest``), else BadInputError."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise BadInputError(f"{alias!r} is not a valid alias (a letter, then letters, digits and . _ -)")
    if alias == LATEST:
        raise BadInputError(f"{LATEST!r} is reserved: it always means the newest version")
    return alias


def check_tag_key(key: str) -> str:
    if not isinstance(key, str) or not _TAG_KEY.fullmatch(key):
        raise BadInputError(f"{key!r} is not a valid tag key (letters, digits and _ . : / -)")
    return key


def parse_tag(text: str) -> tuple[str, str]:
    """``key=value`` -> (key, value)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise BadInputError(f"tag {text!r} is not key=value")
    return check_tag_key(key), value


def parse_ref(text: str) -> Ref:
    """``NAME``, ``NAME@3``, ``NAME@alias`` or ``NAME@latest`` -> Ref."""
    if not isinstance(text, str) or not text:
        raise BadInputError("empty model reference (expected NAME, NAME@VERSION or NAME@ALIAS)")
    name, sep, what = text.partition("@")
    if sep and not what:
        raise BadInputError(f"{text!r}: nothing after '@' (expected NAME@VERSION or NAME@ALIAS)")
    check_name(name)
    if not sep or what == LATEST:
        return Ref(name)
    if what.isdigit():
        number = int(what)
        if number < 1:
            raise BadInputError(f"{text!r}: version numbers start at 1")
        return Ref(name, number=number)
    if "@" in what:
        raise BadInputError(f"{text!r}: more than one '@'")
    return Ref(name, alias=check_alias(what))


def parse_timestamp(text: str | datetime) -> datetime:
    """An ISO 8601 timestamp -> an aware UTC datetime; one without a zone is taken as UTC."""
    if isinstance(text, datetime):
        ts = text
    else:
        s = str(text).strip()
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        try:
            ts = datetime.fromisoformat(s)
        except ValueError:
            raise BadInputError(
                f"{text!r} is not a timestamp (ISO 8601, e.g. 2025-01-31T12:00:00Z; no zone means UTC)") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc)


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a registry lives: the SQLAlchemy URL of its metadata and the directory of its blobs."""

    url: str  # what the user gave (or the default), for messages
    db_url: str  # the SQLAlchemy URL
    blobs: Path
    dialect: str  # "sqlite" | "postgresql"
    db_path: Path | None = None  # the SQLite file

    def __str__(self) -> str:
        return self.url


def _sqlite(url: str, db: Path) -> Location:
    return Location(url=url, db_url=f"sqlite:///{db}", blobs=db.parent / "blobs", dialect="sqlite", db_path=db)


def parse_location(url: str | os.PathLike | None = None) -> Location:
    """A registry URL (see the module docstring) -> Location; nothing is opened or created."""
    if url is None or str(url) == "":
        url = os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY
    text = str(url)
    if "://" not in text:
        directory = Path(text).expanduser().absolute()
        return _sqlite(text, directory / "registry.db")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("sqlite", "sqlite+pysqlite"):
        path = parts.path
        if parts.netloc or not path or path == "/":
            raise BadInputError(f"registry URL {text!r}: expected sqlite:///path/to/registry.db")
        return _sqlite(text, Path(path[1:] if path.startswith("//") else path).expanduser().absolute())
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        query = parse_qsl(parts.query, keep_blank_values=True)
        blobs = [v for k, v in query if k == "blobs"]
        rest = [(k, v) for k, v in query if k != "blobs"]
        blob_dir = blobs[-1] if blobs else os.environ.get(BLOBS_ENV)
        if not blob_dir:
            raise BadInputError(
                f"registry URL {_redact(text)!r}: a PostgreSQL registry keeps its blobs in a directory: "
                f"add ?blobs=/path to the URL or set {BLOBS_ENV}")
        db_url = urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(rest), ""))
        return Location(url=_redact(text), db_url=db_url, blobs=Path(blob_dir).expanduser().absolute(),
                        dialect="postgresql")
    raise BadInputError(
        f"registry URL {_redact(text)!r}: unsupported scheme {parts.scheme!r} "
        "(use a directory, sqlite:///path/registry.db or postgresql+psycopg://...)")


def _redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
