"""scikit-learn-style models: scikit-learn estimators and pipelines, XGBoost and LightGBM.

Four kinds of file hold one:

- ``.skops``: skops' format (a zip of JSON and arrays), read with ``skops.io.load``. skops builds
  only the types it is told to trust: every type the file names that skops does not trust by
  default (``skops.io.get_untrusted_types``) must be on :func:`allowed_type` (classes of
  scikit-learn, XGBoost and LightGBM, and a few numpy/collections types), else the file is
  refused unread (exit 4, naming the type).
- ``.joblib`` / ``.pkl`` / ``.pickle``: pickles, which run code when loaded. Such a file is this
  format only when the static scan of ``modelport.security.pickles`` (nothing imported, nothing
  unpickled) finds it imports a class of scikit-learn, XGBoost or LightGBM: a torch state_dict, a
  dict of arrays or any other pickle with one of those suffixes is left to ``formats.detect``,
  which names what it is. Refused (exit 4, listing the globals the scan finds it would import)
  unless the user trusts it: ``--trust-pickle`` (:func:`trusting_pickles`) or
  ``MODELPORT_TRUST_PICKLE=1``.
- XGBoost's own model files (``Booster.save_model``: UBJSON ``.ubj`` or ``.json``, a
  ``"learner"`` object) and LightGBM's text model (``tree`` / ``version=v4`` ...): data, not
  code; loaded without trust.

The runner's signature is one input ``X`` (float32, ``batch`` x the model's feature count) and
the outputs skl2onnx names: a classifier gives ``label`` (int64) and ``probabilities``
(float32, batch x classes); a regressor ``variable`` (float32, batch x targets); a transformer
``variable`` (its output). Predictions come from the library itself on the same float32 rows.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.artifact import Signature, TensorSpec
from modelport.errors import BadInputError, UnsafeError, UnsupportedError
from modelport.formats.base import BaseRunner, LoadOptions, read_head, require
from modelport.quiet import native_output

if TYPE_CHECKING:
    from modelport.security.pickles import ScanReport

__all__ = ["NAME", "Loaded", "SklearnRunner", "allowed_type", "detect", "file_kind", "load", "names_estimator", "open",
           "pickle_scan", "pickle_trusted", "trusting_pickles"]

NAME = "sklearn"
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
TRUST_PICKLE_ENV = "MODELPORT_TRUST_PICKLE"
INPUT = "X"

_XGB_JSON = re.compile(rb'^\s*\{\s*"learner"\s*:')
_LGB_TEXT = re.compile(rb"^tree\r?\nversion=v\d")

# Types a .skops file may name beyond skops' own defaults: classes of these libraries (a name that
# starts upper case; functions are not on the list: a pipeline could call them at predict time) ...
_ALLOWED_ROOTS = ("sklearn.", "xgboost.", "lightgbm.")
# ... and these exactly (what skops writes for numpy scalars, random states and LightGBM's params).
_ALLOWED_EXACT = frozenset({
    "collections.OrderedDict", "collections.defaultdict",
    "numpy.dtype", "numpy.ndarray", "numpy.float64", "numpy.float32", "numpy.int64", "numpy.int32",
    "numpy.bool_", "numpy.str_", "numpy.random.RandomState", "numpy.random._mt19937.MT19937",
    "builtins.slice",
})

_TRUST: contextvars.ContextVar[bool] = contextvars.ContextVar("modelport_trust_pickle", default=False)


def pickle_trusted() -> bool:
    """True inside :func:`trusting_pickles` (``--trust-pickle``) or with ``MODELPORT_TRUST_PICKLE=1``."""
    return _TRUST.get() or os.environ.get(TRUST_PICKLE_ENV, "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def trusting_pickles(trust: bool = True) -> Iterator[None]:
    """Within the block, joblib/pickle model files are unpickled (the user said ``--trust-pickle``)."""
    token = _TRUST.set(trust or _TRUST.get())
    try:
        yield
    finally:
        _TRUST.reset(token)


def allowed_type(name: str) -> bool:
    """May a .skops file build an object of this (fully qualified) type?"""
    if name in _ALLOWED_EXACT:
        return True
    module, _, cls = name.rpartition(".")
    return name.startswith(_ALLOWED_ROOTS) and bool(cls) and cls[0].isupper() and "__" not in name


def pickle_scan(path: Path) -> ScanReport | None:
    """The static scan (``security.pickles.scan_path``: nothing unpickled) of a pickle file, None where the
    scanner cannot read it at all; kept for the last few files (by path, size, mtime), as detection and the
    refusal both need it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return _scan(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=4)
