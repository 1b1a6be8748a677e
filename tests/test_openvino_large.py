"""OpenVINO IRs above the external-data threshold: the mapped .bin pages are released (issue 11).

The CPU plugin keeps its own repacked copy of the weights, so the pages of the memory-mapped ``.bin`` that
``compile_model`` and the first inference read are dropped while they run
(``modelport.formats.page_release``); without that, peak RSS was twice the weights on a 2 GiB model.
These tests lower ``MODELPORT_EXTERNAL_DATA_THRESHOLD`` so that a MatMul chain of 4 MiB counts as
large, and check that the release runs (bytes released > 0) and changes no number: the IR's outputs
are the same with and without it, and match onnxruntime on the source. benchmarks/large_models.py
measures the memory on 2 GiB and 4 GiB models.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino")

WIDTH, LAYERS = 512, 4  # 1 MiB per weight, 4 MiB in all
THRESHOLD = 1 << 20


def _chain(path: Path) -> Path:
    """MatMul+Tanh layers (the shape of the benchmark's mm2g, smaller), weights in external data."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == LAYERS - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [out], name=f"tanh{i}"))
        x = out
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    return path


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _feeds() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal((n, WIDTH)).astype(np.float32) for n in (1, 5)]


def _outputs(xml: Path) -> tuple[list[np.ndarray], int]:
    from modelport.formats import openvino_format
    from modelport.formats.base import LoadOptions

    with openvino_format.open(str(xml), LoadOptions()) as runner:
        outs = [runner.run({"x": x})["y"] for x in _feeds()]
        return outs, runner.released_bytes


@pytest.fixture
def converted(tmp_path, monkeypatch, cli) -> tuple[Path, Path]:
    monkeypatch.setenv("MODELPORT_EXTERNAL_DATA_THRESHOLD", str(THRESHOLD))
    src = _chain(tmp_path / "src" / "chain.onnx")
    out = tmp_path / "ov" / "chain.xml"
    res = cli("convert", src, "--to", "openvino", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True and len(report["parity"]["runs"]) == 2  # verified against onnxruntime, in turn
    assert out.with_suffix(".bin").stat().st_size >= LAYERS * WIDTH * WIDTH * 4  # float32 weights
    return src, out


def test_runner_releases_the_mapped_bin_above_the_threshold(converted, monkeypatch):
    src, xml = converted
    large, released = _outputs(xml)
    assert released > 0  # the release ran: pages of the .bin left the resident set
    for x, got in zip(_feeds(), large):
        np.testing.assert_allclose(got, _ort(src, x), rtol=1e-4, atol=1e-5)
    # the same IR below the threshold: no release, and the very same numbers
    monkeypatch.setenv("MODELPORT_EXTERNAL_DATA_THRESHOLD", str(1 << 40))
    small, none = _outputs(xml)
    assert none == 0
    for a, b in zip(large, small):
        np.testing.assert_array_equal(a, b)


def test_release_keeps_values_and_skips_writable_mappings(tmp_path):
    from modelport.formats.page_release import PageReleaser

    data = np.random.default_rng(1).standard_normal(1 << 20).astype(np.float32)  # 4 MiB
    path = tmp_path / "w.bin"
    data.tofile(path)
    if not PageReleaser([path]).supported:
        pytest.skip("no /proc/self/maps or madvise here")
    with open(path, "rb") as fh:
        ro = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        cow = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)  # private and writable: never swept
    try:
        releaser = PageReleaser([path])  # made once the file is mapped: it pins these mappings
        with open(path, "rb") as fh:
            later = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # mapped after: not pinned, never swept
        view = np.frombuffer(ro, dtype=np.float32)
        assert float(view.sum()) == float(data.sum())  # every page read: resident
        cow[:4] = b"\0\0\0\0"
        assert len(releaser.ranges()) == 1  # the pinned read-only mapping only
        with releaser.active():
            pass
        assert releaser.released > 0 and releaser.sweeps >= 1
        np.testing.assert_array_equal(view, data)  # dropped pages refault the same bytes from the file
        assert cow[:4] == b"\0\0\0\0"  # the private write survives: a writable mapping is left alone
        del view
        later.close()
    finally:
        ro.close()
        cow.close()


def test_release_of_an_unmapped_file_does_nothing(tmp_path):
    from modelport.formats.page_release import PageReleaser

    releaser = PageReleaser([tmp_path / "absent.bin"])
    with releaser.active():
        pass
    assert releaser.ranges() == [] and releaser.released == 0 and releaser.sweeps == 0
