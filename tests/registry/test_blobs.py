"""The content-addressed blob directory: names are SHA-256 of the bytes, writes land atomically,
reads are re-hashed, and a damaged or missing blob is refused naming it."""

from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest

from modelport.errors import CheckFailedError
from modelport.registry import blobs as blobs_mod
from modelport.registry.blobs import BlobCorruptError, BlobError, BlobMissingError, BlobStore


def _flip_byte(path, at: int = 0) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_put_get_names_blob_by_sha256_and_is_idempotent(tmp_path):
    store = BlobStore(tmp_path / "b")
    data = os.urandom(1000)
    d = store.put(data)
    assert d == hashlib.sha256(data).hexdigest()
    assert store.path(d) == tmp_path / "b" / "sha256" / d[:2] / d[2:]
    assert store.get(d) == data and store.has(d) and store.size(d) == 1000 and store.verify(d)
    assert store.put(memoryview(data)) == d  # same bytes, same blob
    assert list(store.digests()) == [d]
    assert list((tmp_path / "b" / "tmp").iterdir()) == []  # nothing left behind by a write


def test_put_file_ranges_and_streaming_match_put(tmp_path, monkeypatch):
    src = tmp_path / "model.bin"
    payload = os.urandom(50_000)
    src.write_bytes(payload)
    store = BlobStore(tmp_path / "b")
    assert store.put_file(src) == hashlib.sha256(payload).hexdigest()
    assert store.get(store.put_file(src, 100, 2000)) == payload[100:2100]
    # Ranges larger than one chunk take the streaming path (hashed as they are copied to a temp file).
    monkeypatch.setattr(blobs_mod, "CHUNK", 4096)
    d = store.put_file(src, 7, 40_000)
    assert d == hashlib.sha256(payload[7:40_007]).hexdigest()
    out = io.BytesIO()
    assert store.copy_to(d, out) == 40_000 and out.getvalue() == payload[7:40_007]
    assert store.put_file(src, 7, 40_000) == d  # already there: nothing new written
    assert sorted(store.digests()) == sorted({hashlib.sha256(x).hexdigest()
                                              for x in (payload, payload[100:2100], payload[7:40_007])})


def test_range_past_end_of_file_fails_and_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "short.bin"
    src.write_bytes(b"x" * 10_000)
    store = BlobStore(tmp_path / "b")
    monkeypatch.setattr(blobs_mod, "CHUNK", 1024)
    with pytest.raises(CheckFailedError, match="ended before byte 20000"):
        store.put_file(src, 0, 20_000)
    assert list(store.digests()) == []
    assert not (tmp_path / "b" / "tmp").exists() or list((tmp_path / "b" / "tmp").iterdir()) == []


def test_corrupt_blob_is_refused_naming_it(tmp_path):
    store = BlobStore(tmp_path / "b")
    d = store.put(b"weights" * 100)
    _flip_byte(store.path(d), 3)
    assert not store.verify(d)
    with pytest.raises(BlobCorruptError, match=f"blob {d} .* is corrupt") as e:
        store.get(d)
    assert e.value.exit_code == 1 and e.value.digest == d
    with pytest.raises(BlobCorruptError, match=d):
        store.copy_to(d, io.BytesIO())


def test_missing_and_malformed_digests(tmp_path):
    store = BlobStore(tmp_path / "b")
    d = store.put(b"abc")
    store.remove(d)
    store.remove(d)  # removing twice is fine (gc may race)
    assert not store.has(d) and not store.verify(d)
    with pytest.raises(BlobMissingError, match=f"blob {d} is missing") as e:
        store.get(d)
    assert e.value.exit_code == 1
    with pytest.raises(BlobMissingError):
        store.size(d)
    with pytest.raises(BlobError, match="not a sha256 blob digest"):
        store.path("../../etc/passwd")
    with pytest.raises(BlobError, match="not a sha256 blob digest"):
        store.get(d.upper())


def test_concurrent_writers_of_same_and_different_blobs(tmp_path):
    store = BlobStore(tmp_path / "b")
    shared = os.urandom(100_000)
    own = [os.urandom(5000) for _ in range(8)]
    got: list[tuple[str, str]] = []

    def writer(i: int) -> None:
        got.append((store.put(shared), store.put(own[i])))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({s for s, _ in got}) == 1
    assert len(set(store.digests())) == 9
    assert all(store.verify(d) for d in store.digests())


def test_stale_temps_are_listed_for_gc(tmp_path):
    store = BlobStore(tmp_path / "b")
    store.put(b"one")
    left = tmp_path / "b" / "tmp" / "deadbeef.partial"
    left.write_bytes(b"half a blob")
    os.utime(left, (1, 1))
    assert store.stale_temps(older_than_s=60) == [left]
    assert list(store.digests()) == [hashlib.sha256(b"one").hexdigest()]


class _CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        chunk = super().read(n)
        self.bytes_read += len(chunk)
        return chunk


def test_every_write_reads_and_hashes_its_bytes_once(tmp_path, monkeypatch):
    monkeypatch.setattr(blobs_mod, "CHUNK", 4096)
    hashed = []
    real = blobs_mod.sha256_hex
    monkeypatch.setattr(blobs_mod, "sha256_hex", lambda data: hashed.append(len(data)) or real(data))
    store = BlobStore(tmp_path / "b")
    payload = os.urandom(50_000)
    want = hashlib.sha256(payload[7:40_007]).hexdigest()

    seen: list[bytes] = []
    fh = _CountingReader(payload)
    assert store.put_fileobj(fh, 7, 40_000, also=(seen.append,)) == want
    assert fh.bytes_read == 40_000 and b"".join(seen) == payload[7:40_007]  # one read, shared with another checksum
    again = _CountingReader(payload)
    assert store.put_fileobj(again, 7, 40_000) == want and again.bytes_read == 40_000  # already stored: read once, dropped
    assert store.get(want) == payload[7:40_007] and list((tmp_path / "b" / "tmp").iterdir()) == []

    hashed.clear()
    small = payload[:1000]
    d = hashlib.sha256(small).hexdigest()
    assert store.put(small, digest=d) == d and hashed == []  # a digest the caller computed is not computed again
    assert store.read(d) == small and store.verify(d)

    with store.pending() as blob:
        blob.write(payload[:30_000])
        blob.write(memoryview(payload)[30_000:])
        assert blob.size == 50_000
        d = blob.commit()
    assert d == hashlib.sha256(payload).hexdigest() and store.get(d) == payload
    with store.pending() as blob:  # left without a commit: dropped
        blob.write(b"never stored")
    assert not store.has(hashlib.sha256(b"never stored").hexdigest())
    assert list((tmp_path / "b" / "tmp").iterdir()) == []
    with pytest.raises(ValueError, match="already committed or discarded"):
        blob.write(b"x")
