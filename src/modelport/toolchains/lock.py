"""Recompile a toolchain's lock: ``python -m modelport.toolchains.lock NAME [--upgrade]``.

Runs ``uv pip compile --generate-hashes --python-version 3.11`` on ``locks/NAME.in`` and writes
``locks/NAME.txt`` (every package pinned with its hashes). A new lock is a new environment
directory (its hash is in the name), so installed toolchains are rebuilt, never patched.
"""

from __future__ import annotations

import subprocess
import sys

from modelport.toolchains.environment import LOCKS, Toolchain, find_uv

PYTHON_VERSION = "3.11"


def compile_lock(name: str, *, upgrade: bool = False) -> int:
    source = LOCKS / f"{name}.in"
    if not source.is_file():
        print(f"no such toolchain source: {source}", file=sys.stderr)
        return 2
    uv = find_uv()
    if uv is None:
        print("uv is needed to compile a lock (pip install uv)", file=sys.stderr)
        return 2
    links = [a for d in Toolchain(name, LOCKS / f"{name}.txt").find_links() for a in ("--find-links", d)]
    cmd = [uv, "pip", "compile", "--quiet", "--generate-hashes", "--python-version", PYTHON_VERSION,
           "--no-header", *(["--upgrade"] if upgrade else []), *links, f"{name}.in", "-o", f"{name}.txt"]
    return subprocess.run(cmd, cwd=LOCKS).returncode


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    names = [a for a in args if not a.startswith("-")]
    if not names:
        print("usage: python -m modelport.toolchains.lock NAME [NAME...] [--upgrade]", file=sys.stderr)
        return 2
    return max(compile_lock(n, upgrade="--upgrade" in args) for n in names)


if __name__ == "__main__":
    sys.exit(main())