def _scan(path: str, size: int, mtime_ns: int, inode: int) -> ScanReport | None:
    from modelport.security.pickles import scan_path

    try:
        return scan_path(path)
    except BadInputError:  # empty, not a regular file, nothing in it to scan
        return None


def names_estimator(report: ScanReport) -> bool:
    """Does a pickle's scan show it imports a scikit-learn, XGBoost or LightGBM class?"""
    return any(name.startswith(_ALLOWED_ROOTS) for name in report.imported())


def file_kind(path: Path) -> str | None:
    """``skops``, ``pickle``, ``xgboost`` or ``lightgbm`` from the name and content; None if none.

    A pickle is ``pickle`` only when it imports a class of scikit-learn, XGBoost or LightGBM (a static scan)."""
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        report = pickle_scan(path)
        return "pickle" if report is not None and names_estimator(report) else None
    head = read_head(path, 64)
    if suffix == ".skops" and head[:4] == b"PK\x03\x04":
        return "skops"
    if suffix == ".ubj" and head[:1] == b"{" and b"learner" in head[:32]:
        return "xgboost"
    if suffix == ".json" and _XGB_JSON.match(head):
        return "xgboost"
    if _LGB_TEXT.match(head):
        return "lightgbm"
    return None


def detect(path: Path) -> bool:
    return file_kind(path) is not None


# --------------------------------------------------------------------------- loading


class Loaded:
    """A loaded model: the object, which library it is from, and what it computes."""

    def __init__(self, model: Any, library: str, task: str, n_features: int, n_outputs: int,
                 classes: np.ndarray | None = None) -> None:
        self.model = model
        self.library = library  # sklearn, xgboost, lightgbm (a native Booster)
        self.task = task  # classifier, regressor, transformer
        self.n_features = n_features
        self.n_outputs = n_outputs  # classes, targets, or transformed columns (0: unknown)
        self.classes = classes

    @property
    def class_name(self) -> str:
        cls = type(self.model)
        return f"{cls.__module__}.{cls.__qualname__}"


def _refuse_pickle(path: Path) -> None:
    from modelport.security.pickles import scan_path

    report = pickle_scan(path) or scan_path(path)  # static: nothing imported; an unreadable file is exit 2 here
    if report.errors and not report.pickles:
        raise BadInputError(f"not a pickle or joblib file: {report.errors[0]}", path=path)
    names = list(dict.fromkeys(f.detail for f in report.findings)) or report.imported()  # what would run first
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    raise UnsafeError(f"refusing to unpickle a joblib/pickle model (loading it runs code; it imports {shown or 'nothing'}); "
                      "pass --trust-pickle (or set MODELPORT_TRUST_PICKLE=1) if you trust where it came from, "
                      "or save the model with skops", path=path)


def _load_pickle(path: Path) -> Any:
    if not pickle_trusted():
        _refuse_pickle(path)
    require("sklearn", "sklearn", "joblib/pickle models")
    import joblib

    try:
        return joblib.load(path)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise UnsupportedError(f"the pickle needs what is not installed here ({exc})", path=path) from None
    except Exception as exc:  # a corrupt or truncated pickle raises whatever the unpickler hits
        raise BadInputError(f"cannot unpickle: {type(exc).__name__}: {str(exc)[:160]}", path=path) from None


