"""Model formats: detection from content, and a Runner for each.

Each format lives in its own module exposing ``NAME``, ``detect(path) -> bool`` (cheap:
magic bytes and directory structure, no heavy imports) and ``open(path, options) -> Runner``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from modelport.errors import BadInputError, UnsupportedError
from modelport.formats.base import BaseRunner, LoadOptions, Runner
from modelport.quiet import native_output

__all__ = ["FORMATS", "MODULE_SPEC_FORMATS", "Runner", "BaseRunner", "LoadOptions", "detect", "module_for", "open_runner", "split_module_spec"]

# Detection order matters: the more specific content checks come first.
FORMATS: dict[str, str] = {
    "torch-module": "modelport.formats.torch_module",
    "torch": "modelport.formats.torch_dir",
    "torch-export": "modelport.formats.torch_export",
    "torchscript": "modelport.formats.torchscript",
    "onnx": "modelport.formats.onnx_format",
    "keras": "modelport.formats.keras_format",
    "savedmodel": "modelport.formats.savedmodel",
    "tflite": "modelport.formats.tflite",
    "caffe": "modelport.formats.caffe_format",  # by suffix: a .prototxt (its .caffemodel beside it)
    "paddle": "modelport.formats.paddle_format",  # NAME.json (PIR) or NAME.pdmodel, with NAME.pdiparams
    "paddle-layer": "modelport.formats.paddle_layer",  # file.py:Name importing paddle, with --weights .pdparams
    "mxnet": "modelport.formats.mxnet_format",  # PREFIX-symbol.json (by content), with PREFIX-EPOCH.params
    "mindspore": "modelport.formats.mindspore_format",  # a .mindir file (MindSpore's MindIR)
    "mindspore-cell": "modelport.formats.mindspore_cell",  # file.py:Name importing mindspore, with --weights .ckpt
    "openvino": "modelport.formats.openvino_format",
    "sklearn": "modelport.formats.sklearn_format",  # .skops, estimator .joblib/.pkl (--trust-pickle), XGBoost .ubj/.json, LightGBM .txt
}

# A model given as code, path/file.py:Name: the first of these whose detect claims the spec (from the imports of
# the file); torch-module, which claims every spec, last.
MODULE_SPEC_FORMATS: tuple[str, ...] = ("mindspore-cell", "paddle-layer", "torch-module")


def module_for(fmt: str) -> ModuleType:
    try:
        return importlib.import_module(FORMATS[fmt])
    except KeyError:
        raise UnsupportedError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}") from None


def split_module_spec(spec: str) -> tuple[str, str] | None:
    """`path/file.py:Name` -> (path, Name), else None."""
    head, sep, name = str(spec).rpartition(":")
    if sep and head.endswith(".py") and name.isidentifier():
        return head, name
    return None


def detect(path: str | Path, fmt: str | None = None) -> str:
    """The format of a model file or directory, from its content."""
    if fmt:
        module_for(fmt)
        return fmt
    if split_module_spec(str(path)):
        return next((name for name in MODULE_SPEC_FORMATS if module_for(name).detect(Path(path))), "torch-module")
    p = Path(path)
    if not p.exists():
        raise BadInputError("no such file or directory", path=path)
    for name in FORMATS:
        if module_for(name).detect(p):
            return name
    if p.suffix.lower() == ".mindrecord":
        raise BadInputError("a MindRecord file is a dataset (MindSpore's), not a model: give it as --inputs, "
                            "--calibration, --eval or --data, or convert it with `modelport data convert`", path=path)
    refuse_pickles(p)
    if p.is_dir():
        raise BadInputError(
            "directory is no model (not a SavedModel, a modelport torch directory or an OpenVINO IR)", path=path
        )
    if p.stat().st_size == 0:
        raise BadInputError("file is empty", path=path)
    raise UnsupportedError(f"unknown model format (known: {', '.join(FORMATS)})", path=path)


def open_runner(path: str | Path, fmt: str | None = None, options: LoadOptions | None = None) -> Runner:
    """Load a model for running; the caller closes it (it is a context manager)."""
    name = detect(path, fmt)
    with native_output():  # frameworks log from C++ while they load a model
        return module_for(name).open(str(path), options or LoadOptions())


def refuse_pickles(p: Path) -> None:
    """A pickle no format claimed is refused unread: exit 4 when loading it would import something off the
    allow-list of ``security.pickles`` (its static scan names what), else exit 2 saying what it is (plain data,
    a torch checkpoint, a state_dict), not a model. A torch.save archive that is no state_dict is exit 4."""
    from modelport.errors import UnsafeError
    from modelport.formats.base import read_head, zip_names

    if not p.is_file():
        return
    names = zip_names(p)
    if names and any(n.endswith("data.pkl") for n in names):
        from modelport.formats.torch_module import load_state_dict

        load_state_dict(str(p))  # raises UnsafeError unless it is a plain state_dict
        raise BadInputError(
            "this is a state_dict, not a model: give the module as path/file.py:Name with --weights", path=p
        )
    if names is not None or (read_head(p, 1) != b"\x80" and p.suffix.lower() not in _PICKLE_SUFFIXES):
        return
    from modelport.formats.sklearn_format import pickle_scan
    from modelport.security.pickles import checkpoint_container, scan_path

    # nothing is imported or unpickled (the sklearn format's detect scanned a .pkl already); scan_path raises
    # the exit 2 of a file that is no pickle at all
    report = pickle_scan(p) or scan_path(p)
    if report.findings:
        found = list(dict.fromkeys(f.detail for f in report.findings))
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise UnsafeError(f"refusing to unpickle a pickle that is no model modelport reads (loading it would run "
                          f"{shown}); --trust-pickle loads only scikit-learn, XGBoost and LightGBM models; "
                          "`modelport scan FILE` lists what it would import", path=p)
    if report.errors:
        raise BadInputError(f"not a readable pickle: {report.summary()}", path=p)
    if checkpoint_container(p) == "legacy":
        raise BadInputError("this is a torch checkpoint (torch.save's legacy format), not a model: give the module "
                            "as path/file.py:Name with --weights, or rebuild its tensors with `modelport convert "
                            "FILE --to safetensors`", path=p)
    imported = report.imported()
    raise BadInputError(f"a pickle of plain data (it imports {', '.join(imported[:4]) if imported else 'nothing'}), "
                        "not a model, and not a scikit-learn-style model either (it names no scikit-learn, XGBoost "
                        "or LightGBM class)", path=p)


# What a pickled model's file is called (a pickle with another name is still caught by its first byte).
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
