"""PyTorch (module file, .pt2, TorchScript) -> ONNX with torch.onnx.

Strategies, tried in order, each attempt reported: torch.onnx's dynamo exporter (dynamic
batch by default), the dynamo exporter again with every dim static (frozen at the example
inputs' sizes, reported as a warning) when the dynamic export fails, then the TorchScript
exporter as a fallback. The fallback can freeze shape-dependent logic, which is why every
conversion with dynamic dims is verified at two input shapes.

Python constants for forward's scalar parameters (``--input sr=16000``) are baked in: the module
is exported through a wrapper whose forward takes the tensors only (a TorchScript module's
wrapper is traced first, which keeps the scripted control flow), and the lineage says so.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from modelport.artifact import TensorSpec
from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import BadInputError, ExportError
from modelport.quiet import quiet

DEFAULT_OPSET = 18


@dataclasses.dataclass(frozen=True)
class Attempt:
    strategy: str
    ok: bool
    error: str = ""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc))
    text = text.split("This is step")[0]  # torch.onnx's "next steps" boilerplate
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = " ".join(lines[0].split()) if lines else ""
    return f"{type(exc).__name__}: {line}".strip().rstrip(":")


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _short(exc: BaseException) -> str:
    """One line: the error, and its root cause when torch wraps it (the wrapper says little)."""
    top, root = _first_line(exc), _root_cause(exc)
    text = top if root is exc else f"{top} ({_first_line(root)})"
    return text[:400]


def _specialization(exc: BaseException) -> str | None:
    """torch.export's complaint that the model fixes a dim the input specs mark dynamic, else None."""
    text = _ANSI.sub("", str(_root_cause(exc)))
    if "conflicts between user-specified ranges" not in text and "Constraints violated" not in text:
        return None
    lines = [ln.strip(" -") for ln in text.splitlines() if "shape" in ln or "specializ" in ln]
    return " ".join((lines[0] if lines else text.splitlines()[0]).split())[:300]


_STATIC_HINT = "export with --static-batch, or give fixed sizes in --input"


def _fixes_what(fixes: str) -> str:
    """'the model fixes x.shape[0] (...)' from torch.export's specialization message."""
    dims = re.findall(r"\w+\[['\"](\w+)['\"]\]\.(?:shape|size\(\))\[(\d+)\]", fixes)
    named = ", ".join(dict.fromkeys(f"{n}.shape[{i}]" for n, i in dims)) or "a dim that the inputs mark dynamic"
    return f"the model fixes {named} ({fixes})"


_DYNAMO_STATIC = "dynamo-static"


def _label(strategy: str) -> str:
    return "dynamo exporter (every dim static)" if strategy == _DYNAMO_STATIC else f"{strategy} exporter"


def _frozen_specs(specs: tuple[TensorSpec, ...], args: tuple[Any, ...]) -> tuple[TensorSpec, ...]:
    """The specs with every dynamic dim fixed at the example inputs' size."""
    return tuple(
        TensorSpec(s.name, s.dtype, tuple(int(n) for n in a.shape)) if s.shape and any(isinstance(d, str) for d in s.shape) else s
        for s, a in zip(specs, args)
    )


def _frozen_dims(specs: tuple[TensorSpec, ...], args: tuple[Any, ...]) -> str:
    """'batch=2, sequence=8': each dynamic dim and the size it was frozen at."""
    seen: dict[str, int] = {}
    for s, a in zip(specs, args):
        for i, d in enumerate(s.shape or ()):
            if isinstance(d, str):
                seen.setdefault(d, int(a.shape[i]))
    return ", ".join(f"{k}={v}" for k, v in seen.items())


