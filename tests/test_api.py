"""The public API surface, the route planner and the user-spec parsers."""

from __future__ import annotations

import subprocess
import sys

import pytest

import modelport
from modelport.artifact import TensorSpec
from modelport.convert import plan
from modelport.errors import BadInputError, UnsupportedError
from modelport.inputs import parse_dims, parse_input_spec, parse_input_specs, parse_int_list


def test_api_functions_stay_callable_after_submodule_imports():
    import modelport.adapt.run  # noqa: F401
    import modelport.compress.run  # noqa: F401
    import modelport.convert.run  # noqa: F401
    import modelport.compress.distill  # noqa: F401
    import modelport.inputs  # noqa: F401

    for name in ("load", "convert", "verify", "inspect", "bench", "check", "adapt", "compress", "distill"):
        assert callable(getattr(modelport, name)), name


def test_import_modelport_does_not_import_frameworks():
    code = "import sys, modelport; print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'tf2onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_planner_routes_through_the_hub():
    assert [(e.src, e.dst) for e in plan("keras", "torch")] == [("keras", "onnx"), ("onnx", "torch")]
    assert [(e.src, e.dst) for e in plan("torch-module", "onnx")] == [("torch-module", "onnx")]


def test_planner_reports_missing_route():
    with pytest.raises(UnsupportedError, match="no conversion route from onnx to keras"):
        plan("onnx", "keras")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x:1x3x224x224:float32", TensorSpec("x", "float32", (1, 3, 224, 224))),
        ("input_ids:batchxsequence:int64", TensorSpec("input_ids", "int64", ("batch", "sequence"))),
        ("ids:batch,max_len:int32", TensorSpec("ids", "int32", ("batch", "max_len"))),
        ("x:4x?", TensorSpec("x", "float32", (4, None))),
        ("s:scalar:float64", TensorSpec("s", "float64", ())),
    ],
)
def test_parse_input_spec(text, expected):
    assert parse_input_spec(text) == expected


@pytest.mark.parametrize("text", ["x", ":1x3", "x:1x3:notadtype", "x:1x-3", "x:1x3:float32:extra"])
def test_parse_input_spec_rejects(text):
    with pytest.raises(BadInputError, match="bad --input"):
        parse_input_spec(text)


def test_parse_specs_dims_and_lists():
    with pytest.raises(BadInputError, match="repeat"):
        parse_input_specs(["x:1", "x:2"])
    assert parse_dims(["batch=4", "sequence=16"]) == {"batch": 4, "sequence": 16}
    for bad in (["batch"], ["batch=0"], ["=3"], ["b=x"]):
        with pytest.raises(BadInputError):
            parse_dims(bad)
    assert parse_int_list("1,8", "--batch") == (1, 8)
    with pytest.raises(BadInputError):
        parse_int_list("1,a", "--batch")
    with pytest.raises(BadInputError):
        parse_int_list("0", "--batch")


def test_input_specs_by_position_keep_the_model_input_names(tmp_path):
    import numpy as np
    import onnx
    import onnx.parser

    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[batch, 4] data) => (float[batch, 4] y) { y = Relu(data) }
    """)
    path = tmp_path / "relu.onnx"
    onnx.save(model, path)
    with modelport.load(path, input_specs=["x:3x4:float32"]) as runner:
        assert runner.signature.inputs == (TensorSpec("data", "float32", (3, 4)),)
        out = runner.run({"data": np.full((3, 4), -1.0, np.float32)})
    assert np.all(out["y"] == 0)
    report = modelport.verify(path, path, input_specs=["x:3x4:float32"])
    assert report.ok and report.runs[0].input_shapes == {"data": (3, 4)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--epochs", "0"], "--epochs must be >= 1"),
        (["bench", "m.onnx", "--batch", "0"], "bad --batch"),
        (["bench", "m.onnx", "--batch", "1,x"], "bad --batch"),
        (["bench", "m.onnx", "--runs", "0"], "--runs >= 1"),
        (["verify", "a.onnx", "b.onnx", "--dim", "batch"], "bad --dim"),
        (["convert", "a.onnx", "--to", "onnx", "--input", "x:1x?x:float99"], "bad --input"),
    ],
)
def test_cli_rejects_bad_options_with_exit_2(argv, message, capsys):
    from modelport.cli.app import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("modelport: error:") and message in err and "\n" not in err


def test_cli_unknown_command_and_missing_argument_exit_2(capsys):
    from modelport.cli.app import main

    assert main(["frobnicate"]) == 2
    assert main(["convert", "x.onnx"]) == 2  # --to is required
