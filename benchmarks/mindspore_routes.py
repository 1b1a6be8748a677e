"""MindSpore routes x models: max error against MindSpore itself and conversion time.

    .venv/bin/python benchmarks/mindspore_routes.py [--targets onnx,torch,tflite,openvino]

Installs the `mindspore` toolchain if needed (into $MODELPORT_CACHE or ~/.cache/modelport), builds
the models of tests/mindspore_zoo.py (LeNet-5 and a small ResNet, each as a mindspore.nn.Cell file +
.ckpt and as MindIR) in a temp dir, and converts each to every target with verification on (the
result is compared with MindSpore's own forward: PyNative for the Cell, nn.GraphCell for the
MindIR). Prints a Markdown table; the times are convert's own (one process, so the toolchain's
driver starts once, in the first row).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="onnx,torch,tflite,openvino")
    args = ap.parse_args()
    from modelport import toolchains
    from modelport.convert.registry import ConvertOptions
    from modelport.convert.run import convert
    from modelport.inputs import parse_input_spec

    t = time.perf_counter()
    report = toolchains.install("mindspore")
    print(f"toolchain: {'built' if report.built else 'already installed'} in {time.perf_counter() - t:.1f} s")
    env = toolchains.require("mindspore")
    tmp = Path(tempfile.mkdtemp(prefix="mindspore-routes-"))
    subprocess.run([str(env.python), "-I", str(ROOT / "tests" / "mindspore_zoo.py"), str(tmp)], cwd=tmp,
                   env={**os.environ, "GLOG_v": "3"}, check=True, capture_output=True)
    models = []
    for name, cls, chw in (("lenet", "LeNet5", "1x32x32"), ("resnet", "SmallResNet", "3x32x32")):
        cell = ConvertOptions(weights=str(tmp / f"{name}.ckpt"), inputs=(parse_input_spec(f"x:1x{chw}:float32"),))
        models += [(f"{cls} (Cell + .ckpt)", f"{tmp / f'{name}_cell.py'}:{cls}", cell),
                   (f"{cls} (MindIR)", str(tmp / f"{name}.mindir"), ConvertOptions())]
    print("\n| model | target | route | max abs err | max rel err | convert + verify (s) |")
    print("|---|---|---|---|---|---|")
    for label, src, options in models:
        for target in args.targets.split(","):
            out = tmp / f"{abs(hash(src))}_{target}"
            if target in ("onnx", "tflite"):
                out = out.with_suffix("." + target)
            try:
                r = convert(src, target, out, options=options)
            except Exception as exc:  # a row that fails says why
                print(f"| {label} | {target} | - | failed: {str(exc)[:80]} | | |")
                continue
            outs = [o for run in r.parity.runs for o in run.outputs]
            abs_err = max(o.max_abs for o in outs)
            rel_err = max(o.max_rel for o in outs)
            print(f"| {label} | {target} | {' -> '.join(r.route)} | {abs_err:.2e} | {rel_err:.2e} | {r.seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
