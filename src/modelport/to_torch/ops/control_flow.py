"""If, Loop and Scan as Python control flow over converted subgraphs.

Subgraph statements are inlined into ``forward`` at a deeper indent; outer-scope values
are visible to them by name. A constant If condition selects its branch at codegen time;
any other becomes ``if bool(cond): ... else: ...``, each branch computing its values inside
its own block and assigning the If's outputs, so branches may differ in shape (a model
picking a sub-network from an input) and nested Ifs nest blocks.
"""

from __future__ import annotations

from modelport.to_torch.codegen import Graph, Line, Node, Value
from modelport.to_torch.registry import register


def _outs(n: Node) -> list[str]:
    return [n.out(j) if n.has_out(j) else n.tmp("unused") for j in range(n.n_out)]


def _bind_outs(n: Node, names: list[str], kinds: list[str] | None = None) -> None:
    for j, name in enumerate(names):
        n.set(j, Value(name, kinds[j] if kinds else "tensor"))


def _branch(n: Node, attr: str) -> tuple[list[Line], list[str], list[str]]:
    """Converts branch ``attr`` of an If: its lines, its outputs' sources and their kinds.

    The branch is a child scope of the If's graph, so a name it reads from outside (an
    input, an initializer, a value computed before the If, an enclosing branch's value)
    resolves to the outer Python variable or ``self.<attr>`` through ``Graph.lookup``.
    """
    sub = Graph(n.ms, n.attr(attr), n.g)
    sub.convert_nodes()
    outs, kinds = [], []
    for o in sub.graph.output:
        kind = sub.lookup(o.name).kind
        outs.append(sub.materialize(o.name))
        kinds.append("seq" if kind == "seq" else "tensor")
    return sub.lines, outs, kinds


def _assign(n: Node, names: list[str], outs: list[str], indent: int) -> None:
    """``y = then_out`` (or ``y0, y1 = a, b``): the If's outputs, set by the branch taken."""
    if not names:
        return
    n.emit(f"{', '.join(names)} = {', '.join(outs)}", indent, tuple(o for o in n.node.output if o))


def _condition(n: Node) -> str:
    v = n.val(0)
    if v.kind == "scalar":  # a Python number or bool already (shape arithmetic)
        return f"bool({v.expr})"
    if v.kind == "shape":
        return f"bool({v.expr}[0])"
    return f"bool({n.x(0)})"


@register("If", since=1)
def if_1(n: Node) -> None:
    """A constant condition selects its branch at codegen time; otherwise ``if bool(cond):``
    with each branch's statements inside its block, so branches may differ in shape, and
    only the branch taken runs (as in onnxruntime)."""
    c = n.const(0)
    names = _outs(n)
    if c is not None:
        lines, outs, kinds = _branch(n, "then_branch" if bool(c.reshape(-1)[0]) else "else_branch")
        n.emit_block(lines, 0)
        _assign(n, names, outs, 0)
        _bind_outs(n, names, kinds)
        return
    cond = _condition(n)
    then_lines, then_outs, then_kinds = _branch(n, "then_branch")
    else_lines, else_outs, else_kinds = _branch(n, "else_branch")
    if len(then_outs) != len(names) or len(else_outs) != len(names):
        raise n.fail(f"If has {len(names)} output(s) but its branches return "
                     f"{len(then_outs)} and {len(else_outs)}")
    n.emit(f"if {cond}:")
    n.emit_block(then_lines, 1)
    _assign(n, names, then_outs, 1)
    if not names and all(ln.text.startswith("#") for ln in then_lines):
        n.emit("pass", 1)  # a block of comments alone is no block
    n.emit("else:")
    n.emit_block(else_lines, 1)
    _assign(n, names, else_outs, 1)
    if not names and all(ln.text.startswith("#") for ln in else_lines):
        n.emit("pass", 1)  # a block of comments alone is no block
    kinds = [k if k == e else "tensor" for k, e in zip(then_kinds, else_kinds)]
    _bind_outs(n, names, kinds)


