"""ONNX Runtime contrib ops (domain ``com.microsoft``) that its transformer optimizer writes.

``Gelu`` / ``BiasGelu`` (erf GELU, BiasGelu of ``x + bias``), ``FastGelu`` (tanh approximation,
optional bias), ``SkipLayerNormalization`` (LayerNorm over the last axis of
``input + skip (+ bias)``), ``FusedConv`` (Conv, optional ``Z`` added, then an activation),
``EmbedLayerNormalization`` and ``Attention`` (BERT's fused embeddings and self-attention, mask_index
1-D / 2-D / 3-D, no key/value cache) and their quantized forms ``QEmbedLayerNormalization`` and
``QAttention`` (``quantize_dynamic`` of an optimized BERT). All are version 1 of the domain.
"""

from __future__ import annotations

from modelport.to_torch.codegen import Node, lit
from modelport.to_torch.ops.conv import conv_1
from modelport.to_torch.registry import register

MS = "com.microsoft"


def _biased(n: Node) -> str:
    """Input 0 plus the optional bias input 1."""
    x = n.x(0)
    return f"{x} + {n.x(1)}" if n.has(1) else x


@register("Gelu", since=1, domain=MS)
def gelu_ms_1(n: Node) -> None:
    n.assign(f"F.gelu({n.x(0)})")


@register("BiasGelu", since=1, domain=MS)
def biasgelu_ms_1(n: Node) -> None:
    if not n.has(1):
        raise n.fail("BiasGelu without its bias input")
    n.assign(f"F.gelu({_biased(n)})")


@register("FastGelu", since=1, domain=MS)
def fastgelu_ms_1(n: Node) -> None:
    n.assign(f'F.gelu({_biased(n)}, approximate="tanh")')


@register("SkipLayerNormalization", since=1, domain=MS)
def skiplayernormalization_ms_1(n: Node) -> None:
    # Outputs 1 and 2 (mean, inv_std_var) are training-time statistics whose shapes ONNX Runtime
    # does not pin down in its schema; only the result and the input+skip+bias sum are converted.
    for j, what in ((1, "mean"), (2, "inv_std_var")):
        if n.has_out(j):
            raise n.fail(f"SkipLayerNormalization output {j} ({what}) is not supported; "
                         "only output 0 and input_skip_bias_sum (output 3) are")
    if n.n_out > 4:
        raise n.fail(f"SkipLayerNormalization with {n.n_out} outputs (at most 4)")
    eps = n.attr("epsilon", 1e-12)
    gshape = n.shape(2)
    if gshape is not None and len(gshape) != 1:
        raise n.fail(f"SkipLayerNormalization gamma of rank {len(gshape)} (1 expected)")
    x, skip = n.x(0), n.x(1)
    summed = f"{x} + {skip}" + (f" + {n.x(4)}" if n.has(4) else "")
    if n.has_out(3):
        s = n.assign(summed, 3)
    else:
        s = n.tmp("skip_sum")
        n.emit(f"{s} = {summed}")
    gamma, beta = n.x(2), n.x(3) if n.has(3) else None
    width = f"{gamma}.shape[-1:]"
    n.assign(f"F.layer_norm({s}, {width}, {gamma}, {beta or 'None'}, eps={lit(eps)})")


def _activation(n: Node, y: str) -> str:
    act = n.attr("activation", "")
    params = list(n.attr("activation_params") or [])
    if act in ("", "Identity"):
        return y
    if act == "Relu":
        return f"F.relu({y})"
    if act == "Tanh":
        return f"torch.tanh({y})"
    if act == "Sigmoid":
        return f"torch.sigmoid({y})"
    if act == "LeakyRelu":
        return f"F.leaky_relu({y}, {lit(params[0] if params else 0.01)})"
    if act == "Clip":
        if len(params) != 2:
            raise n.fail("FusedConv Clip needs activation_params [min, max]")
        return f"torch.clamp({y}, {lit(params[0])}, {lit(params[1])})"
    if act == "HardSigmoid":
        a, b = (params + [0.2, 0.5][len(params):])[:2]
        return f"torch.clamp({lit(a)} * ({y}) + {lit(b)}, 0, 1)"
    raise n.fail(f"FusedConv activation {act!r} is not supported "
                 "(Relu, Tanh, Sigmoid, LeakyRelu, Clip, HardSigmoid are)")


@register("FusedConv", since=1, domain=MS)
def fusedconv_ms_1(n: Node) -> None:
    _activation(n, "y")  # refuse an unknown activation before any code is emitted
    conv_1(n)
    y = n.out(0)
    if n.has(3):
        y = f"{y} + {n.x(3)}"
    expr = _activation(n, y)
    if expr != n.out(0):
        n.assign(expr)


