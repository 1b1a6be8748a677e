"""The reference's own noise floor: how much an ONNX reference moves when computed another legitimate way.

A relative error against an output's max is ill-conditioned where that output is near zero, or
is the difference of large, nearly equal values: float32 rounding alone then moves it by more
than any fixed tolerance. ``NoiseProbe`` measures that movement on the same inputs: the
reference model run by onnxruntime with graph optimizations off (``ORT_DISABLE_ALL``; the
reference runs with them on) and, when the model is small, by ``onnx.reference``. A model that
quantizes its activations at run time (``DynamicQuantizeLinear``: a pre-quantized model) rounds
``x / scale`` to integers, and implementations that compute the scale or the quotient one float32
ulp differently (``x * (1 / scale)``, a fused kernel) round the values near a tie the other way,
moving the output by whole quanta; two more variants measure that: the reference with every
``DynamicQuantizeLinear`` written out as its ONNX definition and its rounding input moved by one
ulp up, and down (``rounding_variants``). Per output,

    noise_floor = max over variants of max |reference - variant|

and a candidate output passes where ``max |reference - candidate| <= max(atol + rtol * max|ref|,
NOISE_FACTOR * noise_floor)`` (``modelport.verify.parity``). The floor is measured only when an
output fails the plain tolerance, so a passing comparison costs nothing more; a variant that
cannot run the model is left out, and the source says which were measured.

On by default wherever the reference is ONNX; ``enabled(False)`` (``--no-noise-floor``) turns it
off for the calls inside the block.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["NoiseProbe", "NoiseJudge", "enabled", "is_enabled", "rounding_variants", "REFERENCE_MAX_BYTES",
           "REFERENCE_MAX_NODES"]

# onnx.reference is numpy, op by op: used only on models and inputs this small.
REFERENCE_MAX_BYTES = 32 << 20
REFERENCE_MAX_NODES = 2000
REFERENCE_MAX_INPUT_ELEMENTS = 1 << 22

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("modelport_noise_floor", default=True)


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Measure (or not) the reference's noise floor in the comparisons made inside the block."""
    token = _ENABLED.set(bool(on))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def is_enabled() -> bool:
    return _ENABLED.get()


def _max_abs(ref: np.ndarray, other: np.ndarray) -> float | None:
    """max |ref - other| over the positions where both are finite; None when they cannot be compared."""
    ref, other = np.asarray(ref), np.asarray(other)
    if ref.dtype.kind not in "fc" or ref.shape != other.shape:
        return None
    r, o = ref.astype(np.float64), other.astype(np.float64)
    both = np.isfinite(r) & np.isfinite(o)
    return float(np.abs(r[both] - o[both]).max()) if both.any() else 0.0


ULP = float(2.0 ** -23)  # one float32 ulp, relative


