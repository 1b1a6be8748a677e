"""Ops the `mxnet` toolchain's driver serves (loaded by driver.py, run in the toolchain's Python).

Standalone: MXNet 1.9.1, numpy and onnx of the toolchain; no modelport imports. A model is a
symbol file (``PREFIX-symbol.json``: the graph, as ``HybridBlock.export`` and
``Module.save_checkpoint`` write it) and its parameters (``PREFIX-0000.params``: ``arg:NAME`` /
``aux:NAME`` arrays, or bare names). The graph's inputs are the symbol's arguments that have no
parameter, less the label a training loss left in (``<last node>_label``, as mx.onnx does).

- ``signature``: input and output names, dtypes and (where input shapes are given) shapes.
- ``run``: a forward pass of the symbol bound on the CPU (``Symbol.bind``, inference mode), one
  executor per input shape; feeds and results cross as .npz files.
- ``to_onnx``: ``mx.onnx.export_model`` at opset 13 (its translations go up to 13: declaring the
  newer opset onnx would default to is a model whose ops do not follow it).
"""

import ast
import os
import re
import warnings

warnings.simplefilter("ignore")
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")

OPSET = 13
_DTYPES = {0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8", 6: "int64", 7: "bool"}
_MODELS = {}
_EXECUTORS = {}


class BadInput(Exception):
    exit_code = 2


class Unsupported(Exception):
    exit_code = 3


def _first_line(exc):
    for line in str(exc).strip().splitlines():
        line = line.strip()
        if line and not line.startswith(("Stack trace", "[bt]")):
            return re.sub(r"^\[\d\d:\d\d:\d\d\] \S+: ", "", line)[:300]
    return type(exc).__name__


def op_versions():
    from importlib import metadata

    out = {}
    for dist in ("mxnet", "onnx", "numpy", "protobuf"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class _Model:
    """A symbol and its parameters, loaded once per (files, mtimes)."""

    def __init__(self, symbol, params):
        import mxnet as mx  # undeclared-ok: runs in the mxnet toolchain

        try:
            self.sym = mx.sym.load(symbol)
        except Exception as exc:
            raise BadInput(f"{symbol}: MXNet cannot load the symbol: {_first_line(exc)}") from None
        try:
            saved = mx.nd.load(params)
        except Exception as exc:
            raise BadInput(f"{params}: MXNet cannot load the parameters: {_first_line(exc)}") from None
        if not isinstance(saved, dict):
            raise BadInput(f"{params}: holds a list of arrays, not named parameters")
        self.args, self.aux = {}, {}
        for key, value in saved.items():
            kind, sep, name = key.partition(":")
            if sep and kind == "aux":
                self.aux[name] = value
            else:
                self.args[name if sep else key] = value
        arg_names, aux_names = self.sym.list_arguments(), self.sym.list_auxiliary_states()
        internals = self.sym.get_internals()
        self.label = internals[len(internals) - 1].name + "_label"
        self.inputs = [n for n in arg_names if n not in self.args and n != self.label]
        self.has_label = self.label in arg_names and self.label not in self.args
        unexpected = sorted(set(self.args) - set(arg_names)) + sorted(set(self.aux) - set(aux_names))
        missing_aux = sorted(set(aux_names) - set(self.aux))
        if unexpected or missing_aux:
            raise BadInput(f"{os.path.basename(params)} does not fit {os.path.basename(symbol)}: parameters the "
                           f"symbol has no place for {unexpected[:4]}, states missing {missing_aux[:4]}")
        if not self.inputs:
            raise BadInput(f"{os.path.basename(symbol)}: every argument has a parameter; the graph has no input")
        self.attrs = {n: self.sym.attr_dict().get(n, {}) for n in self.inputs}
        self.outputs = _output_names(self.sym.list_outputs())

    def declared(self, name):
        """(dtype, shape) a variable declares (``__dtype__``, ``__shape__``); shape None when it has none."""
        attrs = self.attrs.get(name, {})
        dtype = _DTYPES.get(int(attrs.get("__dtype__", 0)), "float32")
        shape = None
        if "__shape__" in attrs:
            try:
                dims = [int(d) for d in ast.literal_eval(attrs["__shape__"])]
            except (ValueError, SyntaxError, TypeError):
                dims = []
            shape = [d if d > 0 else None for d in dims] or None
        return dtype, shape

    def shapes(self, feeds):
        """Shapes of (arguments, outputs, aux states) for the given input shapes."""
        known = {n: a.shape for n, a in self.args.items()}  # so that inputs that do not fit the weights fail here
        try:
            arg, out, aux = self.sym.infer_shape(**known, **feeds)
        except Exception as exc:
            raise BadInput(f"the input shapes {feeds} do not fit the model: {_first_line(exc)}") from None
        if arg is None:
            raise BadInput(f"the input shapes {feeds} do not determine the model's shapes")
        return arg, out, aux


def _output_names(outputs):
    """The symbol's output names as mx.onnx names the graph outputs (``conv0_output`` -> ``conv0``)."""
    names = []
    for name in outputs:
        if name.endswith("_state_output"):
            names.append(name[:-len("_state_output")] + "1")
        elif name.endswith("_statecell_output"):
            names.append(name[:-len("_statecell_output")] + "2")
        elif name.endswith("_output"):
            names.append(name[:-len("_output")])
        elif re.search(r"_output[0-9]$", name):
            names.append(name[:-len("_output0")] + name[-1])
        else:
            names.append(name)
    return names if len(set(names)) == len(names) else list(outputs)


def _model(symbol, params):
    try:
        key = tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in (symbol, params))
    except OSError as exc:
        raise BadInput(f"{exc.filename}: {exc.strerror}") from None
    if key not in _MODELS:
        while len(_MODELS) >= 4:  # verify alternates between two models: keep a few loaded
            stale = id(_MODELS.pop(next(iter(_MODELS))))
            for k in [k for k in _EXECUTORS if k[0] == stale]:
                _EXECUTORS.pop(k)
        _MODELS[key] = _Model(symbol, params)
    return _MODELS[key]


def _concrete(inputs):
    """{name: shape} of input specs whose dims are all known (None and names -> batch 1)."""
    out = {}
    for spec in inputs or []:
        shape = spec.get("shape")
        if shape is None:
            return None
        out[spec["name"]] = tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)
    return out


