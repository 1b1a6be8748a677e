"""JSON from untrusted files, parsed with a bounded nesting depth.

``json.loads`` recurses in C once per nesting level and stops at the interpreter's recursion
limit; a process that raised that limit (frameworks do) lets ``[[[[...]]]]`` overflow the C stack:
a segfault, not an exception. Here the limit is capped while parsing, so deep nesting is a
RecursionError the caller turns into a one-line refusal.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

MAX_DEPTH = 1000
_lock = threading.Lock()


def _depth() -> int:
    frame, n = sys._getframe(), 0
    while frame is not None:
        n += 1
        frame = frame.f_back
    return n


def loads(data: bytes | str) -> Any:
    """``json.loads(data)`` with nesting deeper than about MAX_DEPTH raising RecursionError."""
    with _lock:
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(min(old, _depth() + MAX_DEPTH))
        try:
            return json.loads(data)
        finally:
            sys.setrecursionlimit(old)
