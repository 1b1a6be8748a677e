"""scikit-learn, XGBoost and LightGBM models -> ONNX with skl2onnx and onnxmltools.

scikit-learn estimators and pipelines go through ``skl2onnx.convert_sklearn``; XGBoost and
LightGBM estimators (alone or as the last step of a pipeline) through onnxmltools' converters,
registered with skl2onnx as its documentation shows (``update_registered_converter``). A native
LightGBM ``Booster`` (a ``.txt`` model) goes through ``onnxmltools.convert_lightgbm``.

Classifiers are converted with ``zipmap=False``: ``probabilities`` is a float tensor (batch x
classes), not a list of maps, and ``label`` an int64 tensor. The graph uses the ``ai.onnx.ml``
domain (TreeEnsembleClassifier/Regressor, LinearClassifier, Scaler, Normalizer, SVMClassifier, ...),
which onnxruntime runs and modelport's ONNX -> PyTorch compiler lowers in part
(``modelport.to_torch.ops.ml``). Opset 15 by default: onnxmltools' converters stop there.

The conversion is verified against the library itself on the same float32 rows (labels compared
exactly, probabilities at the float32 tolerances): the runner is ``modelport.formats.sklearn_format``.
"""

from __future__ import annotations

import functools
import warnings

from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import ExportError, UnsupportedError
from modelport.formats.base import require

__all__ = ["DEFAULT_OPSET", "ML_OPSET", "sklearn_to_onnx", "to_onnx_model"]

DEFAULT_OPSET = 15
ML_OPSET = 3  # ai.onnx.ml: TreeEnsemble* with *_as_tensor attributes


