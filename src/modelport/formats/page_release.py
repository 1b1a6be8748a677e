"""Releasing the resident pages of a read-only, memory-mapped weights file while a library consumes it.

OpenVINO memory-maps an IR's ``.bin`` (and an ONNX model's external data), and its CPU plugin makes its
own copy of the weights (repacked for its kernels): ``compile_model`` reads every constant once and the
first inference repacks each MatMul's weights. The mapped pages it read stay in the process's resident
set, so peak RSS was twice the weight bytes (2.08x on a 2 GiB model, issue 11) although the plugin never
reads most of them again.

:class:`PageReleaser` drops those pages while such a call runs: a watcher thread calls
``madvise(MADV_DONTNEED)`` on the file's mappings every few milliseconds. That is safe only for a mapping
that is read-only and file-backed: a page that was never written refaults the same bytes from the file
(from the page cache, usually), so a page dropped before the library read it costs a minor fault, never
a wrong value. A ``madvise`` on a range that was unmapped and reused (say, by an anonymous allocation)
would zero live memory instead, so the releaser is made once the mapping exists and pins its ranges
then: the caller keeps the object that holds that mapping (the ``ov.Model``) alive while the releaser
is active, and every sweep rereads ``/proc/self/maps`` and touches only pinned ranges that are still
mapped from the file without write permission (a mapping that a library makes and drops meanwhile is
never touched). Elsewhere than Linux (no ``/proc/self/maps`` or no ``madvise``) it does nothing.

The sweeps need the GIL between ``madvise`` calls, so they run only while the main thread is in a call
that releases it (``compile_model`` and ``infer`` do; ``save_model`` does not).

``released`` counts the bytes that left the resident set (``RssFile`` before and after each sweep's
``madvise`` calls, from ``/proc/self/status``; a page is counted each time it is dropped, and a
library that reads a weight in several passes refaults it), so that callers and tests can see that it ran.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

__all__ = ["PageReleaser"]

_MADV_DONTNEED = 4
_MAPS = "/proc/self/maps"
_STATUS = "/proc/self/status"
_libc = None


def _madvise():
    """libc's ``madvise``, or None where there is none (not Linux, no libc)."""
    global _libc
    if _libc is None:
        if not os.path.exists(_MAPS):
            _libc = False
        else:
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
                lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                lib.madvise.restype = ctypes.c_int
                _libc = lib
            except (OSError, AttributeError):
                _libc = False
    return _libc or None


def _rss_file() -> int:
    try:
        with open(_STATUS) as fh:
            for line in fh:
                if line.startswith("RssFile:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PageReleaser:
    """Drops the resident pages of the read-only mappings of ``paths`` while :meth:`active` is entered.

    Only the mappings that exist when it is made (``pinned``) are ever touched; make it after the library
    mapped the file and keep alive what holds the mapping. ``interval``: seconds between sweeps. Use it as
    ``with releaser.active(): compile_model(...)``.
    """

    def __init__(self, paths, interval: float = 0.005) -> None:
        self.paths = frozenset(os.path.realpath(p) for p in paths)
        self.interval = interval
        self.released = 0
        self.sweeps = 0
        self._lock = threading.Lock()
        self.pinned = frozenset(self._current()) if self.supported else frozenset()

    @property
    def supported(self) -> bool:
        return _madvise() is not None

    def ranges(self) -> list[tuple[int, int]]:
        """The pinned (start, end) ranges still mapped from the paths, file-backed and not writable, now."""
        return [r for r in self._current() if r in self.pinned]

    def _current(self) -> list[tuple[int, int]]:
        found = []
        try:
            with open(_MAPS) as fh:
                for line in fh:
                    parts = line.split(None, 5)
                    if len(parts) < 6 or "w" in parts[1] or parts[5].rstrip("\n") not in self.paths:
                        continue
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    found.append((start, end))
        except (OSError, ValueError):
            return []
        return found

    def sweep(self) -> int:
        """One pass: ``MADV_DONTNEED`` on every such mapping; returns the bytes that left the resident set."""
        libc = _madvise()
        if libc is None:
            return 0
        with self._lock:
            spans = self.ranges()
            if not spans:
                return 0
            before = _rss_file()
            for start, end in spans:
                libc.madvise(start, end - start, _MADV_DONTNEED)
            dropped = max(0, before - _rss_file())
            self.released += dropped
            self.sweeps += 1
            return dropped

    def active(self) -> _Active:
        return _Active(self)


class _Active:
    """The watcher thread of one :meth:`PageReleaser.active` block; a final sweep when the block ends."""

    def __init__(self, releaser: PageReleaser) -> None:
        self.releaser = releaser
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.releaser.interval):
            self.releaser.sweep()

    def __enter__(self) -> PageReleaser:
        if self.releaser.supported:
            self._thread = threading.Thread(target=self._loop, name="modelport-page-release", daemon=True)
            self._thread.start()
        return self.releaser

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.releaser.sweep()
