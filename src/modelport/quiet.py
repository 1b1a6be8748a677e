"""Framework chatter stays off the user's terminal; real errors still reach it.

TensorFlow, LiteRT and friends write INFO lines from C++ straight to file descriptor 2
(``oneDNN custom operations are on ...``, ``Created TensorFlow Lite XNNPACK delegate``), before
and regardless of ``TF_CPP_MIN_LOG_LEVEL``; torch.onnx prints progress lines from Python.
``native_output()`` captures descriptor 2 while a framework call runs and writes back every line
that is not such chatter (errors, fatal messages and anything unknown pass through, in order).
``quiet()`` adds the Python side: stdout/stderr prints, warnings and log records below ERROR.
With ``--debug`` (``MODELPORT_DEBUG=1``) both let everything through. Numerics are untouched:
nothing here changes a framework setting.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from typing import IO

DEBUG_ENV = "MODELPORT_DEBUG"

_RECORD = r"\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] "  # glog/absl: LEVEL MMDD hh:mm:ss.us thread file:line]
# absl's pre-init banner; glog/absl INFO and WARNING records; two ERROR records TensorFlow writes
# on healthy runs (tf.data graphs from a newer TF, oneDNN's int8/32/64 fallback); TFLite's own
# "INFO: ..." lines. Every other ERROR/FATAL record and TFLite "ERROR: ..." line passes.
CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]" + _RECORD + r".*"
    r"|E" + _RECORD + r"(NodeDef mentions attribute .* This may be expected if your graph generating binary is newer"
    r"|oneDNN supports DT_INT(?:8|32|64) only on platforms with AVX-512\. Falling back).*"
    r"|INFO: .*"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)$"
)

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_capture: IO[bytes] | None = None


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def strip_chatter(text: str) -> str:
    """``text`` without its framework chatter lines."""
    return "".join(ln for ln in text.splitlines(keepends=True) if not CHATTER.match(ln.rstrip("\r\n")))


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()


@contextlib.contextmanager
def native_output() -> Iterator[None]:
    """Filters what anything in the process writes to descriptor 2 while the block runs.

    Re-entrant (only the outermost block redirects). The text is replayed, filtered, when the
    outermost block ends, also when it raises.
    """
    global _depth, _saved_fd, _capture
    if debug():
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            try:
                _flush()
                _capture = tempfile.TemporaryFile(mode="w+b")
                _saved_fd = os.dup(2)
                os.dup2(_capture.fileno(), 2)
            except OSError:  # no usable descriptor 2 (closed, or a sandbox): nothing to filter
                _capture, _saved_fd = None, None
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None and _capture is not None:
                _flush()
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _capture.seek(0)
                kept = strip_chatter(_capture.read().decode("utf-8", "replace"))
                _capture.close()
                _saved_fd, _capture = None, None
                if kept:
                    os.write(2, kept.encode("utf-8", "replace"))


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """A framework call that prints progress, warns and logs: all of it kept from the terminal.

    Yields the sink holding what Python code printed (for an error message that needs it);
    native lines are filtered as in ``native_output``. Log records of ERROR and above still pass.
    """
    sink = io.StringIO()
    if debug():
        yield sink
        return
    logging.disable(logging.WARNING)
    try:
        with native_output(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield sink
    finally:
        logging.disable(logging.NOTSET)
