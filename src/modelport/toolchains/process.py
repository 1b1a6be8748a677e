"""A toolchain's driver as a subprocess: requests out, replies back, files in between.

``DriverProcess("paddle", "paddle_ops.py")`` starts ``<toolchain>/bin/python -I driver.py
paddle_ops.py`` once (importing a framework takes seconds) and serves every ``call`` until
``close``. The driver's stderr (framework logs) goes to a temp file, shown only when the driver
dies or with ``--debug``; a reply's error becomes the ModelportError of its exit code.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from modelport.errors import BadInputError, ModelportError, UnsupportedError
from modelport.toolchains.environment import require

__all__ = ["DriverProcess", "ToolchainError", "child_environ"]

HERE = Path(__file__).resolve().parent


class ToolchainError(BadInputError):
    """The toolchain's driver failed unexpectedly (it died, or the framework raised)."""


def _debug() -> bool:
    return os.environ.get("MODELPORT_DEBUG", "") not in ("", "0")


_SHARED: dict[tuple[str, str], DriverProcess] = {}


# What this process's environment must not pass to a toolchain's Python: which interpreter and packages
# it runs with, and TF_USE_LEGACY_KERAS, which importing onnx2tf sets to 1 here (inherited, a toolchain's
# tf.keras looks for tf_keras, not installed there, and fails with an ImportError).
_NOT_INHERITED = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "TF_USE_LEGACY_KERAS")


def child_environ() -> dict[str, str]:
    """This process's environment, less what must not reach a toolchain's Python (``_NOT_INHERITED``)."""
    return {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}


class DriverProcess:
    """One long-lived driver in toolchain ``name``, serving the ops of ``ops_file`` (beside this module)."""

    @classmethod
    def shared(cls, name: str, ops_file: str) -> DriverProcess:
        """The process-wide driver of (name, ops_file), restarted if it died, closed at exit."""
        key = (name, ops_file)
        proc = _SHARED.get(key)
        if proc is None or proc._proc.poll() is not None or proc.env_path != str(require(name).path):
            if proc is not None:
                proc.close()
            if not _SHARED:
                atexit.register(_close_shared)
            proc = _SHARED[key] = cls(name, ops_file)
        return proc

    def __init__(self, name: str, ops_file: str) -> None:
        env = require(name)
        self.name = name
        self.env_path = str(env.path)
        self.versions = dict(env.versions)
        self._log = None if _debug() else tempfile.TemporaryFile()
        child_env = child_environ()
        child_env.update(PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(
            [str(env.python), "-I", str(HERE / "driver.py"), str(HERE / ops_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=child_env, text=True,
            encoding="utf-8",
        )
        self._lock = threading.Lock()

    def call(self, op: str, **args: Any) -> Any:
        """Run one op in the toolchain; its result (JSON), or the error it raised."""
        with self._lock:
            proc = self._proc
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
            if not line:
                proc.wait(timeout=30)
                how = f"signal {signal.Signals(-proc.returncode).name}" if (proc.returncode or 0) < 0 else \
                    f"exit {proc.returncode}"
                raise ToolchainError(f"the {self.name} toolchain's driver died ({how}) "
                                     f"during {op}: {self._log_tail()}")
        reply = json.loads(line)
        if reply.get("ok"):
            return reply.get("result")
        message = f"{self.name} toolchain: {reply.get('error', '?')}"
        code = int(reply.get("exit_code", 2))
        if reply.get("internal"):
            raise ToolchainError(message)
        raise {2: BadInputError, 3: UnsupportedError}.get(code, ModelportError)(message)

    def _log_tail(self) -> str:
        if self._log is None:
            return "its output is above"
        self._log.seek(0)
        lines = [ln.strip() for ln in self._log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return " | ".join(lines[-3:]) or "no output"

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> DriverProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        except Exception:  # interpreter shutdown: nothing left to clean
            pass


def _close_shared() -> None:
    while _SHARED:
        _SHARED.popitem()[1].close()
