"""One staging area: temporary paths beside the destinations, placed all at once or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

__all__ = ["Staging"]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


class Staging:
    """A context manager for a command's outputs.

    ``scratch()`` gives a work directory beside the destination (same filesystem, so placing is a
    rename); ``place(path, dest)`` registers a finished file or directory for ``dest``. When the
    block ends without an error, every registered output is renamed into place in the order given:
    an existing destination is moved aside first and removed only after all are placed; if any
    rename fails, the ones already placed are moved back and the old destinations restored. When
    the block raises, nothing is placed. Either way every temporary path is removed.

        with Staging(out) as staging:
            work = staging.scratch()
            ... write work / "model.onnx" ...
            staging.place(work / "model.onnx", out)
    """

    def __init__(self, beside: str | Path) -> None:
        self.beside = Path(beside)
        self._outputs: list[tuple[Path, Path]] = []
        self._temps: list[Path] = []

    def __enter__(self) -> Staging:
        return self

    def scratch(self, label: str = "work") -> Path:
        """A fresh directory beside the destination, removed when the staging ends."""
        parent = self.beside.parent
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f".{self.beside.name}.{label}-", dir=parent))
        self._temps.append(path)
        return path

    def place(self, path: str | Path, dest: str | Path) -> None:
        """``path`` (a finished file or directory inside a scratch dir) becomes ``dest`` on success."""
        self._outputs.append((Path(path), Path(dest)))

    @property
    def destinations(self) -> tuple[Path, ...]:
        return tuple(dest for _, dest in self._outputs)

    def _commit(self) -> None:
        for src, dest in self._outputs:
            if not (src.exists() or src.is_symlink()):
                raise FileNotFoundError(f"staged output for {dest} was never written: {src}")
        moved_aside: list[tuple[Path, Path]] = []
        placed: list[tuple[Path, Path]] = []
        try:
            for src, dest in self._outputs:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists() or dest.is_symlink():
                    aside = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
                    os.replace(dest, aside)
                    moved_aside.append((aside, dest))
                os.replace(src, dest)
                placed.append((src, dest))
        except BaseException:
            for src, dest in reversed(placed):
                os.replace(dest, src)
            for aside, dest in reversed(moved_aside):
                os.replace(aside, dest)
            raise
        for aside, _ in moved_aside:
            _remove(aside)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            for src, _ in self._outputs:
                _remove(src)
            for path in self._temps:
                _remove(path)
