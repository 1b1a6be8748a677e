"""A PyTorch nn.Module given as source: `path/file.py:Name` (a class or a factory), with optional weights.

Weights are .safetensors, or a .pt/.pth state_dict loaded with ``weights_only=True``: arbitrary
pickled objects are refused (exit 4), never unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any

from modelport.errors import BadInputError, UnsafeError
from modelport.formats.base import LoadOptions, read_head
from modelport.formats.torch_common import TorchCallableRunner, torch_module

NAME = "torch-module"


def detect(path: Path) -> bool:
    from modelport.formats import split_module_spec

    return split_module_spec(str(path)) is not None


def import_object(spec: str) -> Any:
    from modelport.formats import split_module_spec

    parts = split_module_spec(spec)
    if parts is None:
        raise BadInputError(f"{spec!r} is not of the form path/file.py:Name")
    file, name = parts
    p = Path(file)
    if not p.is_file():
        raise BadInputError("no such module file", path=file)
    mod_name = "modelport_user_" + hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(mod_name, p)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise BadInputError(f"importing the module file failed: {type(exc).__name__}: {exc}", path=file) from None
    if not hasattr(module, name):
        raise BadInputError(f"module file defines no {name!r}", path=file)
    return getattr(module, name)


def load_state_dict(path: str) -> dict[str, Any]:
    torch = torch_module()
    p = Path(path)
    if not p.is_file():
        raise BadInputError("no such weights file", path=path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:
            raise BadInputError(f"corrupt safetensors file ({exc})", path=path) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": we refuse what it cannot read
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "pickle" in str(exc).lower():
            raise UnsafeError(
                "refusing to unpickle: the file holds arbitrary Python objects, not a plain state_dict "
                "(save weights with model.state_dict() or as .safetensors)",
                path=path,
            ) from None
        if read_head(p, 4) == b"PK\x03\x04":
            raise BadInputError(f"corrupt weights archive ({exc})", path=path) from None
        raise UnsafeError(f"refusing to load: not a torch weights file ({type(exc).__name__})", path=path) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError("weights file is not a state_dict (a dict of tensors)", path=path)
    return obj


def build_module(spec: str, weights: str | None) -> Any:
    torch = torch_module()
    obj = import_object(spec)
    if not weights:
        torch.manual_seed(0)  # no weights: the same random init every time it is built
    try:
        module = obj() if (inspect.isclass(obj) or callable(obj)) else obj
    except TypeError as exc:
        raise BadInputError(f"{spec}: cannot construct with no arguments ({exc})") from None
    if not isinstance(module, torch.nn.Module):
        raise BadInputError(f"{spec} is not an nn.Module (got {type(module).__name__})")
    if weights:
        state = load_state_dict(weights)
        problem = state_dict_mismatch(module, state)
        if problem:
            raise BadInputError(f"weights do not fit {spec}: {problem}", path=weights)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())
            raise BadInputError(f"weights do not fit {spec}: {first[:300]}", path=weights) from None
    return module.eval()


def _some(names: list[str], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def state_dict_mismatch(module: Any, state: dict[str, Any]) -> str:
    """Why a state_dict does not fit a module, in one short line ('' when it fits)."""
    want = module.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [
        f"{k} {'x'.join(map(str, state[k].shape))} vs {'x'.join(map(str, v.shape))}"
        for k, v in want.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (file vs module): {_some(shapes)}")
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_some(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_some(unexpected)}")
    return "; ".join(parts)


class TorchModuleRunner(TorchCallableRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        module = build_module(path, options.weights)
        if not options.inputs:
            raise BadInputError(
                "a PyTorch module carries no input signature; give --input name:1x3x224x224:float32", path=path
            )
        super().__init__(path, module.to(options.device), options.inputs, device=options.device)
        self.module = module


def open(path: str, options: LoadOptions) -> TorchModuleRunner:  # noqa: A001
    return TorchModuleRunner(path, options)
