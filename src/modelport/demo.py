"""The main job, end to end, on an embedded default: a Keras CNN trained on scikit-learn's digits.

Train (seconds) -> convert Keras -> ONNX, -> PyTorch and -> TFLite (each verified against
Keras) -> 50% structured pruning + distillation + int8 static (each under an accuracy budget)
-> test-set accuracy of each -> bench each.
Each later capability adds its column: PyTorch (ONNX -> torch), TFLite, compression.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelport.errors import MissingExtraError
from modelport.quiet import native_output

__all__ = ["DemoReport", "DemoRow", "run_demo", "digits_data", "train_digits_cnn"]


@dataclasses.dataclass(frozen=True)
class DemoRow:
    """One model of the demo: where it is, what it scores, how fast it runs."""

    stage: str
    format: str
    path: str
    accuracy: float
    size_bytes: int
    p50_ms_batch1: float | None
    p50_ms_batch8: float | None
    parity: str


@dataclasses.dataclass(frozen=True)
class DemoReport:
    rows: tuple[DemoRow, ...]
    test_samples: int
    train_seconds: float
    convert_seconds: float
    ok: bool  # every converted model passed parity against Keras and scores its test accuracy exactly
    reports: tuple[str, ...] = ()  # the HTML verification report of each converted model against Keras
    notes: tuple[str, ...] = ()
    registry: str | None = None  # the registry holding the chain (under --out; None: a temp dir, removed)
    lineage: tuple[str, ...] = ()  # `modelport registry lineage` of the trained model: the whole chain

    def __bool__(self) -> bool:
        return self.ok


def _verdict(rows: tuple[DemoRow, ...]) -> bool:
    """The demo's claim, from what it measured (see DemoReport.ok)."""
    keras = next(r for r in rows if r.stage == "trained")
    converted = [r for r in rows if r.stage == "converted"]
    return bool(converted) and all(r.parity.startswith("ok") and r.accuracy == keras.accuracy for r in converted)


def digits_data(seed: int = 0):
    """scikit-learn's digits (1797 8x8 images), NHWC float32 in [0, 1], split 75/25."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise MissingExtraError("scikit-learn", "demo", purpose="the demo's dataset") from None
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def train_digits_cnn(path: Path, x_train, y_train, *, epochs: int = 12, seed: int = 0):
    """A small Keras CNN (Conv-BN-ReLU x3, pooling, Dense), trained for seconds."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from modelport.formats.base import require

    require("tensorflow", "tf", "the demo's Keras model")
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    # Global pooling rather than Flatten: no layer width is frozen into a Reshape, so whole
    # channels can be pruned later in the demo.
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    with native_output():  # TF's C++ lines while it trains
        model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    model.save(path)
    return model


def accuracy(path: str, x, y, batch: int = 256) -> float:
    """Top-1 accuracy of any model on (x, y), run through its Runner."""
    from modelport.formats import open_runner

    correct = 0
    with open_runner(path) as runner:
        name = runner.signature.inputs[0].name
        for i in range(0, len(x), batch):
            out = next(iter(runner.run({name: x[i:i + batch]}).values()))
            correct += int((np.argmax(out, axis=-1) == y[i:i + batch]).sum())
    return correct / len(x)


def _compress_chain(work: Path, onnx_path: str, x_train, y_train, x_test, y_test, say,
                    steps: list | None = None) -> list[tuple[str, str, str, str]]:
    """50% structured pruning -> distillation from the full model -> int8 static, each judged on accuracy."""
    from modelport.compress.run import compress
    from modelport.compress.distill import distill

    train_npz, eval_npz, calib_npz = work / "digits_train.npz", work / "digits_test.npz", work / "digits_calib.npz"
    np.savez(train_npz, image=x_train, labels=y_train)
    np.savez(eval_npz, image=x_test, labels=y_test)
    np.savez(calib_npz, image=x_train[:256])
    say("pruning 50% of channels (structured)")
    pruned = compress(onnx_path, work / "digits_cnn.pruned50.onnx", prune=0.5, structured=True, eval_data=eval_npz,
                      bench_runs=5)
    say("distilling the full model into the pruned one")
    student = distill(onnx_path, pruned.out, work / "digits_cnn.student.onnx", data=train_npz, epochs=20, bench_runs=5)
    say("quantizing the student to int8 (static, accuracy budget 1 point)")
    final = compress(student.out, work / "digits_cnn.student.int8.onnx", quantize="static", calibration=calib_npz,
                     eval_data=eval_npz, max_drop=0.01, bench_runs=5)
    judged = "n/a: compressed, judged on accuracy"
    if steps is not None:  # (command, report) of each step, for the registry
        steps += [("compress", pruned), ("distill", student), ("compress", final)]
    return [("pruned 50% + distilled", "onnx", student.out, judged), ("+ int8 static", "onnx", final.out, judged)]


