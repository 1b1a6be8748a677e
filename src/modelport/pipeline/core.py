"""Step and Pipeline: every command is a plan of steps, run, verified and recorded in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from modelport.artifact import Artifact, StepRecord
from modelport.errors import CheckFailedError
from modelport.pipeline.lineage import write_lineage
from modelport.pipeline.staging import Staging
from modelport.quiet import native_output

__all__ = ["Step", "StepResult", "Verdict", "Pipeline", "PipelineResult"]


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one step produced: the artifact (inside the staging area), its record, and its notes."""

    artifact: Artifact
    record: StepRecord
    warnings: tuple[str, ...] = ()
    tolerance: tuple[float, float] | None = None  # (rtol, atol) its output is verified at, if not the default
    details: Any = None  # step-specific results a command reports (layers pruned, boundaries changed, ...)


@runtime_checkable
class Step(Protocol):
    """One arrow of the picture: a converter edge, an ONNX pass, quantize, prune, distill, export."""

    name: str

    def describe(self) -> str:
        """One progress line: what the step is about to do."""
        ...

    def run(self, artifact: Artifact, staging: Staging) -> StepResult:
        """Produce the next artifact from ``artifact``, writing only inside ``staging``'s scratch dirs."""
        ...


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A verification of the pipeline's result against its source, computed by the command's verifier."""

    ok: bool
    summary: str
    parity: Any = None  # a ParityReport where outputs were compared
    metric: Any = None  # task metrics where they were measured
    enforce: bool = True  # False: recorded and reported, but a failure does not stop the command


# (source, result, the loosest tolerance the steps stated) -> Verdict
Verifier = Callable[[Artifact, Artifact, "tuple[float, float] | None"], Verdict]


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    artifact: Artifact
    results: tuple[StepResult, ...]
    verdict: Verdict | None

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(w for r in self.results for w in r.warnings)


class Pipeline:
    """Runs steps in order, verifies the result, writes its lineage (the source's plus one record per step).

    A failed verification raises CheckFailedError: the staging area then places nothing.
    """

    def __init__(self, steps: Sequence[Step], *, verify: Verifier | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.steps = tuple(steps)
        self.verify = verify
        self.say = progress or (lambda _msg: None)

    def run(self, source: Artifact, staging: Staging) -> PipelineResult:
        current, results = source, []
        for step in self.steps:
            self.say(step.describe())
            with native_output():  # frameworks' C++ INFO lines stay off the terminal
                res = step.run(current, staging)
            results.append(res)
            current = res.artifact
        verdict = None
        records = [r.record for r in results]
        if self.verify is not None and results:
            self.say("verifying")
            tolerances = [r.tolerance for r in results if r.tolerance]
            loosest = (max(t[0] for t in tolerances), max(t[1] for t in tolerances)) if tolerances else None
            verdict = self.verify(source, current, loosest)
            if verdict.enforce:  # an informational comparison does not decide what the step proved
                records[-1] = dataclasses.replace(records[-1], verified=verdict.ok)
            if not verdict.ok and verdict.enforce:
                raise CheckFailedError(verdict.summary, report=verdict.parity, path=source.path)
        lineage = source.lineage + tuple(records)
        write_lineage(current.path, current.format, lineage)
        return PipelineResult(dataclasses.replace(current, lineage=lineage), tuple(results), verdict)