@register("Loop", since=1)
def loop_1(n: Node) -> None:
    body = n.attr("body")
    n_carried = len(n.node.input) - 2
    carried = [n.tmp(body.input[2 + k].name) for k in range(n_carried)]
    for k, var in enumerate(carried):
        n.emit(f"{var} = {n.x(2 + k) or 'None'}")
    cond, it = n.tmp("cond"), n.tmp("i")
    n.emit(f"{cond} = {'bool(' + n.x(1) + ')' if n.has(1) else 'True'}")
    n_scan = len(body.output) - 1 - n_carried
    scans = [n.tmp("scan") for _ in range(n_scan)]
    for s in scans:
        n.emit(f"{s} = []")
    trip = n.scalar(0) if n.has(0) else None
    it_t, cond_t = n.tmp(body.input[0].name), n.tmp(body.input[1].name)
    bind = {body.input[0].name: Value(it_t), body.input[1].name: Value(cond_t)}
    for k, var in enumerate(carried):
        kind = "seq" if body.input[2 + k].type.HasField("sequence_type") else "tensor"
        bind[body.input[2 + k].name] = Value(var, kind)
    lines, outs = n.subgraph("body", bind)
    n.emit(f"for {it} in range(int({trip})):" if trip else f"{it} = -1")
    ind = 1
    if not trip:
        n.emit("while True:")
        n.emit(f"{it} += 1", 1)
    n.emit(f"if not {cond}:", ind)
    n.emit("break", ind + 1)
    n.emit(f"{it_t} = torch.tensor({it}, dtype=torch.int64)", ind)
    n.emit(f"{cond_t} = torch.tensor({cond})", ind)
    n.emit_block(lines, ind)
    n.emit(f"{cond} = bool({outs[0]})", ind)
    if carried:
        n.emit(f"{', '.join(carried)}, = {', '.join(outs[1:1 + n_carried])},", ind)
    for s, o in zip(scans, outs[1 + n_carried:]):
        n.emit(f"{s}.append({o})", ind)
    for k, var in enumerate(carried):
        kind = "seq" if body.input[2 + k].type.HasField("sequence_type") else "tensor"
        n.assign(var, k)
        n.set(k, Value(n.out(k), kind))
    for j, s in enumerate(scans):
        n.assign(f"torch.stack({s})", n_carried + j)


@register("Scan", since=9)
def scan_9(n: Node) -> None:
    body = n.attr("body")
    m = n.attr("num_scan_inputs")
    n_state = len(n.node.input) - m
    n_scan_out = len(body.output) - n_state
    in_axes = n.attr("scan_input_axes") or [0] * m
    in_dirs = n.attr("scan_input_directions") or [0] * m
    out_axes = n.attr("scan_output_axes") or [0] * n_scan_out
    out_dirs = n.attr("scan_output_directions") or [0] * n_scan_out
    states = [n.tmp(body.input[k].name) for k in range(n_state)]
    for k, var in enumerate(states):
        n.emit(f"{var} = {n.x(k)}")
    scans = [n.tmp("scan") for _ in range(n_scan_out)]
    for s in scans:
        n.emit(f"{s} = []")
    xs = [n.x(n_state + i) for i in range(m)]
    elems = [n.tmp(body.input[n_state + i].name) for i in range(m)]
    bind = {body.input[k].name: Value(states[k]) for k in range(n_state)}
    bind.update({body.input[n_state + i].name: Value(elems[i]) for i in range(m)})
    lines, outs = n.subgraph("body", bind)
    t, length = n.tmp("t"), n.tmp("seq_len")
    n.emit(f"{length} = {xs[0]}.shape[{in_axes[0]}]")
    n.emit(f"for {t} in range({length}):")
    for i in range(m):
        idx = f"{length} - 1 - {t}" if in_dirs[i] else t
        n.emit(f"{elems[i]} = {xs[i]}.select({in_axes[i]}, {idx})", 1)
    n.emit_block(lines, 1)
    if states:
        n.emit(f"{', '.join(states)}, = {', '.join(outs[:n_state])},", 1)
    for s, o in zip(scans, outs[n_state:]):
        n.emit(f"{s}.append({o})", 1)
    for k, var in enumerate(states):
        n.assign(var, k)
    for j, s in enumerate(scans):
        seq = f"{s}[::-1]" if out_dirs[j] else s
        n.assign(f"torch.stack({seq}, dim={out_axes[j]})", n_state + j)
