"""RNN, GRU and LSTM as an explicit time loop (``_rnn``) over ONNX gate layouts
(LSTM: i, o, f, c; GRU: z, r, h), with sequence_lens, peepholes, clip and layout."""

from __future__ import annotations

from modelport.onnx2torch.codegen import Node, lit
from modelport.onnx2torch.registry import register


def _emit(n: Node, kind: str) -> None:
    args = [n.x(i) or "None" for i in range(min(n.n_in, 8))]
    args += ["None"] * (8 - len(args))
    x, w, r, b, lens, h0 = args[:6]
    c0 = args[6] if kind == "LSTM" else "None"
    p = args[7] if kind == "LSTM" else "None"
    call = (f'{n.helper("_rnn")}("{kind}", {x}, {w}, {r}, {b}, {lens}, {h0}, {c0}, {p}, '
            f'{n.attr("hidden_size")}, "{n.attr("direction", "forward")}", {n.attr("layout", 0)}, '
            f'{lit(n.attr("activations"))}, {lit(n.attr("clip"))}, {n.attr("linear_before_reset", 0)}, '
            f'{n.attr("input_forget", 0)})')
    outs = [j for j in range(n.n_out)]
    n.assign_many(f"{call}[:{len(outs)}]" if len(outs) > 1 else f"{call}[:1]", outs)
    if len(outs) == 1:
        n.g.lines[-1].text = n.g.lines[-1].text.replace(" = ", ", = ", 1)


@register("RNN", since=7)
def rnn_7(n: Node) -> None:
    _emit(n, "RNN")


@register("GRU", since=7)
def gru_7(n: Node) -> None:
    _emit(n, "GRU")


@register("LSTM", since=7)
def lstm_7(n: Node) -> None:
    _emit(n, "LSTM")
