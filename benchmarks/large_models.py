"""Large models (issue 11): time and peak RSS of every command on ONNX models above 2 GiB.

Run (writes several GiB under --dir; about 15 minutes for the 2 GiB model, more for the others; run
it alone, with nice, on a machine with at least 3x the model's size free in memory):

    nice -n 10 .venv/bin/python benchmarks/large_models.py [--models mm2g,mm4g,llama] [--dir /tmp/large-models]
        [--keep] [--reuse] [--json] [--commands LABELS]

Models:
    mm2g   eight 8192x8192 float32 MatMuls (each followed by Tanh): 2 GiB of weights, written as ONNX
           external data straight from numpy blocks (nothing held whole)
    mm4g   sixteen of them: 4 GiB
    llama  a 1.1B-parameter Llama (transformers LlamaConfig of TinyLlama-1.1B's shape: hidden 2048, 22 layers,
           32 heads, 4 KV heads, intermediate 5632, vocab 32000), random weights, exported by ``modelport convert``
           (torch.onnx) with external data: 4.4 GB; then every command, static int8 calibrated on random token
           ids, and the way back: the generated torch directory exported to ONNX again

Each command runs as a child process of this script (``modelport ...``); its peak resident set size is
the child's own ``ru_maxrss`` from ``os.wait4``. The bounds of issue 11: inspect/check <= 0.25x the weight
bytes; convert/compress/adapt <= 1.5x. One command is refused on purpose (exit 3, listed as such): --to tflite
above 2 GiB of weights (a FlatBuffer cannot hold them). Static int8 on the MatMul chains calibrates on
``calib.npz`` (4 random rows, written beside the model; 4 rows of 16 random token ids for the Llama) with
onnxruntime's calibrator reading the weights from their files. ``--commands inspect,compress-int4,...`` runs a subset
(the labels of the table, spaces as dashes, e.g. ``compress-fp16``, ``convert-openvino``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELPORT = [sys.executable, "-c", "import sys; from modelport.cli.app import main; sys.exit(main(sys.argv[1:]))"]
BOUNDS = {"inspect": 0.25, "check": 0.25, "convert": 1.5, "compress": 1.5, "adapt": 1.5, "verify": 1.5}


def matmul_chain(path: Path, n: int = 8192, layers: int = 8) -> int:
    """The MatMul+Tanh chain with external data written block by block; returns the weight bytes."""
    import onnx
    from onnx import TensorProto, helper

    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    rng = np.random.default_rng(0)
    inits, nodes, off = [], [], 0
    with open(data, "wb") as f:
        for i in range(layers):
            f.writelines((rng.standard_normal((min(1024, n - r), n), dtype=np.float32) / np.float32(np.sqrt(n))).astype(np.float32).tobytes() for r in range(0, n, 1024))
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[n, n])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data.name), ("offset", str(off)), ("length", str(n * n * 4))):
                e = t.external_data.add()
                e.key, e.value = k, v
            off += n * n * 4
            inits.append(t)
            x = "x" if i == 0 else f"h{i - 1}"
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"))
            nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i}" if i < layers - 1 else "y"], name=f"tanh{i}"))
    graph = helper.make_graph(nodes, "matmul_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return off


LLAMA_PY = '''
import torch
from transformers import LlamaConfig, LlamaForCausalLM


class Llama(torch.nn.Module):
    """1.1B-parameter Llama (TinyLlama-1.1B's shape), random weights (seed 0), logits of input_ids."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                          num_key_value_heads=4, vocab_size=32000, max_position_embeddings=512, use_cache=False,
                          tie_word_embeddings=False)
        self.lm = LlamaForCausalLM(cfg).eval()

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits
'''


def run(args: list[str], log: Path) -> tuple[int, float, int]:
    """(exit code, seconds, peak RSS bytes) of ``modelport ARGS`` as a child process."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"\n$ modelport {' '.join(map(str, args))}\n".encode())
        out.flush()
        proc = subprocess.Popen([*MODELPORT, *map(str, args)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss * 1024


def weight_bytes(path: Path) -> int:
    import onnx

    from modelport.formats import onnx_data

    return onnx_data.weight_bytes(onnx.load(str(path), load_external_data=False))


# commands refused on purpose above 2 GiB (exit 3 expected): shown as "refused", not as failures
REFUSED = {"convert tflite"}


def commands(name: str, src: Path, work: Path) -> list[tuple[str, list]]:
    """(label, argv) of every command run on a model; the label names the row of the table."""
    out = [
        ("inspect", ["inspect", src, "--json"]),
        ("check", ["check", src, "--target", "onnxruntime-cpu", "--json"]),
        ("convert torch", ["convert", src, "--to", "torch", "-o", work / f"{name}_torch", "--json"]),
        ("convert openvino", ["convert", src, "--to", "openvino", "-o", work / f"{name}_ov" / f"{name}.xml", "--json"]),
        ("convert tflite", ["convert", src, "--to", "tflite", "-o", work / f"{name}.tflite", "--json"]),
        ("compress dynamic", ["compress", src, "--quantize", "dynamic", "-o", work / f"{name}.int8.onnx", "--runs", "3",
                              "--json"]),
        ("compress int4", ["compress", src, "--quantize", "int4", "-o", work / f"{name}.int4.onnx", "--runs", "3", "--json"]),
        ("compress fp16", ["compress", src, "--quantize", "fp16", "-o", work / f"{name}.fp16.onnx", "--runs", "3", "--json"]),
        ("compress prune 0.5", ["compress", src, "--prune", "0.5", "-o", work / f"{name}.pruned50.onnx", "--runs", "0",
                                "--json"]),
        ("compress prune 0.5 global", ["compress", src, "--prune", "0.5", "--prune-scope", "global", "-o",
                                       work / f"{name}.pruned50g.onnx", "--runs", "0", "--json"]),
        ("adapt", ["adapt", src, "--opset", "13", "-o", work / f"{name}.opset13.onnx", "--json"]),
        ("verify", ["verify", src, work / f"{name}.opset13.onnx", "--json"]),
    ]
    if name.startswith("mm") or name == "llama":  # static int8 on calib.npz (token ids for the Llama)
        out.insert(-2, ("compress static", ["compress", src, "--quantize", "static", "--calibration",
                                            work / "calib.npz", "-o", work / f"{name}.static.onnx", "--runs", "3",
                                            "--json"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mm2g,mm4g,llama")
    ap.add_argument("--dir", default="/tmp/large-models/bench")
    ap.add_argument("--keep", action="store_true", help="keep the models and outputs (default: removed at the end)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="keep a model already built under --dir (from a --keep run) instead of building it again")
    ap.add_argument("--commands", default="", help="comma-separated labels to run (default: all), e.g. compress-int4")
    args = ap.parse_args()
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    log = base / "commands.log"
    rows = []
    only = {c.strip().replace("-", " ") for c in args.commands.split(",") if c.strip()}

    def record(model: str, label: str, argv: list, weights: int) -> int:
        kind = label.split()[0]
        rc, secs, rss = run(argv, log)
        bound = BOUNDS.get(kind)
        ratio = rss / weights
        refused = label in REFUSED
        within = bool((rc == 3 if refused else rc == 0) and bound is not None and ratio <= bound)
        rows.append({"model": model, "command": label, "exit": rc, "seconds": round(secs, 1), "peak_rss_gb": round(rss / 1e9, 2),
                     "rss_per_weight_byte": round(ratio, 2), "bound": bound, "refused_on_purpose": refused,
                     "within": within})
        note = " refused on purpose" if refused and rc == 3 else ""
        print(f"{model:6} {label:32} exit {rc}  {secs:7.1f} s  {rss / 1e9:6.2f} GB  {ratio:5.2f}x  (bound {bound}x)"
              f"{'' if within else '  OUT OF BOUND OR FAILED'}{note}", flush=True)
        return rc

    try:
        for model in args.models.split(","):
            work = base / model
            src = work / f"{model}.onnx"
            reuse = args.reuse and src.is_file()
            if not reuse:
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
            if reuse:
                print(f"{model}: reusing {src}", flush=True)
            elif model in ("mm2g", "mm4g"):
                matmul_chain(src, layers=8 if model == "mm2g" else 16)
            elif model == "llama":
                (work / "llama.py").write_text(LLAMA_PY)
                rc, secs, rss = run(["convert", f"{work / 'llama.py'}:Llama", "--to", "onnx", "-o", src,
                                     "--input", "input_ids=1x16:int64", "--json"], log)
                ratio = rss / weight_bytes(src) if rc == 0 else None
                within = rc == 0 and ratio <= BOUNDS["convert"]
                print(f"llama  convert module file -> onnx (export)    exit {rc}  {secs:7.1f} s  {rss / 1e9:6.2f} GB"
                      + (f"  {ratio:5.2f}x  (bound {BOUNDS['convert']}x)" if ratio else "")
                      + ("" if within else "  OUT OF BOUND OR FAILED"), flush=True)
                rows.append({"model": "llama", "command": "convert module file -> onnx", "exit": rc, "seconds": round(secs, 1),
                             "peak_rss_gb": round(rss / 1e9, 2), "rss_per_weight_byte": round(ratio, 2) if ratio else None,
                             "bound": BOUNDS["convert"], "refused_on_purpose": False, "within": within})
                if rc != 0:
                    continue
            else:
                raise SystemExit(f"unknown model {model!r}")
            weights = weight_bytes(src)
            print(f"{model}: {weights / 2**30:.2f} GiB of weights", flush=True)
            rng = np.random.default_rng(0)
            np.savez(work / "calib.npz", **({"input_ids": rng.integers(0, 32000, (4, 16), dtype=np.int64)} if model == "llama"
                                            else {"x": rng.standard_normal((4, 8192)).astype(np.float32)}))
            for label, argv in commands(model, src, work):
                if not only or label in only:
                    record(model, label, argv, weights)
            if model == "llama" and (not only or "convert torch" in only):  # the way back: the generated torch directory re-exported to ONNX
                record(model, "convert torch dir -> onnx", ["convert", work / "llama_torch", "--to", "onnx", "-o",
                                                             work / "llama_back.onnx", "--json"], weights)
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if args.json:
            print(json.dumps(rows, indent=1))
        (base / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
