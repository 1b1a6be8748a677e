"""ONNX -> PyTorch performance: the generated module's latency against the original PyTorch
module (and the onnx2torch package's module), and the conversion time of a ~25M-parameter model.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/onnx2torch_perf.py [--runs 50] [--warmup 5]
        [--threads 1] [--onnx2torch-python /tmp/o2t/bin/python] [--resnet50]

Latency: the zoo CNN (3x32x32) and tiny BERT (2 layers, hidden 64, sequence 32) are
exported with torch.onnx (dynamo, dynamic batch) and converted with modelport; the
original module and the generated one run interleaved in this process (the order
alternates every round) and the table prints medians in ms at batch 1 and 8, and their
ratio (generated / original; the target is <= 1.10).

onnx2torch (the PyPI package) is never a dependency: it is installed in a separate
environment and run there in a subprocess (``--onnx2torch-python PATH``); without it the
column prints n/a. That process has no transformers, so it cannot run the original
module; it runs onnx2torch's module interleaved with modelport's generated model.py
(which imports only torch), and its ratio to the original is bridged through that:
``o2t/original = (o2t/generated there) * (generated/original here)``. onnx2torch accepts
opsets <= 16 only, so it is offered the dynamo exporter's opset-18 file, a copy
down-converted to opset 16 with onnx.version_converter, and the TorchScript exporter's
opset-14 file, in that order; the first it converts is timed, and a model it cannot
convert prints why.

Conversion: a BERT config with hidden 512, 6 layers, 8 heads, intermediate 1024 and the
30522-token vocabulary (~28M parameters), exported with dynamo; the time is
``onnx2torch.convert(path, out_dir)`` from the .onnx file on disk to model.py +
weights.safetensors written (the target is < 5 s), and the load time of the result.

``--resnet50``: Keras ResNet50 (weights=None, 32x32x3) -> ONNX -> torch through the
pipeline, verified at two batch sizes (it takes over a minute through tf2onnx, so it
lives here rather than in the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
SEQ = 32
BATCHES = (1, 8)


# --------------------------------------------------------------------------- timing (shared)

def interleaved(fns: dict, runs: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each no-argument callable, run round-robin (order alternating)."""
    import torch

    names = list(fns)
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                fns[n]()
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(runs):
            for n in (names if r % 2 == 0 else names[::-1]):
                t = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def feeds_for(kind: str, batch: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "cnn":
        return [rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)]
    ids = rng.integers(0, 1000, (batch, SEQ)).astype(np.int64)
    mask = np.ones((batch, SEQ), np.int64)
    mask[0, SEQ - 4:] = 0
    return [ids, mask]


