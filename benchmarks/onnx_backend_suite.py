"""ONNX backend test suite: onnxruntime vs modelport vs onnx2torch, per test group.

    python benchmarks/onnx_backend_suite.py [--jobs N] [--filter SUBSTRING] [--groups node,simple]

Prints a pass-count table per group, then modelport's failing categories with reasons;
the last line is ``modelport: N/1884 node cases pass``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from modelport.onnx2torch import backend_suite as bs  # noqa: E402


def _category(reason: str) -> str:
    r = re.sub(r"\(.*?\)", "", reason)
    r = re.sub(r"'[^']*'", "'…'", r)
    r = re.sub(r"\d+", "N", r)
    return r[:110]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--filter", default=None, help="only cases whose name contains this")
    ap.add_argument("--groups", default=",".join(bs.GROUPS))
    ap.add_argument("--timeout", type=float, default=60.0, help="per-case seconds")
    ap.add_argument("--list-failures", action="store_true", help="print every failing case")
    args = ap.parse_args(argv)

    backends = ["onnxruntime", "modelport"] + (["onnx2torch"] if bs.onnx2torch_available() else [])
    node_total, node_pass = 0, 0
    for group in args.groups.split(","):
        t0 = time.time()
        cases, missing = bs.load_cases(group, args.filter)
        outcomes = bs.run_suite(cases, tuple(backends), args.jobs, args.timeout)
        by = collections.defaultdict(dict)
        for o in outcomes:
            by[o.backend][o.case] = o
        n = len(cases)
        print(f"\n== {group}: {n} cases ({time.time() - t0:.0f}s)"
              + (f", {len(missing)} missing from the onnx wheel: {', '.join(missing[:8])}"
                 f"{' …' if len(missing) > 8 else ''}" if missing else ""))
        print(f"{'backend':<14}{'pass':>6}{'fail':>6}{'unsup':>7}{'error':>7}{'timeout':>9}")
        for b in bs.BACKENDS:
            if b not in backends:
                print(f"{b:<14}{'n/a':>6}")
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
