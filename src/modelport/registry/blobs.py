"""A content-addressed blob directory: every blob is a file named by the SHA-256 of its bytes.

Layout under ``root``::

    sha256/ab/cdef...   one file per blob (the digest's first two hex digits name the shard)
    tmp/                temp files of writes in progress; a killed writer leaves one here, nothing else

A blob lands atomically: it is written to a temp file in ``tmp/``, fsynced, renamed onto its
final name and the shard directory fsynced, so a reader (or a row that names the blob) never sees
a partial blob. Writing a blob that exists is a no-op, so writers need no lock: two writers of
the same bytes rename the same content onto the same name.

Reads through ``get`` and ``copy_to`` are checked: they re-hash what they read and raise
``BlobCorruptError`` naming the blob when the bytes no longer match their name; a missing blob
raises ``BlobMissingError``. Both are ``CheckFailedError`` (exit 1). ``open`` and ``read`` do not
re-hash: they are for callers that check what they read another way (``rebuild`` checks every file
it writes against the checksum recorded for it, ``tensor_bytes`` checks a tensor's digest), so
that no byte is hashed twice.

Every write hashes its bytes once: ``put(data, digest=...)`` takes the digest its caller already
computed from those bytes, and a stream (``pending``, ``put_fileobj`` of more than ``CHUNK`` bytes)
is hashed while it is written to its temp file, which is then renamed onto its name or, when that
blob is already stored, dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from modelport.errors import CheckFailedError

__all__ = ["BlobStore", "PendingBlob", "BlobError", "BlobMissingError", "BlobCorruptError", "CHUNK", "sha256_hex"]

CHUNK = 16 << 20  # the most one read or write holds in memory
_DIGEST = re.compile(r"[0-9a-f]{64}")


class BlobError(CheckFailedError):
    """A blob the caller asked for is missing, corrupt, or not a digest (exit 1)."""

    def __init__(self, message: str, *, digest: str) -> None:
        self.digest = digest
        super().__init__(message)


class BlobMissingError(BlobError):
    """The blob is not in the store."""


class BlobCorruptError(BlobError):
    """The blob's bytes no longer hash to its name."""


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory; the rename still holds
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class BlobStore:
    """Content-addressed blobs under ``root`` (created on first use)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._objects = self.root / "sha256"
        self._tmp = self.root / "tmp"

    def __repr__(self) -> str:
        return f"BlobStore({str(self.root)!r})"

    # -- names ---------------------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (whether or not it exists)."""
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise BlobError(f"{digest!r} is not a sha256 blob digest (64 lowercase hex digits)", digest=str(digest))
        return self._objects / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise self._missing(digest) from None

    def digests(self) -> Iterator[str]:
        """Every blob in the store (in no particular order)."""
        if not self._objects.is_dir():
            return
        for shard in self._objects.iterdir():
            if not (shard.is_dir() and len(shard.name) == 2):
                continue
            for f in shard.iterdir():
                digest = shard.name + f.name
                if _DIGEST.fullmatch(digest) and f.is_file():
                    yield digest

    # -- writes --------------------------------------------------------------------------------

    def put(self, data: bytes | memoryview, *, digest: str | None = None) -> str:
        """Store ``data``; returns its sha256 hex digest. Idempotent.

        ``digest``: the sha256 of ``data`` when the caller has just computed it from these very
        bytes (it is not computed again).
        """
        if digest is None:
            digest = sha256_hex(data)
        if not self.has(digest):
            self._land(digest, lambda f: f.write(data))
        return digest

    def put_file(self, path: Path | str, offset: int = 0, length: int | None = None, *,
                 also: Sequence[Callable[[bytes], object]] = ()) -> str:
        """Store ``length`` bytes of the file at ``path`` from ``offset`` (to its end when None);
        each callable in ``also`` is given every byte of the range once, in order."""
        with open(path, "rb") as fh:
            return self.put_fileobj(fh, offset, length, also=also)

    def put_fileobj(self, fh: BinaryIO, offset: int = 0, length: int | None = None, *,
                    digest: str | None = None, also: Sequence[Callable[[bytes], object]] = ()) -> str:
        """Store a byte range of an open binary file; never holds more than ``CHUNK`` bytes at once.

        The range is read once: up to ``CHUNK`` bytes are read and hashed in memory; a longer
        range is hashed as it is copied to a temp file, dropped when the blob is already stored.
        ``also``: callables given every byte of the range once, in order (another checksum of it).
        ``digest``: the range's sha256 when the caller computed it from these bytes (its own temp
        file): it is not computed again, and nothing is read when that blob is already stored.
        """
        if length is None:
            length = os.fstat(fh.fileno()).st_size - offset
        if offset < 0 or length < 0:
            raise ValueError(f"bad byte range: offset {offset}, length {length}")
        if digest is not None and not also and self.has(digest):
            return digest
        if length <= CHUNK:
            fh.seek(offset)
            data = fh.read(length)
            if len(data) != length:
                raise CheckFailedError(f"{getattr(fh, 'name', 'file')}: ended before byte {offset + length}")
            for sink in also:
                sink(data)
            return self.put(data, digest=digest)
        if digest is not None:
            if not self.has(digest):
                self._land(digest, lambda f: self._copy_range(fh, offset, length, (f.write, *also)))
            else:
                self._copy_range(fh, offset, length, also)
            return digest
        with self.pending() as blob:
            self._copy_range(fh, offset, length, (blob.write, *also))
            return blob.commit()

    def pending(self) -> PendingBlob:
        """A blob to write in pieces: ``write`` them, then ``commit`` (a context manager: leaving
        it without a commit drops the temp file)."""
        return PendingBlob(self)

    def remove(self, digest: str) -> None:
        """Delete a blob (a missing one is not an error: garbage collection may race)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def stale_temps(self, older_than_s: float = 3600.0) -> list[Path]:
        """Temp files left by writers that died (older than ``older_than_s``), for gc to delete."""
        if not self._tmp.is_dir():
            return []
        cutoff = time.time() - older_than_s
        out = []
        for f in self._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if f.stat().st_mtime < cutoff:
                    out.append(f)
        return out

    # -- reads ---------------------------------------------------------------------------------

    def open(self, digest: str) -> BinaryIO:
        """The blob's file, opened for reading (not re-hashed: use ``copy_to`` or ``verify``)."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise self._missing(digest) from None

    def get(self, digest: str) -> bytes:
        """The blob's bytes, re-hashed; raises BlobMissingError / BlobCorruptError."""
        data = self.read(digest)
        if sha256_hex(data) != digest:
            raise self._corrupt(digest)
        return data

    def read(self, digest: str) -> bytes:
        """The blob's bytes, not re-hashed (for callers that check them another way); raises
        BlobMissingError."""
        with self.open(digest) as f:
            return f.read()

    def copy_to(self, digest: str, out: BinaryIO) -> int:
        """Stream the blob into ``out``, re-hashing as it goes; returns the byte count.

        On a mismatch raises BlobCorruptError after the bytes were written: the caller writes to
        a temp file and discards it.
        """
        h = hashlib.sha256()
        n = 0
        with self.open(digest) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
        if h.hexdigest() != digest:
            raise self._corrupt(digest)
        return n

    def verify(self, digest: str) -> bool:
        """True when the blob exists and its bytes hash to its name."""
        try:
            with self.open(digest) as f:
                return self._hash_range(f, 0, os.fstat(f.fileno()).st_size) == digest
        except BlobMissingError:
            return False

    # -- internals -----------------------------------------------------------------------------

    def _temp(self, prefix: str) -> tuple[int, str]:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=self._tmp, prefix=prefix + ".")

    def _land(self, digest: str, write) -> None:
        fd, tmp_name = self._temp(digest[:12])
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            self._install(tmp_name, digest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    def _install(self, tmp_name: str, digest: str) -> None:
        """Rename a written, fsynced temp file onto the blob's name."""
        target = self.path(digest)
        os.chmod(tmp_name, 0o444)
        new_shard = not target.parent.is_dir()
        target.parent.mkdir(parents=True, exist_ok=True)
        if new_shard:
            fsync_dir(self._objects)
        os.replace(tmp_name, target)
        fsync_dir(target.parent)

    @staticmethod
    def _copy_range(fh: BinaryIO, offset: int, length: int, sinks: Sequence[Callable[[bytes], object]]) -> None:
        fh.seek(offset)
        left = length
        while left:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                raise CheckFailedError(f"{getattr(fh, 'name', 'file')}: ended before byte {offset + length}")
            for sink in sinks:
                sink(chunk)
            left -= len(chunk)

    @staticmethod
    def _hash_range(fh: BinaryIO, offset: int, length: int) -> str:
        h = hashlib.sha256()
        BlobStore._copy_range(fh, offset, length, (h.update,))
        return h.hexdigest()

    def _missing(self, digest: str) -> BlobMissingError:
        return BlobMissingError(f"blob {digest} is missing from {self.root}", digest=digest)

    def _corrupt(self, digest: str) -> BlobCorruptError:
        return BlobCorruptError(
            f"blob {digest} in {self.root} is corrupt: its bytes no longer hash to its name", digest=digest)


class PendingBlob:
    """A blob being written in pieces: each ``write`` goes to a temp file in the store's ``tmp/``
    and into its sha256; ``commit`` fsyncs it and renames it onto its name (or drops it when that
    blob is already stored) and returns the digest; ``discard`` drops it. Leaving the ``with``
    block without a commit discards it."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        fd, self._name = store._temp("pending")
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def __enter__(self) -> PendingBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def write(self, chunk: bytes | memoryview) -> None:
        if self._file is None:
            raise ValueError("write to a blob already committed or discarded")
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def digest(self) -> str:
        """The sha256 of what was written so far."""
        return self._hash.hexdigest()

    def commit(self) -> str:
        if self._file is None:
            raise ValueError("commit of a blob already committed or discarded")
        digest = self.digest
        f, self._file = self._file, None
        installed = False
        try:
            if not self._store.has(digest):
                f.flush()
                os.fsync(f.fileno())
                f.close()
                self._store._install(self._name, digest)
                installed = True
        finally:
            f.close()
            if not installed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._name)
        return digest

    def discard(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name)
