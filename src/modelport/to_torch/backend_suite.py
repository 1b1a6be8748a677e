"""Runs ONNX's backend test suite against modelport's converter (and, side by side,
onnxruntime and the onnx2torch package when installed).

Used by ``benchmarks/onnx_backend_suite.py`` and by the slow tests. Workers are forked
processes; a case that runs past its timeout kills its worker, which is replaced.
"""

from __future__ import annotations

import glob
import multiprocessing as mp
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait

import numpy as np
import onnx
import onnx.backend.test
from onnx import numpy_helper

GROUPS = ("node", "simple", "pytorch-converted", "pytorch-operator", "light")
BACKENDS = ("onnxruntime", "modelport", "onnx2torch")


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    model: onnx.ModelProto
    data_sets: list
    rtol: float
    atol: float


@dataclass(frozen=True)
class Outcome:
    case: str
    backend: str
    status: str  # pass | fail | unsupported | error | timeout | n/a
    reason: str = ""


def _read_value(path: str, vi: onnx.ValueInfoProto):
    data = open(path, "rb").read()
    if vi.type.HasField("sequence_type"):
        p = onnx.SequenceProto()
        p.ParseFromString(data)
        return numpy_helper.to_list(p)
    if vi.type.HasField("optional_type"):
        p = onnx.OptionalProto()
        p.ParseFromString(data)
        return numpy_helper.to_optional(p)
    p = onnx.TensorProto()
    p.ParseFromString(data)
    return numpy_helper.to_array(p)


def _disk_data(model: onnx.ModelProto, model_dir: str) -> list:
    init = {i.name for i in model.graph.initializer}
    ins = [vi for vi in model.graph.input if vi.name not in init]
    outs = list(model.graph.output)
    sets = []
    for d in sorted(glob.glob(os.path.join(model_dir, "test_data_set_*"))):
        n_in = len(glob.glob(os.path.join(d, "input_*.pb")))
        n_out = len(glob.glob(os.path.join(d, "output_*.pb")))
        inputs = [_read_value(os.path.join(d, f"input_{i}.pb"), ins[i]) for i in range(n_in)]
        outputs = [_read_value(os.path.join(d, f"output_{i}.pb"), outs[i]) for i in range(n_out)]
        sets.append((inputs, outputs))
    return sets


def _np(v):
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, onnx.SequenceProto):
        return numpy_helper.to_list(v)
    if isinstance(v, onnx.OptionalProto):
        return numpy_helper.to_optional(v)
    if isinstance(v, list):
        return [_np(x) for x in v]
    return v


def _light_cases(name_filter: str | None) -> tuple[list[Case], list[str]]:
    """The nine ``light`` models (real architectures whose weights are ConstantOfShape
    nodes), fed the way onnx's backend runner feeds them: every non-initializer input is
    ``arange(n) / n`` (float32, unknown dims 1), checked against ``light_<name>_output_0.pb``."""
    from onnx.backend.test.case.model import collect_testcases

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(onnx.backend.test.__file__))))
    cases, missing = [], []
    for tc in collect_testcases():
        if not (tc.url or "").startswith("onnx/backend/test/data/light/"):
            continue
        if name_filter and name_filter not in tc.name:
            continue
        path = os.path.join(root, tc.url)
        out = os.path.splitext(path)[0] + "_output_0.pb"
        if not os.path.exists(path) or not os.path.exists(out):
            missing.append(tc.name)
            continue
        model = onnx.load(path)
        inits = {i.name for i in model.graph.initializer}
        inputs = []
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
            n = int(np.prod(shape))
            inputs.append((np.arange(n).reshape(shape) / n).astype(np.float32))
        outputs = [_read_value(out, model.graph.output[0])]
        cases.append(Case("light", tc.name, model, [(inputs, outputs)], tc.rtol, tc.atol))
    return cases, missing


def load_cases(group: str, name_filter: str | None = None) -> tuple[list[Case], list[str]]:
    """Cases of one group, and the names of those whose files are missing."""
    from onnx.backend.test.loader import load_model_tests

    if group == "light":
        return _light_cases(name_filter)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = load_model_tests(kind=group)
    cases, missing = [], []
    for tc in raw:
        if name_filter and name_filter not in tc.name:
            continue
        model, data = tc.model, tc.data_sets
        if model is None:
            path = os.path.join(tc.model_dir or "", "model.onnx")
            if not os.path.exists(path):
                missing.append(tc.name)
                continue
            try:
                model = onnx.load(path)
                data = _disk_data(model, tc.model_dir)
            except Exception:  # noqa: BLE001  (e.g. external data absent from the wheel)
                missing.append(tc.name)
                continue
        data = [([_np(v) for v in ins], [_np(v) for v in outs]) for ins, outs in (data or [])]
        cases.append(Case(group, tc.name, model, data, tc.rtol, tc.atol))
    return cases, missing