def op_signature(symbol, params, inputs=None):
    import numpy as np  # undeclared-ok: runs in the mxnet toolchain

    model = _model(symbol, params)
    given = {s["name"]: s for s in inputs or []}
    ins = []
    for name in model.inputs:
        dtype, shape = model.declared(name)
        spec = given.get(name)
        ins.append({"name": name, "dtype": (spec or {}).get("dtype") or dtype,
                    "shape": spec.get("shape") if spec else shape})
    outs = [{"name": n, "dtype": "float32", "shape": None} for n in model.outputs]
    feeds = _concrete(ins)
    if feeds:
        _, one, _ = model.shapes(feeds)
        two = one
        batched = {n: s for n, s in zip(model.inputs, (i["shape"] for i in ins)) if s and not isinstance(s[0], int)}
        if batched:
            _, two, _ = model.shapes({n: ((2,) + s[1:] if n in batched else s) for n, s in feeds.items()})
        for spec, a, b in zip(outs, one, two):
            spec["shape"] = [x if x == y else None for x, y in zip(a, b)]
        try:
            _, out_types, _ = model.sym.infer_type(**{i["name"]: i["dtype"] for i in ins})
            for spec, t in zip(outs, out_types or []):
                spec["dtype"] = str(np.dtype(t))
        except Exception:  # a graph whose types MXNet cannot infer: float32 stays assumed
            pass
    return {"inputs": ins, "outputs": outs}


def _executor(model, feeds):
    import mxnet as mx  # undeclared-ok: runs in the mxnet toolchain

    key = (id(model),) + tuple((n, feeds[n].shape, str(feeds[n].dtype)) for n in model.inputs)
    if key not in _EXECUTORS:
        arg_shapes, _, _ = model.shapes({n: feeds[n].shape for n in model.inputs})
        args = {}
        for name, shape in zip(model.sym.list_arguments(), arg_shapes):
            if name in model.args:
                args[name] = model.args[name]
            elif name in feeds:
                args[name] = mx.nd.zeros(shape, dtype=feeds[name].dtype)
            else:  # the training label: bound, never read in inference mode
                args[name] = mx.nd.zeros(shape)
        try:
            _EXECUTORS[key] = model.sym.bind(mx.cpu(), args, aux_states=dict(model.aux), grad_req="null")
        except Exception as exc:
            raise BadInput(f"MXNet cannot bind the model: {_first_line(exc)}") from None
    return _EXECUTORS[key]


def op_run(symbol, params, inputs, outputs, threads=None):
    import numpy as np  # undeclared-ok: runs in the mxnet toolchain

    model = _model(symbol, params)
    with np.load(inputs) as data:
        feeds = {}
        for name in model.inputs:
            if name not in data:
                raise BadInput(f"no input {name!r} given (the model's inputs: {model.inputs})")
            feeds[name] = np.ascontiguousarray(data[name])
    ex = _executor(model, feeds)
    try:
        for name, value in feeds.items():
            ex.arg_dict[name][:] = value
        results = [o.asnumpy() for o in ex.forward(is_train=False)]
    except Exception as exc:
        raise BadInput(f"MXNet failed to run the model: {_first_line(exc)}") from None
    tmp = outputs + ".partial.npz"
    np.savez(tmp, **dict(zip(model.outputs, results)))
    os.replace(tmp, outputs)
    return {"outputs": model.outputs}


