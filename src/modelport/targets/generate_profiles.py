"""Regenerate the built-in target profiles in ``targets/profiles/`` from the tools themselves.

    python -m modelport.targets.generate_profiles [--out DIR]

- ``onnxruntime-cpu``: onnxruntime's CPU kernel registry
  (``onnxruntime.capi.onnxruntime_pybind11_state.get_all_opkernel_def()``: every kernel's
  domain, op, version range and type constraints), plus the ONNX ops onnxruntime runs by
  inlining their function body (ops with an ONNX function and no kernel at that version;
  from onnxruntime's own schema list and ``onnx.defs``).
- ``onnxruntime-opset13``: the same registry cut at opset 13, for runtimes that load at
  most opset 13 (onnxruntime 1.7/1.8, TensorRT 7.x, many vendor SDKs).
- ``onnxruntime-nnapi`` / ``onnxruntime-coreml``: the op lists onnxruntime publishes for
  its Android NNAPI and Apple CoreML (ML Program) execution providers, shipped inside the
  onnxruntime wheel (``onnxruntime/tools/mobile_helpers/*_supported_ops.md``), caveats kept.
- ``tflite``: a REDUCED set: the ONNX ops that lower to TFLite builtin operators, from the
  table below (ONNX op -> the builtins it lowers to, as onnx2tf lowers them); every builtin
  named is checked against LiteRT's own ``BuiltinOperator`` enumeration
  (``ai_edge_litert.schema_py_generated``), and an op whose builtins LiteRT lacks is dropped.

``torch`` is not a file: it is built at check time from ``modelport.to_torch.supported_ops()``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path
from typing import Any

from modelport.targets.profile import FORMAT, PROFILE_DIR

OPEN = 2147483647
INTERNAL_DOMAINS = ("com.microsoft.nchwc", "com.ms.internal.nhwc")
ORT_MIN_OPSET = 7  # onnxruntime's documented minimum supported opset
# onnxruntime's InsertCastTransformer runs float16 nodes that have no float16 CPU kernel in float32
# (checked: Erf/Gelu/Softplus in float16 load and run; bfloat16 and float64 without kernels do not).
ORT_CPU_CASTS = {"float16": "float32"}

_SCALAR = {"float": "float32", "double": "float64", "float16": "float16", "bfloat16": "bfloat16", "int8": "int8",
           "int16": "int16", "int32": "int32", "int64": "int64", "uint8": "uint8", "uint16": "uint16",
           "uint32": "uint32", "uint64": "uint64", "bool": "bool", "string": "string", "complex64": "complex64",
           "complex128": "complex128"}

# ONNX op -> TFLite builtins it lowers to ([] : folded away, no kernel needed).
TFLITE_LOWERING: dict[str, list[str]] = {
    "Abs": ["ABS"], "Add": ["ADD"], "And": ["LOGICAL_AND"], "ArgMax": ["ARG_MAX"], "ArgMin": ["ARG_MIN"],
    "AveragePool": ["AVERAGE_POOL_2D"], "BatchNormalization": ["MUL", "ADD"], "Cast": ["CAST"], "Ceil": ["CEIL"],
    "Clip": ["MINIMUM", "MAXIMUM"], "Concat": ["CONCATENATION"], "Constant": [], "Conv": ["CONV_2D", "DEPTHWISE_CONV_2D"],
    "ConvTranspose": ["TRANSPOSE_CONV"], "Cos": ["COS"], "CumSum": ["CUMSUM"], "DepthToSpace": ["DEPTH_TO_SPACE"],
    "Div": ["DIV"], "Dropout": [], "Elu": ["ELU"], "Equal": ["EQUAL"], "Exp": ["EXP"], "Expand": ["BROADCAST_TO"],
    "Flatten": ["RESHAPE"], "Floor": ["FLOOR"], "Gather": ["GATHER"], "GatherND": ["GATHER_ND"], "Gelu": ["GELU"],
    "Gemm": ["FULLY_CONNECTED"], "GlobalAveragePool": ["MEAN"], "GlobalMaxPool": ["REDUCE_MAX"], "Greater": ["GREATER"],
    "GreaterOrEqual": ["GREATER_EQUAL"], "HardSigmoid": ["MUL", "ADD", "MINIMUM", "MAXIMUM"], "HardSwish": ["HARD_SWISH"],
    "Identity": [], "LeakyRelu": ["LEAKY_RELU"], "Less": ["LESS"], "LessOrEqual": ["LESS_EQUAL"], "Log": ["LOG"],
    "LogSoftmax": ["LOG_SOFTMAX"], "LRN": ["LOCAL_RESPONSE_NORMALIZATION"], "MatMul": ["BATCH_MATMUL", "FULLY_CONNECTED"],
    "Max": ["MAXIMUM"], "MaxPool": ["MAX_POOL_2D"], "Min": ["MINIMUM"], "Mul": ["MUL"], "Neg": ["NEG"], "Not": ["LOGICAL_NOT"],
    "OneHot": ["ONE_HOT"], "Or": ["LOGICAL_OR"], "Pad": ["PAD", "PADV2", "MIRROR_PAD"], "Pow": ["POW"], "PRelu": ["PRELU"],
    "Range": ["RANGE"], "Reciprocal": ["DIV"], "ReduceMax": ["REDUCE_MAX"], "ReduceMean": ["MEAN"], "ReduceMin": ["REDUCE_MIN"],
    "ReduceProd": ["REDUCE_PROD"], "ReduceSum": ["SUM"], "Relu": ["RELU"], "Reshape": ["RESHAPE"],
    "Resize": ["RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"], "ReverseSequence": ["REVERSE_SEQUENCE"], "Round": ["ROUND"],
    "ScatterND": ["SCATTER_ND"], "Shape": ["SHAPE"], "Sigmoid": ["LOGISTIC"], "Sign": ["SIGN"], "Sin": ["SIN"],
    "Slice": ["STRIDED_SLICE"], "Softmax": ["SOFTMAX"], "SpaceToDepth": ["SPACE_TO_DEPTH"], "Split": ["SPLIT_V"],
    "Sqrt": ["SQRT"], "Squeeze": ["SQUEEZE"], "Sub": ["SUB"], "Sum": ["ADD_N"], "Tanh": ["TANH"], "Tile": ["TILE"],
    "TopK": ["TOPK_V2"], "Transpose": ["TRANSPOSE"], "Unsqueeze": ["EXPAND_DIMS"], "Where": ["SELECT_V2"],
}
TFLITE_DTYPES = ["float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"]


def _dtype(type_str: str) -> str | None:
    m = re.fullmatch(r"(?:seq|optional)?\(?tensor\((\w+)\)\)?", type_str)
    if not m:
        return None
    return _SCALAR.get(m.group(1), m.group(1))


def _entry(since: int, until: int | None, dtypes: set[str] | None, via: str = "kernel", note: str = "") -> dict[str, Any]:
    e: dict[str, Any] = {"since": since, "until": None if until is None or until >= OPEN else until}
    if dtypes:
        e["dtypes"] = sorted(dtypes)
    if via != "kernel":
        e["via"] = via
    if note:
        e["note"] = note
    return e


def _ort_kernels() -> dict[tuple[str, str], dict[tuple[int, int], set[str]]]:
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    table: dict[tuple[str, str], dict[tuple[int, int], set[str]]] = collections.defaultdict(lambda: collections.defaultdict(set))
    for k in C.get_all_opkernel_def():
        if k.provider != "CPUExecutionProvider" or k.domain in INTERNAL_DOMAINS:
            continue
        dts = table[(k.domain, k.op_name)][tuple(k.version_range)]
        for types in k.type_constraints.values():
            dts.update(d for d in map(_dtype, types) if d)
    return table


def _ort_function_ops(kernels) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Default-domain ops with no kernel at some version that onnxruntime runs through their ONNX function body."""
    import onnx.defs
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    versions: dict[str, list[Any]] = collections.defaultdict(list)
    for s in C.get_all_operator_schema():
        if s.domain == "":
            versions[s.name].append(s)
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for name, schemas in versions.items():
        schemas.sort(key=lambda s: s.since_version)
        for i, s in enumerate(schemas):
            v = s.since_version
            if any(lo <= v <= hi for lo, hi in kernels.get(("", name), {})):
                continue
            try:
                ref = onnx.defs.get_schema(name, v, "")
            except onnx.defs.SchemaError:
                continue
            if ref.since_version != v or not (ref.has_function or ref.has_context_dependent_function):
                continue
            until = schemas[i + 1].since_version - 1 if i + 1 < len(schemas) else None
            dts = {d for tc in s.type_constraints for d in map(_dtype, tc.allowed_type_strs) if d}
            out.setdefault(("", name), []).append(_entry(v, until, dts, via="function"))
    return out