def compare(expected: list, actual: list, rtol: float, atol: float) -> str:
    """'' when outputs match the way onnx's backend runner checks them, else why not."""
    if len(actual) != len(expected):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual)):
        if isinstance(e, list) or isinstance(a, list):
            if not isinstance(e, list) or not isinstance(a, list):
                return f"output {i}: sequence vs tensor"
            why = compare(e, a, rtol, atol)
            if why:
                return f"output {i}: {why}"
            continue
        if e is None or a is None:
            if e is not None or a is not None:
                return f"output {i}: optional mismatch"
            continue
        e, a = np.asarray(e), np.asarray(a)
        if e.dtype != a.dtype:
            return f"output {i}: dtype {a.dtype}, expected {e.dtype}"
        if e.shape != a.shape:
            return f"output {i}: shape {a.shape}, expected {e.shape}"
        if e.dtype == object:
            if not np.array_equal(e, a):
                return f"output {i}: values differ"
            continue
        if e.dtype.kind not in "fc":
            ef, af = e.astype(np.float64), a.astype(np.float64)
        else:
            ef, af = e.astype(np.float64) if e.dtype.kind == "f" else e, a.astype(np.float64) if a.dtype.kind == "f" else a
        try:
            np.testing.assert_allclose(af, ef, rtol=rtol, atol=atol)
        except AssertionError as err:
            lines = [ln for ln in str(err).splitlines() if "Max" in ln or "Mismatch" in ln]
            return f"output {i}: values differ ({'; '.join(ln.strip() for ln in lines)})"
    return ""


def as_tensor(v):
    from modelport.to_torch import dtypes

    if v is None:
        return None
    if isinstance(v, list):
        return [as_tensor(t) for t in v]
    return dtypes.to_torch(np.asarray(v))


def as_array(v):
    import torch

    from modelport.to_torch import dtypes

    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return [as_array(t) for t in v]
    if isinstance(v, torch.Tensor):
        return dtypes.to_numpy(v)
    return np.asarray(v)


def run_modelport(model: onnx.ModelProto, inputs: list) -> list:
    import torch

    from modelport import to_torch

    with tempfile.TemporaryDirectory() as d:
        to_torch.convert(model, d)
        net = to_torch.load(d)
    with torch.no_grad():
        out = net(*[as_tensor(v) for v in inputs])
    n_out = len(model.graph.output)
    outs = [out] if n_out == 1 else list(out)
    return [as_array(o) for o in outs]


def run_onnxruntime(model: onnx.ModelProto, inputs: list) -> list:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4
    ort.set_default_logger_severity(4)
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))


# Backends by name; the benchmark adds the onnx2torch package's runner here (it is no dependency).
RUNNERS = {"onnxruntime": run_onnxruntime, "modelport": run_modelport}


def run_case(case: Case, backend: str) -> Outcome:
    from modelport.to_torch import UnsupportedOpsError

    if not case.data_sets:
        return Outcome(case.name, backend, "error", "no test data")
    try:
        for inputs, expected in case.data_sets:
            actual = RUNNERS[backend](case.model, list(inputs))
            why = compare(list(expected), actual, case.rtol, case.atol)
            if why:
                return Outcome(case.name, backend, "fail", why)
    except UnsupportedOpsError as e:
        reasons = sorted({u.reason for u in e.unsupported})
        return Outcome(case.name, backend, "unsupported", "; ".join(reasons))
    except NotImplementedError as e:  # onnx2torch's way of saying "no converter"
        if backend != "onnx2torch":
            raise
        return Outcome(case.name, backend, "unsupported", str(e).strip().splitlines()[0][:160] if str(e).strip() else "")
    except Exception as e:  # noqa: BLE001  (a failing case is a result, not a crash)
        tb = traceback.extract_tb(e.__traceback__)
        where = f" @ {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        return Outcome(case.name, backend, "error", f"{type(e).__name__}: {msg}{where}")
    return Outcome(case.name, backend, "pass")


_CASES: list[Case] = []


def _worker(conn, backends: tuple[str, ...]) -> None:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    while True:
        i = conn.recv()
        if i is None:
            return
        conn.send([run_case(_CASES[i], b) for b in backends])


def run_suite(cases: list[Case], backends: tuple[str, ...], jobs: int = 1,
              timeout: float = 60.0, progress=None) -> list[Outcome]:
    """Runs every case on every backend in ``jobs`` forked workers with a per-case timeout."""
    import torch  # noqa: F401  (imported before forking so workers share it)

    global _CASES
    _CASES = cases
    ctx = mp.get_context("fork")
    todo = list(range(len(cases)))[::-1]
    results: list[Outcome] = []
    workers: dict = {}

    def spawn():
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(child, backends), daemon=True)
        p.start()
        return parent, p

    for _ in range(max(1, min(jobs, len(cases)))):
        conn, p = spawn()
        workers[conn] = [p, None, 0.0]
    while workers:
        for conn, st in list(workers.items()):
            if st[1] is None:
                if todo:
                    st[1], st[2] = todo.pop(), time.monotonic()
                    conn.send(st[1])
                else:
                    conn.send(None)
                    st[0].join(5)
                    del workers[conn]
        if not workers:
            break
        ready = wait(list(workers), timeout=1.0)
        for conn in ready:
            st = workers[conn]
            try:
                results.extend(conn.recv())
            except EOFError:
                results.extend(Outcome(cases[st[1]].name, b, "error", "worker died") for b in backends)
                st[0].join(1)
                del workers[conn]
                conn2, p2 = spawn()
                workers[conn2] = [p2, None, 0.0]
                continue
            if progress:
                progress(len(results) // len(backends), len(cases))
            st[1] = None
        now = time.monotonic()
        for conn, st in list(workers.items()):
            if st[1] is not None and now - st[2] > timeout and conn not in ready:
                st[0].kill()
                st[0].join(1)
                results.extend(Outcome(cases[st[1]].name, b, "timeout", f"> {timeout:.0f}s")
                               for b in backends)
                del workers[conn]
                conn2, p2 = spawn()
                workers[conn2] = [p2, None, 0.0]
    return results
