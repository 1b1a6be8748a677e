"""What the `mindspore` toolchain does, run there by driver.py (imports only the toolchain's own packages).

Ops: ``versions``; a ``mindspore.nn.Cell`` from ``file.py:Name`` with its ``.ckpt``:
``cell_signature``, ``cell_run`` (a PyNative forward) and ``cell_export`` (``mindspore.onnx.export``
or ``mindspore.export`` to MindIR); a MindIR file: ``mindir_signature`` (read from its protobuf),
``mindir_run`` (``nn.GraphCell`` over ``mindspore.load``) and ``mindir_to_onnx`` (the GraphCell
exported in graph mode); MindRecord datasets: ``mindrecord_read`` (``FileReader``, rows stacked
into one array per field) and ``mindrecord_write`` (``FileWriter``, one row per index of axis 0).
Arrays cross as .npz files.
"""

import importlib.util
import os
import sys
import warnings

os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ logs: errors only
warnings.simplefilter("ignore")


def _private_cwd():
    """MindSpore writes rank_0/om/analyze_fail.ir into the working directory when a graph fails: not the user's.

    Every path the ops get is absolute."""
    import atexit
    import shutil
    import tempfile

    cwd = tempfile.mkdtemp(prefix="modelport-mindspore-")
    os.chdir(cwd)
    atexit.register(shutil.rmtree, cwd, True)


_private_cwd()


class BadInput(Exception):
    exit_code = 2


class Unsupported(Exception):
    exit_code = 3


_CELLS = {}
_GRAPHS = {}
_MODE = [None]


def _first_line(exc):
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not set(line) <= set("-=[] ") and not line.lower().startswith(("- ", "[error]")):
            return line[:300]
        if line.lower().startswith("[error]"):
            return line[7:].strip()[:300]
    return type(exc).__name__


def _mode(graph):
    import mindspore as ms  # undeclared-ok: runs in the mindspore toolchain

    want = ms.GRAPH_MODE if graph else ms.PYNATIVE_MODE
    if _MODE[0] != want:
        ms.set_context(mode=want)
        _MODE[0] = want


def op_versions():
    from importlib import metadata

    out = {}
    for dist in ("mindspore", "numpy", "protobuf"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _stat(*paths):
    try:
        return tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths if p)
    except OSError as exc:
        raise BadInput(f"{exc.filename}: {exc.strerror}") from None


def _shape_text(shape):
    return "x".join(str(int(d)) for d in shape) or "scalar"


def _cell(file, name, weights, fresh=False):
    """The Cell class NAME of FILE built with no arguments, its checkpoint loaded (checked first).

    Cached for running; ``fresh``: a new instance (a Cell that was exported once cannot be exported
    again: MindSpore 2.10 fails with "i: 6 out of range")."""
    key = _stat(file, weights) + (name,)
    if key in _CELLS and not fresh:
        return _CELLS[key]
    import mindspore as ms  # undeclared-ok: runs in the mindspore toolchain

    _mode(False)
    cls = _cell_class(file, name)
    try:
        net = cls()
    except Exception as exc:
        raise BadInput(f"{file}:{name}() failed (it must build with no arguments): {_first_line(exc)}") from None
    if not isinstance(net, ms.nn.Cell):
        raise BadInput(f"{file}:{name} is no mindspore.nn.Cell")
    if weights:
        try:
            state = ms.load_checkpoint(weights)
        except Exception as exc:
            raise BadInput(f"{weights}: cannot read a MindSpore checkpoint: {_first_line(exc)}") from None
        _check_fit(net, state, weights, name)
        try:
            ms.load_param_into_net(net, state, strict_load=True)
        except Exception as exc:
            raise BadInput(f"{weights} does not fit {name}: {_first_line(exc)}") from None
    net.set_train(False)
    if not fresh:
        _CELLS[key] = net
    return net


_MODULES = {}


def _cell_class(file, name):
    key = _stat(file)
    module = _MODULES.get(key)
    if module is None:
        module = _MODULES[key] = _import(file)
    cls = getattr(module, name, None)
    if cls is None:
        raise BadInput(f"{file} has no {name!r}")
    return cls