@functools.cache
def _register_boosters() -> tuple[str, ...]:
    """Teach skl2onnx the XGBoost and LightGBM estimators (onnxmltools' converters); the libraries found."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                  calculate_linear_regressor_output_shapes)

    found = []
    cls_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        import xgboost as xgb
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    except ImportError:
        pass
    else:
        update_registered_converter(xgb.XGBClassifier, "XGBoostXGBClassifier",
                                    calculate_linear_classifier_output_shapes, convert_xgboost, options=cls_options)
        update_registered_converter(xgb.XGBRegressor, "XGBoostXGBRegressor",
                                    calculate_linear_regressor_output_shapes, convert_xgboost)
        found.append("xgboost")
    try:
        import lightgbm as lgb
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    except ImportError:
        pass
    else:
        update_registered_converter(lgb.LGBMClassifier, "LightGbmLGBMClassifier",
                                    calculate_linear_classifier_output_shapes, convert_lightgbm, options=cls_options)
        update_registered_converter(lgb.LGBMRegressor, "LightGbmLGBMRegressor",
                                    calculate_linear_regressor_output_shapes, convert_lightgbm)
        found.append("lightgbm")
    return tuple(found)


def _estimators(model) -> list:
    """The model and every estimator inside it (pipeline steps, column transformers, ...)."""
    out, todo = [], [model]
    while todo:
        m = todo.pop()
        out.append(m)
        for attr in ("steps", "transformer_list", "transformers"):
            for item in getattr(m, attr, None) or ():
                sub = item[1] if isinstance(item, tuple) else item
                if hasattr(sub, "fit"):
                    todo.append(sub)
        for attr in ("estimator", "base_estimator"):
            sub = getattr(m, attr, None)
            if hasattr(sub, "fit"):
                todo.append(sub)
    return out


def _unsupported_class(exc: Exception) -> str | None:
    """The estimator class skl2onnx has no converter or shape calculator for, from its message."""
    import re

    m = re.search(r"<class '([\w.]+)'>", str(exc))
    return m.group(1) if m else None


def to_onnx_model(loaded, opset: int, path: str = ""):
    """The ONNX ModelProto of a loaded model (``sklearn_format.Loaded``), input ``X`` float32."""
    require("skl2onnx", "sklearn", "scikit-learn -> ONNX")
    from skl2onnx.common.data_types import FloatTensorType

    initial = [("X", FloatTensorType([None, loaded.n_features]))]
    model = loaded.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if loaded.library == "lightgbm" and not hasattr(model, "fit"):  # a native Booster
            onnxmltools = require("onnxmltools", "sklearn", "LightGBM -> ONNX")
            from onnxmltools.convert.common.data_types import FloatTensorType as MLFloatTensorType

            try:
                return onnxmltools.convert_lightgbm(model, initial_types=[("X", MLFloatTensorType([None, loaded.n_features]))],
                                                    target_opset=min(opset, 15),
                                                    zipmap=False)
            except Exception as exc:
                raise ExportError(f"onnxmltools failed on this LightGBM model: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200]}", path=path) from None
        from skl2onnx import convert_sklearn
        from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator

        _register_boosters()
        options = {id(m): {"zipmap": False} for m in _estimators(model) if hasattr(m, "predict_proba")}
        try:
            return convert_sklearn(model, initial_types=initial, options=options or None,
                                   target_opset={"": opset, "ai.onnx.ml": ML_OPSET})
        except (MissingConverter, MissingShapeCalculator) as exc:
            cls = _unsupported_class(exc) or type(model).__name__
            raise UnsupportedError(f"skl2onnx cannot convert {cls} (no converter registered for it)", path=path) from None
        except NotImplementedError as exc:
            raise UnsupportedError(f"skl2onnx cannot convert {type(model).__name__}: {str(exc).splitlines()[0][:200]}",
                                   path=path) from None
        except Exception as exc:  # skl2onnx raises RuntimeError/ValueError/... from inside a converter
            root = exc.__cause__ or exc  # "Unable to create node ..." wraps what went wrong
            raise ExportError(f"skl2onnx failed on {type(model).__name__}: {type(root).__name__}: "
                              f"{(str(root).splitlines() or [''])[0][:200]}", path=path) from None


def _tidy(model) -> None:
    """One opset import per domain (skl2onnx may write the default domain twice); ``batch`` as dim 0."""
    seen: dict[str, int] = {}
    for imp in model.opset_import:
        seen[imp.domain] = max(seen.get(imp.domain, 0), imp.version)
    del model.opset_import[:]
    for domain, version in seen.items():
        model.opset_import.add(domain=domain, version=version)
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def _versions(library: str) -> tuple[tuple[str, str], ...]:
    import importlib

    out = []
    for name in ("sklearn", "skl2onnx", "onnxmltools", library):
        if name and name not in (n for n, _ in out):
            try:
                out.append((name, importlib.import_module(name).__version__))
            except ImportError:
                pass
    return tuple(out)


@register("sklearn", "onnx", "skl2onnx / onnxmltools")
def sklearn_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    import onnx

    from modelport.formats.sklearn_format import load

    loaded = load(src)
    opset = options.opset or DEFAULT_OPSET
    model = to_onnx_model(loaded, opset, src)
    _tidy(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the converter wrote an invalid ONNX model: {str(exc).splitlines()[0][:200]}", path=src) from None
    onnx.save(model, out)
    ml_ops = sorted({n.op_type for n in model.graph.node if n.domain == "ai.onnx.ml"})
    tool = "onnxmltools" if loaded.library == "lightgbm" and not hasattr(loaded.model, "fit") else "skl2onnx"
    detail = (f"{loaded.class_name} ({loaded.task}, {loaded.n_features} features"
              + (f", {loaded.n_outputs} classes" if loaded.task == "classifier" else "") + f"); opset {opset}"
              + (f"; ai.onnx.ml ops {', '.join(ml_ops)}" if ml_ops else ""))
    return ConverterResult(tool=tool, versions=_versions(loaded.library if loaded.library != "sklearn" else ""),
                           detail=detail)


# --------------------------------------------------------------------------- beyond ONNX: standard ops only
#
# onnx2tf and OpenVINO have no ai.onnx.ml ops, so the planner's onnx -> tflite / openvino edges
# refuse these graphs (exit 3 naming TreeEnsembleClassifier, ...). These edges go around: the
# ONNX-ML graph is compiled to PyTorch by modelport's compiler (modelport.to_torch.ops.ml lowers
# the ml ops to tensor code), exported back to ONNX with standard ops only (torch.export +
# torch.onnx), and that graph goes to the target's own converter. The convert pipeline verifies the
# final model against the library itself, as for every route.

_STANDARD_ROUTE = (("onnx", "torch"), ("torch", "torch-export"), ("torch-export", "onnx"))


def _edge(src: str, dst: str):
    from modelport.convert.registry import edges

    for e in edges():
        if (e.src, e.dst) == (src, dst):
            return e
    raise UnsupportedError(f"no {src} -> {dst} converter is registered")


def _rename_io(model, reference) -> None:
    """Give the re-exported graph the ONNX-ML graph's input and output names (by position)."""
    pairs = [(a.name, b.name) for a, b in zip(model.graph.input, reference.graph.input)]
    pairs += [(a.name, b.name) for a, b in zip(model.graph.output, reference.graph.output)]
    renames = {old: new for old, new in pairs if old != new}
    if not renames:
        return
    taken = {v for n in model.graph.node for v in [*n.input, *n.output]} | {i.name for i in model.graph.initializer}
    if set(renames.values()) & (taken - set(renames)):
        return  # a clash: keep the exporter's names (the verifier matches outputs by position then)
    for node in model.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        vi.name = renames.get(vi.name, vi.name)


