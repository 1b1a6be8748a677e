"""Every loader defends itself: checks on a model's own bytes that run before a framework parses it.

- **ONNX external data** stays inside the model's directory. A tensor's ``location`` that is
  absolute, has a ``..`` component, reaches a file through a symlink that leads outside, names a
  file with more than one hard link (which may be a file outside), names something that is not a
  regular file, or carries onnxruntime's in-memory tag ``*/_ORT_MEM_ADDR_/*`` (a process address)
  is refused (exit 4) before onnx or onnxruntime opens anything.
- **Keras**: the ``config.json`` of a ``.keras`` archive (the ``model_config`` of an ``.h5``) is
  checked against an allow-list built from keras itself at run time: the classes of
  ``keras.layers`` (less those that carry code or load other files: ``Lambda``,
  ``TorchModuleWrapper``, ``JaxLayer``, ``FlaxLayer``, ``TFSMLayer``), ``Sequential``/``Model``/
  ``Functional``, keras' op classes (``keras.src.ops``), initializers, regularizers, constraints,
  dtype policies, quantizers and the activation functions. A Python lambda, a custom or unknown
  class or function, and a lookup layer whose vocabulary is a file path are refused (exit 4),
  naming the layer. A custom class that the calling program itself registered
  (``keras.saving.register_keras_serializable``, same module) is its own code and is allowed;
  from the command line nothing is registered. Then the file's HDF5 parts (an ``.h5`` model, a
  ``.keras`` archive's ``model.weights.h5``) are opened only in a forked child that copies them into a
  new HDF5 file (:func:`rebuilt_keras_file`): a corrupt file that crashes or hangs libhdf5 kills the
  child (exit 2), external links, external storage and virtual datasets (other files read) are refused
  (exit 4), and Keras loads the rebuilt copy.
- **SavedModel**: the graph and every function of its library are scanned, from
  ``saved_model.pb`` alone, for ops that read or write files, reach the network or run Python
  (:data:`RISKY_OPS`); checkpoint ops (SaveV2/RestoreV2, ...) are normal unless their path is a
  constant. Refused (exit 4) unless trusted (``--trust`` or ``MODELPORT_TRUST=1``).
- **TFLite** custom ops are listed from the flatbuffer (a model cannot ship a kernel: the host
  must register one), for ``inspect`` to report.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelport.errors import BadInputError, UnsafeError

__all__ = [
    "ORT_MEMORY_TAG",
    "RISKY_OPS",
    "CHECKPOINT_OPS",
    "TRUST_ENV",
    "ExternalData",
    "OpFinding",
    "KerasAllowList",
    "external_data",
    "check_external_data",
    "read_onnx",
    "check_onnx_file",
    "keras_allow_list",
    "keras_config",
    "check_keras_config",
    "check_keras_file",
    "rebuilt_keras_file",
    "savedmodel_findings",
    "check_savedmodel",
    "trusted",
    "trusting",
    "tflite_custom_ops",
]

# --------------------------------------------------------------------------- ONNX external data

ORT_MEMORY_TAG = "*/_ORT_MEM_ADDR_/*"  # onnxruntime reads `offset` as a pointer into its own memory


@dataclasses.dataclass(frozen=True)
class ExternalData:
    """One tensor's external data, checked: the file it lives in (resolved) and its byte range."""

    tensor: str
    location: str
    file: Path
    offset: int
    length: int | None


def _graph_tensors(graph) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node) -> Iterator[Any]:
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        for sparse in a.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if a.HasField("g"):
            yield from _graph_tensors(a.g)
        for g in a.graphs:
            yield from _graph_tensors(g)