def load_generated(out_dir: str, state_pt: str | None = None):
    """model.py + its weights as an nn.Module, without modelport (as a user would).

    ``state_pt``: the same state dict saved with torch.save, for an environment without
    safetensors (the onnx2torch one); read with ``weights_only=True``.
    """
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location(f"generated_{Path(out_dir).name}", Path(out_dir) / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.Model()
    if state_pt:
        state = torch.load(state_pt, weights_only=True)
    else:
        import safetensors.torch

        state = safetensors.torch.load_file(str(Path(out_dir) / "weights.safetensors"))
    net.load_state_dict(state)
    return net.eval()


# --------------------------------------------------------------------------- onnx2torch side (child)

def _onnx2torch_module(onnx_path: str, legacy_path: str | None):
    """onnx2torch's module for the dynamo file, a copy of it down-converted to opset 16, or the
    TorchScript exporter's file; (module or None, what was used or why each attempt failed)."""
    import onnx
    import onnx2torch

    model = onnx.load(onnx_path)
    attempts = [("dynamo opset 18 file", lambda: model),
                ("dynamo file down-converted to opset 16", lambda: onnx.version_converter.convert_version(model, 16))]
    if legacy_path:
        attempts.append(("TorchScript exporter's opset 14 file", lambda: onnx.load(legacy_path)))
    errors = []
    for what, get in attempts:
        try:
            t = time.perf_counter()
            net = onnx2torch.convert(get()).eval()
            return net, what, time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001  (reported, not raised)
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            errors.append(f"{what}: {type(exc).__name__}: {first}")
    return None, "; ".join(errors), None


def child_main(job: dict) -> dict:
    """Runs in the onnx2torch environment: latency of onnx2torch's module vs model.py, conversion time."""
    import numpy as np
    import torch

    sys.modules.setdefault("torchvision", _torchvision_stub())
    torch.set_num_threads(job["threads"])
    out: dict = {"latency": {}, "convert": None}
    for kind, item in job["latency"].items():
        net, note, _ = _onnx2torch_module(item["onnx"], item.get("legacy"))
        if net is None:
            out["latency"][kind] = {"error": note}
            continue
        gen = load_generated(item["generated"], item["state_pt"])
        res = {"note": note}
        for b in job["batches"]:
            xs = [torch.from_numpy(a) for a in feeds_for(kind, b)]
            try:
                with torch.inference_mode():
                    ref, got = gen(*xs), net(*xs)
                got = got[0] if isinstance(got, (tuple, list)) else got
                err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
            except Exception as exc:  # noqa: BLE001  (a module that fails to run is a result)
                first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
                res[str(b)] = {"error": f"batch {b}: {type(exc).__name__}: {first}"}
                continue
            med = interleaved({"o2t": lambda: net(*xs), "gen": lambda: gen(*xs)}, job["runs"], job["warmup"])
            res[str(b)] = {"o2t": med["o2t"], "gen": med["gen"], "rel_err": err}
        out["latency"][kind] = res
    if job.get("big"):
        net, note, seconds = _onnx2torch_module(job["big"], job.get("big_legacy"))
        out["convert"] = {"seconds": seconds, "note": note} if net is not None else {"error": note}
    return out


def _torchvision_stub():
    """onnx2torch imports torchvision at import time (only its NMS and RoiAlign converters use
    it); the comparison environment has no torchvision, so those two converters fail instead."""
    import types

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")

    def _missing(*_a, **_k):
        raise RuntimeError("torchvision is not installed in the onnx2torch comparison environment")

    ops.roi_align = ops.nms = ops.box_convert = _missing
    tv.ops = ops
    sys.modules["torchvision.ops"] = ops
    return tv


def run_child(python: str, job: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(job, fh)
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run([python, __file__, "--child", fh.name], capture_output=True, text=True, env=env)
    os.unlink(fh.name)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": f"onnx2torch subprocess exited {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- modelport side

def export(module, args, dynamic_shapes, names, path: Path) -> str:
    import torch

    program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                input_names=names, opset_version=18)
    program.save(str(path))
    return str(path)


def export_legacy(module, args, names, dynamic_axes, path: Path) -> str | None:
    """The TorchScript exporter's file at opset 14 (what onnx2torch users feed it), or None."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=14, input_names=names,
                              dynamic_axes=dynamic_axes)
    except Exception:  # noqa: BLE001  (only a comparison input)
        return None
    return str(path)


def build_models(work: Path) -> dict:
    """Original modules, their ONNX exports (dynamo) and TorchScript-exporter files: cnn and bert."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import zoo

    cnn_src = zoo.write_cnn(work / "cnn_src")
    cnn = zoo.cnn_eval(cnn_src)
    bert = zoo.load_module(zoo.write_bert(work / "bert_src").spec).eval()
    b, s = torch.export.Dim("batch", max=64), torch.export.Dim("sequence", max=64)
    ids = torch.randint(0, 1000, (2, 16))
    x = torch.randn(2, 3, 32, 32)
    text = ["input_ids", "attention_mask"]
    return {
        "cnn": (cnn, export(cnn, (x,), ({0: b},), ["x"], work / "cnn.onnx"),
                export_legacy(cnn, (x,), ["x"], {"x": {0: "batch"}}, work / "cnn_ts.onnx")),
        "bert": (bert, export(bert, (ids, torch.ones_like(ids)), ({0: b, 1: s}, {0: b, 1: s}), text, work / "bert.onnx"),
                 export_legacy(bert, (ids, torch.ones_like(ids)), text, {n: {0: "batch", 1: "sequence"} for n in text},
                               work / "bert_ts.onnx")),
    }


def big_bert(work: Path) -> tuple[str, str | None, int]:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                                  intermediate_size=1024, vocab_size=30522, max_position_embeddings=128)
    bert = transformers.BertModel(cfg).eval()

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]

    b, s = torch.export.Dim("batch", max=64), torch.export.Dim("sequence", max=128)
    ids = torch.randint(0, 30522, (2, 16))
    text = ["input_ids", "attention_mask"]
    path = export(Hidden().eval(), (ids, torch.ones_like(ids)), ({0: b, 1: s}, {0: b, 1: s}), text,
                  work / "bert25m.onnx")
    legacy = export_legacy(Hidden().eval(), (ids, torch.ones_like(ids)), text,
                           {n: {0: "batch", 1: "sequence"} for n in text}, work / "bert25m_ts.onnx")
    return path, legacy, sum(p.numel() for p in bert.parameters())