def _load_skops(path: Path) -> Any:
    sio = require("skops.io", "sklearn", ".skops models")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # not a skops archive (no schema.json, bad JSON, a plain zip)
        raise BadInputError(f"not a readable .skops file ({type(exc).__name__}: {str(exc)[:160]})", path=path) from None
    refused = [t for t in untrusted if not allowed_type(t)]
    if refused:
        raise UnsafeError(f"the .skops file names type(s) modelport does not trust: {', '.join(refused[:5])}"
                          f"{' ...' if len(refused) > 5 else ''} (only scikit-learn, XGBoost and LightGBM classes "
                          "and numpy arrays/scalars load)", path=path)
    try:
        return sio.load(path, trusted=list(untrusted))
    except Exception as exc:
        raise BadInputError(f"cannot load the .skops file ({type(exc).__name__}: {str(exc)[:160]})", path=path) from None


def _load_xgboost(path: Path) -> Any:
    import json

    xgb = require("xgboost", "sklearn", "XGBoost models")
    try:
        booster = xgb.Booster(model_file=str(path))
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    except Exception as exc:  # xgboost.core.XGBoostError and friends, with a C++ trace
        raise BadInputError(f"cannot load the XGBoost model ({str(exc).strip().splitlines()[0][:160]})",
                            path=path) from None
    if objective.startswith(("binary:", "multi:")):
        model = xgb.XGBClassifier()
    elif objective.startswith(("reg:", "count:", "survival:")):
        model = xgb.XGBRegressor()
    else:
        raise UnsupportedError(f"XGBoost objective {objective!r} (classification and regression are supported)",
                               path=path)
    model.load_model(str(path))
    return model


def _load_lightgbm(path: Path) -> Any:
    lgb = require("lightgbm", "sklearn", "LightGBM models")
    try:
        with native_output():
            return lgb.Booster(model_file=str(path))
    except Exception as exc:  # lightgbm.basic.LightGBMError
        raise BadInputError(f"cannot load the LightGBM model ({str(exc).strip().splitlines()[0][:160]})",
                            path=path) from None


def _describe(model: Any, path: Path) -> Loaded:
    """What the loaded object computes, and on how many features."""
    lgb_booster = type(model).__module__.startswith("lightgbm") and type(model).__name__ == "Booster"
    if lgb_booster:
        objective = str(model.params.get("objective") or model.dump_model(num_iteration=0).get("objective", ""))
        n_features = int(model.num_feature())
        if objective.startswith(("binary", "cross_entropy")):
            return Loaded(model, "lightgbm", "classifier", n_features, 2, np.array([0, 1]))
        if objective.startswith(("multiclass", "softmax", "multiclassova")):
            k = int(model.dump_model(num_iteration=0)["num_class"])
            return Loaded(model, "lightgbm", "classifier", n_features, k, np.arange(k))
        if objective.startswith(("regression", "huber", "fair", "poisson", "quantile", "mape", "gamma", "tweedie",
                                 "l1", "l2")):
            return Loaded(model, "lightgbm", "regressor", n_features, 1)
        raise UnsupportedError(f"LightGBM objective {objective!r} (classification and regression are supported)",
                               path=path)
    module = type(model).__module__.split(".")[0]
    if module not in ("sklearn", "xgboost", "lightgbm") or not hasattr(model, "fit"):
        raise BadInputError(f"not a scikit-learn-style model: the file holds a {type(model).__module__}."
                            f"{type(model).__qualname__}", path=path)
    n_features = getattr(model, "n_features_in_", None)
    if n_features is None:
        raise BadInputError(f"{type(model).__name__} is not fitted (no n_features_in_)", path=path)
    library = module
    if hasattr(model, "classes_") and (hasattr(model, "predict_proba") or hasattr(model, "decision_function")):
        classes = np.asarray(model.classes_)
        columns = len(classes) if hasattr(model, "predict_proba") or len(classes) > 2 else 1  # binary decision
        return Loaded(model, library, "classifier", int(n_features), columns, classes)
    if hasattr(model, "predict") and not hasattr(model, "transform"):
        return Loaded(model, library, "regressor", int(n_features), int(getattr(model, "n_outputs_", 1) or 1))
    if hasattr(model, "transform"):
        return Loaded(model, library, "transformer", int(n_features), 0)
    raise UnsupportedError(f"{type(model).__name__} has neither predict_proba, predict nor transform", path=path)


