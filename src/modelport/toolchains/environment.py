"""Toolchain environments: one virtual environment per framework, built from a lock shipped here.

A toolchain ``NAME`` is the lock ``locks/NAME.txt`` (hash-pinned, compiled from ``locks/NAME.in``
by ``python -m modelport.toolchains.lock NAME``). It is installed into
``<cache>/toolchains/NAME-<first 12 hex of the lock's sha256>``, where ``<cache>`` is
``$MODELPORT_CACHE``, else ``$XDG_CACHE_HOME/modelport``, else ``~/.cache/modelport``; a new
lock is a new directory, so an environment is never half-upgraded.

An install builds in a temp dir beside its destination (``.NAME-<hash>.partial-*``) and renames
it into place when the packages are in and a marker (``modelport-toolchain.json``, the installed
versions) is written last: a failed or interrupted install leaves nothing that counts as
installed. Installs of one toolchain are serialised by a lock file, so parallel test workers
(or two shells) build it once. uv is used when it is found (beside ``sys.executable`` or on
PATH) unless ``MODELPORT_TOOLCHAIN_INSTALLER=pip``, else ``python -m venv`` and pip; both with
``--require-hashes``.

``$MODELPORT_TOOLCHAIN_LOCKS`` names a directory of one's own ``NAME.txt`` locks, searched before
the shipped ones (a site's pinned mirror of a toolchain, or a toolchain modelport does not ship).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from modelport.errors import BadInputError, UnsupportedError

__all__ = ["LOCKS", "MARKER", "Toolchain", "Installed", "InstallReport", "RemoveReport", "ToolchainStatus", "status", "ToolchainMissingError", "ToolchainInstallError",
           "cache_root", "known", "toolchain", "installed", "require", "install", "remove", "find_uv"]

LOCKS = Path(__file__).resolve().parent / "locks"
MARKER = "modelport-toolchain.json"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


class ToolchainMissingError(UnsupportedError):
    """The toolchain a format needs is not installed (exit 3); the message names the install command."""

    def __init__(self, name: str, why: str = "is not installed") -> None:
        super().__init__(f"toolchain {name!r} {why}; install it with: modelport toolchain install {name}")
        self.toolchain = name


class ToolchainInstallError(BadInputError):
    """Building a toolchain failed (exit 2); the message ends with the installer's last lines."""


def cache_root() -> Path:
    """``$MODELPORT_CACHE``, else ``$XDG_CACHE_HOME/modelport``, else ``~/.cache/modelport``."""
    if os.environ.get("MODELPORT_CACHE"):
        return Path(os.environ["MODELPORT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "modelport"


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """A toolchain that can be installed: its name and its lock file."""

    name: str
    lock: Path

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.lock.read_bytes()).hexdigest()[:12]

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.digest}"

    def path(self) -> Path:
        return cache_root() / "toolchains" / self.dirname

    def pins(self) -> dict[str, str]:
        """``{package: version}`` as the lock pins them."""
        pins = {}
        for line in self.lock.read_text(encoding="utf-8").splitlines():
            m = _PIN.match(line.strip())
            if m:
                pins[_norm(m.group(1))] = m.group(2)
        return pins

    def key_packages(self) -> tuple[str, ...]:
        """What `toolchain list` shows: ``NAME.in``'s ``# key packages:`` line, else its ``==`` pins."""
        source = self.lock.with_suffix(".in")
        text = source.read_text(encoding="utf-8") if source.is_file() else ""
        m = re.search(r"^# key packages:(.*)$", text, re.M)
        if m:
            return tuple(_norm(n) for n in m.group(1).split())
        return tuple(_norm(p.group(1)) for p in (_PIN.match(ln.strip()) for ln in text.splitlines()) if p)

    def find_links(self) -> tuple[str, ...]:
        """Folders of wheels the lock needs besides the index (a torch CPU build): ``NAME.in``'s
        ``# find-links: DIR ...`` line, ``$VAR``s expanded; folders that do not exist are left out."""
        source = self.lock.with_suffix(".in")
        text = source.read_text(encoding="utf-8") if source.is_file() else ""
        m = re.search(r"^# find-links:(.*)$", text, re.M)
        dirs = (os.path.expanduser(os.path.expandvars(d)) for d in (m.group(1).split() if m else ()))
        return tuple(dict.fromkeys(d for d in dirs if "$" not in d and os.path.isdir(d)))


