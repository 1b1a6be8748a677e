"""The HTML parity report: one self-contained file, on real comparisons of real ONNX models.

Each report here comes from modelport.verify.verify on models built with onnx.helper; the diffs
are computed by running both models with onnxruntime on the same inputs.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import sys
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import zoo
from modelport.errors import BadInputError, MissingExtraError
from modelport.verify import verify
from modelport.verify.html import failure_diffs, format_number, output_diffs, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """Every element with its attributes and the text inside it."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self._open: list[dict] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": "", "children": []}
        if self._open:
            self._open[-1]["children"].append(el)
        self.elements.append(el)
        if tag not in VOID:
            self._open.append(el)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self._open.pop()

    def handle_endtag(self, tag):
        for k in range(len(self._open) - 1, -1, -1):
            if self._open[k]["tag"] == tag:
                del self._open[k:]
                break

    def handle_data(self, data):
        for el in self._open:
            el["text"] += data

    def all(self, tag: str, **attrs) -> list[dict]:
        return [e for e in self.elements if e["tag"] == tag and all(e["attrs"].get(k) == v for k, v in attrs.items())]

    def by_id(self, id_: str) -> dict:
        found = [e for e in self.elements if e["attrs"].get("id") == id_]
        assert len(found) == 1, f"expected one element with id {id_!r}, found {len(found)}"
        return found[0]

    def within(self, root: dict, tag: str) -> list[dict]:
        out, todo = [], list(root["children"])
        while todo:
            el = todo.pop(0)
            if el["tag"] == tag:
                out.append(el)
            todo[:0] = el["children"]
        return out


def _save(model: onnx.ModelProto, path) -> str:
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _matmul_model(path, w: np.ndarray) -> str:
    """logits = x @ W, probs = Softmax(logits); x: [batch, 4] float32."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w.astype(np.float32), "W")])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _add_model(path, offset: np.ndarray) -> str:
    return zoo.add_offset_model(path, offset)


def _run(path: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def _diffs(a: str, b: str, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(|a - b| per output, A's outputs), both models run by onnxruntime on ``feed``."""
    ra, rb = _run(a, feed), _run(b, feed)
    with np.errstate(invalid="ignore"):
        return {k: np.abs(ra[k].astype(np.float64) - rb[k].astype(np.float64)) for k in ra}, ra