@register("Attention", since=1, domain=MS)
def attention_ms_1(n: Node) -> None:
    """The BERT-style fused attention: input, QKV weights and bias, optional mask_index and
    attention bias (input 5). Past/present key-value state is refused."""
    for i, what in ((4, "past"), (6, "past_sequence_length")):
        if n.has(i):
            raise n.fail(f"Attention with a {what} input (key/value caching) is not supported")
    if n.has_out(1):
        raise n.fail("Attention's present output (key/value caching) is not supported")
    for a in ("do_rotary", "rotary_embedding_dim", "past_present_share_buffer"):
        if n.attr(a, 0):
            raise n.fail(f"Attention with {a} is not supported")
    wshape = n.shape(1)
    if n.const(1) is None and wshape is None:
        raise n.fail("Attention weights of unknown shape")
    mrank = n.rank(3) if n.has(3) else None
    if mrank is not None and mrank not in (1, 2, 3):
        raise n.fail(f"Attention mask_index of rank {mrank} (1, 2 or 3 are supported)")
    if n.rank(0) not in (None, 3):
        raise n.fail(f"Attention input of rank {n.rank(0)} (3 expected)")
    sizes = n.attr("qkv_hidden_sizes")
    scale = n.attr("scale", 0.0)
    args = ", ".join(n.x(i) or "None" for i in (0, 1, 2, 3, 5))
    n.assign(f"{n.helper('_ms_attention')}({args}, {n.attr('num_heads')}, {lit(list(sizes) if sizes else None)}, "
             f"{n.attr('unidirectional', 0)}, {lit(float(n.attr('mask_filter_value', -10000.0)))}, "
             f"{lit(float(scale)) if scale else 'None'})")


@register("EmbedLayerNormalization", since=1, domain=MS)
def embedlayernormalization_ms_1(n: Node) -> None:
    for i, what in ((0, "input_ids"), (2, "word_embedding"), (3, "position_embedding"), (5, "gamma"), (6, "beta")):
        if not n.has(i):
            raise n.fail(f"EmbedLayerNormalization without {what}")
    if n.has(1) != n.has(4):
        raise n.fail("EmbedLayerNormalization with segment_ids but no segment_embedding (or the reverse)")
    args = ", ".join(n.x(i) or "None" for i in range(9))
    n.assign_many(f"{n.helper('_embed_layer_norm')}({args}, {lit(float(n.attr('epsilon', 1e-12)))})", [0, 1, 2])


@register("QAttention", since=1, domain=MS)
def qattention_ms_1(n: Node) -> None:
    """quantize_dynamic's Attention: uint8 input (with its scale and zero point), int8/uint8 QKV weights."""
    if n.has(8):
        raise n.fail("QAttention with a past input (key/value caching) is not supported")
    if n.has_out(1):
        raise n.fail("QAttention's present output (key/value caching) is not supported")
    for i, what in ((3, "input_scale"), (4, "weight_scale")):
        if not n.has(i):
            raise n.fail(f"QAttention without {what}")
    mrank = n.rank(5) if n.has(5) else None
    if mrank is not None and mrank not in (1, 2, 3):
        raise n.fail(f"QAttention mask_index of rank {mrank} (1, 2 or 3 are supported)")
    scale = n.attr("scale", 0.0)
    args = ", ".join(n.x(i) or "None" for i in range(8))
    n.assign(f"{n.helper('_qattention')}({args}, {n.attr('num_heads')}, {n.attr('unidirectional', 0)}, "
             f"{lit(float(n.attr('mask_filter_value', -10000.0)))}, {lit(float(scale)) if scale else 'None'})")


@register("QEmbedLayerNormalization", since=1, domain=MS)
def qembedlayernormalization_ms_1(n: Node) -> None:
    for i, what in ((0, "input_ids"), (2, "word_embedding"), (3, "position_embedding"), (5, "gamma"), (6, "beta")):
        if not n.has(i) or not n.has(i + 6 if i >= 2 else i) or (i >= 2 and not n.has(i + 11)):
            raise n.fail(f"QEmbedLayerNormalization without {what} (or its scale / zero point)")
    if n.has(1) != n.has(4):
        raise n.fail("QEmbedLayerNormalization with segment_ids but no segment_embedding (or the reverse)")
    if n.n_out > 2:
        raise n.fail(f"QEmbedLayerNormalization with {n.n_out} outputs (at most 2)")
    args = ", ".join(n.x(i) or "None" for i in range(18))
    n.assign_many(f"{n.helper('_qembed_layer_norm')}({args}, {lit(float(n.attr('epsilon', 1e-12)))})", [0, 1])
