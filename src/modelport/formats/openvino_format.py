"""OpenVINO IR (a ``.xml`` graph with its ``.bin`` weights beside it), run with openvino on CPU.

A directory holding ``model.xml`` and ``model.bin`` (what ``convert --to openvino`` writes
unless ``-o`` names an ``.xml``) is an IR too. The CPU plugin's default inference precision
on CPUs with bf16 support is bf16; the runner asks for f32 so that verification compares
like with like.

OpenVINO memory-maps the ``.bin``, and the CPU plugin keeps its own repacked copy of the weights
(``compile_model`` reads every constant, the first inference repacks the MatMul weights): the mapped
pages it read would stay resident beside that copy, twice the weight bytes in all. Above the
external-data threshold (``modelport.formats.onnx_data.threshold``) they are dropped while the plugin
reads them (``modelport.formats.page_release``); ``released_bytes`` says how many left the resident set.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError, UnsupportedError
from modelport.formats.base import BaseRunner, LoadOptions, fill_signature, read_head, require

NAME = "openvino"
MODEL_FILE = "model.xml"


def xml_path(path: Path) -> Path | None:
    """The IR's .xml for a path that is one (or a directory holding model.xml/model.bin), else None."""
    xml = path / MODEL_FILE if path.is_dir() else path
    if not (xml.is_file() and xml.suffix.lower() == ".xml" and xml.with_suffix(".bin").is_file()):
        return None
    head = read_head(xml, 512)
    return xml if b"<net " in head else None


def detect(path: Path) -> bool:
    return xml_path(path) is not None


def _spec(port, index: int) -> TensorSpec:
    names = port.get_names()
    name = port.get_any_name() if names else f"output_{index}"
    pshape = port.get_partial_shape()
    shape = None
    if pshape.rank.is_static:
        shape = tuple(
            int(d.get_length()) if d.is_static else ("batch" if i == 0 else None) for i, d in enumerate(pshape)
        )
    return TensorSpec(name, np.dtype(port.get_element_type().to_dtype()).name, shape)


def _releaser(bin_path: Path):
    """A page releaser for the IR's .bin when its weights are above the external-data threshold, else None.

    Made after ``read_model``: it pins the mappings of the .bin that exist then (the ov.Model's)."""
    from modelport.formats import onnx_data
    from modelport.formats.page_release import PageReleaser

    try:
        if bin_path.stat().st_size <= onnx_data.threshold():
            return None
    except OSError:
        return None
    releaser = PageReleaser([bin_path])
    return releaser if releaser.supported and releaser.pinned else None


def _active(releaser):
    return releaser.active() if releaser is not None else contextlib.nullcontext()


class OpenVINORunner(BaseRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        ov = require("openvino", "openvino", "OpenVINO IR")
        xml = xml_path(Path(path))
        if xml is None:
            raise BadInputError("not an OpenVINO IR (.xml with a .bin beside it)", path=path)
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = int(options.threads)
        self._releaser = None
        try:
            core = ov.Core()
            # self.model stays referenced while the runner lives: it holds the .bin's mapping that the releaser sweeps
            self.model = core.read_model(str(xml))
            self._releaser = _releaser(xml.with_suffix(".bin"))
            with _active(self._releaser):
                self.compiled = core.compile_model(self.model, "CPU", config)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"cannot load OpenVINO IR ({msg[:200]})", path=path) from None
        inputs = tuple(_spec(p, i) for i, p in enumerate(self.compiled.inputs))
        outputs = tuple(_spec(p, i) for i, p in enumerate(self.compiled.outputs))
        self._signature = Signature(fill_signature(inputs, options.inputs, path), outputs)
        self._request = self.compiled.create_infer_request()

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def released_bytes(self) -> int:
        """Bytes of the mapped .bin dropped from the resident set so far (0 below the threshold; a page refaulted
        and dropped again counts again)."""
        return self._releaser.released if self._releaser is not None else 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # np.require, not np.ascontiguousarray: that makes a 0-d input (silero's sr) 1-d, which a port of shape [] refuses
        arrays = [np.require(feeds[s.name], requirements="C") for s in self._signature.inputs]
        try:
            with _active(self._releaser):  # the first inference repacks the weights, reading the mapped .bin
                results = self._request.infer(arrays, share_inputs=False)
        except RuntimeError as exc:
            shapes = ", ".join(f"{s.name}={tuple(a.shape)}" for s, a in zip(self._signature.inputs, arrays))
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise UnsupportedError(f"OpenVINO cannot run the model at input shapes {shapes} ({(lines or ['?'])[-1][:200]})",
                                   path=self.path) from None
        return {s.name: np.array(results[port]) for s, port in zip(self._signature.outputs, self.compiled.outputs)}


def open(path: str, options: LoadOptions) -> OpenVINORunner:  # noqa: A001
    return OpenVINORunner(path, options)
