"""Compression figures of issue 4: before/after tables from ``modelport.compress.run``.

Run (about two minutes on a laptop CPU; nothing is downloaded):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compression.py [--runs 50] [--threads N]
        [--only cnn-static,bert-dynamic,...] [--json]

Models:
    digits CNN   PyTorch Conv(1->32)-Conv(32->64)-MaxPool-Linear(1024->96)-Linear(96->10), trained for
                 seconds on scikit-learn's digits (1347 train / 450 test), exported with
                 torch.onnx (dynamo); calibration: 256 training images; eval: the test split
    outlier MLP  Linear(64->64)-Linear(64->10) on raw pixels, with one fc1 weight column (a
                 pixel that is 0 in every image) set to 1000x the largest weight: the float
                 model is unchanged, plain int8 collapses, accuracy control keeps fc1 in float
    tiny ResNet  PyTorch ResNet-style CNN, random weights: stem Conv(3->16), three basic blocks with
                 residual adds (16 -> 32 with a strided 1x1 downsample, a 4-group 3x3 conv, a
                 depthwise 3x3 conv), global average pooling, Linear(32->10); 3x16x16 inputs
    tiny BERT    transformers BertModel (hidden 256, 4 layers, 4 heads, intermediate 512,
                 vocab 1000), random weights, sequence 16 for latency

Runs:
    cnn-static      int8 static QDQ (minmax, per-channel), budget 1 point
    cnn-fp16        fp16, float32 IO kept, parity at fp16 tolerance
    cnn-prune50     50% unstructured magnitude pruning per layer
    cnn-prune-control  80% unstructured with a 1-point budget: accuracy control prunes the most
                    harmful layers less (fraction halved, quartered, then dense); per-layer fractions
    cnn-structured-control  50% structured with a 2-point budget: the most harmful layers pruned
                    less, as for unstructured pruning (trials scored on the PyTorch module)
    resnet-structured  50% structured pruning of the tiny ResNet (residual groups, grouped convs)
    cnn-chain       the demo chain: 50% structured pruning -> distillation (8 epochs, the
                    training split, T=4, alpha=0.7) -> int8 static; each step's table, then
                    teacher vs final on the test split
    mlp-control     int8 static with a 1-point budget on the outlier MLP (plain run shown too)
    bert-dynamic    int8 dynamic
    bert-int4       int4 weight-only MatMulNBits, block 32

Table columns: before, after, and after / before. Latency is the median (p50) of --runs
timed runs at batch 1 and 8, both models measured in the same run, interleaved (so
"after / before" below 1 means the compressed model is faster). Sparsity is the share of
weight values that are exactly zero. MACs per sample come from ONNX shape inference
('-' where an op is not counted, e.g. MatMulNBits, or shapes stay symbolic).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import zoo  # noqa: E402  (the test models, shared with the benchmarks)

RUNS = ("cnn-static", "cnn-fp16", "cnn-prune50", "cnn-prune-control", "cnn-structured-control", "cnn-chain",
        "resnet-structured", "mlp-control", "bert-dynamic", "bert-int4")


def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, d.target.astype(np.int64), test_size=0.25, random_state=0, stratify=d.target)


def train(module, x, y, *, epochs: int, lr: float = 3e-3):
    import torch

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            idx = perm[i:i + 128]
            loss = torch.nn.functional.cross_entropy(module(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.set_num_threads(threads)
    return module.eval()


def export(module, example, path: Path) -> str:
    import torch

    program = torch.onnx.export(module, (example,), dynamo=True, input_names=["x"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    program.save(str(path))
    return str(path)


def build_cnn(d: Path, data) -> dict:
    import torch
    from torch import nn

    xtr, xte, ytr, yte = data

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1, self.c2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
            self.fc1, self.fc2 = nn.Linear(64 * 4 * 4, 96), nn.Linear(96, 10)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 2)
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    model = train(DigitsCNN(), xtr, ytr, epochs=6)
    np.savez(d / "cnn_calib.npz", x=xtr[:256])
    np.savez(d / "cnn_eval.npz", x=xte, labels=yte)
    np.savez(d / "cnn_train.npz", x=xtr, labels=ytr)
    return {"model": export(model, torch.from_numpy(xtr[:2]), d / "cnn.onnx"), "train": str(d / "cnn_train.npz"),
            "calib": str(d / "cnn_calib.npz"), "eval": str(d / "cnn_eval.npz")}


def build_mlp(d: Path, data) -> dict:
    import torch
    from torch import nn

    xtr, xte, ytr, yte = data
    ftr, fte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    dead = np.flatnonzero((ftr.max(0) == 0) & (fte.max(0) == 0))
    torch.manual_seed(0)
    model = train(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), ftr, ytr, epochs=25)
    with torch.no_grad():
        model[0].weight[:, dead[0]] = 1000.0 * model[0].weight.abs().max()
    np.savez(d / "mlp_calib.npz", x=ftr[:256])
    np.savez(d / "mlp_eval.npz", x=fte, labels=yte)
    return {"model": export(model, torch.from_numpy(ftr[:2]), d / "mlp.onnx"),
            "calib": str(d / "mlp_calib.npz"), "eval": str(d / "mlp_eval.npz")}


def build_resnet(d: Path) -> str:
    import torch

    model = zoo.tiny_resnet()
    return export(model, torch.randn(2, 3, 16, 16), d / "resnet.onnx")


def build_bert(d: Path) -> str:
    return zoo.write_bert_encoder_onnx(d / "bert.onnx")


def print_report(title: str, report, console) -> None:
    from rich.table import Table

    from modelport.compress.report import comparison_rows

    table = Table(title=title)
    for col in ("", "before", "after", "after / before"):
        table.add_column(col, justify="right" if col else "left")
    for row in comparison_rows(report):
        table.add_row(*row)
    console.print(table)
    for step in report.steps:
        console.print(f"  step: {step}")
    if report.kept_float:
        console.print(f"  kept in float: {', '.join(report.kept_float)}")
    if report.layers and report.reduced_fractions:
        console.print("  per-layer fractions: " + ", ".join(
            f"{layer.node} {layer.fraction:g} ({100 * layer.sparsity_after:.1f}% zeros)" for layer in report.layers))
    if report.structured_layers:
        console.print("  widths: " + ", ".join(
            f"{layer.module} {layer.width_before}->{layer.width_after}"
            + (f" ({layer.fraction:g})" if layer.fraction is not None and report.reduced_fractions else "")
            for layer in report.structured_layers))
    if report.parity is not None and report.parity_enforced:
        console.print(f"  parity (fp16 tolerance): {report.parity.summary()}")
    console.print(f"  {report.seconds:.1f} s\n")


def chain(cnn: dict, d: Path, runs: int, console) -> dict:
    """Teacher -> 50% structured -> distilled -> int8 static; tables per step, then teacher vs final."""
    from rich.table import Table

    from modelport.compress.run import compress
    from modelport.compress.distill import distill
    from modelport.compress.report import comparison_rows

    pruned = compress(cnn["model"], d / "chain.pruned.onnx", prune=0.5, structured=True, eval_data=cnn["eval"],
                      bench_runs=runs)
    print_report("chain 1/3: 50% structured pruning (no fine-tuning yet)", pruned, console)
    distilled = distill(cnn["model"], pruned.out, d / "chain.student.onnx", data=cnn["train"], epochs=8, threads=1,
                        bench_runs=runs)
    console.print(f"chain 2/3: distillation, best epoch {distilled.best_epoch}: " + ", ".join(
        f"{r.epoch}: {100 * r.metric:.1f}%" for r in distilled.history) + " (held-out share of the training split)")
    table = Table(title="chain 2/3: teacher vs distilled student (float); top-1 on the held-out share")
    for col in ("", "teacher", "student", "student / teacher"):
        table.add_column(col, justify="right" if col else "left")
    for row in comparison_rows(distilled):
        table.add_row(*row)
    console.print(table)
    if distilled.torch_out:
        console.print(f"  student also written as a torch directory: {distilled.torch_parity.summary()}")
    final = compress(distilled.out, d / "chain.student.int8.onnx", quantize="static", calibration=cnn["calib"],
                     eval_data=cnn["eval"], max_drop=0.01, bench_runs=runs)
    print_report("chain 3/3: int8 static on the distilled student", final, console)
    from modelport.bench.run import bench

    from modelport.compress.accuracy import load_eval_data, top1
    from modelport.inputs import load_npz

    models = [cnn["model"], distilled.out, final.out]
    lat = bench(models, batches=(1, 8), runs=runs)
    p50 = {(row.model, row.batch): row.p50_ms for row in lat.rows}
    data = load_eval_data(load_npz(cnn["eval"]), pruned.artifact.signature.inputs)
    student_top1 = top1(distilled.out, data)
    table = Table(title="chain: teacher vs pruned+distilled student (float) vs + int8 static; test split, same run")
    for col in ("", "teacher", "student", "student / teacher", "student int8", "int8 / teacher"):
        table.add_column(col, justify="right" if col else "left")
    t, st, f = pruned.before, distilled.after, final.after
    for name, a, b, c in [("file size", t.file_bytes, st.file_bytes, f.file_bytes), ("parameters", t.params, st.params, f.params),
                          ("MACs / sample", t.macs, st.macs, f.macs)]:
        table.add_row(name, f"{a:,}", f"{b:,}", f"{b / a:.2f}x", f"{c:,}", f"{c / a:.2f}x")
    for batch in (1, 8):
        a, b, c = (p50.get((m, batch)) for m in models)
        table.add_row(f"latency p50, batch {batch}", f"{a:.3f} ms", f"{b:.3f} ms", f"{b / a:.2f}x (speed-up {a / b:.2f}x)",
                      f"{c:.3f} ms", f"{c / a:.2f}x (speed-up {a / c:.2f}x)")
    table.add_row("top-1", f"{100 * t.metric:.1f}%", f"{100 * student_top1:.1f}%", f"{100 * (student_top1 - t.metric):+.2f} pts",
                  f"{100 * f.metric:.1f}%", f"{100 * (f.metric - t.metric):+.2f} pts")
    console.print(table)
    console.print("")
    return {"pruned": pruned, "distilled": distilled, "int8": final, "latency": lat}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--only", default=",".join(RUNS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    only = [r for r in args.only.split(",") if r]
    from rich.console import Console

    from modelport.artifact import to_jsonable
    from modelport.compress.run import compress

    console = Console(stderr=args.json, width=140)
    console.print(f"reproduce: HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compression.py --runs {args.runs} --only {','.join(only)}\n")
    results = {}
    with tempfile.TemporaryDirectory(prefix="modelport-bench-compress-") as tmp:
        d = Path(tmp)
        data = digits()
        t = time.perf_counter()
        cnn = build_cnn(d, data) if any(r.startswith("cnn") for r in only) else None
        mlp = build_mlp(d, data) if "mlp-control" in only else None
        bert = build_bert(d) if any(r.startswith("bert") for r in only) else None
        resnet = build_resnet(d) if "resnet-structured" in only else None
        console.print(f"models built in {time.perf_counter() - t:.0f} s\n")
        runs = {
            "cnn-static": lambda: compress(cnn["model"], d / "cnn.int8.onnx", quantize="static", calibration=cnn["calib"],
                                           eval_data=cnn["eval"], max_drop=0.01, bench_runs=args.runs),
            "cnn-fp16": lambda: compress(cnn["model"], d / "cnn.fp16.onnx", quantize="fp16", eval_data=cnn["eval"],
                                         bench_runs=args.runs),
            "cnn-prune50": lambda: compress(cnn["model"], d / "cnn.pruned50.onnx", prune=0.5, eval_data=cnn["eval"],
                                            bench_runs=args.runs),
            "cnn-prune-control": lambda: compress(cnn["model"], d / "cnn.pruned80.onnx", prune=0.8, eval_data=cnn["eval"],
                                                  max_drop=0.01, bench_runs=args.runs),
            "cnn-structured-control": lambda: compress(cnn["model"], d / "cnn.s.onnx", prune=0.5, structured=True,
                                                       eval_data=cnn["eval"], max_drop=0.02, bench_runs=args.runs),
            "cnn-chain": lambda: chain(cnn, d, args.runs, console),
            "resnet-structured": lambda: compress(resnet, d / "resnet.s50.onnx", prune=0.5, structured=True,
                                                  bench_runs=args.runs),
            "mlp-plain": lambda: compress(mlp["model"], d / "mlp.plain.onnx", quantize="static", calibration=mlp["calib"],
                                          eval_data=mlp["eval"], bench_runs=args.runs),
            "mlp-control": lambda: compress(mlp["model"], d / "mlp.int8.onnx", quantize="static", calibration=mlp["calib"],
                                            eval_data=mlp["eval"], max_drop=0.01, bench_runs=args.runs),
            "bert-dynamic": lambda: compress(bert, d / "bert.int8.onnx", quantize="dynamic", bench_runs=args.runs),
            "bert-int4": lambda: compress(bert, d / "bert.int4.onnx", quantize="int4", bench_runs=args.runs),
        }
        order = [r for r in ("cnn-static", "cnn-fp16", "cnn-prune50", "cnn-prune-control", "cnn-structured-control",
                             "cnn-chain", "resnet-structured", "mlp-plain", "mlp-control", "bert-dynamic", "bert-int4")
                 if r in only or (r == "mlp-plain" and "mlp-control" in only)]
        for name in order:
            report = runs[name]()
            results[name] = report
            if name != "cnn-chain":
                print_report(name, report, console)
    if args.json:
        sys.stdout.write(json.dumps({k: to_jsonable(v) for k, v in results.items()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