def resnet50(work: Path) -> str:
    import keras
    import numpy as np

    import modelport as api

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10,
                                        classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial BatchNorm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.8, 1.2, n).astype("f4"), rng.normal(0, 0.1, n).astype("f4"),
                               rng.normal(0, 0.1, n).astype("f4"), rng.uniform(0.5, 2.0, n).astype("f4")])
    model.save(work / "resnet50.keras")
    t = time.perf_counter()
    report = api.convert(work / "resnet50.keras", "torch", work / "resnet50_torch")
    seconds = time.perf_counter() - t
    shapes = ", ".join("x".join(map(str, next(iter(r.input_shapes.values())))) for r in report.parity.runs)
    return (f"Keras ResNet50 (weights=None, 32x32x3) -> ONNX -> torch ({' -> '.join(report.route)}): "
            f"{seconds:.1f} s with verification; {report.parity.summary()} (inputs {shapes})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--onnx2torch-python", default=None, help="python of an environment with onnx2torch installed")
    ap.add_argument("--resnet50", action="store_true", help="also convert Keras ResNet50 through the pipeline")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(json.loads(Path(args.child).read_text()))))
        return 0

    import torch

    from modelport import to_torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="onnx2torch-perf-"))
    models = build_models(work)
    generated, rows = {}, []
    for kind, (original, onnx_path, _) in models.items():
        out = work / f"{kind}_torch"
        out.mkdir()
        to_torch.convert(onnx_path, out)
        generated[kind] = str(out)
        gen = load_generated(str(out))
        torch.save(gen.state_dict(), work / f"{kind}_state.pt")
        for b in BATCHES:
            xs = [torch.from_numpy(a) for a in feeds_for(kind, b)]
            with torch.inference_mode():
                ref, got = original(*xs), gen(*xs)
            err = float((got - ref).abs().max() / ref.abs().max())
            med = interleaved({"orig": lambda: original(*xs), "gen": lambda: gen(*xs)}, args.runs, args.warmup)
            rows.append((kind, b, med["orig"], med["gen"], err))

    big, big_legacy, n_params = big_bert(work)
    out = work / "bert25m_torch"
    out.mkdir()
    t = time.perf_counter()
    to_torch.convert(big, out)
    convert_s = time.perf_counter() - t
    t = time.perf_counter()
    to_torch.load(out)
    load_s = time.perf_counter() - t

    child = None
    if args.onnx2torch_python:
        child = run_child(args.onnx2torch_python, {
            "threads": args.threads, "runs": args.runs, "warmup": args.warmup, "batches": list(BATCHES),
            "latency": {k: {"onnx": models[k][1], "legacy": models[k][2], "generated": generated[k],
                             "state_pt": str(work / f"{k}_state.pt")} for k in models},
            "big": big, "big_legacy": big_legacy})

    print(f"\nLatency, ms (median of {args.runs} interleaved runs, {args.threads} thread(s), "
          f"torch {torch.__version__}); x = / original (onnx2torch's: measured in its own "
          "process against model.py, bridged to the original)")
    print(f"{'model':<6}{'batch':>6}{'original':>10}{'modelport':>11}{'x':>7}{'onnx2torch':>12}{'x':>7}  rel err")
    for kind, b, orig, gen, err in rows:
        o2t, ox = "n/a", ""
        if child and "failed" in child:
            o2t = "failed"
        elif child:
            c = child["latency"].get(kind, {})
            if "error" in c:
                o2t = "no conv"
            elif "error" in c.get(str(b), {}):
                o2t = "fails"
            elif str(b) in c:
                ratio = c[str(b)]["o2t"] / c[str(b)]["gen"] * (gen / orig)
                o2t, ox = f"{c[str(b)]['o2t'] * 1e3:.3f}", f"{ratio:.2f}"
        print(f"{kind:<6}{b:>6}{orig * 1e3:>10.3f}{gen * 1e3:>11.3f}{gen / orig:>7.2f}{o2t:>12}{ox:>7}  {err:.1e}")
    if child and "failed" in child:
        print(f"onnx2torch: {child['failed']}")
    elif child:
        for kind, c in child["latency"].items():
            if "error" in c:
                print(f"onnx2torch cannot convert {kind}: {c['error']}")
            else:
                print(f"onnx2torch converted {kind} from the {c['note']}; "
                      + "; ".join(c[str(b)]["error"] if "error" in c[str(b)] else
                                  f"batch {b} max rel err vs modelport's module {c[str(b)]['rel_err']:.1e}"
                                  for b in BATCHES))
    print(f"\nConversion of a {n_params / 1e6:.1f}M-parameter BERT (dynamo, opset 18): modelport "
          f"{convert_s:.2f} s (target < 5 s), load {load_s:.2f} s", end="")
    if child and child.get("convert"):
        c = child["convert"]
        print(f"; onnx2torch {c['seconds']:.2f} s (from the {c['note']})" if "seconds" in c
              else f"; onnx2torch fails ({c['error']})")
    else:
        print("; onnx2torch n/a")
    if args.resnet50:
        print(resnet50(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
