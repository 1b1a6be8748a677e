"""The demo: the main job end to end (Keras digits CNN -> ONNX -> PyTorch / TFLite, compressed), through the CLI."""

from __future__ import annotations

import json

import pytest

from modelport.cli.app import main


@pytest.mark.slow
def test_demo_shows_equal_accuracy_across_formats(tmp_path, capsys):
    rc = main(["demo", "--json", "--epochs", "8", "--out", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ok"] is True
    assert [(r["stage"], r["format"]) for r in report["rows"]] == [
        ("trained", "keras"), ("converted", "onnx"), ("converted", "torch"), ("converted", "tflite"),
        ("pruned 50% + distilled", "onnx"), ("+ int8 static", "onnx"),
    ]
    rows = {r["format"]: r for r in report["rows"][:4]}
    student, student_int8 = report["rows"][4:]
    assert rows["keras"]["accuracy"] > 0.85  # a real, trained model
    assert rows["onnx"]["accuracy"] == rows["keras"]["accuracy"]
    assert rows["torch"]["accuracy"] == rows["keras"]["accuracy"]
    assert rows["tflite"]["accuracy"] == rows["keras"]["accuracy"]
    for fmt in ("onnx", "torch", "tflite"):
        assert rows[fmt]["parity"].startswith("ok"), rows[fmt]["parity"]
        assert rows[fmt]["p50_ms_batch1"] > 0 and rows[fmt]["p50_ms_batch8"] > 0
    # the compressed models are real (smaller) and still classify digits
    assert student["size_bytes"] < 0.6 * rows["onnx"]["size_bytes"]
    assert student_int8["size_bytes"] < student["size_bytes"]
    assert student["accuracy"] > 0.85 and student_int8["accuracy"] > student["accuracy"] - 0.02
    # --out keeps the artifacts
    assert (tmp_path / "digits_cnn.keras").is_file()
    assert (tmp_path / "digits_cnn.onnx").is_file()
    assert (tmp_path / "digits_cnn_torch" / "model.py").is_file()
    assert (tmp_path / "digits_cnn.tflite").is_file()
    # one self-contained HTML verification report per converted model, each with its verdict
    assert report["reports"] == [str(tmp_path / f"verification-{f}.html") for f in ("onnx", "torch", "tflite")]
    for path in report["reports"]:
        page = open(path, encoding="utf-8").read()
        assert "PASS" in page and "data:image/png;base64," in page and "http://" not in page
