"""ONNX backend test suite: onnxruntime vs modelport vs onnx2torch, per test group.

    python benchmarks/onnx_backend_suite.py [--jobs N] [--filter SUBSTRING] [--groups node,simple]
        [--onnx2torch-python /tmp/o2t/bin/python]

Prints a pass-count table per group, then modelport's failing categories with reasons;
the last line is ``modelport: N/1884 node cases pass``.

onnx2torch (the PyPI package) is never a dependency of modelport: install it in a separate
environment (``python3.11 -m venv /tmp/o2t && /tmp/o2t/bin/pip install -c constraints.txt
torch==2.13.0 onnx==1.23.2 onnxruntime==1.32.0 && /tmp/o2t/bin/pip install --no-deps
onnx2torch``) and pass its python with ``--onnx2torch-python``: the same cases then run
through onnx2torch in a subprocess there (modelport's source on its PYTHONPATH for the
harness only), after this process's runs. Without it the column prints n/a.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import onnx

os.environ.setdefault("OMP_NUM_THREADS", "1")

from modelport.to_torch import backend_suite as bs  # noqa: E402


def _import_onnx2torch():
    """The onnx2torch package (comparison only). It imports torchvision at import time, for its
    NMS and RoiAlign converters alone; where torchvision is absent (the comparison environment
    installs onnx2torch with --no-deps) a stub stands in and those two converters fail."""
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        def missing(*_a, **_k):
            raise RuntimeError("torchvision is not installed in the onnx2torch environment")

        tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.nms = ops.roi_align = ops.box_convert = missing
        tv.ops = ops
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    import onnx2torch

    return onnx2torch


def run_onnx2torch(model: onnx.ModelProto, inputs: list) -> list:
    import torch

    onnx2torch = _import_onnx2torch()

    net = onnx2torch.convert(model).eval()
    with torch.no_grad():
        out = net(*[bs.as_tensor(v) for v in inputs])
    outs = list(out) if isinstance(out, (tuple, list)) and len(model.graph.output) > 1 else [out]
    return [bs.as_array(o) for o in outs]


def onnx2torch_available() -> bool:
    try:
        _import_onnx2torch()
    except Exception:  # noqa: BLE001
        return False
    return True


bs.RUNNERS["onnx2torch"] = run_onnx2torch


def _category(reason: str) -> str:
    r = re.sub(r"\(.*?\)", "", reason)
    r = re.sub(r"'[^']*'", "'…'", r)
    r = re.sub(r"\d+", "N", r)
    return r[:110]


def _child(args) -> int:
    """In the onnx2torch environment: one group through onnx2torch, outcomes as JSON on stdout's last line."""
    cases, _ = bs.load_cases(args.groups, args.filter)
    outcomes = bs.run_suite(cases, ("onnx2torch",), args.jobs, args.timeout)
    sys.stdout.flush()
    print(json.dumps([[o.case, o.status, o.reason] for o in outcomes]))
    return 0


def _onnx2torch_outcomes(python: str, group: str, args) -> tuple[list[bs.Outcome] | None, str]:
    """Runs ``group`` through onnx2torch in its own environment; (outcomes or None, why not)."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    cmd = [python, __file__, "--child-onnx2torch", "--groups", group, "--jobs", str(args.jobs),
           "--timeout", str(args.timeout)] + (["--filter", args.filter] if args.filter else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=src))
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"onnx2torch subprocess exited {proc.returncode}: {tail}"
    return [bs.Outcome(c, "onnx2torch", st, r) for c, st, r in json.loads(lines[-1])], ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--filter", default=None, help="only cases whose name contains this")
    ap.add_argument("--groups", default=",".join(bs.GROUPS))
    ap.add_argument("--timeout", type=float, default=60.0, help="per-case seconds")
    ap.add_argument("--list-failures", action="store_true", help="print every failing case")
    ap.add_argument("--onnx2torch-python", default=None,
                    help="python of a separate environment with onnx2torch installed (comparison column)")
    ap.add_argument("--child-onnx2torch", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_onnx2torch:
        return _child(args)

    local_o2t = not args.onnx2torch_python and onnx2torch_available()
    backends = ["onnxruntime", "modelport"] + (["onnx2torch"] if local_o2t else [])
    node_total, node_pass = 0, 0
    for group in args.groups.split(","):
        t0 = time.time()
        cases, missing = bs.load_cases(group, args.filter)
        outcomes = bs.run_suite(cases, tuple(backends), args.jobs, args.timeout)
        shown = list(backends)
        note = ""
        if args.onnx2torch_python:
            o2t, note = _onnx2torch_outcomes(args.onnx2torch_python, group, args)
            if o2t is not None:
                outcomes += o2t
                shown.append("onnx2torch")
        by = collections.defaultdict(dict)
        for o in outcomes:
            by[o.backend][o.case] = o
        n = len(cases)
        print(f"\n== {group}: {n} cases ({time.time() - t0:.0f}s)"
              + (f", {len(missing)} missing from the onnx wheel: {', '.join(missing[:8])}"
                 f"{' …' if len(missing) > 8 else ''}" if missing else ""))
        print(f"{'backend':<14}{'pass':>6}{'fail':>6}{'unsup':>7}{'error':>7}{'timeout':>9}")
        for b in bs.BACKENDS:
            if b not in shown:
                print(f"{b:<14}{'n/a':>6}" + (f"  ({note})" if b == "onnx2torch" and note else ""))
                continue
            c = collections.Counter(o.status for o in by[b].values())
            print(f"{b:<14}{c['pass']:>6}{c['fail']:>6}{c['unsupported']:>7}{c['error']:>7}{c['timeout']:>9}")
        cats = collections.defaultdict(list)
        for o in by["modelport"].values():
            if o.status != "pass":
                cats[(o.status, _category(o.reason))].append(o.case)
        if cats:
            print(f"-- modelport, not passing ({sum(len(v) for v in cats.values())}):")
            for (status, reason), names in sorted(cats.items(), key=lambda kv: -len(kv[1])):
                ex = ", ".join(sorted(names)[:3])
                print(f"  {len(names):>4}  {status:<11} {reason}  [{ex}{' …' if len(names) > 3 else ''}]")
        if args.list_failures:
            for o in sorted(by["modelport"].values(), key=lambda o: o.case):
                if o.status != "pass":
                    print(f"FAIL {group} {o.case} {o.status}: {o.reason}")
        if group == "node":
            node_total = n
            node_pass = sum(o.status == "pass" for o in by["modelport"].values())
    sys.stdout.flush()
    print(f"modelport: {node_pass}/{node_total} node cases pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
