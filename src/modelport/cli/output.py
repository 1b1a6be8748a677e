"""What every command shares: JSON or rich output, progress display, and error rendering."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from modelport.artifact import to_jsonable

# Piped output (CI logs, files) gets room for the tables instead of rich's 80-column default.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, highlight=False)


def emit_json(value: Any) -> None:
    """A report as JSON on stdout, with the versions of modelport and the frameworks it found."""
    from modelport.versions import tool_versions

    doc = to_jsonable(value)
    if isinstance(doc, dict):
        doc = {**doc, "versions": tool_versions()}
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def fmt_float(x: float | None, spec: str = ".2e") -> str:
    if x is None:
        return "-"
    return format(x, spec)


@contextlib.contextmanager
def progress(enabled: bool, label: str) -> Iterator[Any]:
    """A spinner with the current step, on a terminal only; yields a callback taking a message."""
    if not enabled or not err_console.is_terminal:
        yield lambda msg: None
        return
    with err_console.status(label) as status:
        yield lambda msg: status.update(f"{label}: {msg}")
