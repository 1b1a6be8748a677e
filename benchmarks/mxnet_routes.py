"""Apache MXNet routes x models: max error against MXNet itself and conversion time.

    .venv/bin/python benchmarks/mxnet_routes.py [--targets onnx,torch,openvino,tflite]

Installs the `mxnet` toolchain if needed (into $MODELPORT_CACHE or ~/.cache/modelport), builds
the models of tests/mxnet_zoo.py (gluon model-zoo ResNet-18 v1 and MobileNetV2 0.25, a
bidirectional-LSTM tagger, a symbol-API LeNet checkpoint) in a temp dir, and converts each to
every target with verification on. Prints a Markdown table; the times are convert's own (one
process, so the toolchain's driver starts once, in the first row).
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
MODELS = (("resnet18_v1 (gluon model zoo)", "resnet18_v1", "data:1x3x64x64:float32"),
          ("mobilenetv2_0.25 (gluon model zoo)", "mobilenetv2_0.25", "data:1x3x64x64:float32"),
          ("BiLSTM tagger (gluon.rnn)", "textrnn", "data:1x6x5:float32"),
          ("LeNet (Module checkpoint)", "lenet", "data:1x1x28x28:float32"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="onnx,torch,openvino,tflite")
    args = ap.parse_args()
    from modelport import toolchains
    from modelport.convert.registry import ConvertOptions
    from modelport.convert.run import convert
    from modelport.inputs import parse_input_spec

    t = time.perf_counter()
    report = toolchains.install("mxnet")
    print(f"toolchain: {'built' if report.built else 'already installed'} in {time.perf_counter() - t:.1f} s")
    env = toolchains.require("mxnet")
    tmp = Path(tempfile.mkdtemp(prefix="mxnet-routes-"))
    subprocess.run([str(env.python), "-I", str(ROOT / "tests" / "mxnet_zoo.py"), str(tmp)],
                   env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
                   check=True, capture_output=True)
    print("\n| model | target | route | max abs err | max rel err | convert + verify (s) |")
    print("|---|---|---|---|---|---|")
    for label, name, spec in MODELS:
        options = ConvertOptions(inputs=(parse_input_spec(spec),))
        for target in args.targets.split(","):
            out = tmp / f"{name}_{target}"
            if target == "onnx":
                out = out.with_suffix(".onnx")
            try:
                r = convert(str(tmp / f"{name}-symbol.json"), target, out, options=options)
            except Exception as exc:  # a row that fails says why
                print(f"| {label} | {target} | - | failed: {str(exc)[:80]} | | |", flush=True)
                continue
            outs = [o for run in r.parity.runs for o in run.outputs]
            abs_err = max(o.max_abs for o in outs)
            rel_err = max(o.max_rel for o in outs)
            print(f"| {label} | {target} | {' -> '.join(r.route)} | {abs_err:.2e} | {rel_err:.2e} | {r.seconds:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
