"""A PyTorch nn.Module given as source: `path/file.py:Name` (a class or a factory), with optional weights.

Weights are .safetensors, or a .pt/.pth state_dict loaded with ``weights_only=True``: arbitrary
pickled objects are refused (exit 4), never unpickled.

A forward that takes Python scalars (``forward(x, sr: int)``) gets them as constants
(``--input sr=16000``, a ``ConstantSpec``): ``bind_constants`` checks each against forward's
parameters (a constant for a Tensor parameter, or a tensor for an int one, is refused naming the
parameter) and wraps the module in one whose forward takes the tensors only, so that exports bake
the constants in and comparisons feed the tensors alone. TorchScript modules use it too.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import re
import sys
import typing
import warnings
from pathlib import Path
from typing import Any

from modelport.artifact import TensorSpec
from modelport.errors import BadInputError, UnsafeError
from modelport.formats.base import LoadOptions, read_head
from modelport.formats.torch_common import TorchCallableRunner, torch_module
from modelport.inputs import ConstantSpec, split_constants

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
                "(save weights with model.state_dict() or as .safetensors; `modelport scan FILE` lists what it "
                "would import, `modelport convert FILE --to safetensors` rebuilds its tensors without running it)",
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


# --------------------------------------------------------------------------- Python constants

SCALAR_KINDS = ("int", "float", "bool")


@dataclasses.dataclass(frozen=True)
class ForwardParam:
    """One parameter of forward: its name, its kind (tensor, int, float, bool or any) and whether it has a default."""

    name: str
    kind: str
    has_default: bool


def _kind_of(annotation: Any) -> str:
    """tensor, int, float, bool (Optional[...] of those too) or any, from a type or its spelling."""
    torch = torch_module()
    if annotation is inspect.Parameter.empty or annotation is None:
        return "any"
    if isinstance(annotation, str):
        text = re.sub(r"^(typing\.)?Optional\[(.*)\]$", r"\2", annotation.replace(" ", ""))
        text = re.sub(r"^(.*)\|None$|^None\|(.*)$", lambda m: m.group(1) or m.group(2), text)
        if text in ("Tensor", "torch.Tensor"):
            return "tensor"
        return text if text in SCALAR_KINDS else "any"
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and len(args) == 1 and type(None) in typing.get_args(annotation):  # Optional[X]
        return _kind_of(args[0])
    if isinstance(annotation, type) and issubclass(annotation, torch.Tensor):
        return "tensor"
    return {bool: "bool", int: "int", float: "float"}.get(annotation, "any")


def forward_params(module: Any) -> tuple[ForwardParam, ...] | None:
    """forward's parameters after self, typed from TorchScript's schema or the Python annotations;
    None when forward takes ``*args`` or ``**kwargs`` (or cannot be inspected)."""
    torch = torch_module()
    if isinstance(module, torch.jit.ScriptModule):
        try:
            arguments = module.forward.schema.arguments[1:]
        except Exception:  # noqa: BLE001  (a module without a scripted forward)
            return None
        out = []
        for a in arguments:
            has_default = a.has_default_value() if callable(getattr(a, "has_default_value", None)) else a.default_value is not None
            out.append(ForwardParam(a.name, _kind_of(str(a.type)), bool(has_default)))
        return tuple(out)
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(module.forward)
    except Exception:  # noqa: BLE001  (an annotation that does not resolve: use its spelling)
        hints = {}
    out = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return None
        out.append(ForwardParam(p.name, _kind_of(hints.get(p.name, p.annotation)), p.default is not p.empty))
    return tuple(out)


def _check_constant(spec: ConstantSpec, param: ForwardParam | None, params: tuple[ForwardParam, ...], path: str) -> Any:
    """The constant's value for ``param`` (an int widened to float for a float parameter), or a one-line refusal."""
    if param is None:
        names = ", ".join(p.name for p in params) or "none"
        raise BadInputError(f"--input {spec.text}: forward has no parameter {spec.name!r} (its parameters: {names})",
                            path=path)
    value = spec.value
    if param.kind == "tensor":
        raise BadInputError(f"--input {spec.text}: parameter {param.name!r} of forward takes a Tensor, not a Python "
                            f"constant; give it a tensor spec, e.g. --input {param.name}:1x16:float32", path=path)
    if param.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    wrong = (param.kind == "int" and not (isinstance(value, int) and not isinstance(value, bool))
             or param.kind == "bool" and not isinstance(value, bool)
             or param.kind == "float" and not isinstance(value, float))
    if wrong:
        raise BadInputError(f"--input {spec.text}: parameter {param.name!r} of forward takes {'an' if param.kind == 'int' else 'a'} {param.kind}, "
                            f"not {type(value).__name__} {spec.text.split('=', 1)[1]}", path=path)
    return value


