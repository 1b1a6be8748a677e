"""TFLite flatbuffers (`TFL3` identifier), run with ai-edge-litert's interpreter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import BaseRunner, LoadOptions, fill_signature, read_head, require

NAME = "tflite"


def detect(path: Path) -> bool:
    return path.is_file() and read_head(path, 8)[4:8] == b"TFL3"


def _clean(name: str) -> str:
    # TF's converter names IO tensors like "serving_default_x:0" / "StatefulPartitionedCall:0".
    name = name.split(":")[0]
    return name.removeprefix("serving_default_")


class TFLiteRunner(BaseRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        litert = require("ai_edge_litert.interpreter", "tf", "TFLite models")
        try:
            self.interp = litert.Interpreter(model_path=path, num_threads=options.threads or None)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"cannot load TFLite model ({msg})", path=path) from None
        self._in = self.interp.get_input_details()
        self._out = self.interp.get_output_details()
        inputs = tuple(self._spec(d) for d in self._in)
        outputs = tuple(self._spec(d) for d in self._out)
        self._signature = Signature(fill_signature(inputs, options.inputs, path), outputs)
        self._allocated_shapes: list[tuple[int, ...]] | None = None

    @staticmethod
    def _spec(d: dict) -> TensorSpec:
        sig = d.get("shape_signature")
        dims = sig if sig is not None and len(sig) else d["shape"]
        shape = tuple("batch" if (i == 0 and int(x) < 0) else (int(x) if int(x) >= 0 else None) for i, x in enumerate(dims))
        return TensorSpec(_clean(d["name"]), np.dtype(d["dtype"]).name, shape)

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [np.asarray(feeds[s.name]) for s in self._signature.inputs]
        shapes = [a.shape for a in arrays]
        if shapes != self._allocated_shapes:
            for d, a in zip(self._in, arrays):
                self.interp.resize_tensor_input(d["index"], a.shape, strict=False)
            self.interp.allocate_tensors()
            self._allocated_shapes = shapes
        for d, a in zip(self._in, arrays):
            self.interp.set_tensor(d["index"], a.astype(d["dtype"], copy=False))
        self.interp.invoke()
        return {s.name: self.interp.get_tensor(d["index"]).copy() for s, d in zip(self._signature.outputs, self._out)}


def open(path: str, options: LoadOptions) -> TFLiteRunner:  # noqa: A001
    return TFLiteRunner(path, options)