def _ort_max_opsets() -> dict[str, int]:
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    top: dict[str, int] = {}
    for s in C.get_all_operator_schema():
        top[s.domain] = max(top.get(s.domain, 0), s.since_version)
    return top


def _versions() -> str:
    import onnx
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}"


def onnxruntime_cpu(max_opset: int | None = None) -> dict[str, Any]:
    kernels = _ort_kernels()
    ops: dict[str, dict[str, list[dict[str, Any]]]] = collections.defaultdict(dict)
    all_dtypes: set[str] = set()
    for (domain, op), ranges in kernels.items():
        entries = [_entry(lo, hi, d) for (lo, hi), d in sorted(ranges.items()) if max_opset is None or domain != "" or lo <= max_opset]
        if entries:
            ops[domain][op] = entries
        for d in ranges.values():
            all_dtypes |= d
    for (domain, op), entries in _ort_function_ops(kernels).items():
        entries = [e for e in entries if max_opset is None or e["since"] <= max_opset]
        if entries:
            merged = ops[domain].get(op, []) + entries
            ops[domain][op] = sorted(merged, key=lambda e: e["since"])
    top = _ort_max_opsets()
    opsets = {"": [ORT_MIN_OPSET, top[""] if max_opset is None else max_opset], "ai.onnx.ml": [1, top.get("ai.onnx.ml", 1)],
              "com.microsoft": [1, top.get("com.microsoft", 1)]}
    name = "onnxruntime-cpu" if max_opset is None else f"onnxruntime-opset{max_opset}"
    desc = ("onnxruntime's CPU execution provider" if max_opset is None else
            f"onnxruntime's CPU kernels, for a runtime that loads at most opset {max_opset} (e.g. onnxruntime 1.7/1.8, TensorRT 7.x)")
    return {"format": FORMAT, "name": name, "description": desc,
            "source": f"generated by modelport.targets.generate_profiles from {_versions()}: "
                      "get_all_opkernel_def() (CPUExecutionProvider kernels) + ONNX function ops onnxruntime inlines",
            "reduced": max_opset is not None, "opsets": opsets, "dtypes": sorted(all_dtypes), "layout": "nchw",
            "dynamic_dims": "all", "casts": ORT_CPU_CASTS, "ops": {d: dict(sorted(t.items())) for d, t in sorted(ops.items())}}