def _model_tensors(model) -> Iterator[Any]:
    """Every TensorProto of a model: initializers, sparse ones, Constant attributes, subgraphs,
    functions and training graphs (onnx's own loader does not look at all of them; onnxruntime may)."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)
    for info in model.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _int_field(value: str, what: str, tensor: str, model_path: object) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadInputError(f"external data {what} {value!r} of tensor {tensor!r} is not an integer", path=model_path) from None
    if number < 0:
        raise BadInputError(f"external data {what} {number} of tensor {tensor!r} is negative", path=model_path)
    return number


def _resolve_location(location: str, tensor: str, base: Path, root: str, model_path: object) -> Path:
    """The real file that ``location`` names under ``base``, or UnsafeError saying how it escapes."""

    def escape(why: str) -> UnsafeError:
        return UnsafeError(f"refused: external data path {location!r} of tensor {tensor!r} escapes the model "
                           f"directory ({why})", path=model_path)

    if not location:
        raise BadInputError(f"tensor {tensor!r} has external data without a location", path=model_path)
    if "_ORT_MEM_ADDR_" in location:
        raise UnsafeError(f"refused: external data location {location!r} of tensor {tensor!r} asks onnxruntime "
                          "to read its own process memory at the tensor's offset", path=model_path)
    if "\x00" in location:
        raise escape("a NUL byte in the path")
    parts = [p for p in re.split(r"[\\/]", location)]
    if location.startswith(("/", "\\")) or os.path.isabs(location) or re.match(r"^[A-Za-z]:", location):
        raise escape("an absolute path")
    if ".." in parts:
        raise escape("a '..' component")
    current = base
    names = [p for p in parts if p not in ("", ".")]
    for i, part in enumerate(names):
        current = current / part
        try:
            link = current.is_symlink()
        except OSError as exc:  # a name too long for the file system, ...
            raise BadInputError(f"external data path {location[:200]!r} of tensor {tensor!r} cannot be looked up: "
                                f"{exc.strerror or exc}", path=model_path) from None
        if link:
            target = os.path.realpath(current)
            if not _inside(target, root):
                what = "the file" if i == len(names) - 1 else f"the directory {'/'.join(names[: i + 1])!r}"
                raise escape(f"{what} is a symlink to {target}")
    real = os.path.realpath(base / location)
    if not _inside(real, root):
        raise escape(f"it resolves to {real}")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise BadInputError(f"missing external data file ({location})", path=model_path) from None
    except OSError as exc:
        raise BadInputError(f"cannot read external data file {location!r}: {exc.strerror}", path=model_path) from None
    if stat.S_ISDIR(st.st_mode):
        raise BadInputError(f"external data path {location!r} of tensor {tensor!r} is a directory", path=model_path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeError(f"refused: external data path {location!r} of tensor {tensor!r} is not a regular file "
                          "(a device or pipe could block or never end)", path=model_path)
    if st.st_nlink > 1:
        raise escape(f"the file has {st.st_nlink} hard links, so it may be a file outside the directory")
    return Path(real)


def external_data(model, model_path: str | os.PathLike) -> tuple[ExternalData, ...]:
    """The external data of every tensor of ``model`` (read from ``model_path``), each checked.

    Raises:
        UnsafeError: a location escapes the model's directory (see the module docstring).
        BadInputError: a location is missing, its file is missing, or offset/length do not fit the file.
    """
    import onnx

    base = Path(os.path.dirname(os.path.abspath(os.fspath(model_path))))
    root = os.path.realpath(base)
    files: dict[str, tuple[Path, int]] = {}
    found: list[ExternalData] = []
    for tensor in _model_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        fields = {e.key: e.value for e in tensor.external_data}
        if len(fields) != len(tensor.external_data):  # readers disagree on which of two entries wins
            keys = [e.key for e in tensor.external_data]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            raise UnsafeError(f"refused: external data of tensor {tensor.name!r} has more than one {twice[0]!r} "
                              "entry (readers differ on which one counts)", path=model_path)
        location = fields.get("location", "")
        if location not in files:
            real = _resolve_location(location, tensor.name, base, root, model_path)
            files[location] = (real, real.stat().st_size)
        real, size = files[location]
        offset = _int_field(fields.get("offset", "0") or "0", "offset", tensor.name, model_path)
        length = _int_field(fields["length"], "length", tensor.name, model_path) if fields.get("length") else None
        if offset > size or (length is not None and offset + length > size):
            span = f"offset {offset}" + (f", length {length}" if length is not None else "")
            raise BadInputError(f"external data of tensor {tensor.name!r} ({span}) runs past the end of "
                                f"{location!r} ({size} bytes)", path=model_path)
        found.append(ExternalData(tensor.name, location, real, offset, length))
    return tuple(found)


def check_external_data(model, model_path: str | os.PathLike) -> None:
    """Raise UnsafeError when any external data of ``model`` escapes its directory (see :func:`external_data`)."""
    external_data(model, model_path)


def read_onnx(path: str | os.PathLike, *, load_external_data: bool = True):
    """An ONNX ModelProto read safely: the protobuf alone first, its external data checked, then read.

    Raises:
        UnsafeError: external data that escapes the model's directory.
        BadInputError: an unreadable or corrupt file, missing external data.
    """
    import onnx
    from onnx import external_data_helper

    path = os.fspath(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except FileNotFoundError as exc:
        raise BadInputError(f"missing file ({exc.filename})", path=path) from None
    except IsADirectoryError:
        raise BadInputError("is a directory, not an ONNX file", path=path) from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise BadInputError(f"corrupt or truncated ONNX file ({type(exc).__name__})", path=path) from None
    _check_text(model, path)
    check_external_data(model, path)
    if load_external_data:
        try:
            external_data_helper.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        except FileNotFoundError as exc:
            raise BadInputError(f"missing external data file ({exc.filename})", path=path) from None
        except Exception as exc:
            raise BadInputError(f"unreadable external data ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
                                path=path) from None
    return model


def _bytes_in_strings(msg: Any, depth: int = 0) -> str | None:
    """The first string field of ``msg`` (recursively) that protobuf returned as bytes: not valid UTF-8."""
    for fd, value in msg.ListFields():
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if fd.type == fd.TYPE_MESSAGE:
            if depth > 64:
                return f"{msg.DESCRIPTOR.name} nested more than 64 deep"
            for item in (value if repeated else (value,)):
                found = _bytes_in_strings(item, depth + 1)
                if found:
                    return found
        elif fd.type == fd.TYPE_STRING and any(isinstance(v, bytes) for v in (value if repeated else (value,))):
            return f"{msg.DESCRIPTOR.name}.{fd.name} is not valid UTF-8"
    return None


def _check_text(model: Any, path: object) -> None:
    """ONNX is proto2: protobuf parses a string field that is not UTF-8 and hands it back as bytes, which
    every reader of names then trips on. Such a file is corrupt (exit 2), said before anything reads it."""
    found = _bytes_in_strings(model)
    if found:
        raise BadInputError(f"corrupt ONNX file: {found}", path=path)


def check_onnx_file(path: str | os.PathLike) -> None:
    """Read the protobuf of the ONNX file at ``path`` (not its weights) and check its external data."""
    read_onnx(path, load_external_data=False)


# --------------------------------------------------------------------------- Keras

# Layers of keras.layers that carry code or open other files: refused though they are built in.
_KERAS_DENY = {
    "Lambda": "runs arbitrary Python code (its function is stored as bytecode)",
    "TorchModuleWrapper": "unpickles a PyTorch module stored in its config (arbitrary code)",
    "JaxLayer": "calls Python functions named in its config",
    "FlaxLayer": "calls a Flax module's Python code named in its config",
    "TFSMLayer": "loads a TensorFlow SavedModel from a path in its config",
}
# Preprocessing layers whose config may name a vocabulary file that Keras would read.
_VOCABULARY_LAYERS = ("StringLookup", "IntegerLookup", "TextVectorization")
# Plain data in a Keras config; never resolved to code.
_KERAS_DATA = {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"}
_CONFIG_LIMIT = 64 << 20  # a config.json larger than this is no model config


@dataclasses.dataclass(frozen=True)
class KerasAllowList:
    """What a Keras config may name, built from the installed keras.

    Attributes:
        by_key: (module, name) -> class, under the public module (``keras.layers``, ``Dense``) and the
            defining one (``keras.src.models.functional``, ``Functional``).
        by_name: class name -> class (for legacy ``.h5`` configs, which carry no module).
        layers: the layer and model classes (they name a layer in messages).
        models: the model classes (Sequential, Model, Functional).
        denied: class -> why it is refused although built in.
        functions: names of the built-in functions a config may name (activations, ...).
    """

    by_key: dict[tuple[str, str], type]
    by_name: dict[str, type]
    layers: frozenset[type]
    models: frozenset[type]
    denied: dict[type, str]
    functions: frozenset[str]

    def resolve(self, module: str | None, name: str) -> type | None:
        if module is None:
            return self.by_name.get(name)
        return self.by_key.get((module, name))


def _public_classes(namespace) -> Iterator[tuple[str, type]]:
    for name in dir(namespace):
        if name.startswith("_"):
            continue
        obj = getattr(namespace, name, None)
        if isinstance(obj, type) and getattr(obj, "__module__", "").startswith("keras"):
            yield name, obj


def _all_subclasses(cls: type) -> Iterator[type]:
    seen: set[type] = set()
    stack = [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                yield sub


@functools.cache
def keras_allow_list() -> KerasAllowList:
    """The allow-list, built from the keras installed here (once per process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from modelport.quiet import native_output

    with native_output():
        import keras

    by_key: dict[tuple[str, str], type] = {}
    layers: set[type] = set()
    denied: dict[type, str] = {}

    def allow(public_module: str | None, public_name: str | None, cls: type) -> None:
        if public_module and public_name:
            by_key.setdefault((public_module, public_name), cls)
        by_key.setdefault((cls.__module__, cls.__name__), cls)

    for name, cls in _public_classes(keras.layers):
        if issubclass(cls, keras.layers.Layer):
            allow("keras.layers", name, cls)
            layers.add(cls)
            if name in _KERAS_DENY:
                denied[cls] = _KERAS_DENY[name]
    models = [keras.Sequential, keras.Model]
    try:
        from keras.src.models.functional import Functional

        models.append(Functional)
    except ImportError:  # a keras without that module keeps Functional under keras.Model's subclasses
        models.extend(c for c in _all_subclasses(keras.Model) if c.__name__ == "Functional")
    for cls in models:
        allow("keras", cls.__name__, cls)
        allow("keras.models", cls.__name__, cls)
        layers.add(cls)
    for namespace in ("initializers", "regularizers", "constraints", "dtype_policies", "quantizers"):
        ns = getattr(keras, namespace, None)
        if ns is not None:
            for name, cls in _public_classes(ns):
                allow(f"keras.{namespace}", name, cls)
    for name in ("DTypePolicy", "FloatDTypePolicy"):
        if isinstance(getattr(keras, name, None), type):
            allow("keras", name, getattr(keras, name))
    operation = getattr(keras, "Operation", None)
    if isinstance(operation, type):  # keras' own ops (x * 2, keras.ops.sin) in functional models
        for cls in _all_subclasses(operation):
            if cls.__module__.startswith("keras.src.ops.") and not issubclass(cls, keras.layers.Layer):
                allow(None, None, cls)
    functions = {name for name in dir(keras.activations)
                 if not name.startswith("_") and callable(getattr(keras.activations, name))
                 and not isinstance(getattr(keras.activations, name), type)} - {"get", "serialize", "deserialize"}
    by_name: dict[str, type] = {}
    for (_, name), cls in sorted(by_key.items(), key=lambda kv: kv[0][0] != "keras.layers"):
        by_name.setdefault(name, cls)
    by_name.setdefault("Model", keras.Model)
    return KerasAllowList(by_key, by_name, frozenset(layers), frozenset(models), denied, frozenset(functions))


@dataclasses.dataclass(frozen=True)
class _Where:
    layer: str | None = None  # "layer 'dense' (Dense)"
    key: str | None = None  # the config key that holds the object

    def label(self, what: str = "") -> str:
        own = f"the {self.key} of " if self.key and what else ""
        return f"{own}Keras {self.layer}" if self.layer else f"{own}the Keras model config"


def _layer_label(entry: dict, class_name: str, kind: str = "layer") -> str:
    inner = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    name = entry.get("name") or inner.get("name")
    return f"{kind} {name!r} ({class_name})" if name else f"{kind} of class {class_name}"


def _refuse(message: str, path: object) -> UnsafeError:
    return UnsafeError(f"refused: {message}; modelport loads only built-in Keras classes and ones the calling "
                       "program registered", path=path)


def _registered_here(name: Any, module: Any) -> Any | None:
    """A custom object that the running program registered itself (``keras.saving.register_keras_serializable``),
    from ``module`` where the config names one: code that already runs here, not code the file brings."""
    if not isinstance(name, str) or not name:
        return None
    import keras

    obj = keras.saving.get_registered_object(name)
    if obj is None or (isinstance(module, str) and getattr(obj, "__module__", None) != module):
        return None
    return obj


def _check_function(entry: dict, where: _Where, allow: KerasAllowList, path: object) -> None:
    name, module = entry.get("config"), entry.get("module")
    registered = entry.get("registered_name")
    label = where.label("function")
    if not isinstance(name, str):
        raise BadInputError(f"{label}: a function entry without a name", path=path)
    builtin_module = module in (None, "builtins") or str(module) == "keras" or str(module).startswith("keras.")
    if not builtin_module or name not in allow.functions or registered not in (None, name, "function"):
        if _registered_here(registered if registered not in (None, "function") else name, module) is not None:
            return
        origin = f" from module {module!r}" if module else ""
        reg = f", registered as {registered!r}" if registered not in (None, name, "function") else ""
        raise _refuse(f"{label} is a custom function {name!r}{origin}{reg}, not a built-in Keras function nor one "
                      "this program registered", path)


def _check_object(entry: dict, where: _Where, allow: KerasAllowList, path: object) -> _Where:
    """Check one serialized object (a dict with ``class_name``); returns where its contents sit."""
    class_name = entry.get("class_name")
    if not isinstance(class_name, str):
        raise BadInputError(f"{where.label()}: class_name is not a string", path=path)
    if class_name in _KERAS_DATA:
        return where
    if class_name == "__lambda__":
        raise _refuse(f"{where.label('lambda')} is a Python lambda (bytecode that would run on load)", path)
    if class_name == "__typespec__":
        module = str(entry.get("module") or "")
        if not (module.startswith("tensorflow") or module == "keras" or module.startswith("keras.")):
            raise _refuse(f"{where.label('type spec')} is a type spec from module {module!r}", path)
        return where
    if class_name == "function":
        _check_function(entry, where, allow, path)
        return where
    module = entry.get("module")
    registered = entry.get("registered_name")
    if module is not None and not isinstance(module, str):
        raise BadInputError(f"{where.label()}: module is not a string", path=path)
    looks_like_layer = where.layer is None or where.key in (None, "layers", "layer", "cell", "backward_layer",
                                                            "forward_layer", "cells")
    if looks_like_layer:
        label = f"Keras {_layer_label(entry, class_name)}" + (f" inside {where.layer}" if where.layer else "")
    else:
        label = f"the {where.key} ({class_name}) of Keras {where.layer}" if where.key else where.label()
    custom = registered not in (None, class_name) or (module is not None and not (module == "keras"
                                                                                   or module.startswith("keras.")))
    if custom and _registered_here(registered or class_name, module) is not None:
        return _Where(_layer_label(entry, class_name)) if looks_like_layer else where
    if registered not in (None, class_name):
        origin = f"{module}.{class_name}" if module else class_name
        raise _refuse(f"{label} is a custom class ({origin}, registered as {registered!r}), not a built-in Keras class "
                      "nor one this program registered", path)
    if custom:
        raise _refuse(f"{label} is a custom class from module {module!r}, not a built-in Keras class", path)
    cls = allow.resolve(module, class_name)
    if cls is None:
        where_from = f"{module}.{class_name}" if module else class_name
        raise _refuse(f"{label} is an unknown class {where_from!r} (not in keras' layers, models, ops, initializers, "
                      "regularizers, constraints or dtype policies)", path)
    if cls in allow.denied:
        raise _refuse(f"{label} {allow.denied[cls]}", path)
    inner = entry.get("config")
    if cls.__name__ in _VOCABULARY_LAYERS and isinstance(inner, dict) and isinstance(inner.get("vocabulary"), str):
        raise _refuse(f"{label} reads the vocabulary file named in its config ({inner['vocabulary']!r})", path)
    if cls in allow.layers:
        return _Where(_layer_label(entry, class_name, "model" if cls in allow.models else "layer"))
    return where


def _walk(node: Any, where: _Where, allow: KerasAllowList, path: object, depth: int = 0) -> None:
    if depth > 200:
        raise BadInputError("Keras model config is nested too deeply", path=path)
    if isinstance(node, list):
        for item in node:
            _walk(item, where, allow, path, depth + 1)
        return
    if not isinstance(node, dict):
        return
    if "class_name" in node:
        where = _check_object(node, where, allow, path)
    for key, value in node.items():
        if key == "compile_config":  # not deserialized: models load with compile=False
            continue
        if isinstance(value, (dict, list)):
            inner_key = where.key if key in ("config", "inbound_nodes", "args", "kwargs") else key
            _walk(value, dataclasses.replace(where, key=inner_key), allow, path, depth + 1)


def check_keras_config(config: Any, *, path: object = None) -> None:
    """Refuse (UnsafeError) a Keras model config that names anything outside :func:`keras_allow_list`.

    The names in the message come from the file: line breaks in them are escaped, so the refusal
    stays one line.
    """
    from modelport.errors import ModelportError

    try:
        _walk(config, _Where(), keras_allow_list(), path)
    except ModelportError as exc:
        text = str(exc)
        if "\n" not in text and "\r" not in text:
            raise
        if exc.path and text.startswith(f"{exc.path}: "):
            text = text[len(exc.path) + 2:]
        raise type(exc)(text.replace("\r", "\\r").replace("\n", "\\n"), path=exc.path) from None


def _read_json(text: bytes | str, what: str, path: object) -> Any:
    try:
        from modelport.security.jsonsafe import loads

        return loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadInputError(f"cannot load Keras model ({what} is not valid JSON: {type(exc).__name__})",
                            path=path) from None


H5_READ_SECONDS = 30


def _h5_read_attr(p: Path) -> bytes:
    """b"N" (no model_config), b"B" + its bytes, or b"E" + the exception's name."""
    import h5py

    try:
        with h5py.File(p, "r") as f:
            raw = f.attrs.get("model_config")
        if raw is None:
            return b"N"
        if isinstance(raw, str):
            return b"B" + raw.encode("utf-8", "surrogatepass")
        return b"B" + (raw if isinstance(raw, bytes) else bytes(raw))
    except Exception as exc:  # noqa: BLE001 - any h5py failure is an unreadable file
        return b"E" + type(exc).__name__.encode()


def _child_result(work: Any, seconds: float, path: object) -> bytes:
    """``work()`` (bytes) run in a forked child under a wall-clock deadline; its bytes, or a one-line error.

    A child that is killed by a signal (a segfault in libhdf5 on a corrupt file) or that runs past the
    deadline (libhdf5 spinning in C) is a corrupt file (exit 2), not a dead or hung modelport.
    """
    if not hasattr(os, "fork"):  # pragma: no cover - (not POSIX: run in this process)
        return work()
    import select
    import signal
    import time

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            import faulthandler

            faulthandler.disable()  # a crash here is the answer, not a stack dump on the caller's stderr
            os.close(r)
            data = memoryview(work())
            while data:
                data = data[os.write(w, data):]
        except BaseException:  # noqa: BLE001 - nothing may escape a forked child
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    killed = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                killed = True
                raise BadInputError(f"cannot load Keras model (the HDF5 reader did not finish in {seconds:.0f} s: "
                                    "a corrupt file)", path=path)
            ready, _, _ = select.select([r], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(r, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if not killed and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        raise BadInputError(f"cannot load Keras model (a corrupt HDF5 file: the reader crashed with {name})", path=path)
    return b"".join(chunks)


def _h5_answer(out: bytes, path: object) -> bytes | None:
    """The child's answer: None (no model_config), the model_config's bytes, or the error it names."""
    if out[:1] == b"N":
        return None
    if out[:1] == b"B":
        return out[1:]
    why = out[1:].decode("utf-8", "replace") if out[:1] in (b"E", b"U") else "the reader died"
    why = why.replace("\r", " ").replace("\n", " ")[:300]
    if out[:1] == b"U":
        raise UnsafeError(f"refused: {why}", path=path)
    raise BadInputError(f"cannot load Keras model (not a readable HDF5 file: {why})", path=path)


def _h5_model_config(p: Path, path: object) -> bytes | None:
    """The ``model_config`` attribute of an HDF5 file, read in a forked child under a deadline.

    libhdf5 loops forever on some corrupt files (found by fuzzing: a few flipped bytes in an .h5 made
    ``attrs.get`` spin in C, where no signal handler runs), so the attribute is read in a child that
    is killed after ``H5_READ_SECONDS``: such a file is refused (exit 2) instead of hanging the command.
    """
    return _h5_answer(_child_result(lambda: _h5_read_attr(p), H5_READ_SECONDS, path), path)


# --------------------------------------------------------------------------- Keras: HDF5 rebuilt before Keras reads it

KERAS_WEIGHTS_MEMBER = "model.weights.h5"
_H5_MAX_DEPTH = 64
_H5_MAX_OBJECTS = 200_000
_H5_COPY_RATE = 20 << 20  # bytes per second the deadline allows for, on top of H5_READ_SECONDS
_H5_EXPANSION = 1100  # gzip's best ratio is about 1000:1: data that claims more than this is no weight file


class _H5Refusal(Exception):
    """In the rebuilding child: the file is unsafe (``unsafe``) or not a weight file Keras could have written."""

    def __init__(self, message: str, unsafe: bool = False) -> None:
        super().__init__(message)
        self.unsafe = unsafe


def _h5_rebuild(src: Any, dst: str, budget: int) -> bytes | None:
    """Copy every group, dataset, attribute and in-file link of the HDF5 file ``src`` (a path or a file
    object) into a new file ``dst`` written by h5py; returns the root's ``model_config`` (None if absent).

    Refused (:class:`_H5Refusal`, unsafe): external links, datasets with external storage and virtual
    datasets (each reads another file). Refused as not a weight file: data types other than numbers,
    booleans and strings, committed data types, nesting deeper than ``_H5_MAX_DEPTH``, more than
    ``_H5_MAX_OBJECTS`` objects, and data that claims more than ``budget`` bytes in all.
    """
    import h5py
    import numpy as np

    left = [budget]
    count = [0]

    def spend(nbytes: int, what: str) -> None:
        left[0] -= nbytes
        if left[0] < 0:
            raise _H5Refusal(f"{what} claims {nbytes} bytes, more than the file could hold")

    def dtype_of(tid: Any, dtype: Any, what: str) -> Any:
        """The numpy dtype to write a value of HDF5 type ``tid`` with: numbers, booleans and strings only."""
        cls = tid.get_class()
        if cls == h5py.h5t.STRING:
            if tid.is_variable_str():
                return h5py.string_dtype("utf-8" if tid.get_cset() == h5py.h5t.CSET_UTF8 else "ascii")
            return dtype
        if cls in (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.ENUM, h5py.h5t.BITFIELD) and dtype.kind in "biuf" \
                and dtype.fields is None and dtype.subdtype is None:
            return dtype
        raise _H5Refusal(f"{what} has an unsupported data type ({dtype})")

    def copy_attrs(src_obj: Any, dst_obj: Any, where: str) -> None:
        for name in list(src_obj.attrs):
            aid = src_obj.attrs.get_id(name)
            what = f"attribute {name!r} of {where}"
            dtype = dtype_of(aid.get_type(), aid.dtype, what)
            spend(int(np.prod(aid.shape or ())) * max(aid.dtype.itemsize, 1), what)
            dst_obj.attrs.create(name, src_obj.attrs[name], dtype=dtype)

    def copy_dataset(d: Any, parent: Any, name: str, where: str) -> None:
        if d.is_virtual:
            raise _H5Refusal(f"dataset {where} is a virtual dataset (its data lives in other files)", unsafe=True)
        if d.id.get_create_plist().get_external_count() > 0:
            raise _H5Refusal(f"dataset {where} keeps its data in an external file", unsafe=True)
        dtype = dtype_of(d.id.get_type(), d.dtype, f"dataset {where}")
        if d.shape is None:
            out = parent.create_dataset(name, data=h5py.Empty(dtype))
        else:
            spend(int(np.prod(d.shape)) * max(d.dtype.itemsize, 1), f"dataset {where}")
            out = parent.create_dataset(name, data=d[()], dtype=dtype)
        copy_attrs(d, out, f"dataset {where}")

    copied: dict[tuple[int, int], str] = {}

    def copy_group(g: Any, out: Any, where: str, depth: int) -> None:
        if depth > _H5_MAX_DEPTH:
            raise _H5Refusal(f"groups nested deeper than {_H5_MAX_DEPTH} at {where}")
        for name in list(g):
            count[0] += 1
            if count[0] > _H5_MAX_OBJECTS:
                raise _H5Refusal(f"more than {_H5_MAX_OBJECTS} objects")
            here = f"{where.rstrip('/')}/{name}"
            link = g.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise _H5Refusal(f"HDF5 external link {here!r} points into another file ({link.filename!r})",
                                 unsafe=True)
            if isinstance(link, h5py.SoftLink):
                out[name] = h5py.SoftLink(link.path)
                continue
            obj = g[name]
            info = h5py.h5o.get_info(obj.id)
            key = (info.fileno, info.addr)
            if key in copied:  # a second hard link to an object already copied
                out[name] = out.file[copied[key]]
                continue
            copied[key] = here
            if isinstance(obj, h5py.Group):
                sub = out.create_group(name)
                copy_attrs(obj, sub, f"group {here}")
                copy_group(obj, sub, here, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                copy_dataset(obj, out, name, here)
            else:
                raise _H5Refusal(f"{here} is a committed data type, which no Keras file has")

    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        copy_attrs(f, g, "the root group")
        copy_group(f, g, "/", 0)
        raw = f.attrs.get("model_config") if "model_config" in f.attrs else None
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return raw if isinstance(raw, bytes) else bytes(raw)


def _h5_rebuild_answer(src: Any, dst: str, budget: int) -> bytes:
    """:func:`_h5_rebuild` for the child: b"N", b"B" + model_config, b"U"/b"E" + why."""
    try:
        raw = _h5_rebuild(src, dst, budget)
    except _H5Refusal as exc:
        return (b"U" if exc.unsafe else b"E") + str(exc).encode("utf-8", "replace")
    except Exception as exc:  # noqa: BLE001 - any h5py failure is an unreadable file
        return b"E" + type(exc).__name__.encode()
    return b"N" if raw is None else b"B" + raw


def _rebuild_deadline(size: int) -> float:
    return H5_READ_SECONDS + size / _H5_COPY_RATE


def _rebuild_h5_file(src: Path, dst: Path, path: object) -> bytes | None:
    """Rebuild ``src`` into ``dst`` in a child; returns the model_config the child copied (None if none)."""
    size = src.stat().st_size
    out = _child_result(lambda: _h5_rebuild_answer(str(src), str(dst), _H5_EXPANSION * size + (64 << 20)),
                        _rebuild_deadline(size), path)
    return _h5_answer(out, path)  # raises what the child refused


def _weights_member_answer(archive: Path, dst: str) -> bytes:
    import io

    try:
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(KERAS_WEIGHTS_MEMBER)
            if info.file_size > max(100 * info.compress_size, 1 << 32):
                return (b"E" + f"{KERAS_WEIGHTS_MEMBER} claims {info.file_size} bytes from {info.compress_size}: "
                        "a decompression bomb".encode())
            data = zf.read(info)
    except Exception as exc:  # noqa: BLE001 - a damaged archive
        return b"E" + f"corrupt {KERAS_WEIGHTS_MEMBER} member ({type(exc).__name__})".encode()
    return _h5_rebuild_answer(io.BytesIO(data), dst, _H5_EXPANSION * len(data) + (64 << 20))


def _rebuild_keras_archive(src: Path, dst: Path, work: Path, path: object) -> None:
    """A new ``.keras`` archive: the members of ``src`` as they are, its weights rebuilt in a child."""
    import shutil

    try:
        with zipfile.ZipFile(src) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            clean = work / "weights.h5"
            if KERAS_WEIGHTS_MEMBER in names:
                size = src.stat().st_size
                out = _child_result(lambda: _weights_member_answer(src, str(clean)), _rebuild_deadline(size), path)
                _h5_answer(out, path)
            with zipfile.ZipFile(dst, "w") as zout:
                written: set[str] = set()
                for info in infos:
                    if info.filename in written:
                        continue  # keras reads the last of two members of one name; ZipFile.open gives it too
                    written.add(info.filename)
                    if info.filename == KERAS_WEIGHTS_MEMBER:
                        zout.write(clean, KERAS_WEIGHTS_MEMBER)
                        continue
                    if info.is_dir():
                        zout.writestr(zipfile.ZipInfo(info.filename), b"")
                        continue
                    if info.filename == "config.json" and info.file_size > _CONFIG_LIMIT:
                        raise BadInputError(f"config.json is {info.file_size} bytes: too large for a model config",
                                            path=path)
                    if info.file_size > max(100 * info.compress_size, 1 << 32):
                        raise BadInputError(f"cannot load Keras model (member {info.filename[:200]!r} claims "
                                            f"{info.file_size} bytes from {info.compress_size}: a decompression "
                                            "bomb)", path=path)
                    with zf.open(zf.getinfo(info.filename)) as fin, zout.open(info.filename, "w", force_zip64=True) as fo:
                        shutil.copyfileobj(fin, fo, 1 << 20)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error, ValueError) as exc:
        raise BadInputError(f"corrupt or truncated Keras archive ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})", path=path) from None


@contextlib.contextmanager
def rebuilt_keras_file(path: str | os.PathLike) -> Iterator[str]:
    """A copy of the Keras file at ``path`` whose HDF5 parts were read in a child and written anew (a path in a
    temporary directory, removed after the block): what Keras loads instead of the file itself.

    An ``.h5`` model, or the ``model.weights.h5`` of a ``.keras`` archive, is opened only in a forked child
    that copies every group, dataset and attribute into a new HDF5 file written by h5py; a crash of
    libhdf5 on a corrupt file (found by fuzzing: a segfault reading an attribute) kills the child, not
    modelport, and is refused (exit 2); external links, external storage and virtual datasets are refused
    (exit 4). This process then parses only a file written by h5py from values read back whole. The
    config of the copy (what Keras will read) is checked with :func:`check_keras_config` (exit 4). A
    directory comes back as it is, checked; a file that is neither HDF5 nor zip as it is (Keras refuses it).
    """
    import shutil
    import tempfile

    p = Path(path)
    if p.is_dir():
        check_keras_file(p)
        yield str(p)
        return
    with open(p, "rb") as fh:
        head = fh.read(8)
    is_h5 = head == b"\x89HDF\r\n\x1a\n"
    if not is_h5 and not zipfile.is_zipfile(p):
        yield str(p)
        return
    work = Path(tempfile.mkdtemp(prefix="modelport-keras-"))
    try:
        # The config of the copy is checked too: it is the one Keras reads, whatever the file held when
        # check_keras_file read it.
        if is_h5:
            dst = work / "model.h5"
            raw = _rebuild_h5_file(p, dst, path)
        else:
            dst = work / "model.keras"
            _rebuild_keras_archive(p, dst, work, path)
            with zipfile.ZipFile(dst) as zf:
                raw = zf.read("config.json") if "config.json" in zf.namelist() else None
        if raw is not None:
            check_keras_config(_read_json(raw, "config.json" if not is_h5 else "the HDF5 model_config", path),
                               path=path)
        yield str(dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def keras_config(path: str | os.PathLike) -> Any | None:
    """The model config of a ``.keras`` archive (``config.json``) or an ``.h5`` file (``model_config``);
    None where the file has none (Keras then refuses it itself)."""
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        raw = _h5_model_config(p, path)
        if raw is None:
            return None
        return _read_json(raw, "the HDF5 model_config", path)
    if p.is_dir():
        f = p / "config.json"
        return _read_json(f.read_bytes(), "config.json", path) if f.is_file() else None
    try:
        with zipfile.ZipFile(p) as zf:
            try:
                info = zf.getinfo("config.json")
            except KeyError:
                return None
            if info.file_size > _CONFIG_LIMIT:
                raise BadInputError(f"config.json is {info.file_size} bytes: too large for a model config", path=path)
            with zf.open(info) as fh:
                raw = fh.read(_CONFIG_LIMIT + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error) as exc:  # an unknown method
        raise BadInputError(f"corrupt or truncated Keras archive ({exc})", path=path) from None
    return _read_json(raw, "config.json", path)


def check_keras_file(path: str | os.PathLike) -> None:
    """Check a Keras file's model config against the allow-list before Keras reads it (see the module docstring)."""
    config = keras_config(path)
    if config is not None:
        check_keras_config(config, path=path)


# --------------------------------------------------------------------------- SavedModel

# Ops that read or write files, reach the network or run Python: what a model has no business doing.
RISKY_OPS: dict[str, str] = {
    # Python code
    "PyFunc": "runs Python code", "PyFuncStateless": "runs Python code", "EagerPyFunc": "runs Python code",
    # files read
    "ReadFile": "reads a file", "MatchingFiles": "lists files", "ImmutableConst": "memory-maps a file",
    "WholeFileReader": "reads files", "WholeFileReaderV2": "reads files",
    "TextLineReader": "reads files", "TextLineReaderV2": "reads files",
    "TFRecordReader": "reads files", "TFRecordReaderV2": "reads files",
    "FixedLengthRecordReader": "reads files", "FixedLengthRecordReaderV2": "reads files",
    "LMDBReader": "reads files", "RecordInput": "reads files",
    "TextLineDataset": "reads files", "TFRecordDataset": "reads files", "TFRecordDatasetV2": "reads files",
    "FixedLengthRecordDataset": "reads files", "FixedLengthRecordDatasetV2": "reads files",
    "CSVDataset": "reads files", "CSVDatasetV2": "reads files", "ExperimentalCSVDataset": "reads files",
    "SqlDataset": "reads a database", "ExperimentalSqlDataset": "reads a database",
    "LMDBDataset": "reads files", "ExperimentalLMDBDataset": "reads files",
    "MatchingFilesDataset": "lists files", "ExperimentalMatchingFilesDataset": "lists files",
    "LoadDataset": "reads files", "SnapshotDatasetReader": "reads files", "SnapshotNestedDatasetReader": "reads files",
    "SnapshotChunkDataset": "reads files", "ListSnapshotChunksDataset": "lists files",
    "LoadAndRemapMatrix": "reads a checkpoint file", "GenerateVocabRemapping": "reads files",
    "Skipgram": "reads a file",
    # files written
    "WriteFile": "writes a file", "SaveDataset": "writes files", "SaveDatasetV2": "writes files",
    "DatasetToTFRecord": "writes a file", "ExperimentalDatasetToTFRecord": "writes a file",
    "SnapshotDataset": "writes files", "SnapshotDatasetV2": "writes files",
    "CacheDataset": "writes files", "CacheDatasetV2": "writes files",
    "CreateSummaryFileWriter": "writes files", "CreateSummaryDbWriter": "writes a database",
    "DumpTensor": "writes a file", "CalibrationStatisticsSaver": "writes a file", "DebugIdentityV2": "writes files",
    "FileSystemSetConfiguration": "changes file system settings",
    # network
    "DataServiceDataset": "reaches the network", "DataServiceDatasetV2": "reaches the network",
    "DataServiceDatasetV3": "reaches the network", "DataServiceDatasetV4": "reaches the network",
    "RegisterDataset": "reaches the network", "RegisterDatasetV2": "reaches the network",
    "DistributedSave": "reaches the network and writes files",
    "RpcServer": "reaches the network", "RpcClient": "reaches the network", "RpcCall": "reaches the network",
    "RpcServerStart": "reaches the network", "RpcServerRegister": "reaches the network",
}
# Risky only with some attribute values.
_DEBUG_URL_OPS = ("DebugIdentity", "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary")
# Checkpoint ops (how every SavedModel saves and restores its variables) and vocabulary tables (filled from the
# model's assets): allowed unless the path they read or write is a constant, which no asset or checkpoint prefix is.
CHECKPOINT_OPS: dict[str, tuple[int, ...]] = {  # op -> indices of its path inputs
    "SaveV2": (0,), "RestoreV2": (0,), "Save": (0,), "Restore": (0,), "SaveSlices": (0,), "RestoreSlice": (0,),
    "MergeV2Checkpoints": (0, 1), "DTensorRestoreV2": (0,),
    "InitializeTableFromTextFile": (1,), "InitializeTableFromTextFileV2": (1,),
}
_PATH_BUILDERS = {"Identity", "StringJoin", "ShardedFilename", "Pack", "IdentityN"}

TRUST_ENV = "MODELPORT_TRUST"
_TRUST: contextvars.ContextVar[bool] = contextvars.ContextVar("modelport_trust", default=False)


def trusted() -> bool:
    """True inside :func:`trusting` (``--trust``) or with ``MODELPORT_TRUST=1``."""
    return _TRUST.get() or os.environ.get(TRUST_ENV, "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def trusting(trust: bool = True) -> Iterator[None]:
    """Within the block, SavedModels with risky ops load (the user said ``--trust``)."""
    token = _TRUST.set(trust or _TRUST.get())
    try:
        yield
    finally:
        _TRUST.reset(token)


@dataclasses.dataclass(frozen=True)
class OpFinding:
    """A risky op in a SavedModel: the op, its node, the function (or 'the main graph') and why."""

    op: str
    node: str
    function: str
    reason: str

    def describe(self) -> str:
        return f"op {self.op} (node {self.node!r} in {self.function}) {self.reason}"


def _attr_s(node, name: str) -> str:
    a = node.attr.get(name)
    return a.s.decode("utf-8", "replace") if a is not None else ""


def _node_reason(node) -> str | None:
    op = node.op
    if op in RISKY_OPS:
        return RISKY_OPS[op]
    if op == "PrintV2" and _attr_s(node, "output_stream").startswith("file://"):
        return f"writes to {_attr_s(node, 'output_stream')}"
    if op in ("DecodeProtoV2", "EncodeProto") and _attr_s(node, "descriptor_source") not in ("", "local://"):
        return f"reads a descriptor file ({_attr_s(node, 'descriptor_source')})"
    if op == "FixedUnigramCandidateSampler" and _attr_s(node, "vocab_file"):
        return "reads a vocabulary file"
    if op in _DEBUG_URL_OPS:
        a = node.attr.get("debug_urls")
        if a is not None and len(a.list.s):
            return "writes to debug URLs " + ", ".join(u.decode("utf-8", "replace") for u in a.list.s)
    return None


def _constant_path(name: str, nodes: dict, depth: int = 0) -> bool:
    """True when the input ``name`` is a constant string, or built only from constants."""
    if depth > 8 or name.startswith("^"):
        return False
    node = nodes.get(name.split(":")[0])
    if node is None:  # a function argument or a placeholder: the caller supplies the path
        return False
    if node.op == "Const":
        return True
    if node.op in _PATH_BUILDERS:
        data = [i for i in node.input if not i.startswith("^")]
        return bool(data) and all(_constant_path(i, nodes, depth + 1) for i in data)
    return False


def _scan_nodes(nodes, function: str) -> Iterator[OpFinding]:
    by_name = {n.name: n for n in nodes}
    for node in nodes:
        reason = _node_reason(node)
        if reason is None and node.op in CHECKPOINT_OPS:
            paths = [node.input[i] for i in CHECKPOINT_OPS[node.op] if i < len(node.input)]
            if any(_constant_path(p, by_name) for p in paths):
                verb = "writes" if node.op.startswith(("Save", "Merge")) else "reads"
                what = "a vocabulary file" if node.op.startswith("InitializeTable") else "a checkpoint"
                reason = f"{verb} {what} at a fixed path (not the model's own assets or variables)"
        if reason is not None:
            yield OpFinding(node.op, node.name, function, reason)


def savedmodel_findings(path: str | os.PathLike) -> tuple[OpFinding, ...]:
    """Every risky op in the SavedModel at ``path``: its main graphs and every function of their libraries,
    parsed from ``saved_model.pb`` (or ``.pbtxt``) with TensorFlow's protobuf classes, nothing loaded."""
    from modelport.quiet import native_output

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    p = Path(path)
    pb, pbtxt = p / "saved_model.pb", p / "saved_model.pbtxt"
    try:
        with native_output():
            from tensorflow.core.protobuf import saved_model_pb2
    except ImportError:
        from modelport.errors import MissingExtraError

        raise MissingExtraError("tensorflow", "tf", purpose="TensorFlow SavedModels") from None
    sm = saved_model_pb2.SavedModel()
    try:
        if pb.is_file():
            sm.ParseFromString(pb.read_bytes())
        else:
            from google.protobuf import text_format

            text_format.Parse(pbtxt.read_text(encoding="utf-8"), sm)
    except OSError as exc:
        raise BadInputError(f"cannot load SavedModel (cannot read its graph: {exc.strerror})", path=path) from None
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError / ParseError
        raise BadInputError(f"cannot load SavedModel (corrupt or truncated saved_model.pb: {type(exc).__name__})",
                            path=path) from None
    found: list[OpFinding] = []
    for graph in sm.meta_graphs:
        found.extend(_scan_nodes(graph.graph_def.node, "the main graph"))
        for fn in graph.graph_def.library.function:
            found.extend(_scan_nodes(fn.node_def, f"function {fn.signature.name!r}"))
    return tuple(dict.fromkeys(found))


def check_savedmodel(path: str | os.PathLike) -> tuple[OpFinding, ...]:
    """Refuse (UnsafeError) a SavedModel with risky ops unless trusted; returns the findings (empty if none)."""
    found = savedmodel_findings(path)
    if found and not trusted():
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UnsafeError(f"refused: SavedModel {found[0].describe()}{more}; a model has no business doing that; "
                          f"pass --trust (or set {TRUST_ENV}=1) if you trust where it came from", path=path)
    return found


# --------------------------------------------------------------------------- TFLite


def tflite_custom_ops(path: str | os.PathLike) -> dict[str, int]:
    """Custom ops of a TFLite flatbuffer (name -> uses over every subgraph), read without an interpreter.

    Select-TF ops show as ``Flex<Op>`` (they need the Flex delegate); others need a kernel the host registers.
    """
    import mmap

    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from modelport.errors import MissingExtraError

        raise MissingExtraError("ai-edge-litert", "tf", purpose="TFLite models") from None
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            model = schema.Model.GetRootAs(buf, 0)
            names: list[str | None] = []
            for i in range(model.OperatorCodesLength()):
                oc = model.OperatorCodes(i)
                code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
                custom = oc.CustomCode()
                names.append(custom.decode("utf-8", "replace") if code == schema.BuiltinOperator.CUSTOM and custom
                             else ("<unnamed custom op>" if code == schema.BuiltinOperator.CUSTOM else None))
            counts: dict[str, int] = {}
            for s in range(model.SubgraphsLength()):
                sub = model.Subgraphs(s)
                for j in range(sub.OperatorsLength()):
                    index = sub.Operators(j).OpcodeIndex()
                    name = names[index] if index < len(names) else None
                    if name:
                        counts[name] = counts.get(name, 0) + 1
    except (ValueError, OSError) as exc:  # an empty file cannot be mapped
        raise BadInputError(f"cannot read TFLite model ({type(exc).__name__})", path=path) from None
    except Exception as exc:  # noqa: BLE001 - flatbuffers reads past the end: IndexError, struct.error
        raise BadInputError(f"corrupt or truncated TFLite flatbuffer ({type(exc).__name__})", path=path) from None
    return dict(sorted(counts.items()))
