"""Where a step is run, verified, recorded and its outputs placed.

Every command builds a plan of ``Step``s and runs it with one ``Pipeline`` inside one
``Staging`` area: ``convert`` (one step per converter edge), ``adapt`` (one step of composed
ONNX passes), ``compress`` (structured pruning, then quantize/prune under the budget) and
``distill`` (train, then export). Lineage has one writer (``write_lineage``).
"""

from __future__ import annotations

from modelport.pipeline.core import Pipeline, PipelineResult, Step, StepResult, Verdict, Verifier
from modelport.pipeline.lineage import LINEAGE_FILE, LINEAGE_KEY, read_lineage, write_lineage
from modelport.pipeline.staging import Staging

__all__ = ["Pipeline", "PipelineResult", "Step", "StepResult", "Verdict", "Verifier", "Staging",
           "LINEAGE_FILE", "LINEAGE_KEY", "read_lineage", "write_lineage"]
