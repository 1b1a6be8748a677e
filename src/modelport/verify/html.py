"""One self-contained HTML page of a parity comparison, for people to look at.

``write_report(path, parity, ...)`` writes a single file that renders in a browser with no
network: inline CSS, no script, plots as PNG ``data:`` URIs (matplotlib, Agg canvas, no pyplot
state), and a Content-Security-Policy that forbids fetching anything. It holds:

* the verdict (PASS/FAIL, from ``parity.ok``), A and B with their formats, where the inputs came from;
* the parity table: one row per run per output, with shapes, every metric, tolerances and the reason;
* the failure file and the command that reproduces the failure, when the report has them;
* per output, given ``diffs``: a histogram of log10 |a - b| with the tolerance as a vertical line,
  and a caption that counts what a log axis cannot show (exact zeros, NaN, inf);
* given ``localization``: the per-layer error curve (max rel error of each compared tensor, in
  graph order, the first divergent one highlighted) and the table of compared tensors;
* given ``route``: the steps that produced B (tool, versions, detail, whether each was verified);
* the versions of modelport, Python and every framework installed.

Every string from a model, a report or the caller is HTML-escaped. The file is written
atomically: whole, or not at all.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import html
import io
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelport.artifact import StepRecord
from modelport.errors import BadInputError, MissingExtraError
from modelport.verify.parity import OutputParity, ParityReport, match_names

__all__ = ["write_report", "render_report", "output_diffs", "failure_diffs", "format_number", "PNG_DATA_URI"]

PNG_DATA_URI = "data:image/png;base64,"

# Nothing may be fetched: images only from data: URIs, styles only inline, no script at all.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_CSS = """
:root { --pass: #1a7f37; --fail: #cf222e; --muted: #57606a; --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; padding: 1.5rem; max-width: 1200px; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem 0; word-break: break-all; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid var(--line); padding-bottom: .25rem; }
header { border-left: .5rem solid var(--muted); padding: .75rem 1rem; background: var(--bg); }
header.pass { border-color: var(--pass); }
header.fail { border-color: var(--fail); }
.verdict { font-size: 2rem; font-weight: 700; margin: .25rem 0; letter-spacing: .05em; }
header.pass .verdict { color: var(--pass); }
header.fail .verdict { color: var(--fail); }
.summary { margin: 0; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .875rem; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: var(--bg); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { width: 10rem; }
tr.fail td { background: #ffebe9; }
tr.divergent td { background: #fff8c5; font-weight: 600; }
.ok { color: var(--pass); font-weight: 600; }
.bad { color: var(--fail); font-weight: 600; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem; }
pre { background: var(--bg); padding: .5rem; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .875rem; max-width: 60rem; }
.muted { color: var(--muted); }
.scroll { overflow-x: auto; }
footer { margin-top: 2rem; color: var(--muted); font-size: .8rem; }
"""


def _e(value: object) -> str:
    """``value`` as HTML text, safe in element content and in quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def format_number(x: float | None, spec: str = ".3e") -> str:
    """A metric as the report prints it: ``-`` for none, ``0``, ``inf``, ``nan``, else ``format(x, spec)``."""
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return format(x, spec)


def _mpl_text(s: object) -> str:
    """A string for a matplotlib label: ``$`` would start mathtext (and can fail to parse)."""
    return str(s).replace("$", r"\$")


# ---------------------------------------------------------------------------------------------
# diffs: what callers pass


def output_diffs(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """|ref - got| per output of ``ref`` (matched by name, else by position), in float64.

    Non-finite values that agree (NaN and NaN, the same infinity) count as 0, as parity counts
    them; those that disagree give inf, so the histogram's caption counts them.
    """
    mapping = match_names(list(ref), list(got), "outputs")
    out: dict[str, np.ndarray] = {}
    for name in ref:
        r, g = np.asarray(ref[name]), np.asarray(got[mapping[name]])
        if r.shape != g.shape and r.size == g.size:
            g = g.reshape(r.shape)
        if r.shape != g.shape:
            continue  # nothing elementwise to show; the parity table says why
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(r64 - g64)
        agree = (np.isnan(r64) & np.isnan(g64)) | (np.isinf(r64) & (r64 == g64))
        d[agree] = 0.0
        d[~np.isfinite(d)] = np.inf
        out[name] = d
    return out


def failure_diffs(path: str | Path) -> dict[str, np.ndarray]:
    """The diffs of a kept parity-failure file (its ``reference/`` and ``candidate/`` arrays)."""
    try:
        with np.load(str(path), allow_pickle=False) as data:
            ref = {k[len("reference/"):]: data[k] for k in data.files if k.startswith("reference/")}
            got = {k[len("candidate/"):]: data[k] for k in data.files if k.startswith("candidate/")}
    except (OSError, ValueError) as exc:
        raise BadInputError(f"not a readable parity-failure file: {exc}", path=path) from None
    if not ref or len(ref) != len(got):
        raise BadInputError("not a parity-failure file (no reference/ and candidate/ arrays)", path=path)
    return output_diffs(ref, got)


# ---------------------------------------------------------------------------------------------
# plots


def _matplotlib():
    """(Figure, FigureCanvasAgg), imported now; never touches pyplot or the global backend."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError("matplotlib", "report", purpose="the HTML report") from None
    return Figure, FigureCanvasAgg


def _png(fig, canvas_cls) -> str:
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return PNG_DATA_URI + base64.b64encode(buf.getvalue()).decode("ascii")


def _is_float_dtype(dtype: str) -> bool:
    if dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        return True
    try:
        return np.dtype(dtype).kind in "fc"
    except TypeError:
        return True


def _tolerance(o: OutputParity | None) -> tuple[float | None, str]:
    """The pass threshold on |a - b| for this output, and how it was derived."""
    if o is None:
        return None, "no parity entry for this output, so no tolerance"
    if not _is_float_dtype(o.dtype):
        return 0.0, f"{o.dtype} output: must match exactly"
    if math.isfinite(o.max_abs) and o.max_abs > 0 and math.isfinite(o.max_rel) and o.max_rel > 0:
        scale = o.max_abs / o.max_rel  # max_rel = max_abs / max|ref|
        tol = o.atol + o.rtol * scale
        return tol, (f"tolerance {format_number(tol)} = atol {o.atol:g} + rtol {o.rtol:g} \u00d7 max|ref| "
                     f"{format_number(scale)}")
    return o.atol, f"tolerance shown: atol {o.atol:g} (max|ref| cannot be derived from this report; rtol {o.rtol:g})"


def _histogram(name: str, diff: np.ndarray, parity: OutputParity | None, figure, canvas) -> tuple[str, str]:
    """(PNG data URI, caption) of log10 |a - b| for one output."""
    d = np.abs(np.asarray(diff).astype(np.float64, copy=False)).ravel()
    n = int(d.size)
    nan = int(np.isnan(d).sum())
    inf = int(np.isinf(d).sum())
    finite = d[np.isfinite(d)]
    zeros = int((finite == 0).sum())
    pos = finite[finite > 0]
    tol, tol_text = _tolerance(parity)
    above = int((finite > tol).sum()) + nan + inf if tol is not None else None

    fig = figure(figsize=(7.0, 3.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlabel("log10 |a \u2212 b|")
    ax.set_ylabel("count")
    show_tol = tol is not None and tol > 0 and math.isfinite(tol)
    if pos.size:
        logs = np.log10(pos)
        lo, hi = float(logs.min()), float(logs.max())
        if show_tol:
            lo, hi = min(lo, math.log10(tol)), max(hi, math.log10(tol))
        if hi - lo < 1.0:
            mid = (lo + hi) / 2
            lo, hi = mid - 0.5, mid + 0.5
        ax.hist(logs, bins=40, range=(lo, hi), color="#4c72b0")
    else:
        lo, hi = (math.log10(tol) - 1, math.log10(tol) + 1) if show_tol else (-8.0, 0.0)
        ax.set_xlim(lo, hi)
        ax.text(0.5, 0.5, "no nonzero finite differences to plot", transform=ax.transAxes,
                ha="center", va="center", color="#57606a")
    if show_tol:
        ax.axvline(math.log10(tol), color="#cf222e", linestyle="--", linewidth=1.5,
                   label=f"tolerance {format_number(tol, '.2e')}")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    hidden = []
    if zeros:
        hidden.append(f"{zeros} exactly zero")
    if nan or inf:
        hidden.append(f"{nan + inf} non-finite")
    ax.set_title(_mpl_text(f"{name}: log10 |a \u2212 b|" + (f"   (not shown: {', '.join(hidden)})" if hidden else "")),
                 fontsize=10)
    uri = _png(fig, canvas)

    parts = [f"{n} elementwise difference(s) of output {name}"]
    parts.append(f"{pos.size} nonzero finite (plotted)")
    parts.append(f"{zeros} exactly zero (log10 undefined), not plotted" if zeros else "none exactly zero")
    if nan or inf:
        parts.append(f"{nan + inf} non-finite ({nan} NaN, {inf} inf), not plotted")
    else:
        parts.append("0 non-finite")
    if pos.size:
        parts.append(f"largest finite {format_number(float(finite.max()))}")
    parts.append(tol_text + (" (red dashed line)" if show_tol else ""))
    if above is not None:
        parts.append(f"{above} of {n} above the tolerance (non-finite included)")
    return uri, "; ".join(parts) + "."


def _floor_ceiling(values: Iterable[float]) -> tuple[float, float]:
    pos = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not pos:
        return 1e-12, 1.0
    return min(pos) / 10, max(pos) * 10


def _error_curve(loc: Any, items: Sequence[Any], divergent: int | None, figure, canvas) -> str:
    """PNG data URI of max rel error per compared tensor, in order, on a log axis."""
    rel = [None if i.max_rel is None else float(i.max_rel) for i in items]
    inp = [None if getattr(i, "inputs_max_rel", None) is None else float(i.inputs_max_rel) for i in items]
    floor, ceiling = _floor_ceiling(rel + inp)
    x = np.arange(1, len(items) + 1)  # numbered as in the table

    def placed(vals):
        y, zero_x, bad_x = [], [], []
        for k, v in enumerate(vals):
            if v is None:
                y.append(np.nan)
            elif not math.isfinite(v):
                y.append(ceiling)
                bad_x.append(k)
            elif v <= 0:
                y.append(floor)
                zero_x.append(k)
            else:
                y.append(v)
        return np.array(y, dtype=np.float64), zero_x, bad_x

    from matplotlib.ticker import MaxNLocator

    fig = figure(figsize=(8.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_yscale("log")
    y, zero_x, bad_x = placed(rel)
    if any(v is not None for v in inp):
        yi, _, _ = placed(inp)
        ax.plot(x, yi, color="#8c959f", linestyle="--", linewidth=1, marker=".", label="its inputs' max rel error")
    ax.plot(x, y, color="#4c72b0", linewidth=1.5, marker="o", markersize=3, label="max rel error")
    if zero_x:
        ax.plot([k + 1 for k in zero_x], [floor] * len(zero_x), linestyle="none", marker="v", color="#1a7f37", label="exactly 0 (at floor)")
    if bad_x:
        ax.plot([k + 1 for k in bad_x], [ceiling] * len(bad_x), linestyle="none", marker="x", color="#cf222e", markersize=8,
                label="non-finite (at ceiling)")
    if divergent is not None:
        ax.axvline(divergent + 1, color="#cf222e", linewidth=1, alpha=0.6)
        ax.plot([divergent + 1], [y[divergent]], linestyle="none", marker="o", markersize=10, markerfacecolor="none",
                markeredgecolor="#cf222e", markeredgewidth=2,
                label=_mpl_text(f"first divergent: {items[divergent].node}"[:60]))
    ax.set_xlabel("compared tensor (graph order, # in the table)")
    ax.set_ylabel("max rel error")
    ax.set_title(_mpl_text(f"per-layer error ({getattr(loc, 'method', '')})"), fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(items) == 1:
        ax.set_xlim(0, 2)
    ax.legend(loc="best", fontsize=8, frameon=False)
    return _png(fig, canvas)


# ---------------------------------------------------------------------------------------------
# HTML pieces


def _table(head: Sequence[str], rows: Iterable[str], *, cls: str = "", id_: str = "") -> str:
    attrs = (f' id="{_e(id_)}"' if id_ else "") + (f' class="{_e(cls)}"' if cls else "")
    ths = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f'<div class="scroll"><table{attrs}><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _td(text: object, *, num: bool = False, metric: str = "") -> str:
    attrs = (' class="num"' if num else "") + (f' data-metric="{_e(metric)}"' if metric else "")
    return f"<td{attrs}>{_e(text)}</td>"


def _shape(shape: Sequence[int] | None) -> str:
    return "scalar" if shape is not None and len(shape) == 0 else "x".join(str(d) for d in shape or ())


def _parity_section(parity: ParityReport) -> str:
    head = ("run", "inputs", "output", "shape", "dtype", "max abs", "max rel", "mean abs", "cosine", "top-1",
            "rtol", "atol", "ok", "reason")
    rows = []
    for k, run in enumerate(parity.runs):
        shapes = ", ".join(f"{n}={_shape(s)}" for n, s in run.input_shapes.items())
        for o in run.outputs:
            verdict = '<td class="ok">yes</td>' if o.ok else '<td class="bad">NO</td>'
            rows.append(
                f'<tr class="{"ok" if o.ok else "fail"}" data-output="{_e(o.name)}" data-run="{k}">'
                + _td(k + 1, num=True) + _td(shapes) + _td(o.name, metric="output") + _td(_shape(o.shape))
                + _td(o.dtype) + _td(format_number(o.max_abs), num=True, metric="max_abs")
                + _td(format_number(o.max_rel), num=True, metric="max_rel")
                + _td(format_number(o.mean_abs), num=True, metric="mean_abs")
                + _td(format_number(o.cosine, ".6f"), num=True, metric="cosine")
                + _td(format_number(o.top1, ".3f"), num=True, metric="top1")
                + _td(f"{o.rtol:g}", num=True, metric="rtol") + _td(f"{o.atol:g}", num=True, metric="atol")
                + verdict + _td(o.reason, metric="reason") + "</tr>")
    if not rows:
        rows.append(f'<tr><td colspan="{len(head)}" class="muted">no outputs were compared</td></tr>')
    note = ("<p class=\"muted\">An output passes when max |a \u2212 b| \u2264 atol + rtol \u00d7 max |ref|, its non-finite "
            "values agree and, for class scores, top-1 agrees where the reference is decided; max rel = "
            "max |a \u2212 b| / max |ref|.</p>")
    return f'<section id="parity"><h2>Parity</h2>{note}{_table(head, rows, id_="parity-table")}</section>'


def _parity_for(parity: ParityReport, name: str, shape: tuple[int, ...]) -> OutputParity | None:
    """The OutputParity a diff of this name and shape belongs to: a failing run first."""
    same = [o for r in parity.runs for o in r.outputs if o.name == name]
    shaped = [o for o in same if tuple(o.shape) == tuple(shape)]
    for pool in (shaped, same):
        if pool:
            return next((o for o in pool if not o.ok), pool[0])
    return None


def _diffs_section(parity: ParityReport, diffs: Mapping[str, np.ndarray], figure, canvas) -> str:
    figs = []
    for k, (name, diff) in enumerate(diffs.items()):
        arr = np.asarray(diff)
        uri, caption = _histogram(name, arr, _parity_for(parity, name, tuple(arr.shape)), figure, canvas)
        figs.append(f'<figure id="hist-{k}" class="histogram" data-output="{_e(name)}">'
                    f'<img src="{uri}" alt="{_e(f"histogram of log10 |a - b| of output {name}")}">'
                    f"<figcaption>{_e(caption)}</figcaption></figure>")
    intro = "<p class=\"muted\">Elementwise |a \u2212 b| of one input set, per output, on a log axis.</p>"
    return f'<section id="diffs"><h2>Elementwise differences</h2>{intro}{"".join(figs)}</section>'


def _divergent_index(items: Sequence[Any], first: Any) -> int | None:
    if first is None:
        return None
    for k, item in enumerate(items):
        if item is first:
            return k
    for k, item in enumerate(items):
        if (getattr(item, "node", None), getattr(item, "output", None)) == (getattr(first, "node", None),
                                                                             getattr(first, "output", None)):
            return k
    return None


def _localization_section(loc: Any, figure, canvas) -> str:
    items = list(loc.compared or ())
    divergent = _divergent_index(items, loc.first_divergent)
    parts = [f"<p>{_e(loc.summary())}</p>",
             f'<table class="kv"><tr><th>method</th><td>{_e(loc.method)}</td></tr>'
             f"<tr><th>note</th><td>{_e(loc.note)}</td></tr>"
             f"<tr><th>compared tensors</th><td>{len(items)}</td></tr>"
             f"<tr><th>first divergent</th><td>"
             + (_e(f"#{divergent + 1} {items[divergent].node} ({items[divergent].op_type}) \u2192 {items[divergent].output}")
                if divergent is not None else
                (_e(f"{loc.first_divergent.node} (not among the compared tensors)") if loc.first_divergent is not None
                 else "none"))
             + "</td></tr></table>"]
    if items:
        uri = _error_curve(loc, items, divergent, figure, canvas)
        parts.append(f'<figure id="error-curve"><img src="{uri}" alt="max rel error per compared tensor">'
                     f"<figcaption>Max relative error of each compared tensor in graph order (log axis; exact zeros "
                     f"at the floor, non-finite at the ceiling); the dashed line is the error of its inputs where "
                     f"known; the circled point is the first divergent node.</figcaption></figure>")
        rows = []
        for k, it in enumerate(items):
            first = k == divergent
            row_cls = ' class="divergent"' if first else ""
            rows.append(f'<tr{row_cls} data-node="{_e(it.node)}">'
                        + _td(k + 1, num=True) + _td(it.node) + _td(it.op_type) + _td(it.output)
                        + _td(format_number(it.max_abs), num=True, metric="max_abs")
                        + _td(format_number(it.max_rel), num=True, metric="max_rel")
                        + _td(format_number(getattr(it, "inputs_max_rel", None)), num=True, metric="inputs_max_rel")
                        + _td("first divergent" if first else "") + "</tr>")
        parts.append(_table(("#", "node", "op", "output", "max abs", "max rel", "inputs max rel", ""), rows,
                            id_="localization-table"))
    return f'<section id="localization"><h2>Where they diverge</h2>{"".join(parts)}</section>'


def _route_section(route: Sequence[StepRecord]) -> str:
    rows = []
    for k, s in enumerate(route):
        versions = ", ".join(f"{n} {v}" for n, v in (s.versions or ()))
        verified = {True: '<td class="ok">yes</td>', False: '<td class="bad">NO</td>'}.get(
            s.verified, '<td class="muted">not verified</td>')
        rows.append("<tr>" + _td(k + 1, num=True) + _td(s.step) + _td(f"{s.src_format} \u2192 {s.dst_format}")
                    + _td(s.tool) + _td(versions or "-") + _td(s.detail) + verified + "</tr>")
    table = _table(("#", "step", "formats", "tool", "versions", "detail", "verified"), rows, id_="route-table")
    return f'<section id="route"><h2>How B was made</h2>{table}</section>'


def _versions_section() -> str:
    from modelport.versions import tool_versions

    rows = [f"<tr>{_td(n)}{_td(v)}</tr>" for n, v in tool_versions().items()]
    return f'<section id="versions"><h2>Versions</h2>{_table(("tool", "version"), rows, id_="versions-table")}</section>'


def render_report(
    parity: ParityReport,
    *,
    diffs: Mapping[str, np.ndarray] | None = None,
    localization: Any = None,
    route: Sequence[StepRecord] = (),
    title: str | None = None,
) -> str:
    """The report as one HTML string (see ``write_report``)."""
    from modelport.quiet import quiet

    figure, canvas = _matplotlib()
    ok = bool(parity.ok)
    verdict = "PASS" if ok else "FAIL"
    title = title if title is not None else f"modelport verify: {parity.b} against {parity.a}"
    with quiet():  # matplotlib's warnings and log lines stay off the terminal
        diff_html = _diffs_section(parity, diffs, figure, canvas) if diffs else ""
        loc_html = _localization_section(localization, figure, canvas) if localization is not None else ""
    models = (
        '<section id="models"><table class="kv">'
        f'<tr><th>A (reference)</th><td><code>{_e(parity.a)}</code> <span class="muted">({_e(parity.a_format)})</span></td></tr>'
        f'<tr><th>B (under test)</th><td><code>{_e(parity.b)}</code> <span class="muted">({_e(parity.b_format)})</span></td></tr>'
        f"<tr><th>inputs</th><td>{_e(parity.inputs_source)}</td></tr>"
        f"<tr><th>input sets</th><td>{len(parity.runs)}</td></tr>"
        "</table></section>")
    failure = ""
    if parity.failure_file or parity.reproduce:
        failure = '<section id="failure"><h2>Reproduce</h2>'
        if parity.failure_file:
            failure += (f"<p>The failing inputs and both outputs: <code>{_e(parity.failure_file)}</code></p>")
        if parity.reproduce:
            failure += f'<pre id="reproduce"><code>{_e(parity.reproduce)}</code></pre>'
        failure += "</section>"
    from modelport.versions import __version__

    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(verdict)} \u2014 {_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f'<header class="{"pass" if ok else "fail"}"><h1>{_e(title)}</h1>'
        f'<p class="verdict" id="verdict">{verdict}</p><p class="summary">{_e(parity.summary())}</p></header>\n'
        f"{models}\n{failure}\n{_parity_section(parity)}\n{diff_html}\n{loc_html}\n"
        f"{_route_section(route) if route else ''}\n{_versions_section()}\n"
        f"<footer>modelport {_e(__version__)} \u00b7 {_e(stamp)}</footer>\n</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# writing


def _check_destination(dest: Path) -> None:
    """Refuse a destination that cannot become a file, before any work is done."""
    if dest.is_dir():
        raise BadInputError("the report destination is a directory; give a file name such as report.html", path=dest)
    if dest.exists() and not dest.is_file():
        raise BadInputError("the report destination exists and is not a regular file", path=dest)
    ancestor = dest.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise BadInputError(f"cannot write the report: {ancestor} is not a directory", path=dest)
    if ancestor.is_dir() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write the report: directory {ancestor} is not writable", path=dest)


def _write_atomic(dest: Path, data: bytes) -> None:
    """``data`` at ``dest``, whole or not at all; directories created for it go again on failure."""
    created: list[Path] = []
    tmp: str | None = None
    try:
        missing = []
        p = dest.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        mode = dest.stat().st_mode & 0o777 if dest.exists() else 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
        tmp = None
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError):
            raise BadInputError(f"cannot write the report: {exc.strerror or exc}", path=dest) from exc
        raise


def write_report(
    path: str | Path,
    parity: ParityReport,
    *,
    diffs: dict[str, np.ndarray] | None = None,
    localization: Any = None,
    route: tuple[StepRecord, ...] = (),
    title: str | None = None,
) -> Path:
    """Write one self-contained HTML report of a comparison; returns its path.

    Args:
        path: the .html file to write (its missing directories are created).
        parity: the comparison (``modelport.verify.verify`` / ``compare_runners``).
        diffs: per output name, the elementwise |a - b| of one input set (``output_diffs(ref, got)``,
            or ``failure_diffs(parity.failure_file)``): one histogram of log10 |a - b| each.
        localization: where the models diverge: an object with ``method``, ``note``, ``compared``
            (items with ``node``, ``op_type``, ``output``, ``max_abs``, ``max_rel``, ``inputs_max_rel``),
            ``first_divergent`` and ``summary()``: the per-layer error curve and its table.
        route: the lineage of B (``read_lineage(b)`` or ``ConvertReport.artifact.lineage``).
        title: the page's heading; "modelport verify: B against A" when omitted.

    Raises:
        MissingExtraError: matplotlib is not installed (``pip install 'modelport[report]'``).
        BadInputError: the destination is a directory or cannot be written; nothing is left behind.
    """
    dest = Path(path)
    _check_destination(dest)
    text = render_report(parity, diffs=diffs, localization=localization, route=route, title=title)
    _write_atomic(dest, text.encode("utf-8"))
    return dest
