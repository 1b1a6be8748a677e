"""Errors raised at modelport's boundaries; each carries the CLI exit code it maps to.

Exit codes: 0 ok · 1 a check failed · 2 bad usage or unreadable input ·
3 unsupported (format, op, route, target) · 4 refused as unsafe.
"""

from __future__ import annotations

__all__ = [
    "ModelportError",
    "CheckFailedError",
    "BadInputError",
    "UnsupportedError",
    "MissingExtraError",
    "ExportError",
    "UnsafeError",
]


class ModelportError(Exception):
    """Base of every error modelport raises on purpose."""

    exit_code: int = 2

    def __init__(self, message: str, *, path: object | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class CheckFailedError(ModelportError):
    """A verification or accuracy check failed (exit 1)."""

    exit_code = 1

    def __init__(self, message: str, *, report: object | None = None, path: object | None = None) -> None:
        self.report = report
        super().__init__(message, path=path)


class BadInputError(ModelportError):
    """Bad usage or unreadable input (exit 2)."""

    exit_code = 2


class UnsupportedError(ModelportError):
    """An unsupported format, op, route or target (exit 3)."""

    exit_code = 3


class MissingExtraError(UnsupportedError):
    """A framework needed for this format is not installed; names the extra."""

    def __init__(self, package: str, extra: str, *, purpose: str = "") -> None:
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"{package} is not installed{what}; install it with: pip install 'modelport[{extra}]'"
        )
        self.extra = extra


class ExportError(UnsupportedError):
    """Every export strategy failed; the message names each strategy and why."""


class UnsafeError(ModelportError):
    """Refused because loading the input would execute untrusted content (exit 4)."""

    exit_code = 4
