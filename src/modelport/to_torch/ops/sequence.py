"""Sequence and Optional ops: ONNX sequences are Python lists, a missing optional is None."""

from __future__ import annotations

from modelport.to_torch.codegen import Node, Value
from modelport.to_torch.registry import register


def _seq(n: Node, i: int) -> str:
    v = n.val(i)
    return v.expr


@register("SequenceEmpty", since=11)
def sequenceempty_11(n: Node) -> None:
    n.assign("[]", kind="seq")


@register("SequenceConstruct", since=11)
def sequenceconstruct_11(n: Node) -> None:
    n.assign(f"[{', '.join(n.xs())}]", kind="seq")


@register("SequenceInsert", since=11)
def sequenceinsert_11(n: Node) -> None:
    s, t = _seq(n, 0), n.x(1)
    if n.has(2):
        n.assign(f"{s}[:int({n.x(2)})] + [{t}] + {s}[int({n.x(2)}):]" if False else
                 f"{n.helper('_seq_insert')}({s}, {t}, int({n.x(2)}))", kind="seq")
    else:
        n.assign(f"{s} + [{t}]", kind="seq")


@register("SequenceAt", since=11)
def sequenceat_11(n: Node) -> None:
    n.assign(f"{_seq(n, 0)}[int({n.x(1)})]")


@register("SequenceErase", since=11)
def sequenceerase_11(n: Node) -> None:
    pos = f"int({n.x(1)})" if n.has(1) else "-1"
    n.assign(f"{n.helper('_seq_erase')}({_seq(n, 0)}, {pos})", kind="seq")


@register("SequenceLength", since=11)
def sequencelength_11(n: Node) -> None:
    n.assign(f"len({_seq(n, 0)})", kind="scalar")


@register("ConcatFromSequence", since=11)
def concatfromsequence_11(n: Node) -> None:
    fn = "torch.stack" if n.attr("new_axis", 0) else "torch.cat"
    n.assign(f"{fn}({_seq(n, 0)}, dim={n.attr('axis')})")


@register("SplitToSequence", since=11)
def splittosequence_11(n: Node) -> None:
    x, axis, keep = n.x(0), n.attr("axis", 0), n.attr("keepdims", 1)
    if n.has(1):
        c = n.const(1)
        split = (str(int(c)) if c.ndim == 0 else str([int(v) for v in c])) if c is not None else \
            f"{n.x(1)}.tolist()"
        n.assign(f"list(torch.split({x}, {split}, dim={axis}))", kind="seq")
    elif keep:
        n.assign(f"list(torch.split({x}, 1, dim={axis}))", kind="seq")
    else:
        n.assign(f"list(torch.unbind({x}, dim={axis}))", kind="seq")


@register("SequenceMap", since=17)
def sequencemap_17(n: Node) -> None:
    body = n.attr("body")
    i = n.tmp("i")
    elems = [n.tmp(inp.name) for inp in body.input]
    bind = {inp.name: Value(e) for inp, e in zip(body.input, elems)}
    lines, outs = n.subgraph("body", bind)
    results = [n.tmp("mapped") for _ in body.output]
    for r in results:
        n.emit(f"{r} = []")
    n.emit(f"for {i} in range(len({_seq(n, 0)})):")
    for k, e in enumerate(elems):
        seq_in = n.val(k).kind == "seq"
        n.emit(f"{e} = {n.val(k).expr}[{i}]" if seq_in else f"{e} = {n.x(k)}", 1)
    n.emit_block(lines, 1)
    for r, o in zip(results, outs):
        n.emit(f"{r}.append({o})", 1)
    for j, r in enumerate(results):
        n.set(j, Value(r, "seq"))


@register("Optional", since=15)
def optional_15(n: Node) -> None:
    n.assign(n.x(0) if n.has(0) else "None", kind="tensor" if n.has(0) else "none")


@register("OptionalHasElement", since=15)
def optionalhaselement_15(n: Node) -> None:
    if not n.has(0):
        n.assign("torch.tensor(False)")
        return
    n.assign(f"torch.tensor({n.val(0).expr} is not None)")


@register("OptionalGetElement", since=15)
def optionalgetelement_15(n: Node) -> None:
    v = n.val(0)
    n.assign(v.expr, kind="seq" if v.kind == "seq" else "tensor")