def load(path: str | Path) -> Loaded:
    """Load a scikit-learn-style model file (trusted types only; pickles only when trusted)."""
    p = Path(path)
    kind = file_kind(p)
    if kind is None and p.suffix.lower() in PICKLE_SUFFIXES and p.is_file():
        raise BadInputError("not a scikit-learn-style model: the pickle imports no scikit-learn, XGBoost or "
                            "LightGBM class", path=path)
    if kind is None:
        raise BadInputError("not a scikit-learn, XGBoost or LightGBM model file", path=path)
    loader = {"skops": _load_skops, "pickle": _load_pickle, "xgboost": _load_xgboost, "lightgbm": _load_lightgbm}[kind]
    return _describe(loader(p), p)


# --------------------------------------------------------------------------- running


class SklearnRunner(BaseRunner):
    """The library's own predictions on float32 rows: labels and probabilities, values, or features."""

    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        super().__init__(path)
        self.loaded = load(path)
        lo = self.loaded
        given = {s.name: s for s in options.inputs}
        if given and set(given) != {INPUT}:
            raise BadInputError(f"--input names {sorted(given)} do not match the model's input ['{INPUT}']", path=path)
        inputs = (TensorSpec(INPUT, "float32", ("batch", lo.n_features)),)
        if lo.task == "classifier":
            outputs = (TensorSpec("label", "int64", ("batch",)),
                       TensorSpec("probabilities", "float32", ("batch", lo.n_outputs)))
        else:
            outputs = (TensorSpec("variable", "float32", ("batch", lo.n_outputs or None)),)
        self._signature = Signature(inputs, outputs)

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.asarray(feeds[INPUT], dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.loaded.n_features:
            raise BadInputError(f"input X has shape {list(x.shape)}; the model takes [batch, {self.loaded.n_features}]",
                                path=self.path)
        import warnings

        with warnings.catch_warnings(), native_output():
            warnings.simplefilter("ignore")  # "X does not have valid feature names": we pass plain arrays
            return self._predict(x)

    def _predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        lo, m = self.loaded, self.loaded.model
        if lo.library == "lightgbm" and not hasattr(m, "fit"):  # a native Booster
            raw = np.asarray(m.predict(x), dtype=np.float64)
            if lo.task == "regressor":
                return {"variable": raw.reshape(len(x), -1).astype(np.float32)}
            proba = np.stack([1 - raw, raw], axis=1) if raw.ndim == 1 else raw
            return {"label": proba.argmax(axis=1).astype(np.int64), "probabilities": proba.astype(np.float32)}
        if lo.task == "classifier":
            if hasattr(m, "predict_proba"):
                proba = np.asarray(m.predict_proba(x), dtype=np.float32)
            else:  # decision scores, as skl2onnx writes them (binary: one column)
                proba = np.asarray(m.decision_function(x), dtype=np.float32).reshape(len(x), -1)
            label = np.asarray(m.predict(x))
            if label.dtype.kind not in "iub":
                raise UnsupportedError(f"class labels of type {label.dtype} (integer labels are supported)",
                                       path=self.path)
            return {"label": label.astype(np.int64), "probabilities": proba}
        if lo.task == "regressor":
            return {"variable": np.asarray(m.predict(x), dtype=np.float32).reshape(len(x), -1)}
        out = m.transform(x)
        out = out.toarray() if hasattr(out, "toarray") else out
        return {"variable": np.asarray(out, dtype=np.float32)}


def open(path: str, options: LoadOptions) -> SklearnRunner:  # noqa: A001
    return SklearnRunner(path, options)
