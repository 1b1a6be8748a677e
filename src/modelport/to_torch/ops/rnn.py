"""RNN, GRU and LSTM.

Where the attributes match what ``nn.LSTM`` / ``nn.GRU`` compute, the node becomes that
layer: constant W, R (and B), default activations, no clip, no peepholes, no
sequence_lens, direction forward or bidirectional and, for GRU, ``linear_before_reset=1``
(torch's GRU applies the reset gate after the recurrent matmul). The gate blocks are
reordered from ONNX's layout to torch's:

    LSTM  ONNX i, o, f, c  ->  torch i, f, g(=c), o
    GRU   ONNX z, r, h     ->  torch r, z, n(=h)

and ``B[d] = [Wb, Rb]`` splits into ``bias_ih`` / ``bias_hh``. Every other case is an
explicit time loop (``_rnn``) with sequence_lens, peepholes, clip and layout.

onnxruntime's ``DynamicQuantizeLSTM`` (com.microsoft, what quantize_dynamic makes of an LSTM) is
the loop ``_qlstm``, which repeats that kernel's dynamic quantization of X and of each step's state.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from modelport.to_torch import naming
from modelport.to_torch.codegen import Node, lit
from modelport.to_torch.registry import register

_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
#: torch's gate order as indices into ONNX's gate blocks
_TORCH_GATES = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2)}


def _layer_reason(n: Node, kind: str) -> str:
    """'' when nn.LSTM / nn.GRU computes exactly this node, else why not."""
    direction = n.attr("direction", "forward")
    acts = n.attr("activations")
    if direction not in ("forward", "bidirectional"):
        return f"direction {direction}"
    dirs = 2 if direction == "bidirectional" else 1
    if acts and list(acts) != _DEFAULT_ACTS[kind] * dirs:
        return "non-default activations"
    if n.attr("clip") is not None or n.attr("input_forget", 0):
        return "clip / input_forget"
    if kind == "GRU" and not n.attr("linear_before_reset", 0):
        return "linear_before_reset=0"
    if n.const(1) is None or n.const(2) is None or (n.has(3) and n.const(3) is None):
        return "non-constant weights"
    if n.has(4):
        return "sequence_lens"
    if kind == "LSTM" and n.has(7) and (n.const(7) is None or np.any(n.const(7))):
        return "peepholes"
    if n.const(1).dtype not in (np.float32, np.float64):
        return "dtype"
    return ""


def _emit_layer(n: Node, kind: str) -> None:
    w, r = n.const(1), n.const(2)
    b = n.const(3) if n.has(3) else None
    dirs, hs, inp = w.shape[0], r.shape[-1], w.shape[-1]
    order = _TORCH_GATES[kind]

    def gates(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[g * hs:(g + 1) * hs] for g in order], 0)

    params = {}
    for d in range(dirs):
        sfx = "_l0" + ("_reverse" if d else "")
        params[f"weight_ih{sfx}"] = gates(w[d])
        params[f"weight_hh{sfx}"] = gates(r[d])
        if b is not None:
            params[f"bias_ih{sfx}"] = gates(b[d, : len(order) * hs])
            params[f"bias_hh{sfx}"] = gates(b[d, len(order) * hs:])
    layout = n.attr("layout", 0)
    opts = "".join([", bias=False" if b is None else "", ", batch_first=True" if layout else "",
                    ", bidirectional=True" if dirs == 2 else "",
                    ", dtype=torch.float64" if w.dtype == np.float64 else ""])
    hint = naming.identifier(n.initializer_name(1).removesuffix(".weight"), short=False, fallback=kind.lower())
    layer = n.layer(hint, f"nn.{kind}({inp}, {hs}{opts})", params)
    x = n.x(0)
    state = []
    for i in ((5, 6) if kind == "LSTM" else (5,)):
        s = n.x(i) if n.has(i) else None
        if s is not None and layout:
            s = f"{s}.transpose(0, 1).contiguous()"
        state.append(s)
    if any(s is not None for s in state):
        if kind == "LSTM":
            h0, c0 = state
            zeros = f"{x}.new_zeros({dirs}, {x}.shape[{0 if layout else 1}], {hs})"
            arg = f", ({h0 or zeros}, {c0 or zeros})"
        else:
            arg = f", {state[0]}"
    else:
        arg = ""
    y, st = n.tmp(f"{kind.lower()}_y"), n.tmp(f"{kind.lower()}_state")
    n.emit(f"{y}, {st} = {layer}({x}{arg})")
    # torch: y [seq, batch, dirs * hs] (batch_first: [batch, seq, ...]); states [dirs, batch, hs]
    n.assign(f"{y}.unflatten(-1, ({dirs}, {hs}))" + ("" if layout else ".transpose(1, 2)"), 0)
    hn, cn = (f"{st}[0]", f"{st}[1]") if kind == "LSTM" else (st, None)
    if n.has_out(1):
        n.assign(f"{hn}.transpose(0, 1)" if layout else hn, 1)
    if kind == "LSTM" and n.has_out(2):
        n.assign(f"{cn}.transpose(0, 1)" if layout else cn, 2)


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
    if _layer_reason(n, "GRU"):
        _emit(n, "GRU")
    else:
        _emit_layer(n, "GRU")


@register("LSTM", since=7)
def lstm_7(n: Node) -> None:
    if _layer_reason(n, "LSTM"):
        _emit(n, "LSTM")
    else:
        _emit_layer(n, "LSTM")


_QLSTM_ACTS = ("Sigmoid", "Tanh", "Relu")


@register("DynamicQuantizeLSTM", since=1, domain="com.microsoft")
def dynamicquantizelstm_ms_1(n: Node) -> None:
    """onnxruntime's quantized LSTM (``quantize_dynamic`` writes it): the runtime function ``_qlstm``
    repeats its kernel's dynamic quantization of X and of each step's hidden state."""
    direction = n.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise n.fail(f"DynamicQuantizeLSTM direction {direction!r}")
    acts = n.attr("activations")
    if acts and any(a not in _QLSTM_ACTS for a in acts):
        raise n.fail(f"DynamicQuantizeLSTM activations {list(acts)} (only Sigmoid, Tanh, Relu are supported)")
    if n.has_attr("activation_alpha") or n.has_attr("activation_beta"):
        raise n.fail("DynamicQuantizeLSTM activation_alpha / activation_beta are not supported")
    if n.attr("layout", 0):
        raise n.fail("DynamicQuantizeLSTM with layout=1")
    for i, what in ((8, "W_scale"), (10, "R_scale")):
        if not n.has(i):
            raise n.fail(f"DynamicQuantizeLSTM without its {what} input")
    xdt = n.dtype(0)
    if xdt is not None and xdt != TensorProto.FLOAT:
        raise n.fail("DynamicQuantizeLSTM on a non-float32 X")
    args = ", ".join(n.x(i) or "None" for i in range(12))
    call = (f'{n.helper("_qlstm")}({args}, "{direction}", {lit(list(acts) if acts else None)}, '
            f'{lit(n.attr("clip"))}, {n.attr("input_forget", 0)}, {int(n.has_out(0))})')
    n.assign_many(call, [0, 1, 2])
