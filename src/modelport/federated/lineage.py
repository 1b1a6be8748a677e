"""The global model of a federation as a registry version: its step records the federation.

The step (stored with the version, shown by `modelport registry lineage`) names the command,
the strategy, the rounds, the mode, each client's name and framework and its mapping's parity,
the differential-privacy settings and the global model's metrics after every round; the ONNX
file itself carries the same run as the last record of its lineage (``modelport.lineage``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["step_of", "register_global"]


def step_of(report) -> dict[str, Any]:
    """The registry step record of a FederateReport."""
    return {
        "command": "federate",
        "mode": report.mode,
        "strategy": report.strategy,
        "rounds": len([r for r in report.rounds if r.round > 0]),
        "client_frameworks": sorted({c.framework for c in report.clients}),
        "clients": [{"name": c.name, "framework": c.framework, "examples": c.examples,
                     "mapping_max_abs_err": c.mapping_max_abs_err, "round_trip_exact": c.round_trip_exact}
                    for c in report.clients],
        "per_round": [{"round": r.round, "accuracy": r.accuracy, "loss": r.loss, "replies": r.replies,
                       "failures": list(r.failures)} for r in report.rounds],
        "dp": report.dp,
        "secagg": report.secagg,
        "config": report.config,
        "seconds": report.seconds,
    }


def register_global(report, name: str, registry: str | None = None) -> dict[str, str]:
    """Add the report's output as the next version of ``name``; returns {"version": ref, "registry": url}."""
    from modelport.pipeline.lineage import read_lineage
    from modelport.registry.store import Registry

    metrics = {"accuracy": report.final_accuracy} if report.final_accuracy is not None else None
    with Registry.open(registry, create=True) as reg:
        version = reg.add(report.output, name, step=step_of(report), lineage=read_lineage(report.output) or None,
                          metrics=metrics, tags={"federated": report.strategy}, fmt="onnx")
        return {"version": version.ref, "registry": str(reg.url)}
