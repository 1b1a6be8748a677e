"""Losses: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss."""

from __future__ import annotations

from modelport.to_torch.codegen import Node, lit
from modelport.to_torch.registry import register


@register("NegativeLogLikelihoodLoss", since=12)
def negativeloglikelihoodloss_12(n: Node) -> None:
    n.assign(f'{n.helper("_nll_loss")}({n.x(0)}, {n.x(1)}, {n.x(2) or "None"}, '
             f'"{n.attr("reduction", "mean")}", {lit(n.attr("ignore_index"))})')


@register("SoftmaxCrossEntropyLoss", since=12)
def softmaxcrossentropyloss_12(n: Node) -> None:
    logp = n.out(1) if n.has_out(1) else n.tmp("log_prob")
    n.emit(f"{logp} = torch.log_softmax({n.x(0)}, dim=1)", defines=(n.node.output[1],) if n.has_out(1) else ())
    from modelport.to_torch.codegen import Value
    n.set(1, Value(logp))
    n.assign(f'{n.helper("_nll_loss")}({logp}, {n.x(1)}, {n.x(2) or "None"}, '
             f'"{n.attr("reduction", "mean")}", {lit(n.attr("ignore_index"))})')
