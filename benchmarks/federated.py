"""Federated learning figures of issue 15: federated vs centralized vs each client alone, with and without DP.

Run (needs the `flower` toolchain: `modelport toolchain install flower`; nothing else is downloaded):

    nice .venv/bin/python benchmarks/federated.py [--rounds 10] [--noise 0.005] [--clip 2.0] [--deploy] [--json]

Data: scikit-learn's digits (8x8, scaled to [0, 1]); 20 % held out (360 images) as the test set,
the other 1437 split over three clients by a Dirichlet(0.5) draw per class (non-IID: each client
sees a skewed mix of digits). Model: the demo CNN (Conv 3x3, 8 channels -> BatchNorm -> ReLU ->
Flatten -> Dense 32 -> ReLU -> Dense 10), the same architecture in three frameworks:

    federated    modelport federate (simulation engine, or --deploy: superlink + supernodes) with
                 a Keras client, a PyTorch client and a modelport-generated PyTorch client;
                 FedAvg, batch-norm statistics averaged (one global model), ROUNDS rounds of
                 EPOCHS local epochs each (SGD, lr 0.1, batch 16)
    federated+DP the same with Flower's server-side fixed-clipping DP wrapper (clipping norm
                 --clip on each client's update, Gaussian noise of std noise*clip/3 added to
                 the aggregate each round)
    centralized  the PyTorch CNN trained on all 1437 training images, ROUNDS x EPOCHS epochs
    alone        the PyTorch CNN trained on one client's data only, ROUNDS x EPOCHS epochs

Every accuracy is measured here on the 360 test images: the federated ones with onnxruntime on
the written global ONNX, the others on the trained PyTorch module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _accuracy_onnx(model: str, test: str) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    d = np.load(test)
    logits = sess.run(None, {sess.get_inputs()[0].name: d["x"]})[0]
    return float((logits.argmax(1) == d["y"]).mean())


def _torch_alone(x, y, xte, yte, *, epochs: int, lr: float, batch: int, seed: int) -> float:
    import torch

    from modelport.federated import demo, local

    ns: dict = {}
    exec(compile(demo.NET_PY, "net.py", "exec"), ns)  # noqa: S102  (the demo's own module source)
    torch.manual_seed(seed)
    net = ns["Net"]()
    local.train_local("torch", net, x, y, epochs=epochs, batch_size=batch, lr=lr, mu=0.0, seed=seed)
    logits = local.forward("torch", net, xte)
    return float((logits.argmax(1) == yte).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.005, help="DP noise multiplier")
    ap.add_argument("--clip", type=float, default=2.0, help="DP clipping norm")
    ap.add_argument("--deploy", action="store_true", help="run the federations as superlink + supernodes")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", help="keep the federation files here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from modelport.federated import demo
    from modelport.federated.run import federate

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="modelport-fedbench-"))
    t0 = time.perf_counter()
    files = demo.write_demo(root, rounds=args.rounds, epochs=args.epochs)
    rows: list[dict] = []
    mode = "deploy" if args.deploy else "simulate"
    for label, dp in (("federated (keras + torch + generated)", None),
                      (f"federated + DP (server-side, noise {args.noise:g}, clip {args.clip:g})",
                       {"mode": "server", "noise_multiplier": args.noise, "clipping_norm": args.clip})):
        name = "fed_dp" if dp else "fed"
        config = root / f"{name}.toml"
        config.write_text(demo.fed_toml(clients=files.clients, rounds=args.rounds, epochs=args.epochs, dp=dp,
                                        output=f"{name}.onnx"))
        start = time.perf_counter()
        rep = federate(config, mode=mode, on_round=lambda r: print(f"  {name} round {r.round}: {r.accuracy:.4f}",
                                                                   file=sys.stderr, flush=True))
        acc = _accuracy_onnx(rep.output, files.test)
        rows.append({"run": label, "accuracy": acc, "rounds": args.rounds, "seconds": round(time.perf_counter() - start, 1),
                     "per_round": [r.accuracy for r in rep.rounds]})
    parts, (xte, yte), (xtr, ytr) = demo.digits_split(3, alpha=0.5, seed=0)
    epochs = args.rounds * args.epochs
    start = time.perf_counter()
    rows.append({"run": f"centralized (PyTorch, all {len(ytr)} images, {epochs} epochs)",
                 "accuracy": _torch_alone(xtr, ytr, xte, yte, epochs=epochs, lr=0.1, batch=16, seed=0),
                 "seconds": round(time.perf_counter() - start, 1)})
    for (x, y), (cname, fw, _, _) in zip(parts, files.clients):
        start = time.perf_counter()
        classes = np.bincount(y, minlength=10)
        rows.append({"run": f"{cname} alone ({len(y)} images, {int((classes > 0).sum())} classes, largest class "
                            f"{classes.max() / len(y):.0%})",
                     "accuracy": _torch_alone(x, y, xte, yte, epochs=epochs, lr=0.1, batch=16, seed=0),
                     "seconds": round(time.perf_counter() - start, 1)})
    doc = {"rows": rows, "test_images": int(len(yte)), "mode": mode, "seconds": round(time.perf_counter() - t0, 1),
           "dir": str(root)}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    central = next(r["accuracy"] for r in rows if r["run"].startswith("centralized"))
    print(f"digits test accuracy ({len(yte)} images), {mode}:")
    print("| run | test accuracy | vs centralized | time |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - central):+.1f} pts | {r['seconds']:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
