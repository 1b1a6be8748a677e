"""scikit-learn, XGBoost and LightGBM sources (issue 14, item 7): models trained here on the datasets
that ship with scikit-learn, saved as .skops / joblib / XGBoost .ubj+.json / LightGBM .txt,
converted to ONNX and verified against the library on the dataset's own rows; the ai.onnx.ml ops
lowered to PyTorch and checked against onnxruntime (NaN rows included); on to OpenVINO through
standard ONNX; and the refusals (pickles without --trust-pickle, untrusted .skops types).
"""

from __future__ import annotations

import operator
import os
import pickle
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skl2onnx")
pytest.importorskip("skops")

import skops.io as sio  # noqa: E402
from sklearn import datasets  # noqa: E402


def _fails_cleanly(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}"
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, res.stderr
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return x.astype(np.float32), y


def _fit(model, name: str):
    x, y = _data(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and deprecation notes of the libraries
        return model.fit(x, y)


def _models() -> dict:
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    return {  # name: (estimator, dataset, file kind)
        "scaler_logreg": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), "iris", "skops"),
        "random_forest": (RandomForestClassifier(10, max_depth=6, random_state=0), "digits", "skops"),
        "gradient_boosting_binary": (GradientBoostingClassifier(n_estimators=20, random_state=0), "breast_cancer",
                                     "skops"),
        "mlp": (make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=200, random_state=0)), "wine", "skops"),
        "svc_probability": (SVC(probability=True, random_state=0), "iris", "skops"),
        "xgboost_native": (xgb.XGBClassifier(n_estimators=20, max_depth=4), "wine", "ubj"),
        "xgboost_binary_json": (xgb.XGBClassifier(n_estimators=20, max_depth=3), "breast_cancer", "json"),
        "lightgbm_native": (lgb.LGBMClassifier(n_estimators=10, num_leaves=15, verbose=-1), "wine", "txt"),
        "lightgbm_in_pipeline": (make_pipeline(StandardScaler(), lgb.LGBMClassifier(n_estimators=10, verbose=-1)),
                                 "breast_cancer", "skops"),
        "random_forest_regressor": (RandomForestRegressor(10, max_depth=6, random_state=0), "diabetes", "skops"),
        "linear_svc_binary": (LinearSVC(), "breast_cancer", "skops"),  # no predict_proba: decision scores
    }


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    """Every model of _models() trained and saved in its kind of file (plus one joblib pickle)."""
    d = tmp_path_factory.mktemp("sklearn_zoo")
    for name, (model, data, kind) in _models().items():
        model = _fit(model, data)
        if kind == "skops":
            sio.dump(model, d / f"{name}.skops")
        elif kind in ("ubj", "json"):
            model.save_model(d / f"{name}.{kind}")
        else:
            model.booster_.save_model(str(d / f"{name}.txt"))
        (d / f"{name}.data").write_text(data)
    import joblib

    joblib.dump(_fit(_models()["scaler_logreg"][0], "iris"), d / "pickled_logreg.joblib")
    return d


def _file(zoo_dir: Path, name: str) -> Path:
    return next(p for p in zoo_dir.iterdir() if p.stem == name and p.suffix != ".data")


def _rows(zoo_dir: Path, name: str) -> dict[str, np.ndarray]:
    x, _ = _data((zoo_dir / f"{name}.data").read_text())
    return {"X": x}


# ----------------------------------------------------------------------------- -> ONNX, against the library


@pytest.mark.parametrize("name", list(_models()))
def test_to_onnx_matches_the_library(zoo_dir, tmp_path, name):
    import onnxruntime as ort

    import modelport as api
    from modelport.formats import open_runner

    src = _file(zoo_dir, name)
    rows = _rows(zoo_dir, name)
    started = time.perf_counter()
    report = api.convert(src, "onnx", tmp_path / "m.onnx", inputs=rows)
    seconds = time.perf_counter() - started
    assert report.ok and report.src_format == "sklearn", report.parity.summary() if report.parity else report
    with open_runner(src) as lib:
        want = lib.run(rows)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, rows)))
    assert set(got) == set(want)
    if "label" in want:  # a classifier: labels exactly, probabilities within float32 rounding
        agree = float(np.mean(got["label"] == want["label"]))
        err = float(np.abs(got["probabilities"] - want["probabilities"]).max())
        assert agree == 1.0, f"{name}: {np.sum(got['label'] != want['label'])} label(s) differ"
        assert err < 1e-5, err
        assert len(np.unique(want["label"])) > 1  # the model learned something: not one constant class
    else:
        err = float(np.abs(got["variable"] - want["variable"]).max())
        assert err <= 1e-5 * float(np.abs(want["variable"]).max()), err
    print(f"{name}: sklearn -> onnx max abs {err:.2e}, {seconds:.2f} s")