def _parity(report) -> str:
    """`ok (max rel 3e-07, 2 shapes)` for a ConvertReport's parity."""
    parity = report.parity
    if parity is None:
        return "not verified"
    worst = max((o.max_rel for r in parity.runs for o in r.outputs), default=0.0)
    return f"{'ok' if parity.ok else 'FAILED'}, max rel {worst:.1e} at {len(parity.runs)} shapes"


def _register_chain(work: Path, keras_path: Path, steps: list) -> tuple[str, tuple[str, ...]]:
    """Every model of the demo as a version of ``digits_cnn`` in ``work/registry``, each with the step that
    made it; returns the registry and `registry lineage` of the trained model (the whole DAG)."""
    from modelport.registry.lineage import lineage, render_text
    from modelport.registry.record import files_sha256, find_by_digest, register_report
    from modelport.registry.store import Registry

    url = str(work / "registry")
    with Registry.open(url) as reg:
        root = find_by_digest(reg, files_sha256(keras_path), prefer="digits_cnn") or reg.add(keras_path, "digits_cnn")
        for command, report in steps:
            register_report(reg, command, report, "digits_cnn")
        return url, tuple(render_text(lineage(reg, root.ref)))


def _size(path: str) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def run_demo(out_dir: str | Path | None = None, *, epochs: int = 12, progress: Callable[[str], None] | None = None) -> DemoReport:
    """Run the demo; artifacts go to ``out_dir`` (a temp dir, removed afterwards, when None)."""
    from modelport import bench, convert, verify

    say = progress or (lambda msg: None)
    with tempfile.TemporaryDirectory(prefix="modelport-demo-") as tmp:
        work = Path(out_dir) if out_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        say("loading digits")
        x_train, x_test, y_train, y_test = digits_data()
        say("training the Keras CNN")
        t0 = time.perf_counter()
        keras_path = work / "digits_cnn.keras"
        train_digits_cnn(keras_path, x_train, y_train, epochs=epochs)
        train_s = time.perf_counter() - t0
        say("converting Keras -> ONNX (verified)")
        t0 = time.perf_counter()
        report = convert(keras_path, "onnx", work / "digits_cnn.onnx")
        convert_s = time.perf_counter() - t0
        onnx_path = report.artifact.path
        models = [("trained", "keras", str(keras_path), "reference"), ("converted", "onnx", onnx_path, _parity(report))]
        say("converting ONNX -> PyTorch (verified against Keras)")
        torch_report = convert(keras_path, "torch", work / "digits_cnn_torch")
        models.append(("converted", "torch", torch_report.artifact.path, _parity(torch_report)))
        say("converting ONNX -> TFLite (verified against Keras)")
        tflite_report = convert(keras_path, "tflite", work / "digits_cnn.tflite")
        models.append(("converted", "tflite", tflite_report.artifact.path, _parity(tflite_report)))
        say("writing the HTML verification reports")
        reports = []
        for _, fmt, path, _ in models[1:]:
            reports.append(str(work / f"verification-{fmt}.html"))
            verify(keras_path, path, report=reports[-1])
        steps = [("convert", report), ("convert", torch_report), ("convert", tflite_report)]
        models.extend(_compress_chain(work, onnx_path, x_train, y_train, x_test, y_test, say, steps))
        say("registering the chain")
        registry, chain = _register_chain(work, keras_path, steps)
        say("measuring test accuracy")
        accs = [accuracy(path, x_test, y_test) for _, _, path, _ in models]
        say("benchmarking")
        bench_report = bench([m[2] for m in models], batches=(1, 8), warmup=5, runs=30)
        p50 = {(r.model, r.batch): r.p50_ms for r in bench_report.rows if not getattr(r, "skipped", None)}
        rows = tuple(
            DemoRow(stage, fmt, path, acc, _size(path), p50.get((path, 1)), p50.get((path, 8)), parity)
            for (stage, fmt, path, parity), acc in zip(models, accs)
        )
        notes = ()
        if not out_dir:
            notes = ("artifacts were written to a temporary directory and removed; pass --out DIR to keep them",)
        return DemoReport(rows, len(x_test), train_s, convert_s, _verdict(rows), tuple(reports), notes,
                          registry if out_dir else None, chain)
