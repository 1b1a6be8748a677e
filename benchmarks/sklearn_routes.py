"""Route x model table for scikit-learn-style sources (issue 14, item 7): label agreement, max abs
error of the probabilities against the library itself, and conversion time.

Run (a few minutes on a laptop CPU; nothing is downloaded):

    .venv/bin/python benchmarks/sklearn_routes.py [--routes onnx,torch,openvino,tflite] [--json]

Every model is trained here for seconds on a dataset that ships with scikit-learn, saved as the
user would save it (.skops, XGBoost .ubj, LightGBM .txt), converted with ``modelport.convert``
(which verifies it on the dataset's rows) and compared again here on the same rows: labels must be
equal, probabilities are reported as max |converted - library|.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def models():
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {
        "StandardScaler+LogisticRegression (iris)": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
                                                     "iris", "skops"),
        "RandomForest 100x depth 10 (digits)": (RandomForestClassifier(100, max_depth=10, random_state=0), "digits",
                                                "skops"),
        "GradientBoosting 100 (breast_cancer)": (GradientBoostingClassifier(random_state=0), "breast_cancer", "skops"),
        "MLP 64 (digits)": (make_pipeline(StandardScaler(), MLPClassifier((64,), max_iter=300, random_state=0)),
                            "digits", "skops"),
        "SVC rbf, probability (wine)": (make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)),
                                        "wine", "skops"),
        "XGBoost 100x depth 6 (wine) .ubj": (xgb.XGBClassifier(n_estimators=100, max_depth=6), "wine", "ubj"),
        "LightGBM 100 (breast_cancer) .txt": (lgb.LGBMClassifier(n_estimators=100, verbose=-1), "breast_cancer", "txt"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", default="onnx,torch,openvino,tflite")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import skops.io as sio
    from sklearn import datasets

    import modelport as api
    from modelport.formats import open_runner
    from modelport.errors import ModelportError

    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, data, kind) in models().items():
            x, y = getattr(datasets, f"load_{data}")(return_X_y=True)
            x = x.astype(np.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(x, y)
            src = Path(tmp) / f"m{len(rows_out)}.{kind}"
            if kind == "skops":
                sio.dump(model, src)
            elif kind == "ubj":
                model.save_model(src)
            else:
                model.booster_.save_model(str(src))
            with open_runner(src) as lib:
                want = lib.run({"X": x})
            for route in args.routes.split(","):
                out = Path(tmp) / f"{src.stem}_{route}" / ("m.tflite" if route == "tflite" else "m.onnx"
                                                           if route == "onnx" else "m")
                out.parent.mkdir()
                started = time.perf_counter()
                try:
                    report = api.convert(src, route, out, inputs={"X": x})
                except ModelportError as exc:
                    rows_out.append({"model": name, "route": route, "error": str(exc).split(": ", 1)[-1][:120]})
                    continue
                seconds = time.perf_counter() - started
                with open_runner(out, route) as conv:
                    got = conv.run({"X": x})
                rows_out.append({"model": name, "route": f"sklearn -> {route}", "verified": bool(report.ok),
                                 "label_agreement": float(np.mean(got["label"].reshape(-1) == want["label"])),
                                 "max_abs_prob": float(np.abs(got["probabilities"] - want["probabilities"]).max()),
                                 "seconds": round(seconds, 1), "rows": len(x)})
    if args.json:
        print(json.dumps(rows_out, indent=1))
        return
    print("| model | route | labels equal | max abs err (probabilities) | conversion s |")
    print("|---|---|---|---|---|")
    for r in rows_out:
        if "error" in r:
            print(f"| {r['model']} | sklearn -> {r['route']} | - | fails: {r['error']} | - |")
        else:
            print(f"| {r['model']} | {r['route']} | {r['label_agreement']:.4f} ({r['rows']} rows) | "
                  f"{r['max_abs_prob']:.1e} | {r['seconds']} |")


if __name__ == "__main__":
    main()