def _import(file):
    spec = importlib.util.spec_from_file_location(f"modelport_user_{abs(hash(file))}", file)
    if spec is None:
        raise BadInput(f"{file}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(file)))
    sys.modules[spec.name] = module  # MindSpore's graph parser (export) imports the Cell's module by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(spec.name, None)
        raise BadInput(f"{file}: cannot import it: {type(exc).__name__}: {_first_line(exc)}") from None
    return module


def _check_fit(net, state, weights, name):
    """Every parameter of the Cell in the checkpoint, at its shape, and nothing else: else exit 2 naming one."""
    own = {p.name: tuple(p.shape) for p in net.get_parameters()}
    for pname, shape in own.items():
        if pname not in state:
            raise BadInput(f"{os.path.basename(weights)} does not fit {name}: parameter {pname!r} "
                           f"is not in the checkpoint ({len(own)} parameters wanted, {len(state)} found)")
        got = tuple(state[pname].shape)
        if got != shape:
            raise BadInput(f"{os.path.basename(weights)} does not fit {name}: parameter {pname!r} has shape "
                           f"{_shape_text(got)} in the checkpoint, the Cell wants {_shape_text(shape)}")
    extra = sorted(set(state) - set(own))
    if extra:
        raise BadInput(f"{os.path.basename(weights)} does not fit {name}: the checkpoint has parameters "
                       f"the Cell lacks: {extra[:5]}")


def _sample(inputs, batch=2):
    """Zeros (ints) or seeded normals (floats) of the given specs; a dynamic leading dim at ``batch``."""
    import numpy as np  # undeclared-ok: runs in the mindspore toolchain

    rng = np.random.default_rng(0)
    out = []
    for s in inputs:
        shape = [batch if d is None and i == 0 else d for i, d in enumerate(s["shape"])]
        if any(d is None for d in shape):
            raise BadInput(f"input {s['name']!r}: only the leading (batch) dim may be dynamic here")
        dtype = np.dtype(s["dtype"])
        out.append(rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype))
    return out


def _forward(net, arrays):
    import mindspore as ms  # undeclared-ok: runs in the mindspore toolchain

    try:
        result = net(*[ms.Tensor(a) for a in arrays])
    except Exception as exc:
        raise BadInput(f"MindSpore failed to run the network: {_first_line(exc)}") from None
    results = list(result) if isinstance(result, (tuple, list)) else [result]
    return [r.asnumpy() for r in results]


def _output_names(n):
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def _dtype_name(a):
    return str(a.dtype)


def op_cell_signature(file, name, weights, inputs):
    net = _cell(file, name, weights)
    _mode(False)
    outs = _forward(net, _sample(inputs))
    dynamic = any(s["shape"] and s["shape"][0] is None for s in inputs)
    return {"inputs": inputs,
            "outputs": [{"name": n, "dtype": _dtype_name(o),
                         "shape": [None if (dynamic and i == 0) else int(d) for i, d in enumerate(o.shape)]}
                        for n, o in zip(_output_names(len(outs)), outs)]}


def _save(outputs, named):
    import numpy as np  # undeclared-ok: runs in the mindspore toolchain

    tmp = outputs + ".partial.npz"
    np.savez(tmp, **named)
    os.replace(tmp, outputs)


def _feeds(inputs, names):
    import numpy as np  # undeclared-ok: runs in the mindspore toolchain

    with np.load(inputs) as feeds:
        missing = [n for n in names if n not in feeds]
        if missing:
            raise BadInput(f"no input {missing[0]!r} given (the model's inputs: {names})")
        return [np.ascontiguousarray(feeds[n]) for n in names]


def op_cell_run(file, name, weights, input_names, inputs, outputs):
    net = _cell(file, name, weights)
    _mode(False)
    outs = _forward(net, _feeds(inputs, input_names))
    names = _output_names(len(outs))
    _save(outputs, dict(zip(names, outs)))
    return {"outputs": names}


