"""What the `litert` toolchain does, run there by driver.py (imports only the toolchain's own packages).

Ops: ``versions``; ``convert``: a ``torch.nn.Module`` -> a ``.tflite`` with litert-torch
(``litert_torch.convert(module.eval(), sample_args).export(path)``), at the shapes of the sample
inputs (an npz, its arrays in ``forward``'s argument order). The module is either a directory
modelport's ONNX -> PyTorch compiler wrote (``model.py`` with class ``Model``, ``weights.safetensors``:
self-contained, it imports only torch) or a user's ``file.py`` + class name (+ optional weights:
``.safetensors`` or a ``.pt`` state_dict, loaded with ``weights_only=True``).
"""

import importlib.util
import os
import sys
import uuid
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "3")
warnings.simplefilter("ignore")


class BadInput(Exception):
    exit_code = 2


class Unsupported(Exception):
    exit_code = 3


def _first_line(exc):
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not set(line) <= set("-=[]^~ "):
            return f"{type(exc).__name__}: {line[:300]}"
    return type(exc).__name__


def op_versions():
    from importlib import metadata

    out = {}
    for dist in ("litert-torch", "torch", "ai-edge-litert", "litert-converter", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _import_file(path):
    if not os.path.isfile(path):
        raise BadInput(f"{path}: no such file")
    spec = importlib.util.spec_from_file_location(f"modelport_litert_{uuid.uuid4().hex}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # a module file may import its siblings
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise BadInput(f"{path} does not import: {_first_line(exc)}") from None
    finally:
        sys.path.pop(0)
    return module


def _load_state(weights):
    import torch

    if weights.endswith(".safetensors"):
        import safetensors.torch

        return safetensors.torch.load_file(weights)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BadInput(f"{weights} holds no state_dict")
    return state


def _module(module_dir=None, module_file=None, class_name=None, weights=None):
    import torch

    if module_dir:
        mod = _import_file(os.path.join(module_dir, "model.py"))
        with torch.device("meta"):
            net = mod.Model()
        net.load_state_dict(_load_state(os.path.join(module_dir, "weights.safetensors")), strict=True, assign=True)
        return net.eval()
    mod = _import_file(module_file)
    cls = getattr(mod, class_name or "", None)
    if cls is None:
        raise BadInput(f"{module_file} has no {class_name!r}")
    try:
        net = cls()
    except Exception as exc:
        raise BadInput(f"{class_name}() failed: {_first_line(exc)}") from None
    if not isinstance(net, torch.nn.Module):
        raise BadInput(f"{class_name} is not a torch.nn.Module")
    if weights:
        try:
            net.load_state_dict(_load_state(weights), strict=True)
        except (RuntimeError, OSError, ValueError) as exc:
            raise BadInput(f"the weights do not load into {class_name}: {_first_line(exc)}") from None
    return net.eval()


def op_convert(out, inputs, names, module_dir=None, module_file=None, class_name=None, weights=None):
    """Convert the module at the sample inputs (``inputs``: an npz; ``names``: its keys in argument order)."""
    import numpy as np
    import torch

    net = _module(module_dir, module_file, class_name, weights)
    with np.load(inputs) as data:
        args = tuple(torch.from_numpy(np.ascontiguousarray(data[n])) for n in names)
    import litert_torch  # undeclared-ok: runs in the litert toolchain

    try:
        with torch.no_grad():
            edge = litert_torch.convert(net, args)
    except Exception as exc:  # torch.export / lowering failures: the route fails, the next one is tried
        raise Unsupported(f"litert-torch cannot convert the module: {_first_line(exc)}") from None
    tmp = f"{out}.partial-{os.getpid()}"
    try:
        edge.export(tmp)
        os.replace(tmp, out)
    except Exception as exc:
        raise Unsupported(f"litert-torch cannot write the .tflite: {_first_line(exc)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"shapes": {n: list(a.shape) for n, a in zip(names, args)}}
