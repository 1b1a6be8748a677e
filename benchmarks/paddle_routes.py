"""PaddlePaddle routes x models: max error against Paddle itself and conversion time.

    .venv/bin/python benchmarks/paddle_routes.py [--targets onnx,torch,openvino]

Installs the `paddle` toolchain if needed (into $MODELPORT_CACHE or ~/.cache/modelport), builds
the models of tests/paddle_zoo.py (ResNet-18 as a Paddle 3 .json program, MobileNetV3-small as a
legacy .pdmodel, the OCR CRNN head as .json and as a paddle.nn.Layer file) in a temp dir, and
converts each to every target with verification on. Prints a Markdown table; the times are
convert's own (one process, so the toolchain's driver starts once, in the first row).
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
    ap.add_argument("--targets", default="onnx,torch,openvino")
    args = ap.parse_args()
    from modelport import toolchains
    from modelport.convert.registry import ConvertOptions
    from modelport.convert.run import convert
    from modelport.inputs import parse_input_spec

    t = time.perf_counter()
    report = toolchains.install("paddle")
    print(f"toolchain: {'built' if report.built else 'already installed'} in {time.perf_counter() - t:.1f} s")
    env = toolchains.require("paddle")
    tmp = Path(tempfile.mkdtemp(prefix="paddle-routes-"))
    for kind, extra in (("pir", {}), ("legacy", {"FLAGS_enable_pir_api": "0"})):
        subprocess.run([str(env.python), "-I", str(ROOT / "tests" / "paddle_zoo.py"), str(tmp), kind],
                       env={**os.environ, **extra, "GLOG_minloglevel": "2"}, check=True, capture_output=True)
    layer = ConvertOptions(weights=str(tmp / "ocr.pdparams"), inputs=(parse_input_spec("x:1x3x32x128:float32"),))
    models = [("resnet18 (.json)", str(tmp / "resnet18.json"), ConvertOptions()),
              ("mobilenet_v3_small (.pdmodel)", str(tmp / "mobilenet_v3_small.pdmodel"), ConvertOptions()),
              ("OCR CRNN + BiLSTM (.json)", str(tmp / "ocr.json"), ConvertOptions()),
              ("OCR CRNN + BiLSTM (nn.Layer file)", f"{tmp / 'ocr_head.py'}:CRNNHead", layer)]
    print("\n| model | target | route | max abs err | max rel err | convert + verify (s) |")
    print("|---|---|---|---|---|---|")
    for label, src, options in models:
        for target in args.targets.split(","):
            out = tmp / f"{abs(hash(src))}_{target}"
            if target == "onnx":
                out = out.with_suffix(".onnx")
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