def test_cli_convert_verify_inspect_skops(cli, zoo_dir, tmp_path):
    src = _file(zoo_dir, "random_forest")
    rows = tmp_path / "rows.npz"
    np.savez(rows, **_rows(zoo_dir, "random_forest"))
    res = cli("convert", src, "--to", "onnx", "-o", tmp_path / "rf.onnx", "--inputs", rows, "--json")
    assert res.exit_code == 0, res.stderr
    assert '"ok": true' in res.stdout and "TreeEnsembleClassifier" in res.stdout
    res = cli("verify", src, tmp_path / "rf.onnx", "--inputs", rows)
    assert res.exit_code == 0, res.stderr
    res = cli("inspect", src, "--json")
    assert res.exit_code == 0, res.stderr
    assert '"format": "sklearn"' in res.stdout and '"X"' in res.stdout and '"probabilities"' in res.stdout
    assert "64" in res.stdout  # digits: 64 features


def test_joblib_needs_trust_pickle(cli, zoo_dir, tmp_path):
    src = zoo_dir / "pickled_logreg.joblib"
    out = tmp_path / "out"
    out.mkdir()
    _fails_cleanly(cli("convert", src, "--to", "onnx", "-o", out / "m.onnx"), 4, "--trust-pickle",
                   "sklearn.linear_model._logistic.LogisticRegression")
    _fails_cleanly(cli("inspect", src), 4, "--trust-pickle")
    assert os.listdir(out) == []
    res = cli("convert", src, "--to", "onnx", "-o", out / "m.onnx", "--trust-pickle")
    assert res.exit_code == 0, res.stderr
    assert (out / "m.onnx").is_file()


# ----------------------------------------------------------------------------- ONNX-ML -> PyTorch, against onnxruntime


def _lowering_cases() -> dict:
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, Normalizer, StandardScaler
    from sklearn.svm import LinearSVC

    models = {name: (model, data) for name, (model, data, _) in _models().items() if name != "svc_probability"}
    models.update({
        "logreg_binary": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), "breast_cancer"),
        "normalizer_minmax_logreg": (make_pipeline(Normalizer(), MinMaxScaler(), LogisticRegression(max_iter=500)),
                                     "wine"),
        "extra_trees": (ExtraTreesClassifier(10, random_state=0), "wine"),
        "gradient_boosting_regressor": (GradientBoostingRegressor(n_estimators=20, random_state=0), "diabetes"),
        "linear_regression": (LinearRegression(), "diabetes"),
        "xgboost_regressor": (xgb.XGBRegressor(n_estimators=20, max_depth=4), "diabetes"),
        "lightgbm_binary": (lgb.LGBMClassifier(n_estimators=10, num_leaves=15, verbose=-1), "breast_cancer"),
        "linear_svc": (LinearSVC(), "iris"),
    })
    return models


@pytest.mark.parametrize("name", list(_lowering_cases()))
def test_ml_ops_lower_to_torch(tmp_path, name):
    import onnxruntime as ort
    import torch

    from modelport import to_torch
    from modelport.convert.sklearn_to_onnx import _tidy, to_onnx_model
    from modelport.formats.sklearn_format import Loaded

    model, data = _lowering_cases()[name]
    model = _fit(model, data)
    x, _ = _data(data)
    task = "classifier" if hasattr(model, "predict_proba") or hasattr(model, "decision_function") else "regressor"
    onx = to_onnx_model(Loaded(model, type(model).__module__.split(".")[0], task, x.shape[1], 0), 15)
    _tidy(onx)
    assert any(n.domain == "ai.onnx.ml" for n in onx.graph.node)
    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    to_torch.convert(onx, tmp_path)
    module = to_torch.load(tmp_path)
    with_nan = x.copy()
    with_nan[::5, np.arange(len(x))[::5] % x.shape[1]] = np.nan  # missing values take the model's default branch
    for rows in (x, with_nan):
        want = sess.run(None, {"X": rows})
        with torch.no_grad():
            got = module(torch.from_numpy(rows))
        got = [g.numpy() for g in (got if isinstance(got, (tuple, list)) else [got])]
        assert len(got) == len(want)
        for w, g in zip(want, got):
            g = g.reshape(w.shape)
            if w.dtype.kind in "iu":
                assert np.array_equal(w, g), f"{name}: {np.sum(w != g)} label(s) differ from onnxruntime"
            else:
                scale = max(1.0, float(np.nanmax(np.abs(w))))
                assert np.allclose(w, g, rtol=0, atol=2e-6 * scale, equal_nan=True), float(np.nanmax(np.abs(w - g)))