def op_cell_export(file, name, weights, inputs, out, file_format):
    """The Cell exported to ONNX (a dynamic leading dim kept dynamic) or MindIR."""
    import mindspore as ms  # undeclared-ok: runs in the mindspore toolchain

    sample = _sample(inputs)
    n_out = len(_forward(_cell(file, name, weights), sample))  # the cached Cell runs; a fresh one is exported
    net = _cell(file, name, weights, fresh=True)
    _mode(False)
    names = [s["name"] for s in inputs]
    try:
        if file_format == "ONNX":
            dynamic = {s["name"]: {0: "batch"} for s in inputs if s["shape"] and s["shape"][0] is None}
            ms.onnx.export(net, *[ms.Tensor(a) for a in sample], file_name=out, input_names=names,
                           output_names=_output_names(n_out), dynamic_axes=dynamic or None)
        else:
            specs = [ms.Tensor(shape=list(s["shape"]), dtype=getattr(ms, s["dtype"])) for s in inputs]
            stem = out[:-len(".mindir")] if out.endswith(".mindir") else out
            ms.export(net, *specs, file_name=stem, file_format="MINDIR")
    except Exception as exc:
        raise Unsupported(f"MindSpore cannot export {name} to {file_format}: {_first_line(exc)}") from None
    if not os.path.isfile(out):
        raise Unsupported(f"MindSpore wrote no {file_format} file for {name}")
    return {"versions": op_versions(), "outputs": _output_names(n_out)}


# ---- MindIR ----------------------------------------------------------------------------------

def _mindir_proto(path):
    import mindspore as ms  # undeclared-ok: runs in the mindspore toolchain

    try:
        return ms.load_mindir(path)
    except Exception as exc:
        raise BadInput(f"not a readable MindIR file: {_first_line(exc)}") from None


