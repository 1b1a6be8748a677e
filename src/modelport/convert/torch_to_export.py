"""A generated torch directory (model.py + weights) -> a torch.export archive (.pt2).

The module that modelport's ONNX -> PyTorch compiler wrote is exported with
``torch.export.export``. Every symbolic dim recorded in modelport_torch.json becomes a
``torch.export.Dim`` (one per dim name, so inputs that share "batch" share a symbol);
where the module constrains a dim in a way a plain named Dim cannot express (a sequence
bounded by a position table, a dim tied to another), the export is retried with
``Dim.AUTO``, which lets torch.export infer the ranges and relations itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from modelport.artifact import TensorSpec
from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import BadInputError, ExportError

__all__ = ["torch_dir_to_export", "dynamic_shapes"]


def _dim_name(raw: str, taken: dict[str, str]) -> str:
    from modelport.to_torch import naming

    if raw not in taken:
        taken[raw] = naming.Namer(set(taken.values())).new(raw, short=False, fallback="d")
    return taken[raw]


def dynamic_shapes(specs: tuple[TensorSpec, ...], *, named: bool, dynamic_batch: bool = True,
                   bounds: dict[str, tuple[int | None, int | None]] | None = None) -> tuple[Any, ...]:
    """One ``{axis: Dim}`` dict per input for every symbolic (str or unknown) dim.

    ``named`` maps each dim name to one shared ``Dim(name)`` (with ``bounds[name] =
    (min, max)`` where given); otherwise every dynamic axis is ``Dim.AUTO``. Without
    ``dynamic_batch`` axis 0 stays the example's size.
    """
    bounds = bounds or {}
    import torch

    dims: dict[str, Any] = {}
    names: dict[str, str] = {}
    out = []
    for spec in specs:
        axes: dict[int, Any] = {}
        for axis, d in enumerate(spec.shape or ()):
            if isinstance(d, int) and d >= 0 or axis == 0 and not dynamic_batch:
                continue
            if named and isinstance(d, str):
                ident = _dim_name(d, names)
                if ident not in dims:
                    lo, hi = bounds.get(ident, (None, None))
                    kw = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
                    dims[ident] = torch.export.Dim(ident, **kw)
                axes[axis] = dims[ident]
            else:
                axes[axis] = torch.export.Dim.AUTO
        out.append(axes or None)
    return tuple(out)


_SUGGESTED = re.compile(r"^\s*(\w+) = Dim\('(\w+)'(?:, min=(\d+))?(?:, max=(\d+))?\)\s*$", re.M)


def suggested_bounds(message: str) -> dict[str, tuple[int | None, int | None]] | None:
    """The ``Dim(name, min=, max=)`` fixes torch.export suggests, or None if it suggests anything else.

    A module may bound a dim (a sequence no longer than its position table); torch.export
    then refuses an unbounded ``Dim`` and prints the bounded one it would accept.
    """
    if "Suggested fixes:" not in message:
        return None
    fixes = [ln.strip() for ln in message.split("Suggested fixes:", 1)[1].splitlines() if " = " in ln]
    found = {m.group(1): (int(m.group(3)) if m.group(3) else None, int(m.group(4)) if m.group(4) else None)
             for m in _SUGGESTED.finditer(message.split("Suggested fixes:", 1)[1])}
    return found if found and len(found) == len(fixes) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split())[:300] if text else type(exc).__name__


def _refuse_constants(given: tuple[TensorSpec, ...], inputs: tuple[TensorSpec, ...], src: str) -> None:
    """A generated module's forward takes tensors only: a Python constant (``--input sr=16000``) has no parameter."""
    from modelport.inputs import ConstantSpec

    for spec in given:
        if isinstance(spec, ConstantSpec):
            names = [s.name for s in inputs]
            what = (f"parameter {spec.name!r} of the generated module takes a Tensor" if spec.name in names
                    else f"the generated module has no parameter {spec.name!r} (its inputs: {', '.join(names) or 'none'})")
            raise BadInputError(f"--input {spec}: {what}, not a Python constant; give a tensor spec, "
                                f"e.g. --input {spec.name}:1:{spec.dtype}", path=src)


@register("torch", "torch-export", "torch.export")
def torch_dir_to_export(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    """Exports the generated module of a torch directory to ``out`` (.pt2)."""
    from modelport.formats.base import fill_signature, require

    torch = require("torch", "torch", "torch.export")
    from modelport import to_torch
    from modelport.formats.torch_dir import meta_inputs, read_meta
    from modelport.inputs import make_inputs

    meta = read_meta(Path(src))
    _refuse_constants(options.inputs, meta_inputs(meta), src)
    specs = fill_signature(meta_inputs(meta), options.inputs, src)
    module = to_torch.load(src)
    feeds = make_inputs(specs, seed=0)[0]
    args = tuple(torch.from_numpy(feeds[s.name]) for s in specs)
    errors = []
    strategies: list[tuple[str, dict | None]] = [("named Dims", {})]
    while strategies:
        how, bounds = strategies.pop(0)
        shapes = dynamic_shapes(specs, named=bounds is not None, dynamic_batch=options.dynamic_batch, bounds=bounds)
        try:
            program = torch.export.export(module, args, dynamic_shapes=shapes if any(shapes) else None, strict=False)
        except Exception as exc:  # noqa: BLE001  (each strategy's failure is reported)
            errors.append(f"{how}: {type(exc).__name__}: {_first_line(exc)}")
            fixed = suggested_bounds(str(exc)) if bounds == {} else None
            if fixed:
                strategies.append(("named Dims with the bounds torch.export suggests "
                                   + ", ".join(f"{k}<={hi}" if lo is None else f"{lo}<={k}<={hi}"
                                               for k, (lo, hi) in fixed.items()), fixed))
            if bounds is not None and not strategies:
                strategies.append(("Dim.AUTO", None))
            continue
        torch.export.save(program, out)
        return ConverterResult(tool="torch.export", versions=(("torch", torch.__version__),),
                               detail=f"dynamic dims as {how}", warnings=())
    raise ExportError("torch.export of the generated module failed: " + "; ".join(errors), path=src)