def _check_inputs_kept(out_path: str, specs: tuple[TensorSpec, ...]) -> None:
    """An export that lost graph inputs traced them into constants (e.g. a trip through numpy)."""
    import onnx

    model = onnx.load(out_path, load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    have = {v.name for v in model.graph.input if v.name not in inits}
    lost = [s.name for s in specs if s.name not in have]
    if lost:
        raise RuntimeError(
            f"the exported graph lost input(s) {lost}: their values were captured as constants "
            "(the forward leaves torch, e.g. through numpy or Python numbers)"
        )


def _with_dynamic_batch(specs: tuple[TensorSpec, ...], dynamic_batch: bool) -> tuple[TensorSpec, ...]:
    out = []
    for s in specs:
        if s.shape and dynamic_batch and isinstance(s.shape[0], int):
            s = TensorSpec(s.name, s.dtype, ("batch", *s.shape[1:]))
        if s.shape and not dynamic_batch:
            s = TensorSpec(s.name, s.dtype, tuple(d if isinstance(d, int) else (1 if i == 0 else 8) for i, d in enumerate(s.shape)))
        out.append(s)
    return tuple(out)


def _has_batch(specs: tuple[TensorSpec, ...]) -> bool:
    return any(s.shape and s.shape[0] == "batch" for s in specs)


def _example_args(specs: tuple[TensorSpec, ...]) -> tuple[Any, ...]:
    import torch

    from modelport.inputs import make_inputs

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


def release_rewriter_state() -> int:
    """Drop what onnxscript's rewrite rules remember of the last graph they matched; returns the matchers reset.

    torch.onnx's dynamo exporter optimizes the graph with onnxscript's default rewrite rules, which are
    module-level objects: each rule's ``SimplePatternMatcher`` keeps the graph, the node and the match
    bindings of its last match (``_graph``, ``_current_node``, ``_match``) after the export returns. Through
    them the whole exported ONNX model stays alive, and with it every initializer, which wraps the
    exported program's weight tensors without a copy: after a 3.1 GiB Llama's export, 3.5 GB of weights
    stayed resident through the parity check (peak RSS 2.1x the weights, issue 11). The matchers set
    these attributes afresh on every match, so removing them leaves the rules as they were before first use.
    """
    import gc

    try:
        from onnxscript.rewriter._matcher import PatternMatcher
    except Exception:  # noqa: BLE001  (another onnxscript layout: nothing known to reset)
        return 0
    reset = 0
    for obj in gc.get_objects():
        if not issubclass(type(obj), PatternMatcher):
            continue
        state = getattr(obj, "__dict__", None)
        if state is None:
            continue
        for attr in ("_match", "_graph", "_tracer"):
            state.pop(attr, None)
        if "_current_node" in state:
            state["_current_node"] = None
        reset += 1
    return reset


def _export_dynamo(model: Any, args, specs, out_path: str, opset: int, output_names) -> None:
    import torch

    from modelport.formats.torch_module import bound_class

    program = model if isinstance(model, torch.export.ExportedProgram) else None
    kwargs: dict[str, Any] = {}
    if program is None:
        dyn = _dynamic_shapes(specs)
        if dyn and isinstance(model, bound_class()):  # forward(*tensors): the shapes go by position
            dyn = {"tensors": tuple(dyn[s.name] or None for s in specs)}
        if dyn:
            kwargs["dynamic_shapes"] = dyn
        kwargs["input_names"] = [s.name for s in specs]
    if output_names:
        kwargs["output_names"] = output_names
    try:
        onnx_program = torch.onnx.export(
            model, args, dynamo=True, opset_version=opset, verbose=False, external_data=False, **kwargs
        )
        from modelport.formats import onnx_data

        size = sum(v.const_value.nbytes for v in onnx_program.model.graph.initializers.values() if v.const_value is not None)
        onnx_program.save(out_path, external_data=size > onnx_data.threshold())  # the threshold every ONNX writer uses
    finally:
        release_rewriter_state()  # else the exported model, and the weights it wraps, outlive the export


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


def _trace_bound_script(model: Any, args: tuple[Any, ...], src: str) -> Any:
    """A wrapper that calls a ScriptModule with constants, traced into a ScriptModule of the tensors alone.

    The trace records the call into the scripted forward with the constants in place, so the scripted
    control flow survives; the TorchScript exporter then folds the constant branches away.
    """
    import warnings

    import torch

    try:
        with quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.trace(model, args, check_trace=False, strict=False)
    except Exception as exc:
        raise ExportError(f"binding the constants into the TorchScript module failed: {_short(exc)}", path=src) from None


def export_torch(model: Any, specs: tuple[TensorSpec, ...], out_path: str, options: ConvertOptions, src: str) -> ConverterResult:
    """Run the strategy chain; raise ExportError naming every failed strategy.

    ``model`` may be a module bound to Python constants (``torch_module.bind_constants``): they are
    baked into the export, and the detail and warnings say so.
    """
    import torch

    from modelport.formats.torch_module import bound_class, constants_text

    opset = options.opset or DEFAULT_OPSET
    args = _example_args(specs)
    constants = dict(model.constants) if isinstance(model, bound_class()) else {}
    if constants and isinstance(model.inner, torch.jit.ScriptModule):
        model = _trace_bound_script(model, args, src)
    try:
        out_names = _output_names(model, args) if not isinstance(model, torch.export.ExportedProgram) else None
    except Exception as exc:
        hint = f" (the batch dim is dynamic by default; {_STATIC_HINT})" if _has_batch(specs) else ""
        raise BadInputError(
            f"the model fails on example inputs {[str(s) for s in specs]}: {_short(exc)}{hint}", path=src
        ) from None
    frozen = _frozen_specs(specs, args)
    if isinstance(model, torch.jit.ScriptModule):
        strategies = [("torchscript", _export_torchscript, specs)]  # torch.export cannot capture a ScriptModule
    else:
        strategies = [("dynamo", _export_dynamo, specs)]
        if not isinstance(model, torch.export.ExportedProgram):
            if frozen != specs:  # retried with every dim static before the fallback
                strategies.append((_DYNAMO_STATIC, _export_dynamo, frozen))
            strategies.append(("torchscript", _export_torchscript, specs))
    attempts: list[Attempt] = []
    fixes = ""  # torch.export's word that the model fixes a dim the specs mark dynamic
    for name, fn, use in strategies:
        if name == "torchscript" and fixes:
            use = frozen  # a graph whose "dynamic" dims are frozen inside must not claim them dynamic
        try:
            with quiet():
                fn(model, args, use, out_path, opset, out_names)
            _check_inputs_kept(out_path, use)
        except Exception as exc:
            attempts.append(Attempt(name, False, _short(exc)))
            if name == "dynamo":
                fixes = _specialization(exc) or ""
            continue
        attempts.append(Attempt(name, True))
        detail = "; ".join(f"{_label(a.strategy)} failed ({a.error})" for a in attempts if not a.ok)
        warns: list[str] = []
        if use is frozen and frozen != specs:
            why = _fixes_what(fixes) if fixes else f"the dynamo export with dynamic dims failed: {attempts[0].error}"
            warns.append(f"dynamic dims frozen ({_frozen_dims(specs, args)}): {why}; the ONNX model has static "
                         "shapes and was verified at these sizes only")
        if name == "torchscript" and len(attempts) > 1:
            warns.append(
                "the dynamo exporter failed, so the TorchScript exporter (fallback) was used: it may freeze "
                f"shape-dependent logic; verified at two shapes (dynamo: {attempts[0].error})"
                if use is specs else
                f"the dynamo exporter failed, so the TorchScript exporter (fallback) was used (dynamo: {attempts[0].error})"
            )
        route = "dynamo" if name == _DYNAMO_STATIC else name
        how = f", all dims static ({_frozen_dims(specs, args)})" if use is frozen and frozen != specs else ""
        baked = f"; {constants_text(constants)}" if constants else ""
        if constants:
            warns.append(f"{constants_text(constants)}: the ONNX model computes forward with "
                         f"{'this value' if len(constants) == 1 else 'these values'} only")
        return ConverterResult(
            tool=f"torch.onnx ({route} exporter)",
            versions=(("torch", torch.__version__),),
            detail=(detail + "; " if detail else "") + f"{route} exporter{how}, opset {opset}{baked}",
            warnings=tuple(warns),
        )
    hint = f"; {_STATIC_HINT}" if fixes else ""
    raise ExportError(
        "export failed: " + "; ".join(f"{_label(a.strategy)} failed: {a.error}" for a in attempts) + hint, path=src
    )


def _specs_or_fail(given: tuple[TensorSpec, ...], declared: tuple[TensorSpec, ...], src: str) -> tuple[TensorSpec, ...]:
    from modelport.formats.base import fill_signature

    specs = fill_signature(declared, given, src)
    if not specs or any(s.shape is None for s in specs):
        raise BadInputError("input shapes unknown; give --input name:1x3x224x224:float32 for each input", path=src)
    return specs


@register("torch-module", "onnx", "torch.onnx export")
def module_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    from modelport.formats.torch_module import bind_constants, build_module

    module, given, _ = bind_constants(build_module(src, options.weights), options.inputs, src)
    specs = _with_dynamic_batch(_specs_or_fail(given, (), src), options.dynamic_batch)
    return export_torch(module, specs, out, options, src)


@register("torchscript", "onnx", "torch.onnx export")
def torchscript_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    from modelport.formats.base import LoadOptions
    from modelport.formats.torchscript import TorchScriptRunner

    runner = TorchScriptRunner(src, LoadOptions(inputs=options.inputs))
    specs = _with_dynamic_batch(runner.signature.inputs, options.dynamic_batch)
    return export_torch(runner.fn, specs, out, options, src)  # the module, bound to any constants


@register("torch-export", "onnx", "torch.onnx export")
def exported_program_to_onnx(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    from modelport.formats.torch_export import load_program, program_inputs

    program = load_program(src)  # a web of reference cycles: ConvertStep collects it before the parity check
    return export_torch(program, program_inputs(program), out, options, src)