@dataclasses.dataclass(frozen=True)
class Installed:
    """An installed toolchain environment."""

    name: str
    path: str
    lock_digest: str
    current: bool  # built from the lock this modelport ships (False: an older or newer lock)
    versions: tuple[tuple[str, str], ...]
    installed_at: str = ""

    @property
    def python(self) -> Path:
        return Path(self.path) / "bin" / "python"

    def version(self, package: str) -> str | None:
        return dict(self.versions).get(_norm(package))


@dataclasses.dataclass(frozen=True)
class InstallReport:
    """What `toolchain install` did."""

    name: str
    path: str
    built: bool  # False: it was installed already
    seconds: float
    packages: tuple[tuple[str, str], ...]  # the key packages and their versions

    def to_dict(self) -> dict:
        from modelport.artifact import to_jsonable

        return to_jsonable(self)


@dataclasses.dataclass(frozen=True)
class RemoveReport:
    name: str
    removed: tuple[str, ...]

    def to_dict(self) -> dict:
        from modelport.artifact import to_jsonable

        return to_jsonable(self)


@dataclasses.dataclass(frozen=True)
class ToolchainStatus:
    """One row of `toolchain list`: a toolchain this modelport can install, and what is installed of it."""

    name: str
    lock_digest: str
    installed: bool  # from the current lock
    path: str  # where it is (or would be) installed
    packages: tuple[tuple[str, str], ...]  # key packages: installed versions, else the lock's pins
    other_locks: tuple[str, ...] = ()  # environments built from other locks (`toolchain remove` drops them)

    def to_dict(self) -> dict:
        from modelport.artifact import to_jsonable

        return to_jsonable(self)


def status() -> list[ToolchainStatus]:
    """Every toolchain this modelport ships, installed or not."""
    rows = []
    for name in known():
        tc = toolchain(name)
        envs = installed(name)
        current = next((e for e in envs if e.current), None)
        keys = tc.key_packages()
        have = dict(current.versions) if current else tc.pins()
        rows.append(ToolchainStatus(name, tc.digest, current is not None, current.path if current else str(tc.path()),
                                    tuple((k, have[k]) for k in keys if k in have),
                                    tuple(e.path for e in envs if not e.current)))
    return rows


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_dirs() -> list[Path]:
    """``$MODELPORT_TOOLCHAIN_LOCKS`` (a directory of NAME.txt locks of one's own, searched first), then ours."""
    extra = os.environ.get("MODELPORT_TOOLCHAIN_LOCKS")
    return [Path(extra).expanduser(), LOCKS] if extra else [LOCKS]


def known() -> list[str]:
    """The toolchains a lock is found for."""
    return sorted({p.stem for d in _lock_dirs() if d.is_dir() for p in d.glob("*.txt") if _NAME.match(p.stem)})


def toolchain(name: str) -> Toolchain:
    """The toolchain NAME; UnsupportedError (exit 3) naming the known ones when there is none."""
    valid = bool(_NAME.match(name or ""))
    lock = next((d / f"{name}.txt" for d in _lock_dirs() if valid and (d / f"{name}.txt").is_file()), LOCKS / "-")
    if not valid or not lock.is_file():
        raise UnsupportedError(f"unknown toolchain {name!r}; known: {', '.join(known()) or 'none'}")
    return Toolchain(name, lock)


