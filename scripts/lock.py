#!/usr/bin/env python3
"""The repo's locked environment: compile it, check it, judge `pip check` against it.

    python3 scripts/lock.py compile [--uv PATH] [--find-links DIR]   # make lock
    python3 scripts/lock.py check                                     # before every install
    pip check 2>&1 | python3 scripts/lock.py pip-check                # in make test

locks/main.txt     every distribution of .[all,test], pinned with hashes (uv pip compile)
locks/nodeps.txt   onnx2tf and tf-keras, installed with --no-deps (their pins conflict with ours)
locks/uv.txt       the uv that installs the other two
locks/inputs.sha256  digest of what the locks were compiled from; a mismatch means "run make lock"

Standard library only: it runs before the environment exists.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Distributions installed with --no-deps on purpose: `pip check` complaints about them are expected.
NO_DEPS = ("onnx2tf", "tf-keras")
_REQ = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)(\s*;[^\\]*)?$")
_HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


def inputs_digest(root: Path = ROOT) -> str:
    """What the locks depend on: the project's requirements (not the rest of pyproject.toml),
    constraints.txt and the two small .in files."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = {k: project.get(k) for k in ("requires-python", "dependencies", "optional-dependencies")}
    h = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode())
    for name in ("constraints.txt", "locks/nodeps.in", "locks/uv.in"):
        h.update(b"\0" + name.encode() + b"\0" + (root / name).read_bytes())
    return h.hexdigest()


def parse_lock(path: Path, root: Path = ROOT) -> dict[str, str]:
    """{name: version} of a hash-pinned requirements file; ValueError with file:line on anything else."""
    pins: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    i = 0
    while i < len(lines):
        start, raw = i + 1, lines[i]
        text = "" if raw.lstrip().startswith("#") else raw.split(" #", 1)[0].strip()
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1].strip() + " " + lines[i].strip()
        i += 1
        if not text:
            continue
        words = text.split()
        req = [w for w in words if not w.startswith("--hash=")]
        hashes = [w for w in words if w.startswith("--hash=")]
        m = _REQ.match(" ".join(req))
        if not m or not hashes or not all(_HASH.match(h) for h in hashes):
            raise ValueError(f"{path.relative_to(root)}:{start}: not a pinned requirement with sha256 hashes: "
                             f"{text[:80]!r}")
        pins[m.group(1).lower().replace("_", "-")] = m.group(3)
    if not pins:
        raise ValueError(f"{path.relative_to(root)}: holds no requirement")
    return pins


def check(root: Path = ROOT) -> int:
    for name in ("main.txt", "nodeps.txt", "uv.txt"):
        path = root / "locks" / name
        if not path.is_file():
            print(f"error: locks/{name} is missing: run `make lock` to regenerate the lock files", file=sys.stderr)
            return 2
        try:
            parse_lock(path, root)
        except (ValueError, OSError) as e:
            print(f"error: corrupt lock file {e}; restore it with git or run `make lock`", file=sys.stderr)
            return 2
    digest = root / "locks" / "inputs.sha256"
    recorded = digest.read_text().strip() if digest.is_file() else ""
    try:
        current = inputs_digest(root)
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        print(f"error: cannot read the lock's inputs (pyproject.toml, constraints.txt, locks/*.in): {e}", file=sys.stderr)
        return 2
    if recorded != current:
        print("error: locks/ is out of date with pyproject.toml / constraints.txt (or locks/inputs.sha256 is "
              "missing): run `make lock` and commit locks/", file=sys.stderr)
        return 2
    return 0


def compile_locks(uv: str, find_links: list[str]) -> int:
    common = [uv, "pip", "compile", "-q", "--generate-hashes", "--python-version", "3.11",
              "--custom-compile-command", "make lock", "-c", "constraints.txt"]
    fl = [a for d in find_links for a in ("--find-links", d)]
    runs = [
        common + fl + ["pyproject.toml", "--extra", "all", "--extra", "test", "-o", "locks/main.txt"],
        common + ["--no-deps", "locks/nodeps.in", "-o", "locks/nodeps.txt"],
        common + ["locks/uv.in", "-o", "locks/uv.txt"],
    ]
    for cmd in runs:
        if subprocess.run(cmd, cwd=ROOT).returncode:
            print(f"error: `{' '.join(cmd)}` failed; locks/inputs.sha256 is left as it was", file=sys.stderr)
            return 1
    (ROOT / "locks" / "inputs.sha256").write_text(inputs_digest() + "\n")
    print("locks/ regenerated: review `git diff locks/`, run `make test`, commit locks/")
    return 0


def pip_check(text: str) -> int:
    """Fails on any `pip check` complaint except those about the --no-deps distributions."""
    bad = [ln for ln in text.splitlines()
           if ln.strip() and not ln.startswith("No broken requirements")
           and not any(ln.lower().startswith(n + " ") for n in NO_DEPS)]
    for ln in bad:
        print(f"pip check: {ln}", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile")
    c.add_argument("--uv", default="uv")
    c.add_argument("--find-links", action="append", default=[])
    k = sub.add_parser("check")
    k.add_argument("--root", type=Path, default=ROOT, help="the checkout to check (default: this one)")
    sub.add_parser("pip-check")
    args = ap.parse_args(argv)
    if args.cmd == "compile":
        return compile_locks(args.uv, args.find_links)
    if args.cmd == "check":
        return check(args.root.resolve())
    return pip_check(sys.stdin.read())


if __name__ == "__main__":
    sys.exit(main())