W = np.random.default_rng(0).standard_normal((4, 3))
FEED = {"x": np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("html_models")
    bumped = W.copy()
    bumped[1, 2] += 0.05
    return SimpleNamespace(
        a=_matmul_model(d / "a.onnx", W),
        same=_matmul_model(d / "same.onnx", W),
        perturbed=_matmul_model(d / "perturbed.onnx", bumped),
        add=_add_model(d / "add.onnx", np.zeros(4)),
        add_inf=_add_model(d / "add_inf.onnx", np.array([0.0, 0.0, np.inf, 0.0])),
        dir=d,
    )


def _write(path, parity, **kw) -> tuple[str, Page]:
    out = write_report(path, parity, **kw)
    assert out == path and out.is_file()
    text = out.read_text(encoding="utf-8")
    return text, Page(text)


def _assert_self_contained(text: str, page: Page) -> None:
    for el in page.elements:
        for attr in ("src", "href"):
            value = el["attrs"].get(attr)
            if value is not None:
                assert not value.lower().startswith(("http://", "https://", "//")), (el["tag"], value[:80])
    assert not page.all("script"), "no script at all"
    assert not [e for e in page.all("link") if "href" in e["attrs"]]
    assert "http://" not in text and "https://" not in text and "@import" not in text and "url(" not in text
    csp = [e for e in page.all("meta") if e["attrs"].get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["attrs"]["content"]


def _png_payloads(page: Page, root: dict) -> list[bytes]:
    out = []
    for img in page.within(root, "img"):
        src = img["attrs"]["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src[len("data:image/png;base64,"):], validate=True)
        assert data.startswith(PNG_SIGNATURE)
        out.append(data)
    return out


def _histograms(page: Page) -> dict[str, tuple[bytes, str]]:
    """output name -> (PNG bytes, caption) of each histogram figure."""
    out = {}
    for fig in [e for e in page.all("figure") if e["attrs"].get("class") == "histogram"]:
        (png,) = _png_payloads(page, fig)
        (cap,) = page.within(fig, "figcaption")
        out[fig["attrs"]["data-output"]] = (png, cap["text"])
    return out


def _parity_rows(page: Page) -> list[dict]:
    return page.within(page.by_id("parity-table"), "tr")[1:]  # past the header row


def _cells(page: Page, row: dict) -> dict[str, str]:
    return {td["attrs"]["data-metric"]: td["text"] for td in page.within(row, "td") if "data-metric" in td["attrs"]}


def _assert_parity_table(page: Page, parity) -> None:
    rows = _parity_rows(page)
    expected = [(k, o) for k, run in enumerate(parity.runs) for o in run.outputs]
    assert len(rows) == len(expected)
    for row, (k, o) in zip(rows, expected):
        cells = _cells(page, row)
        assert row["attrs"]["data-output"] == o.name and cells["output"] == o.name
        assert row["attrs"]["data-run"] == str(k)
        assert cells["max_abs"] == format_number(o.max_abs)
        assert cells["max_rel"] == format_number(o.max_rel)
        assert cells["reason"] == o.reason
        assert ("yes" if o.ok else "NO") in row["text"]


def test_equal_models_pass_with_every_output_and_all_zero_histograms(models, tmp_path):
    parity = verify(models.a, models.same)  # random inputs, the dynamic batch at two sizes
    assert parity.ok and len(parity.runs) == 2
    diffs, _ = _diffs(models.a, models.same, FEED)
    assert all((d == 0).all() for d in diffs.values())
    text, page = _write(tmp_path / "pass.html", parity, diffs=diffs)

    assert page.by_id("verdict")["text"] == "PASS"
    assert page.all("header")[0]["attrs"]["class"] == "pass"
    assert parity.summary() in page.all("header")[0]["text"]
    models_text = page.by_id("models")["text"]
    for s in (parity.a, parity.b, parity.a_format, parity.b_format, parity.inputs_source):
        assert s in models_text
    _assert_parity_table(page, parity)
    assert {o.name for o in parity.runs[0].outputs} == {"logits", "probs"}

    hists = _histograms(page)
    assert set(hists) == {"logits", "probs"}
    for name, (_, caption) in hists.items():
        n = diffs[name].size
        assert f"{n} elementwise difference(s) of output {name}" in caption
        assert f"{n} exactly zero" in caption and "0 non-finite" in caption
        assert "atol 1e-05" in caption  # max|ref| cannot be derived from a zero error: atol alone
    assert page.all("section", id="failure") == [] and page.all("section", id="route") == []
    _assert_self_contained(text, page)


def test_perturbed_weight_fails_with_its_figures_tolerance_line_and_failure_file(models, tmp_path):
    keep = tmp_path / "kept.parity-failure.npz"
    parity = verify(models.a, models.perturbed, inputs=FEED, keep_failure=keep)
    assert not parity.ok and parity.failure_file == str(keep)
    diffs, ref = _diffs(models.a, models.perturbed, FEED)
    text, page = _write(tmp_path / "fail.html", parity, diffs=diffs)

    assert page.by_id("verdict")["text"] == "FAIL"
    assert page.all("header")[0]["attrs"]["class"] == "fail"
    _assert_parity_table(page, parity)
    bad = {o.name for o in parity.failures}
    assert "logits" in bad
    fail_rows = [r for r in _parity_rows(page) if r["attrs"]["class"] == "fail"]
    assert {r["attrs"]["data-output"] for r in fail_rows} == bad

    hists = _histograms(page)
    assert set(hists) == set(diffs)
    logits = next(o for o in parity.runs[0].outputs if o.name == "logits")
    tol = logits.atol + logits.rtol * float(np.abs(ref["logits"]).max())
    _, caption = hists["logits"]
    assert f"tolerance {format_number(tol)} = atol" in caption and "red dashed line" in caption
    above = int((diffs["logits"] > tol).sum())
    assert above > 0 and f"{above} of {diffs['logits'].size} above the tolerance" in caption
    zeros = int((diffs["logits"] == 0).sum())  # only the column of the bumped weight moves
    assert zeros > 0 and f"{zeros} exactly zero" in caption

    failure = page.by_id("failure")["text"]
    assert str(keep) in failure
    # the kept failure file gives the same diffs as running both models
    kept = failure_diffs(keep)
    assert set(kept) == set(diffs)
    for k in diffs:
        np.testing.assert_array_equal(kept[k], diffs[k])
    _assert_self_contained(text, page)


def test_inf_difference_is_counted_in_the_caption(models, tmp_path):
    parity = verify(models.add, models.add_inf, inputs=FEED)
    assert not parity.ok and "inf where the reference is finite" in parity.failures[0].reason
    diffs, _ = _diffs(models.add, models.add_inf, FEED)
    n_bad = int((~np.isfinite(diffs["y"])).sum())
    assert n_bad == FEED["x"].shape[0]  # one column of every row
    text, page = _write(tmp_path / "inf.html", parity, diffs=diffs)

    assert page.by_id("verdict")["text"] == "FAIL"
    _assert_parity_table(page, parity)  # the reason, verbatim, in its cell
    (_, caption), = _histograms(page).values()
    assert f"{n_bad} non-finite ({0} NaN, {n_bad} inf), not plotted" in caption
    assert f"{n_bad} of {diffs['y'].size} above the tolerance" in caption  # non-finite counts as above
    # the library's own helper agrees on what is non-finite
    ours = output_diffs(_run(models.add, FEED), _run(models.add_inf, FEED))
    assert int(np.isinf(ours["y"]).sum()) == n_bad
    _assert_self_contained(text, page)


def test_html_special_characters_are_escaped(models, tmp_path):
    parity = verify(models.a, models.perturbed, inputs=FEED)
    evil = "<script>alert(1)</script>"
    parity = dataclasses.replace(parity, reproduce=f"modelport verify a.onnx b.onnx && echo {evil} \"q\" 'r'")
    text, page = _write(tmp_path / "escaped.html", parity, title=f"report {evil} & more",
                        diffs={"<img src=x onerror=alert(1)>": np.array([1e-3, 0.0])})

    assert not page.all("script")
    assert [e for e in page.all("img") if e["attrs"].get("src") == "x"] == []
    assert f"report {evil} & more" in page.all("h1")[0]["text"]  # shown as text, not markup
    assert evil in page.by_id("reproduce")["text"] and "&lt;script&gt;" in text
    assert "<script>" not in text
    _assert_self_contained(text, page)


def test_route_table_from_a_real_conversion(models, tmp_path):
    from modelport.convert.run import convert

    report = convert(models.a, "torch", tmp_path / "a_torch")
    route = report.artifact.lineage
    assert route and route[-1].dst_format == "torch"
    parity = verify(models.a, report.artifact.path)
    text, page = _write(tmp_path / "route.html", parity, route=route)

    rows = page.within(page.by_id("route-table"), "tr")[1:]
    assert len(rows) == len(route)
    for row, step in zip(rows, route):
        cells = [td["text"] for td in page.within(row, "td")]
        assert cells[1] == step.step and cells[2] == f"{step.src_format} \u2192 {step.dst_format}"
        assert cells[3] == step.tool and cells[5] == step.detail
        for name, version in step.versions:
            assert f"{name} {version}" in cells[4]
        assert cells[6] == {True: "yes", False: "NO", None: "not verified"}[step.verified]
    assert page.by_id("verdict")["text"] == ("PASS" if parity.ok else "FAIL")
    _assert_self_contained(text, page)


def _item(node, op, output, max_abs, max_rel, inputs_max_rel):
    return SimpleNamespace(node=node, op_type=op, output=output, max_abs=max_abs, max_rel=max_rel, inputs_max_rel=inputs_max_rel)


def test_localization_section_from_the_documented_interface(models, tmp_path):
    parity = verify(models.a, models.perturbed, inputs=FEED)
    compared = [
        _item("in_norm", "Identity", "x1", 0.0, 0.0, None),
        _item("MatMul_$0$", "MatMul", "logits", 0.05, 2e-2, 0.0),  # $: not mathtext in the plot
        _item("Softmax<1>", "Softmax", "probs", 0.01, 1e-2, 2e-2),
        _item("Bad", "Div", "nan_out", float("inf"), float("inf"), 1e-2),
    ]
    loc = SimpleNamespace(method="per-node outputs", note="ran both models to every node output",
                          compared=compared, first_divergent=compared[1],
                          summary=lambda: "first divergent node: MatMul_$0$ (MatMul)")
    text, page = _write(tmp_path / "loc.html", parity, localization=loc)

    section = page.by_id("localization")
    for s in ("per-node outputs", "ran both models to every node output", "first divergent node: MatMul_$0$ (MatMul)", "#2 MatMul_$0$ (MatMul) \u2192 logits"):
        assert s in section["text"]
    (png,) = _png_payloads(page, page.by_id("error-curve"))
    rows = page.within(page.by_id("localization-table"), "tr")[1:]
    assert [r["attrs"]["data-node"] for r in rows] == [c.node for c in compared]
    assert [r["attrs"].get("class") for r in rows] == [None, "divergent", None, None]
    max_rel = [td["text"] for r in rows for td in page.within(r, "td") if td["attrs"].get("data-metric") == "max_rel"]
    assert max_rel == ["0", format_number(2e-2), format_number(1e-2), "inf"]

    none = SimpleNamespace(method="m", note="", compared=compared[:1], first_divergent=None, summary=lambda: "all agree")
    _, page2 = _write(tmp_path / "loc2.html", parity, localization=none)
    assert not [r for r in page.within(page2.by_id("localization-table"), "tr") if r["attrs"].get("class") == "divergent"]
    _assert_self_contained(text, page)


def test_versions_are_listed(models, tmp_path):
    from modelport.versions import tool_versions

    parity = verify(models.a, models.same, inputs=FEED)
    _, page = _write(tmp_path / "v.html", parity)
    rows = page.within(page.by_id("versions-table"), "tr")[1:]
    listed = {page.within(r, "td")[0]["text"]: page.within(r, "td")[1]["text"] for r in rows}
    assert listed == tool_versions() and "modelport" in listed and "onnxruntime" in listed


def test_bad_destinations_are_refused_naming_the_path(models, tmp_path):
    parity = verify(models.a, models.same, inputs=FEED)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(BadInputError) as exc:
        write_report(folder, parity)
    assert exc.value.path == str(folder) and "directory" in str(exc.value)

    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    dest = a_file / "sub" / "report.html"
    with pytest.raises(BadInputError) as exc:
        write_report(dest, parity)
    assert exc.value.path == str(dest) and "not a directory" in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "plain.txt"] and not any(folder.iterdir())


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_parent_is_refused(models, tmp_path):
    parity = verify(models.a, models.same, inputs=FEED)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(BadInputError) as exc:
            write_report(locked / "r.html", parity)
        assert exc.value.path == str(locked / "r.html")
    finally:
        locked.chmod(0o700)
    assert not any(locked.iterdir())


def test_a_failed_write_leaves_nothing_behind(models, tmp_path, monkeypatch):
    parity = verify(models.a, models.perturbed, inputs=FEED)
    diffs, _ = _diffs(models.a, models.perturbed, FEED)
    old = tmp_path / "old.html"
    old.write_text("previous report")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(BadInputError) as exc:
        write_report(tmp_path / "new" / "deeper" / "r.html", parity, diffs=diffs)
    assert exc.value.path == str(tmp_path / "new" / "deeper" / "r.html") and "No space left" in str(exc.value)
    with pytest.raises(BadInputError):
        write_report(old, parity, diffs=diffs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.html"]  # no temp file, no created folders
    assert old.read_text() == "previous report"  # the old report is untouched

    monkeypatch.undo()
    write_report(old, parity, diffs=diffs)  # and then it replaces it whole
    assert Page(old.read_text()).by_id("verdict")["text"] == "FAIL"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.html"]


def test_missing_matplotlib_names_the_extra_and_writes_nothing(models, tmp_path, monkeypatch):
    parity = verify(models.a, models.same, inputs=FEED)
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(MissingExtraError) as exc:
        write_report(tmp_path / "r.html", parity)
    assert exc.value.extra == "report" and "matplotlib" in str(exc.value)
    assert list(tmp_path.iterdir()) == []