def lower_ml_ops(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    """An ONNX-ML graph -> the same function in standard ONNX ops, through modelport's torch compiler."""
    import dataclasses
    import tempfile
    from pathlib import Path

    import onnx

    plain = dataclasses.replace(options, inputs=(), weights=None)
    results = []
    with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".ml-lowering-") as tmp:
        paths = [src, str(Path(tmp) / "torch"), str(Path(tmp) / "model.pt2"), str(Path(tmp) / "standard.onnx")]
        for (a, b), here, there in zip(_STANDARD_ROUTE, paths, paths[1:]):
            results.append(_edge(a, b).fn(here, there, plain))
        model = onnx.load(paths[-1])
        _rename_io(model, onnx.load(src, load_external_data=False))
        left = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})
        if left:
            raise ExportError(f"the re-exported graph still has non-standard ops: {', '.join(left)}", path=src)
        onnx.save(model, out)
    versions = tuple(dict(v for r in results for v in r.versions).items())
    return ConverterResult(tool="modelport onnx2torch + torch.onnx", versions=versions,
                           detail="ai.onnx.ml ops lowered to standard ONNX through modelport's PyTorch compiler")


def _through_standard_onnx(dst: str):
    def convert(src: str, out: str, options: ConvertOptions) -> ConverterResult:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".sklearn-route-") as tmp:
            ml, standard = str(Path(tmp) / "ml.onnx"), str(Path(tmp) / "standard.onnx")
            first = sklearn_to_onnx(src, ml, options)
            lowered = lower_ml_ops(ml, standard, options)
            last = _edge("onnx", dst).fn(standard, out, options)
        versions = tuple(dict([*first.versions, *lowered.versions, *last.versions]).items())
        return ConverterResult(
            tool=f"{first.tool} + modelport ML lowering + {last.tool}", versions=versions,
            detail=f"{first.detail}; lowered to standard ONNX ops through modelport's PyTorch compiler; "
                   f"{dst}: {last.detail}".rstrip("; "),
            warnings=tuple(first.warnings) + tuple(last.warnings), tolerance=last.tolerance)

    convert.__name__ = f"sklearn_to_{dst}"
    return convert


for _dst, _tool in (("openvino", "openvino"), ("tflite", "onnx2tf"), ("savedmodel", "onnx2tf")):
    register("sklearn", _dst, f"skl2onnx + modelport ML lowering (torch) + {_tool}")(_through_standard_onnx(_dst))
