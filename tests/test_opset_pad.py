"""Pad down across opsets: Pad-18 ``axes`` folded into ``pads``, Pad-11 inputs into attributes, clean refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelport.adapt import opset as opset_mod
from modelport.adapt.run import adapt
from modelport.errors import UnsupportedError


def _pad_model(path, *, mode="constant", axes=(-2, 3), opset=18, axes_input=False, value=None):
    """x float[1,2,4,5] -> Pad over ``axes`` (begin 1,2 / end 2,3), then Mul by 2 (so Pad is not the whole graph)."""
    pads = [1, 2, 2, 3] if axes is not None else [0, 0, 1, 2, 0, 0, 2, 3]
    inits = [numpy_helper.from_array(np.array(pads, np.int64), "pads"), numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 5])]
    pad_in = ["x", "pads", ""]
    if value is not None:
        inits.append(numpy_helper.from_array(np.array(value, np.float32), "cv"))
        pad_in[2] = "cv"
    if axes is not None:
        if axes_input:
            inputs.append(helper.make_tensor_value_info("axes", TensorProto.INT64, [2]))
        else:
            inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        pad_in.append("axes")
    while pad_in[-1] == "":
        pad_in.pop()
    nodes = [helper.make_node("Pad", pad_in, ["p"], name="pad0", mode=mode), helper.make_node("Mul", ["p", "two"], ["y"], name="mul0")]
    graph = helper.make_graph(nodes, "pad", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 7, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return str(path)


def _opset(path) -> int:
    return next(i.version for i in onnx.load(str(path)).opset_import if i.domain in ("", "ai.onnx"))


def _pads(path) -> list:
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == "Pad"]


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("target", [17, 13, 11, 10])
def test_pad18_axes_folded_into_pads(tmp_path, mode, target):
    src = _pad_model(tmp_path / "pad18.onnx", mode=mode, value=1.5 if mode == "constant" else None)
    with pytest.raises(Exception):
        onnx.version_converter.convert_version(onnx.load(src), 17)  # onnx has no Pad 18 -> 17 adapter
    out = tmp_path / f"pad{target}.onnx"
    report = adapt(src, out, opset=target)
    assert report.ok and report.parity
    assert _opset(out) == target
    (node,) = _pads(out)
    assert len(node.input) <= 3  # no axes input
    if target >= 11:
        init = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
        assert init[node.input[1]].tolist() == [0, 0, 1, 2, 0, 0, 2, 3]
    else:
        assert list(node.input) == ["x"]
        assert [a.ints for a in node.attribute if a.name == "pads"][0] == [0, 0, 1, 2, 0, 0, 2, 3]


def test_pad18_without_axes_is_unchanged(tmp_path):
    src = _pad_model(tmp_path / "pad18.onnx", axes=None)
    out = tmp_path / "pad17.onnx"
    report = adapt(src, out, opset=17)
    assert report.ok and _opset(out) == 17
    (before,), (after,) = _pads(src), _pads(out)
    assert list(after.input) == list(before.input) == ["x", "pads"]
    assert after.attribute == before.attribute


def test_pad18_non_constant_axes_refused(cli, tmp_path):
    src = _pad_model(tmp_path / "pad18.onnx", axes_input=True)
    out = tmp_path / "pad17.onnx"
    res = cli("adapt", src, "-o", out, "--opset", "17")
    assert res.exit_code in (2, 3)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pad0" in lines[0] and "axes" in lines[0] and "internal error" not in lines[0]
    assert not out.exists()


def test_pad19_wrap_refused_below_19(cli, tmp_path):
    src = _pad_model(tmp_path / "pad19.onnx", mode="wrap", opset=19)
    out = tmp_path / "pad18.onnx"
    res = cli("adapt", src, "-o", out, "--opset", "18")
    assert res.exit_code == 3 and "wrap" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_failure_inside_an_adapter_is_a_clean_error(cli, tmp_path, monkeypatch):
    """An unexpected exception in our adapters (the paddle2onnx IndexError) is a one-line error naming op and opsets."""
    def broken(*_):
        raise IndexError("list index out of range")

    monkeypatch.setitem(opset_mod._DOWN_ADAPTERS, ("Pad", 18), broken)
    src = _pad_model(tmp_path / "pad18.onnx")
    out = tmp_path / "pad17.onnx"
    res = cli("adapt", src, "-o", out, "--opset", "17")
    assert res.exit_code == 3
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "internal error" not in line
    assert "Pad" in line and "18" in line and "17" in line and "IndexError" in line
    assert not out.exists()


def test_failure_anywhere_in_the_conversion_is_a_clean_error(tmp_path, monkeypatch):
    def broken(*_):
        raise IndexError("list index out of range")

    monkeypatch.setattr(opset_mod, "_lift_constants", broken)
    with pytest.raises(UnsupportedError, match=r"opset 18 to 17.*IndexError"):
        opset_mod.convert_opset(onnx.load(_pad_model(tmp_path / "pad18.onnx")), 17)
