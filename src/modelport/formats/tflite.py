"""TFLite flatbuffers (`TFL3` identifier), run with ai-edge-litert's interpreter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError, UnsupportedError
from modelport.formats.base import BaseRunner, LoadOptions, fill_signature, read_head, require
from modelport.quiet import native_output

NAME = "tflite"


def detect(path: Path) -> bool:
    return path.is_file() and read_head(path, 8)[4:8] == b"TFL3"


def _clean(name: str) -> str:
    # TF's converter names IO tensors like "serving_default_x:0" / "StatefulPartitionedCall:0".
    name = name.split(":")[0]
    return name.removeprefix("serving_default_")


def _unique(names: list[str], details: list[dict]) -> list[str]:
    """Tensor names made unique: `StatefulPartitionedCall_1:0`/`:1` keep their output index."""
    if len(set(names)) == len(names):
        return names
    return [d["name"].removeprefix("serving_default_").replace(":", "_") for d in details]


def io_details(interp) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(name, tensor detail) of each input and output, in order.

    Models from TF's converter carry a signature (`serving_default`) whose keys are the
    source model's names (`x`, `output_0`): those name the tensors, ordered as the
    SavedModel runner orders them. Bare flatbuffers fall back to cleaned tensor names.
    """
    from modelport.formats.savedmodel import natural_key

    ins = {d["index"]: d for d in interp.get_input_details()}
    outs = {d["index"]: d for d in interp.get_output_details()}
    sigs = interp.get_signature_list() or {}
    key = "serving_default" if "serving_default" in sigs else (next(iter(sigs)) if len(sigs) == 1 else None)
    if key is not None:
        runner = interp.get_signature_runner(key)
        sig_in, sig_out = runner.get_input_details(), runner.get_output_details()
        if {d["index"] for d in sig_in.values()} == set(ins) and {d["index"] for d in sig_out.values()} == set(outs):
            return (
                [(n, ins[sig_in[n]["index"]]) for n in sorted(sig_in, key=natural_key)],
                [(n, outs[sig_out[n]["index"]]) for n in sorted(sig_out, key=natural_key)],
            )
    in_list, out_list = list(ins.values()), list(outs.values())
    return (
        list(zip(_unique([_clean(d["name"]) for d in in_list], in_list), in_list)),
        list(zip(_unique([_clean(d["name"]) for d in out_list], out_list), out_list)),
    )


class TFLiteRunner(BaseRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        litert = require("ai_edge_litert.interpreter", "tf", "TFLite models")
        self._litert, self._threads, self._delegates = litert, options.threads or None, True
        try:
            self.interp = self._new_interp()
            named_in, named_out = io_details(self.interp)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"cannot load TFLite model ({msg})", path=path) from None
        self._in = [d for _, d in named_in]
        self._out = [d for _, d in named_out]
        inputs = tuple(self._spec(n, d) for n, d in named_in)
        outputs = tuple(self._spec(n, d) for n, d in named_out)
        self._signature = Signature(fill_signature(inputs, options.inputs, path), outputs)
        self._allocated_shapes: list[tuple[int, ...]] | None = None

    def _new_interp(self):
        if self._delegates:
            return self._litert.Interpreter(model_path=self.path, num_threads=self._threads)
        return self._litert.Interpreter(model_path=self.path, num_threads=self._threads,
                                        experimental_op_resolver_type=self._litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)

    @staticmethod
    def _spec(name: str, d: dict) -> TensorSpec:
        sig = d.get("shape_signature")
        dims = sig if sig is not None and len(sig) else d["shape"]
        shape = tuple("batch" if (i == 0 and int(x) < 0) else (int(x) if int(x) >= 0 else None) for i, x in enumerate(dims))
        return TensorSpec(name, np.dtype(d["dtype"]).name, shape)

    @property
    def signature(self) -> Signature:
        return self._signature

    def _resize(self, interp, shapes: list[tuple[int, ...]]) -> None:
        for d, shape in zip(self._in, shapes):
            interp.resize_tensor_input(d["index"], shape, strict=False)
        with native_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interp.allocate_tensors()

    def _allocate(self, shapes: list[tuple[int, ...]]) -> None:
        """Resize the inputs to `shapes` and allocate. An interpreter already planned for other
        shapes can refuse the new ones (XNNPack: "failed to reshape runtime"): then a fresh
        interpreter on the same model is planned for them; if that fails too, the model does
        not run at these shapes."""
        try:
            self._resize(self.interp, shapes)
        except (RuntimeError, ValueError):
            self._allocated_shapes = None  # the old interpreter's plan is gone either way
            try:
                fresh = self._new_interp()
                self._resize(fresh, shapes)
            except (RuntimeError, ValueError) as exc:
                text = " ".join(str(exc).split()) or type(exc).__name__
                names = ", ".join(f"{s.name}={tuple(shape)}" for s, shape in zip(self._signature.inputs, shapes))
                raise UnsupportedError(f"TFLite model cannot run at input shapes {names} (LiteRT: {text})",
                                       path=self.path) from None
            self.interp = fresh
        self._allocated_shapes = shapes

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [np.asarray(feeds[s.name]) for s in self._signature.inputs]
        shapes = [a.shape for a in arrays]
        if shapes != self._allocated_shapes:
            self._allocate(shapes)
        try:
            self._invoke(arrays)
        except RuntimeError as exc:
            # XNNPack can refuse at invoke what it accepted at allocation ("XNNPack delegate failed to
            # reshape runtime ... failed to prepare", dynamic dims): LiteRT's builtin kernels run it.
            if not self._delegates:
                raise self._cannot_run(shapes, exc) from None
            self._delegates, self._allocated_shapes = False, None
            self.interp = self._new_interp()
            self._allocate(shapes)
            try:
                self._invoke(arrays)
            except RuntimeError as exc2:
                raise self._cannot_run(shapes, exc2) from None
        return {s.name: self.interp.get_tensor(d["index"]).copy() for s, d in zip(self._signature.outputs, self._out)}


    def _invoke(self, arrays: list[np.ndarray]) -> None:
        for d, a in zip(self._in, arrays):
            self.interp.set_tensor(d["index"], a.astype(d["dtype"], copy=False))
        self.interp.invoke()

    def _cannot_run(self, shapes, exc: Exception) -> UnsupportedError:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        names = ", ".join(f"{s.name}={tuple(shape)}" for s, shape in zip(self._signature.inputs, shapes))
        return UnsupportedError(f"TFLite model fails at input shapes {names} (LiteRT: {text})", path=self.path)


def open(path: str, options: LoadOptions) -> TFLiteRunner:  # noqa: A001
    return TFLiteRunner(path, options)
