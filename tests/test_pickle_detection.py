"""Which format a .pkl / .joblib file is (formats.detect): the sklearn format claims a pickle only when the
static scan finds it imports a scikit-learn, XGBoost or LightGBM class; every other pickle is refused unread
by detect, with one line saying what it is (exit 2: plain data, a torch state_dict or checkpoint) or what it
would run (exit 4), and --trust-pickle never unpickles it."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from modelport.errors import BadInputError, UnsafeError
from modelport.formats import detect, sklearn_format

pytest.importorskip("sklearn")


def _one_line(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, (res.exit_code, res.stderr)
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and line.startswith("modelport: error: "), res.stderr
    for f in fragments:
        assert f in line, line
    return line


@pytest.fixture(scope="module")
def logreg():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x.astype(np.float32), y), x.astype(np.float32)


class _Canary:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["pickle.pkl", "joblib.joblib", "zlib.joblib"])
def test_a_real_estimator_pickle_is_sklearn(how, logreg, tmp_path, cli):
    import joblib

    model, x = logreg
    path = tmp_path / f"model_{how}"
    if how == "pickle.pkl":
        path.write_bytes(pickle.dumps(model))
    else:
        joblib.dump(model, path, compress=("zlib", 3) if how.startswith("zlib") else 0)
    assert detect(path) == "sklearn"
    _one_line(cli("inspect", path), 4, "--trust-pickle", "sklearn.linear_model")  # still refused unread
    with sklearn_format.trusting_pickles(), sklearn_format.open(str(path), sklearn_format.LoadOptions()) as runner:
        out = runner.run({"X": x[:7]})
    assert np.array_equal(out["label"], model.predict(x[:7]))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_torch_state_dict_pkl_is_no_sklearn_model(legacy, tmp_path, cli):
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pkl"
    torch.save(torch.nn.Linear(4, 2).state_dict(), path, _use_new_zipfile_serialization=not legacy)
    assert not sklearn_format.detect(path)
    with pytest.raises(BadInputError, match="not a model"):
        detect(path)
    for trust in ((), ("--trust-pickle",)):
        line = _one_line(cli("convert", path, "--to", "onnx", "-o", tmp_path / "m.onnx", *trust), 2, "weights.pkl",
                         "path/file.py:Name with --weights")
        assert ("torch checkpoint" if legacy else "state_dict, not a model") in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pkl"]


def test_a_plain_dict_pickle_is_exit_2_saying_so(tmp_path, cli):
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3], "name": "x"}, protocol=4))
    assert not sklearn_format.detect(path)
    for trust in ((), ("--trust-pickle",)):
        _one_line(cli("inspect", path, *trust), 2, "a pickle of plain data (it imports nothing)",
                  "not a scikit-learn-style model")
    with pytest.raises(BadInputError, match="imports no scikit-learn, XGBoost or LightGBM class"):
        sklearn_format.load(path)  # asked for by name: the same answer


def test_a_pickle_that_runs_code_is_refused_even_when_trusted(tmp_path, cli):
    """--trust-pickle is for scikit-learn-style models: a pickle naming none of their classes is not unpickled."""
    marker = tmp_path / "ran"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_Canary(marker)))
    assert not sklearn_format.detect(path)
    with pytest.raises(UnsafeError):
        detect(path)
    for trust in ((), ("--trust-pickle",)):
        _one_line(cli("inspect", path, *trust), 4, "unpickle", "pathlib.Path.touch", "modelport scan")
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the canary is live: unpickled, it leaves the marker
    assert marker.exists()


@pytest.mark.parametrize("content", [b"name,value\n1,2\n", b"\x80\x04\x95garbage"])
def test_a_pkl_that_is_no_pickle_is_exit_2(content, tmp_path, cli):
    path = tmp_path / "thing.pkl"
    path.write_bytes(content)
    assert not sklearn_format.detect(path)
    _one_line(cli("inspect", path, "--trust-pickle"), 2, "thing.pkl")