def _md_ops(path: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    ops: dict[str, dict[str, list[dict[str, Any]]]] = collections.defaultdict(dict)
    for line in path.read_text().splitlines():
        m = re.match(r"\|([\w.]+):(\w+)\|(.*)\|\s*$", line)
        if not m:
            continue
        domain = "" if m.group(1) == "ai.onnx" else m.group(1)
        note = re.sub(r"<br/?>", " ", m.group(3)).strip()
        ops[domain][m.group(2)] = [_entry(1, None, None, note=note)]
    return dict(ops)


def onnxruntime_ep(kind: str) -> dict[str, Any]:
    import onnxruntime

    files = {"nnapi": "nnapi_supported_ops.md", "coreml": "coreml_supported_mlprogram_ops.md"}
    md = Path(onnxruntime.__file__).parent / "tools" / "mobile_helpers" / files[kind]
    title = {"nnapi": "onnxruntime's Android NNAPI execution provider",
             "coreml": "onnxruntime's Apple CoreML execution provider (ML Program)"}[kind]
    top = _ort_max_opsets()
    return {"format": FORMAT, "name": f"onnxruntime-{kind}",
            "description": f"{title}: ops it runs on the accelerator (the rest falls back to CPU); static shapes only",
            "source": f"generated by modelport.targets.generate_profiles from {md.name} shipped in {_versions()}",
            "reduced": False, "opsets": {"": [ORT_MIN_OPSET, top[""]]}, "dtypes": [], "layout": "any",
            "dynamic_dims": "none", "ops": _md_ops(md)}


def tflite() -> dict[str, Any]:
    import onnx.defs
    from ai_edge_litert import schema_py_generated as schema

    builtins = {n for n in dir(schema.BuiltinOperator) if n.isupper()}
    ops = {}
    for op, needs in sorted(TFLITE_LOWERING.items()):
        if all(b in builtins for b in needs):
            ops[op] = [_entry(1, None, None, note=("lowers to " + ", ".join(needs)) if needs else "folded away")]
    import ai_edge_litert

    version = getattr(ai_edge_litert, "__version__", "?")
    return {"format": FORMAT, "name": "tflite",
            "description": "TFLite builtin operators (no Flex/select-TF ops): the ONNX ops that lower to them",
            "source": f"reduced set: modelport's ONNX -> TFLite lowering table, each builtin checked against "
                      f"ai_edge_litert {version} BuiltinOperator ({len(builtins)} builtins)",
            "reduced": True, "opsets": {"": [ORT_MIN_OPSET, onnx.defs.onnx_opset_version()]}, "dtypes": TFLITE_DTYPES,
            "layout": "nhwc", "dynamic_dims": "batch", "ops": {"": ops}}


def generate(out: Path = PROFILE_DIR) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for data in (onnxruntime_cpu(), onnxruntime_cpu(13), onnxruntime_ep("nnapi"), onnxruntime_ep("coreml"), tflite()):
        path = out / f"{data['name']}.json"
        path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROFILE_DIR)
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