_MINDIR_DTYPES = {"FLOAT": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "BFLOAT16": "bfloat16",
                  "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "UINT8": "uint8",
                  "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "BOOL": "bool"}


def op_mindir_signature(path):
    proto = _mindir_proto(path)
    graph = proto.graph

    def spec(value, name):
        if not value.tensor:
            return {"name": name, "dtype": "float32", "shape": None}
        t = value.tensor[0]
        kind = type(t).DataType.Name(t.data_type)
        return {"name": name, "dtype": _MINDIR_DTYPES.get(kind, kind.lower()),
                "shape": [None if int(d) < 0 else int(d) for d in t.dims]}

    params = {p.name for p in graph.parameter}
    ins = [v for v in graph.input if v.name not in params]
    inputs = [spec(v, v.name.rsplit(":", 1)[-1] or f"input_{i}") for i, v in enumerate(ins)]
    outputs = [spec(v, n) for v, n in zip(graph.output, _output_names(len(graph.output)))]
    return {"inputs": inputs, "outputs": outputs}


def _graph(path):
    key = _stat(path)
    if key not in _GRAPHS:
        import mindspore as ms  # undeclared-ok: runs in the mindspore toolchain

        _mode(True)
        try:
            _GRAPHS[key] = ms.nn.GraphCell(ms.load(path))
        except Exception as exc:
            raise BadInput(f"mindspore.load cannot load the MindIR: {_first_line(exc)}") from None
    return _GRAPHS[key]


def op_mindir_run(path, input_names, inputs, outputs):
    net = _graph(path)
    _mode(True)
    outs = _forward(net, _feeds(inputs, input_names))
    names = _output_names(len(outs))
    _save(outputs, dict(zip(names, outs)))
    return {"outputs": names}


def op_mindir_to_onnx(path, inputs, out):
    """The MindIR's GraphCell exported with mindspore.onnx.export (graph mode; a dynamic batch kept)."""
    import mindspore as ms  # undeclared-ok: runs in the mindspore toolchain

    _graph(path)  # loads (or names the error) once
    _mode(True)
    # a fresh GraphCell: one that has run cannot be exported ("The pointer[context] is null"), nor run once exported
    net = ms.nn.GraphCell(ms.load(path))
    sample = _sample(inputs)
    n_out = len(_mindir_proto(path).graph.output)
    dynamic = {s["name"]: {0: "batch"} for s in inputs if s["shape"] and s["shape"][0] is None}
    try:
        ms.onnx.export(net, *[ms.Tensor(a) for a in sample], file_name=out, input_names=[s["name"] for s in inputs],
                       output_names=_output_names(n_out), dynamic_axes=dynamic or None)
    except Exception as exc:
        raise Unsupported(f"MindSpore cannot export this MindIR to ONNX: {_first_line(exc)}") from None
    if not os.path.isfile(out):
        raise Unsupported("MindSpore wrote no ONNX file for this MindIR")
    return {"versions": op_versions(), "outputs": _output_names(n_out)}


# ---- MindRecord ------------------------------------------------------------------------------

def op_mindrecord_read(path, out):
    """Every row of a MindRecord file, stacked: one array per field (axis 0: the rows)."""
    import numpy as np  # undeclared-ok: runs in the mindspore toolchain
    from mindspore.mindrecord import FileReader  # undeclared-ok: runs in the mindspore toolchain

    try:
        reader = FileReader(path, num_consumer=1)
    except Exception as exc:
        raise BadInput(f"not a readable MindRecord file: {_first_line(exc)}") from None
    try:
        schema = reader.schema()
        columns = {k: [] for k in schema}
        for row in reader.get_next():
            for k in columns:
                columns[k].append(row[k])
    except Exception as exc:
        raise BadInput(f"cannot read the MindRecord rows: {_first_line(exc)}") from None
    finally:
        reader.close()
    arrays, skipped = {}, []
    for k, values in columns.items():
        kind = schema[k].get("type")
        if kind in ("bytes", "string"):
            skipped.append(k)
            continue
        try:
            arrays[k] = np.stack([np.asarray(v, dtype=kind) for v in values]) if values else \
                np.zeros([0, *[max(0, int(d)) for d in schema[k].get("shape", [])]], dtype=kind)
        except ValueError:
            raise BadInput(f"field {k!r} has rows of different shapes (declared {schema[k].get('shape')}); "
                           "modelport stacks the rows into one array per field") from None
    _save(out, arrays)
    return {"rows": len(next(iter(columns.values()), [])), "fields": {k: schema[k] for k in schema},
            "skipped": skipped}


_WIDEN = {"bool": "int32", "int8": "int32", "int16": "int32", "uint8": "int32", "uint16": "int32",
          "uint32": "int64", "float16": "float32"}


def op_mindrecord_write(src, out, description="modelport"):
    """The arrays of an .npz as MindRecord rows (row i: every array's [i]), written beside and renamed.

    MindRecord keeps int32/int64/float32/float64 fields: narrower ints, bools and float16 are widened
    (the widening is in the reply). The file's header names the file, so the temp directory keeps it.
    """
    import shutil
    import tempfile

    import numpy as np  # undeclared-ok: runs in the mindspore toolchain
    from mindspore.mindrecord import FileWriter  # undeclared-ok: runs in the mindspore toolchain

    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    schema, widened = {}, {}
    for k, a in arrays.items():
        kind = _WIDEN.get(a.dtype.name, a.dtype.name)
        if kind not in ("int32", "int64", "float32", "float64"):
            raise Unsupported(f"array {k!r} has dtype {a.dtype.name}, which MindRecord cannot hold "
                              "(it keeps int32, int64, float32, float64)")
        if kind != a.dtype.name:
            widened[k] = [a.dtype.name, kind]
            arrays[k] = a.astype(kind)
        schema[k] = {"type": kind, **({"shape": [int(d) for d in a.shape[1:]]} if a.ndim > 1 else {})}
    folder, base = os.path.split(os.path.abspath(out))
    tmp = tempfile.mkdtemp(prefix=f".{base}.partial-", dir=folder)
    try:
        staged = os.path.join(tmp, base)
        writer = FileWriter(staged, shard_num=1, overwrite=True)
        writer.add_schema(schema, description)
        rows = len(next(iter(arrays.values()), ()))
        step = 256
        for start in range(0, rows, step):
            writer.write_raw_data([{k: (a[i] if a.ndim > 1 else a[i].item()) for k, a in arrays.items()}
                                   for i in range(start, min(rows, start + step))])
        writer.commit()
        os.replace(staged + ".db", out + ".db")  # the index first: a reader never finds the file without it
        os.replace(staged, out)
    except Exception as exc:
        raise BadInput(f"MindRecord FileWriter failed: {_first_line(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows, "fields": schema, "widened": widened}