def op_to_onnx(symbol, params, out, inputs, dynamic_batch=True):
    """The model as ONNX (opset 13) with mx.onnx.export_model; `inputs` are the input specs."""
    import mxnet as mx  # undeclared-ok: runs in the mxnet toolchain
    import numpy as np  # undeclared-ok: runs in the mxnet toolchain
    import onnx.defs  # undeclared-ok: runs in the mxnet toolchain

    model = _model(symbol, params)
    by_name = {s["name"]: s for s in inputs}
    specs = [by_name.get(n) for n in model.inputs]
    if any(s is None or s.get("shape") is None for s in specs):
        raise BadInput(f"give the input shapes of {model.inputs} with --input NAME:1x3x224x224:float32")
    shapes = [tuple(d if isinstance(d, int) and d > 0 else 1 for d in s["shape"]) for s in specs]
    dynamic = [tuple(None if (i == 0 and (dynamic_batch or not isinstance(d, int))) or not isinstance(d, int) else d
                     for i, d in enumerate(s["shape"])) for s in specs]
    unsupported = sorted({n["op"] for n in _nodes(model.sym) if n["op"] != "null"} -
                         set(mx.onnx.get_operator_support(OPSET)))
    if unsupported:
        raise Unsupported(f"mx.onnx cannot convert the MXNet op{'s' if len(unsupported) > 1 else ''} "
                          f"{', '.join(unsupported)} (it has no ONNX translation for {'them' if len(unsupported) > 1 else 'it'})")
    _fast_weights()
    newest = onnx.defs.onnx_opset_version
    onnx.defs.onnx_opset_version = lambda: OPSET  # export_model declares the opset onnx reports
    try:
        types = [np.dtype(s.get("dtype") or "float32").type for s in specs]
        dynamic_kw = {"dynamic": True, "dynamic_input_shapes": dynamic} if any(None in d for d in dynamic) else {}
        mx.onnx.export_model(model.sym, _export_params(model, shapes), shapes, types, out, **dynamic_kw)
    except AttributeError as exc:
        m = re.search(r"op type (\S+) yet", str(exc))
        if m:
            raise Unsupported(f"mx.onnx cannot convert the MXNet op {m.group(1)}") from None
        raise Unsupported(f"mx.onnx.export_model failed: {_first_line(exc)}") from None
    except Exception as exc:
        raise Unsupported(f"mx.onnx.export_model failed: {type(exc).__name__}: {_first_line(exc)}") from None
    finally:
        onnx.defs.onnx_opset_version = newest
    if not os.path.isfile(out):
        raise Unsupported("mx.onnx.export_model wrote no ONNX file")
    return {"versions": op_versions(), "outputs": model.outputs, "inputs": model.inputs}


def _export_params(model, shapes):
    """The parameters as mx.onnx takes them; a training label left in the graph gets a zero array.

    mx.onnx skips the label's node but not its slot in the node table, so a graph ending in a loss
    (``SoftmaxOutput``) fails with an IndexError; as a parameter the label is a (dead) initializer.
    """
    import mxnet as mx  # undeclared-ok: runs in the mxnet toolchain

    params = {**model.args, **model.aux}
    if model.has_label:
        arg_shapes, _, _ = model.shapes(dict(zip(model.inputs, shapes)))
        params[model.label] = mx.nd.zeros(dict(zip(model.sym.list_arguments(), arg_shapes))[model.label])
    return params


def _fast_weights():
    """mx.onnx's weight translation with the array stored as raw bytes (``numpy_helper.from_array``).

    Its own (opset 12) writes ``vals=array.flatten().tolist()``: a Python float per weight, a
    minute for ResNet-18. Registered at opset 13, this one is picked first; graph inputs as before.
    """
    from mxnet.onnx.mx2onnx import _export_onnx  # undeclared-ok: runs in the mxnet toolchain
    from onnx import helper, mapping, numpy_helper  # undeclared-ok: runs in the mxnet toolchain

    graph = _export_onnx.MXNetGraph
    original = graph.registry_[12]["null"]

    def convert_weights_and_inputs(node, **kwargs):
        if kwargs["is_input"] is not False:
            return original(node, **kwargs)
        name = node["name"]
        array = kwargs["weights"][name]
        kwargs["initializer"].append(numpy_helper.from_array(array, name))
        info = helper.make_tensor_value_info(name, mapping.NP_TYPE_TO_TENSOR_TYPE[array.dtype], array.shape)
        return [info], (array.dtype,)

    graph.registry_.setdefault(OPSET, {})["null"] = convert_weights_and_inputs


def _nodes(sym):
    import json

    return json.loads(sym.tojson())["nodes"]
