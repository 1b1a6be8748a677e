"""A third opinion: when two runtimes disagree, the ONNX spec's reference evaluator says which is off.

``arbitrate`` runs the ONNX side of a comparison through ``onnx.reference.ReferenceEvaluator``
(the executable ONNX specification, slow but independent of any runtime) on the same inputs the
comparison used, and compares each model with it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from modelport.artifact import Signature
from modelport.errors import BadInputError, UnsupportedError
from modelport.formats import LoadOptions, detect, open_runner
from modelport.formats.base import BaseRunner

__all__ = ["Arbitration", "ReferenceRunner", "arbitrate"]


class ReferenceRunner(BaseRunner):
    """An ONNX model run by onnx.reference.ReferenceEvaluator, with the onnxruntime runner's signature."""

    format = "onnx-reference"

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        from onnx.reference import ReferenceEvaluator

        from modelport.formats.onnx_format import OnnxRunner, load_model

        self._onnx = OnnxRunner(path, options)  # the same signature and index bounds as onnxruntime's view
        try:
            self._evaluator = ReferenceEvaluator(load_model(path))
        except Exception as exc:  # noqa: BLE001  (an op the reference does not implement, ...)
            raise UnsupportedError(f"onnx.reference cannot evaluate this model: {type(exc).__name__}: {exc}"[:300],
                                   path=path) from None

    @property
    def signature(self) -> Signature:
        return self._onnx.signature

    def index_bounds(self) -> dict[str, int]:
        return self._onnx.index_bounds()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.signature.output_names
        outs = self._evaluator.run(names, {k: np.asarray(v) for k, v in feeds.items()})
        return dict(zip(names, outs))

    def close(self) -> None:
        self._onnx.close()


@dataclasses.dataclass(frozen=True)
class Arbitration:
    """Each model against the reference evaluator of the ONNX side (``onnx_side``: "a" or "b")."""

    onnx_side: str
    reference_of: str
    a_ok: bool
    a_worst_rel: float
    b_ok: bool
    b_worst_rel: float
    verdict: str


def _worst(report) -> float:
    return max((o.max_rel for r in report.runs for o in r.outputs), default=0.0)


def arbitrate(a: str | Path, b: str | Path, *, a_format: str | None = None, b_format: str | None = None,
              a_options: LoadOptions | None = None, b_options: LoadOptions | None = None, inputs=None,
              dims=None, rtol=None, atol=None, seed: int = 0, tolerances=None) -> Arbitration:
    """Compare A and B each with the reference evaluator of whichever of them is ONNX (A first)."""
    from modelport.verify import compare_runners

    fa, fb = detect(str(a), a_format), detect(str(b), b_format)
    side = "a" if fa == "onnx" else "b" if fb == "onnx" else None
    if side is None:
        raise BadInputError(f"--arbiter reference needs an ONNX model on one side (got {fa} and {fb})")
    onnx_path = str(a if side == "a" else b)
    a_options, b_options = a_options or LoadOptions(), b_options or LoadOptions()
    common = dict(inputs=inputs, dims=dims, rtol=rtol, atol=atol, seed=seed, tolerances=tolerances)
    with ReferenceRunner(onnx_path, a_options if side == "a" else b_options) as ref, \
            open_runner(a, fa, a_options) as ra, open_runner(b, fb, b_options) as rb:
        # the reference evaluator is the reference of both comparisons; seeded inputs come from its signature
        vs_a = compare_runners(ref, ra, **common)
        vs_b = compare_runners(ref, rb, **common)
    verdict = {
        (True, True): "both agree with the ONNX reference evaluator",
        (True, False): "B is off: A agrees with the ONNX reference evaluator, B does not",
        (False, True): "A is off: B agrees with the ONNX reference evaluator, A does not",
        (False, False): "both differ from the ONNX reference evaluator",
    }[(vs_a.ok, vs_b.ok)]
    return Arbitration(side, onnx_path, vs_a.ok, _worst(vs_a), vs_b.ok, _worst(vs_b), verdict)