def test_float64_thresholds_become_exact_float32():
    from modelport.to_torch.ops.ml import _float32_thresholds

    t = np.array([0.1, 0.1, 0.1, 0.1, 0.5, 0.1], np.float64)
    modes = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_EQ"]
    t32 = _float32_thresholds(t, modes)
    near = np.float32(0.1)
    candidates = np.array([np.nextafter(near, np.float32(-1)), near, np.nextafter(near, np.float32(1))], np.float32)
    for k, op in enumerate([operator.le, operator.lt, operator.ge, operator.gt]):
        exact, lowered = op(candidates.astype(np.float64), t[k]), op(candidates, t32[k])
        assert np.array_equal(exact, lowered), (op, exact, lowered)
    assert t32[4] == np.float32(0.5) and np.isnan(t32[5])  # 0.1 is no float32: never equal


# ----------------------------------------------------------------------------- on to OpenVINO, through standard ONNX


@pytest.mark.slow
def test_sklearn_to_openvino_through_torch(zoo_dir, tmp_path):
    pytest.importorskip("openvino")
    import modelport as api

    src = _file(zoo_dir, "gradient_boosting_binary")
    report = api.convert(src, "openvino", tmp_path / "gb_ov", inputs=_rows(zoo_dir, "gradient_boosting_binary"))
    assert report.ok, report.parity.summary()
    assert report.route == ("skl2onnx + modelport ML lowering (torch) + openvino",)
    labels = [o for run in report.parity.runs for o in run.outputs if o.name == "label"]
    assert (tmp_path / "gb_ov").is_dir()
    assert labels and all(o.max_abs == 0 for o in labels)  # every row's label as scikit-learn's


# ----------------------------------------------------------------------------- bad input


class _Canary:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _double(x):
    return x * 2


class HandRolledEstimator:
    """A class of this test module: no allow-list names it."""

    def fit(self, x, y):
        self.n_features_in_ = x.shape[1]
        return self


def test_bad_inputs(cli, zoo_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "ran"
    evil = tmp_path / "model.pkl"
    evil.write_bytes(pickle.dumps(_Canary(marker)))
    _fails_cleanly(cli("convert", evil, "--to", "onnx", "-o", out / "m.onnx"), 4, "--trust-pickle", "pathlib")
    assert not marker.exists()  # refused unread

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.linear_model import LogisticRegression

    func = tmp_path / "func.skops"
    sio.dump(_fit(make_pipeline(FunctionTransformer(_double), LogisticRegression(max_iter=300)), "iris"), func)
    _fails_cleanly(cli("convert", func, "--to", "onnx", "-o", out / "m.onnx"), 4, "test_sklearn._double")
    hand = tmp_path / "hand.skops"
    sio.dump(HandRolledEstimator().fit(np.zeros((2, 3)), None), hand)
    _fails_cleanly(cli("inspect", hand), 4, "HandRolledEstimator")

    notzip = tmp_path / "fake.skops"
    notzip.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    _fails_cleanly(cli("inspect", notzip), 2)
    broken = tmp_path / "broken.json"
    broken.write_text('{"learner": {"attributes": ')
    _fails_cleanly(cli("convert", broken, "--to", "onnx", "-o", out / "m.onnx"), 2, "XGBoost")
    cut = tmp_path / "cut.txt"
    cut.write_text(_file(zoo_dir, "lightgbm_native").read_text()[:300])
    _fails_cleanly(cli("convert", cut, "--to", "onnx", "-o", out / "m.onnx"), 2, "LightGBM")
    not_a_model = tmp_path / "dict.pkl"
    not_a_model.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    _fails_cleanly(cli("inspect", not_a_model, "--trust-pickle"), 2, "not a scikit-learn-style model")

    from sklearn.semi_supervised import LabelSpreading

    spread = tmp_path / "spread.skops"
    sio.dump(_fit(LabelSpreading(), "iris"), spread)
    _fails_cleanly(cli("convert", spread, "--to", "onnx", "-o", out / "m.onnx"), 3, "LabelSpreading")
    assert os.listdir(out) == []


@pytest.mark.slow
def test_sklearn_to_tflite_through_torch(zoo_dir, tmp_path):
    pytest.importorskip("onnx2tf")
    import modelport as api

    src = _file(zoo_dir, "xgboost_native")
    report = api.convert(src, "tflite", tmp_path / "xgb.tflite", inputs=_rows(zoo_dir, "xgboost_native"))
    assert report.ok, report.parity.summary()
    labels = [o for run in report.parity.runs for o in run.outputs if o.name == "label"]
    probs = [o for run in report.parity.runs for o in run.outputs if o.name == "probabilities"]
    assert labels and all(o.max_abs == 0 for o in labels)
    assert probs and max(o.max_abs for o in probs) < 1e-5