def _read_marker(env: Path) -> dict | None:
    try:
        doc = json.loads((env / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and (env / "bin" / "python").exists() else None


def installed(name: str | None = None) -> list[Installed]:
    """Installed toolchain environments (complete ones only), of NAME or of all."""
    root = cache_root() / "toolchains"
    if not root.is_dir():
        return []
    current = {n: toolchain(n).digest for n in known()}
    found = []
    for env in sorted(root.iterdir()):
        head, sep, digest = env.name.rpartition("-")
        if env.name.startswith(".") or not sep or (name is not None and head != name):
            continue
        doc = _read_marker(env)
        if doc is None or doc.get("name") != head:
            continue
        versions = tuple(sorted((str(k), str(v)) for k, v in dict(doc.get("versions", {})).items()))
        found.append(Installed(head, str(env), digest, current.get(head) == digest, versions,
                               str(doc.get("installed_at", ""))))
    return found


def require(name: str) -> Installed:
    """The installed environment of toolchain NAME, built from the current lock; else exit 3 naming the install."""
    want = toolchain(name)
    envs = installed(name)
    for env in envs:
        if env.current:
            return env
    if envs:
        raise ToolchainMissingError(name, f"is installed from another lock (not {want.digest})")
    raise ToolchainMissingError(name)


def find_uv() -> str | None:
    """uv beside the running Python (a venv that has it), else on PATH; None with
    ``MODELPORT_TOOLCHAIN_INSTALLER=pip`` (then venv + pip install the lock)."""
    if os.environ.get("MODELPORT_TOOLCHAIN_INSTALLER", "").lower() == "pip":
        return None
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("uv")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, name: str) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except OSError as exc:
        raise ToolchainInstallError(f"toolchain {name!r} failed to install: cannot run {cmd[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        tail = " | ".join(lines[-4:]) or f"exit status {proc.returncode}"
        raise ToolchainInstallError(f"toolchain {name!r} failed to install ({what}): {tail}")


_VERSIONS = ("import json, importlib.metadata as m, re; print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name'])"
             ".lower(): d.version for d in m.distributions()}))")


def _build(tc: Toolchain, tmp: Path) -> dict[str, str]:
    """Create the venv in tmp and install the lock into it; returns the installed versions."""
    uv = find_uv()
    python = tmp / "bin" / "python"
    links = [a for d in tc.find_links() for a in ("--find-links", d)]
    if uv:
        _run([uv, "venv", "--quiet", "--relocatable", "--python", sys.executable, str(tmp)], "venv", tc.name)
        _run([uv, "pip", "install", "--quiet", "--python", str(python), "--require-hashes", "--no-deps",
              *links, "-r", str(tc.lock)], "uv pip install", tc.name)
    elif importlib.util.find_spec("pip") is not None:  # our pip installs into it: no ensurepip (slow)
        _run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], "venv", tc.name)
        _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--require-hashes",
              "--no-deps", *links, "-r", str(tc.lock)], "pip install", tc.name)
    else:
        _run([sys.executable, "-m", "venv", str(tmp)], "venv", tc.name)
        _run([str(python), "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps", *links, "-r", str(tc.lock)],
             "pip install", tc.name)
    proc = subprocess.run([str(python), "-I", "-c", _VERSIONS], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainInstallError(f"toolchain {tc.name!r} failed to install: its python does not start: "
                                    f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout)


def install(name: str, *, force: bool = False) -> InstallReport:
    """Install toolchain NAME (a no-op when its current lock is installed, unless ``force``).

    Raises
    ToolchainInstallError (exit 2) with the installer's last lines when it fails; then nothing is left.
    """
    tc = toolchain(name)
    root = cache_root() / "toolchains"
    start = time.perf_counter()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create the toolchain cache: {exc.strerror}", path=root) from None
    dest = tc.path()
    with _exclusive(root / f".{name}.lock"):
        if not force and _read_marker(dest) is not None:
            return _report(tc, False, start)
        for stale in root.glob(f".{tc.dirname}.*"):  # partial builds of killed installs (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{tc.dirname}.partial-", dir=root))
        try:
            versions = _build(tc, tmp)
            marker = {"name": name, "lock_sha256": hashlib.sha256(tc.lock.read_bytes()).hexdigest(),
                      "versions": versions, "installer": "uv" if find_uv() else "pip",
                      "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (tmp / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
            os.chmod(tmp, 0o755)  # mkdtemp made it private
            if dest.exists():
                _discard(dest)
            os.rename(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return _report(tc, True, start)


def _report(tc: Toolchain, built: bool, start: float) -> InstallReport:
    env = require(tc.name)
    have = dict(env.versions)
    return InstallReport(tc.name, env.path, built, round(time.perf_counter() - start, 2),
                         tuple((k, have[k]) for k in tc.key_packages() if k in have))


def _discard(env: Path) -> None:
    """Rename out of sight first (so `list` never sees half a removal), then delete."""
    gone = env.with_name(f".{env.name}.removing-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(env, gone)
    shutil.rmtree(gone, ignore_errors=True)


def remove(name: str) -> RemoveReport:
    """Remove every installed environment of toolchain NAME (any lock)."""
    toolchain(name)
    envs = installed(name)
    if not envs:
        raise BadInputError(f"toolchain {name!r} is not installed (nothing to remove under {cache_root() / 'toolchains'})")
    root = cache_root() / "toolchains"
    with _exclusive(root / f".{name}.lock"):
        for env in envs:
            if Path(env.path).exists():
                _discard(Path(env.path))
    return RemoveReport(name, tuple(env.path for env in envs))