def _dql_nodes(node: Any, factor: float, pre: str) -> tuple[list[Any], list[Any]]:
    """DynamicQuantizeLinear(x) -> (y, y_scale, y_zero_point) as its ONNX definition (the schema's
    function body) with ``round(x / scale)`` taken of ``x / scale * factor``: (nodes, initializers)."""
    from onnx import TensorProto, helper

    x = node.input[0]
    y, y_scale, y_zp = (list(node.output) + ["", "", ""])[:3]
    n = lambda v: pre + v  # noqa: E731
    inits = [helper.make_tensor(n("zero"), TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor(n("qmax"), TensorProto.FLOAT, [], [255.0]),
             helper.make_tensor(n("factor"), TensorProto.FLOAT, [], [factor])]
    mk = helper.make_node
    nodes = [mk("ReduceMin", [x], [n("min0")], keepdims=0), mk("Min", [n("min0"), n("zero")], [n("min")]),
             mk("ReduceMax", [x], [n("max0")], keepdims=0), mk("Max", [n("max0"), n("zero")], [n("max")]),
             mk("Sub", [n("max"), n("min")], [n("range")]), mk("Div", [n("range"), n("qmax")], [y_scale or n("scale")]),
             mk("Div", [n("min"), y_scale or n("scale")], [n("min_scaled")]),
             mk("Sub", [n("zero"), n("min_scaled")], [n("zp0")]), mk("Clip", [n("zp0"), n("zero"), n("qmax")], [n("zp1")]),
             mk("Round", [n("zp1")], [n("zpf")]), mk("Div", [x, y_scale or n("scale")], [n("q0")]),
             mk("Mul", [n("q0"), n("factor")], [n("q1")]), mk("Round", [n("q1")], [n("q2")]),
             mk("Add", [n("q2"), n("zpf")], [n("q3")]), mk("Clip", [n("q3"), n("zero"), n("qmax")], [n("q4")])]
    if y:
        nodes.append(mk("Cast", [n("q4")], [y], to=TensorProto.UINT8))
    if y_zp:
        nodes.append(mk("Cast", [n("zpf")], [y_zp], to=TensorProto.UINT8))
    return nodes, inits


def rounding_variants(model: Any) -> list[tuple[str, Any]]:
    """The model with every (main-graph) DynamicQuantizeLinear written out, its rounding input moved by
    one float32 ulp up and down: ``[(how, model)]``; ``model`` is not changed."""
    import onnx

    out = []
    for sign, word in ((1, "up"), (-1, "down")):
        variant = onnx.ModelProto.FromString(model.SerializeToString())
        graph, nodes = variant.graph, []
        for k, node in enumerate(graph.node):
            if node.op_type == "DynamicQuantizeLinear" and node.domain in ("", "ai.onnx"):
                more, inits = _dql_nodes(node, float(np.float32(1.0 + sign * ULP)), f"__noise_dql{k}_")
                nodes.extend(more)
                graph.initializer.extend(inits)
            else:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        out.append((f"onnxruntime vs DynamicQuantizeLinear rounding one ulp {word}", variant))
    return out


class NoiseProbe:
    """The variants of an ONNX reference (an ``OnnxRunner``), built on first use and reused across input sets."""

    def __init__(self, runner: Any) -> None:
        self.path = runner.path
        self._providers = self._providers_of(runner)
        self._unoptimized: Any = None
        self._reference: Any = None
        self._rounding: list[Any] | None = None
        self._failed: set[str] = set()

    @staticmethod
    def _providers_of(runner: Any) -> list[str]:
        session = getattr(runner, "session", None)
        return list(session.get_providers()) if session is not None else ["CPUExecutionProvider"]

    def _unoptimized_session(self) -> Any:
        if self._unoptimized is None and "onnxruntime" not in self._failed:
            import onnxruntime as ort

            from modelport.quiet import native_output

            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.log_severity_level = 3
            try:
                with native_output():
                    self._unoptimized = ort.InferenceSession(self.path, sess_options=so, providers=self._providers)
            except Exception:  # noqa: BLE001  (no variant: the floor is measured without it)
                self._failed.add("onnxruntime")
        return self._unoptimized

    def _small(self, feed: dict[str, np.ndarray]) -> bool:
        from modelport.formats.onnx_format import load_model

        try:
            if os.path.getsize(self.path) > REFERENCE_MAX_BYTES:
                return False
            model = load_model(self.path, load_external_data=False, notes=[])
        except Exception:  # noqa: BLE001
            return False
        external = any(t.data_location == 1 for t in model.graph.initializer)  # TensorProto.EXTERNAL
        elements = sum(int(np.asarray(v).size) for v in feed.values())
        return not external and len(model.graph.node) <= REFERENCE_MAX_NODES and elements <= REFERENCE_MAX_INPUT_ELEMENTS

    def _reference_evaluator(self, feed: dict[str, np.ndarray]) -> Any:
        if self._reference is None and "onnx.reference" not in self._failed:
            if not self._small(feed):
                self._failed.add("onnx.reference")
                return None
            from onnx.reference import ReferenceEvaluator

            from modelport.formats.onnx_format import load_model

            try:
                self._reference = ReferenceEvaluator(load_model(self.path, notes=[]))
            except Exception:  # noqa: BLE001  (an op it does not implement)
                self._failed.add("onnx.reference")
        return self._reference

    def _rounding_sessions(self) -> list[tuple[str, Any]]:
        """onnxruntime sessions of the reference with its DynamicQuantizeLinear rounding moved one ulp
        up and down (``rounding_variants``); none for a model without one (or with external data)."""
        if self._rounding is None:
            self._rounding = []
            if "rounding" in self._failed:
                return self._rounding
            import onnxruntime as ort

            from modelport.formats.onnx_format import load_model
            from modelport.quiet import native_output

            try:
                header = load_model(self.path, load_external_data=False, notes=[])
                if any(t.data_location == 1 for t in header.graph.initializer) or not any(
                        n.op_type == "DynamicQuantizeLinear" and n.domain in ("", "ai.onnx") for n in header.graph.node):
                    return self._rounding
                so = ort.SessionOptions()
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no refusing into one kernel
                so.log_severity_level = 3
                with native_output():
                    for how, variant in rounding_variants(header):
                        self._rounding.append((how, ort.InferenceSession(variant.SerializeToString(), sess_options=so,
                                                                         providers=self._providers)))
            except Exception:  # noqa: BLE001  (no variant: the floor is measured without it)
                self._failed.add("rounding")
                self._rounding = []
        return self._rounding

    def _variants(self, feed: dict[str, np.ndarray], names: list[str]) -> list[tuple[str, dict[str, np.ndarray]]]:
        out = []
        arrays = {k: np.asarray(v) for k, v in feed.items()}
        session = self._unoptimized_session()
        if session is not None:
            try:
                out.append(("onnxruntime optimized vs unoptimized", dict(zip(names, session.run(names, arrays)))))
            except Exception:  # noqa: BLE001
                self._failed.add("onnxruntime")
        for how, sess in self._rounding_sessions():
            try:
                out.append((how, dict(zip(names, sess.run(names, arrays)))))
            except Exception:  # noqa: BLE001
                self._failed.add("rounding")
        evaluator = self._reference_evaluator(feed)
        if evaluator is not None:
            try:
                with np.errstate(all="ignore"):
                    out.append(("onnxruntime vs onnx.reference", dict(zip(names, evaluator.run(names, arrays)))))
            except Exception:  # noqa: BLE001
                self._failed.add("onnx.reference")
                self._reference = None
        return out

    def measure(self, feed: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                names: list[str] | None = None) -> dict[str, tuple[float, str]]:
        """(noise floor, how measured) per output in ``names`` (default all), from the variants that ran."""
        names = list(names or ref)
        variants = self._variants(feed, list(ref))
        floors: dict[str, tuple[float, str]] = {}
        for name in names:
            found = [(d, how) for how, outs in variants if name in outs and (d := _max_abs(ref[name], outs[name])) is not None]
            if found:
                floors[name] = (max(d for d, _ in found), ", ".join(how for _, how in found))
        return floors

    def close(self) -> None:
        self._unoptimized = self._reference = self._rounding = None

    def __enter__(self) -> NoiseProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NoiseJudge:
    """Re-judges the float outputs that miss their tolerance against the reference's own noise floor.

    ``judge(feed, ref, got, outputs, **compare_kwargs)`` returns ``outputs`` unchanged when all pass,
    when the judge is off (``enabled`` False, or the reference is not an onnxruntime runner), or when
    no variant could be measured; else the outputs compared again with the floors
    (``parity.compare_outputs(..., noise_floors=...)``). ``feed`` is the reference's own input set.
    """

    def __init__(self, reference: Any, on: bool | None = None) -> None:
        self.reference = reference
        self.on = (is_enabled() if on is None else on) and getattr(reference, "format", "") == "onnx"
        self._probe: NoiseProbe | None = None

    def __call__(self, feed: dict[str, np.ndarray], ref: dict[str, np.ndarray], got: dict[str, np.ndarray],
                 outputs: tuple[Any, ...], **compare_kwargs: Any) -> tuple[Any, ...]:
        from modelport.verify.parity import compare_outputs

        missed = [o.name for o in outputs if not o.ok and o.name in ref and np.asarray(ref[o.name]).dtype.kind in "fc"]
        if not self.on or not missed:
            return outputs
        self._probe = self._probe or NoiseProbe(self.reference)
        floors = self._probe.measure(feed, ref, missed)
        return compare_outputs(ref, got, noise_floors=floors, **compare_kwargs) if floors else outputs

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()

    def __enter__(self) -> NoiseJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