def _scalar_example(kind: str) -> str:
    return {"int": "16000", "float": "0.5", "bool": "true"}.get(kind, "1")


def bind_constants(module: Any, specs: tuple[TensorSpec, ...], path: str) -> tuple[Any, tuple[TensorSpec, ...], dict[str, Any]]:
    """(the callable to run and export, the tensor specs, the constants by name) for ``module`` given ``specs``.

    Tensor specs fill the parameters that no constant names, in order, as calls always did. Refused
    (exit 2, naming the parameter): a constant for a parameter forward lacks or that takes a Tensor, a
    value of the wrong type, a tensor spec for an int/float/bool parameter, and an int/float/bool
    parameter without a default left without a value. With constants, the callable is a module whose
    forward takes the tensors only.
    """
    tensors, _ = split_constants(specs)
    given = [s for s in specs if isinstance(s, ConstantSpec)]
    params = forward_params(module)
    constants: dict[str, Any] = {}
    if params is not None:
        by_name = {p.name: p for p in params}
        for spec in given:
            constants[spec.name] = _check_constant(spec, by_name.get(spec.name), params, path)
        free = [p for p in params if p.name not in constants]
        for i, spec in enumerate(tensors):
            named = by_name.get(spec.name)
            target = named if named is not None and named.name not in constants else (free[i] if i < len(free) else None)
            if target is not None and target.kind in SCALAR_KINDS:
                raise BadInputError(
                    f"--input {spec}: parameter {target.name!r} of forward takes a Python {target.kind}, not a tensor; "
                    f"give it as a constant, e.g. --input {target.name}={_scalar_example(target.kind)}", path=path)
        missing = [p for p in free[len(tensors):] if p.kind in SCALAR_KINDS and not p.has_default]
        if missing and tensors:
            p = missing[0]
            raise BadInputError(f"parameter {p.name!r} of forward (a Python {p.kind}) has no value; give it as a "
                                f"constant, e.g. --input {p.name}={_scalar_example(p.kind)}", path=path)
    else:
        constants = {s.name: s.value for s in given}
    if not constants:
        return module, tensors, {}
    names = tuple(p.name for p in params) if params is not None else None
    return bound_class()(module, names, constants), tensors, constants


@functools.cache
def bound_class() -> type:
    """The nn.Module class that calls a module with its constants (defined on first use: torch loads lazily)."""
    torch = torch_module()

    class ConstantsBound(torch.nn.Module):
        """``forward(*tensors)`` calls ``inner`` with the tensors in the free parameters and the constants in theirs."""

        def __init__(self, inner: Any, params: tuple[str, ...] | None, constants: dict[str, Any]) -> None:
            super().__init__()
            self.inner = inner
            self.param_names = params
            self.constants = dict(constants)

        def forward(self, *tensors: Any) -> Any:
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
            rest = list(tensors)
            positional = True
            for name in self.param_names or ():
                if name in self.constants:
                    value = self.constants[name]
                elif rest:
                    value = rest.pop(0)
                else:  # a parameter left to its default: the ones after it go by name
                    positional = False
                    continue
                if positional:
                    args.append(value)
                else:
                    kwargs[name] = value
            args.extend(rest)
            kwargs.update({k: v for k, v in self.constants.items() if k not in (self.param_names or ())})
            return self.inner(*args, **kwargs)

    return ConstantsBound


def constants_text(constants: dict[str, Any]) -> str:
    """``sr=16000 baked in as a constant`` (or ``..., flag=true baked in as constants``)."""
    items = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v!r}" for k, v in constants.items())
    return f"{items} baked in as {'constants' if len(constants) > 1 else 'a constant'}"


class TorchModuleRunner(TorchCallableRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        module = build_module(path, options.weights)
        fn, tensors, constants = bind_constants(module, options.inputs, path)
        if not tensors:
            raise BadInputError(
                "a PyTorch module carries no input signature; give --input name:1x3x224x224:float32", path=path
            )
        super().__init__(path, fn.to(options.device), tensors, device=options.device)
        self.module = module
        self.constants = constants


def open(path: str, options: LoadOptions) -> TorchModuleRunner:  # noqa: A001
    return TorchModuleRunner(path, options)
