"""PyTorch (module file, .pt2, TorchScript) -> ONNX with torch.onnx.

Strategies, tried in order, each attempt reported: torch.onnx's dynamo exporter (dynamic
batch by default), then the TorchScript exporter as a fallback. The fallback can freeze
shape-dependent logic, which is why every conversion is verified at two input shapes.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from modelport.artifact import TensorSpec
from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import BadInputError, ExportError

DEFAULT_OPSET = 18


@dataclasses.dataclass(frozen=True)
class Attempt:
    strategy: str
    ok: bool
    error: str = ""


def _short(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text}"[:300]


def _with_dynamic_batch(specs: tuple[TensorSpec, ...], dynamic_batch: bool) -> tuple[TensorSpec, ...]:
    out = []
    for s in specs:
        if s.shape and dynamic_batch and isinstance(s.shape[0], int):
            s = TensorSpec(s.name, s.dtype, ("batch", *s.shape[1:]))
        if s.shape and not dynamic_batch:
            s = TensorSpec(s.name, s.dtype, tuple(d if isinstance(d, int) else (1 if i == 0 else 8) for i, d in enumerate(s.shape)))
        out.append(s)
    return tuple(out)


def _example_args(specs: tuple[TensorSpec, ...]) -> tuple[Any, ...]:
    import torch

    from modelport.verify.inputs import make_inputs

    feed = make_inputs(specs, seed=0)[0]
    return tuple(torch.from_numpy(feed[s.name]) for s in specs)


def _dynamic_shapes(specs: tuple[TensorSpec, ...]) -> dict[str, dict[int, str]] | None:
    shapes = {s.name: {i: str(d) for i, d in enumerate(s.shape or ()) if isinstance(d, str)} for s in specs}
    return shapes if any(shapes.values()) else None


def _output_names(module: Any, args: tuple[Any, ...]) -> list[str] | None:
    import torch

    from modelport.formats.torch_common import flatten_outputs

    with torch.inference_mode():
        flat = flatten_outputs(module(*args))
    names = [n or f"output_{i}" for i, (n, _) in enumerate(flat)]
    return names if len(set(names)) == len(names) else None


def _export_dynamo(model: Any, args, specs, out_path: str, opset: int, output_names) -> None:
    import torch

    program = model if isinstance(model, torch.export.ExportedProgram) else None
    kwargs: dict[str, Any] = {}
    if program is None:
        dyn = _dynamic_shapes(specs)
        if dyn:
            kwargs["dynamic_shapes"] = dyn
        kwargs["input_names"] = [s.name for s in specs]
    if output_names:
        kwargs["output_names"] = output_names
    onnx_program = torch.onnx.export(
        model, args, dynamo=True, opset_version=opset, verbose=False, external_data=False, **kwargs
    )
    onnx_program.save(out_path)


def _export_torchscript(model: Any, args, specs, out_path: str, opset: int, output_names) -> None:
    import torch

    names = output_names or None
    dyn = {s.name: {i: str(d) for i, d in enumerate(s.shape or ()) if isinstance(d, str)} for s in specs}
    if names:
        for n in names:
            dyn[n] = {0: "batch"} if any(0 in v for v in dyn.values()) else {}
    torch.onnx.export(
        model, args, out_path, dynamo=False, opset_version=min(opset, 20), input_names=[s.name for s in specs],
        output_names=names, dynamic_axes={k: v for k, v in dyn.items() if v} or None,
    )


def export_torch(model: Any, specs: tuple[TensorSpec, ...], out_path: str, options: ConvertOptions, src: str) -> ConverterResult:
    """Run the strategy chain; raise ExportError naming every failed strategy."""
    import torch

    opset = options.opset or DEFAULT_OPSET
    args = _example_args(specs)
    try:
        out_names = _output_names(model, args) if not isinstance(model, torch.export.ExportedProgram) else None
    except Exception as exc:
        raise BadInputError(f"the model fails on example inputs {[str(s) for s in specs]}: {_short(exc)}", path=src) from None
    strategies = [("dynamo", _export_dynamo)]
    if not isinstance(model, torch.export.ExportedProgram):
        strategies.append(("torchscript", _export_torchscript))
    attempts: list[Attempt] = []
    for name, fn in strategies:
        sink = io.StringIO()
        try:
            with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
                warnings.simplefilter("ignore")
                fn(model, args, specs, out_path, opset, out_names)
        except Exception as exc:
            attempts.append(Attempt(name, False, _short(exc)))
            continue
        attempts.append(Attempt(name, True))
        detail = "; ".join(f"{a.strategy} exporter failed ({a.error})" for a in attempts if not a.ok)
        warns = ()
        if name == "torchscript":
            warns = ("used the TorchScript exporter (fallback): it may freeze shape-dependent logic; verified at two shapes",)
        return ConverterResult(
            tool=f"torch.onnx ({name} exporter)",
            versions=(("torch", torch.__version__),),
            detail=(detail + "; " if detail else "") + f"{name} exporter, opset {opset}",
            warnings=warns,
        )
    raise ExportError("export failed: " + "; ".join(f"{a.strategy} exporter: {a.error}" for a in attempts), path=src)


def _specs_or_fail(given: tuple[TensorSpec, ...], declared: tuple[TensorSpec, ...], src: str) -> tuple[TensorSpec, ...]:
    from modelport.formats.base import fill_signature

    specs = fill_signature(declared, given, src)
    if not specs or any(s.shape is None for s in specs):
        raise BadInputError("input shapes unknown; give --input name:1x3x224x224:float32 for each input", path=src)
    return specs


@register("torch-module", "onnx", "torch.onnx export")
def module_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    from modelport.formats.torch_module import build_module

    module = build_module(src, options.weights)
    specs = _with_dynamic_batch(_specs_or_fail(options.inputs, (), src), options.dynamic_batch)
    return export_torch(module, specs, out, options, src)


@register("torchscript", "onnx", "torch.onnx export")
def torchscript_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    from modelport.formats.base import LoadOptions
    from modelport.formats.torchscript import TorchScriptRunner

    runner = TorchScriptRunner(src, LoadOptions(inputs=options.inputs))
    specs = _with_dynamic_batch(runner.signature.inputs, options.dynamic_batch)
    return export_torch(runner.module, specs, out, options, src)


@register("torch-export", "onnx", "torch.onnx export")
def exported_program_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    from modelport.formats.torch_export import load_program, program_inputs

    program = load_program(src)
    specs = program_inputs(program)
    return export_torch(program, specs, out, options, src)
