"""What the `paddle` toolchain does, run there by driver.py (imports only the toolchain's own packages).

Ops: ``versions``; ``signature`` and ``run`` of an inference model (``.json`` PIR program or
legacy ``.pdmodel``, with its ``.pdiparams``) through ``paddle.inference``; ``to_onnx`` with
paddle2onnx; ``export_layer``: a ``paddle.nn.Layer`` from ``file.py:Name`` with its
``.pdparams``, saved as an inference model with ``paddle.jit.save``.
"""

import importlib.util
import os
import sys
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("POLYGRAPHY_AUTOINSTALL_DEPS", "0")  # polygraphy would pip-install onnx_graphsurgeon
warnings.simplefilter("ignore")


class BadInput(Exception):
    exit_code = 2


class Unsupported(Exception):
    exit_code = 3


_PREDICTORS = {}


def _first_line(exc):
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not set(line) <= set("-=[] "):
            return line[:300]
    return type(exc).__name__


_DTYPES = {"fp32": "float32", "fp64": "float64", "fp16": "float16", "bf16": "bfloat16"}


def _dtype(d):
    """paddle.float32, DataType.FLOAT32, VarType.FP32 -> float32."""
    name = str(d).rsplit(".", 1)[-1].lower()
    return _DTYPES.get(name, name)


def _shape(shape):
    return [None if int(d) < 0 else int(d) for d in shape]


def op_versions():
    from importlib import metadata

    out = {}
    for dist in ("paddlepaddle", "paddle2onnx", "onnx", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _predictor(model, params, threads=None):
    try:
        key = tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in (model, params)) + (threads,)
    except OSError as exc:
        raise BadInput(f"{exc.filename}: {exc.strerror}") from None
    if key not in _PREDICTORS:
        from paddle import inference  # undeclared-ok: runs in the paddle toolchain

        try:
            config = inference.Config(model, params)
            config.disable_gpu()
            config.disable_glog_info()
            if threads:
                config.set_cpu_math_library_num_threads(int(threads))
            _PREDICTORS[key] = inference.create_predictor(config)
        except Exception as exc:
            raise BadInput(f"paddle.inference cannot load the model: {_first_line(exc)}") from None
    return _PREDICTORS[key]


def op_signature(model, params):
    import paddle  # undeclared-ok: runs in the paddle toolchain

    predictor = _predictor(model, params)
    in_names, out_names = predictor.get_input_names(), predictor.get_output_names()
    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    folder = os.path.dirname(model)
    kwargs = {"model_filename": os.path.basename(model), "params_filename": os.path.relpath(params, folder)}
    inputs, outputs = {}, []
    try:
        if model.endswith(".pdmodel"):
            with paddle.pir_utils.OldIrGuard():
                program, feeds, fetches = paddle.static.load_inference_model(folder, exe, **kwargs)
                block = program.global_block()
                for n in feeds:
                    var = block.var(n)
                    inputs[n] = (_dtype(var.dtype), _shape(var.shape))
                outputs = [(_dtype(f.dtype), _shape(f.shape)) for f in fetches]
        else:
            program, feeds, fetches = paddle.static.load_inference_model(folder, exe, **kwargs)
            for op in program.global_block().ops:
                if op.name() == "pd_op.data":
                    value = op.result(0)
                    inputs[op.attrs()["name"]] = (_dtype(value.dtype), _shape(value.shape))
            outputs = [(_dtype(f.dtype), _shape(f.shape)) for f in fetches]
    except Exception:  # the predictor loaded it: shapes stay unknown, float32 assumed
        inputs, outputs = {}, []
    finally:
        paddle.disable_static()
    ins = [{"name": n, "dtype": inputs.get(n, ("float32", None))[0], "shape": inputs.get(n, (None, None))[1]}
           for n in in_names]
    if len(outputs) != len(out_names):
        outputs = [("float32", None)] * len(out_names)
    outs = [{"name": n, "dtype": d, "shape": s} for n, (d, s) in zip(out_names, outputs)]
    return {"inputs": ins, "outputs": outs}


def op_run(model, params, inputs, outputs, threads=None):
    import numpy as np  # undeclared-ok: runs in the paddle toolchain

    predictor = _predictor(model, params, threads)
    with np.load(inputs) as feeds:
        for name in predictor.get_input_names():
            if name not in feeds:
                raise BadInput(f"no input {name!r} given (the model's inputs: {predictor.get_input_names()})")
            handle = predictor.get_input_handle(name)
            array = np.ascontiguousarray(feeds[name])
            handle.reshape(list(array.shape))
            handle.copy_from_cpu(array)
    try:
        predictor.run()
    except Exception as exc:
        raise BadInput(f"paddle.inference failed to run the model: {_first_line(exc)}") from None
    names = predictor.get_output_names()
    result = {n: predictor.get_output_handle(n).copy_to_cpu() for n in names}
    tmp = outputs + ".partial.npz"
    np.savez(tmp, **result)
    os.replace(tmp, outputs)
    return {"outputs": names}


def op_to_onnx(model, params, out, opset):
    import paddle2onnx  # undeclared-ok: runs in the paddle toolchain

    try:
        paddle2onnx.export(model, params, out, opset_version=int(opset), auto_upgrade_opset=True,
                           enable_onnx_checker=True, optimize_tool="onnxoptimizer")
    except Exception as exc:
        raise Unsupported(f"paddle2onnx failed: {_first_line(exc)}") from None
    if not os.path.isfile(out):
        raise Unsupported("paddle2onnx wrote no ONNX file (see --debug for its log)")
    return {"versions": op_versions()}


def op_export_layer(file, name, weights, inputs, out_prefix):
    """A paddle.nn.Layer class from a .py file, its .pdparams loaded, saved with paddle.jit.save."""
    import paddle  # undeclared-ok: runs in the paddle toolchain

    spec = importlib.util.spec_from_file_location(f"modelport_user_{abs(hash(file))}", file)
    if spec is None:
        raise BadInput(f"{file}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(file)))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise BadInput(f"{file}: cannot import it: {type(exc).__name__}: {_first_line(exc)}") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise BadInput(f"{file} has no {name!r}")
    try:
        layer = cls()
    except Exception as exc:
        raise BadInput(f"{file}:{name}() failed (it must build with no arguments): {_first_line(exc)}") from None
    if not isinstance(layer, paddle.nn.Layer):
        raise BadInput(f"{file}:{name} is no paddle.nn.Layer")
    if weights:
        try:
            state = paddle.load(weights)
        except Exception as exc:
            raise BadInput(f"{weights}: cannot read Paddle weights: {_first_line(exc)}") from None
        missing, unexpected = _set_state(layer, state)
        if missing or unexpected:
            raise BadInput(f"{weights} does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    layer.eval()
    if not inputs:
        raise BadInput(f"{file}:{name}: give the input shapes with --input NAME:1x3x224x224:float32")
    specs = [paddle.static.InputSpec([None if d is None else d for d in s["shape"]], s["dtype"], s["name"])
             for s in inputs]
    try:
        paddle.jit.save(layer, out_prefix, input_spec=specs)
    except Exception as exc:
        raise Unsupported(f"paddle.jit.save cannot trace {name}: {_first_line(exc)}") from None
    model = next((out_prefix + s for s in (".json", ".pdmodel") if os.path.isfile(out_prefix + s)), None)
    if model is None:
        raise Unsupported(f"paddle.jit.save wrote no program for {name}")
    return {"model": model, "params": out_prefix + ".pdiparams"}


def _set_state(layer, state):
    own = layer.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    layer.set_state_dict(state)
    return missing, unexpected
