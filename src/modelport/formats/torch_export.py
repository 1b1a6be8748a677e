"""torch.export ExportedProgram archives (.pt2)."""

from __future__ import annotations

from pathlib import Path

from modelport.artifact import TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import LoadOptions, fill_signature, zip_names
from modelport.formats.torch_common import TorchCallableRunner, np_dtype_of, torch_module

NAME = "torch-export"


def detect(path: Path) -> bool:
    names = zip_names(path)
    return bool(names) and any(
        n.endswith("archive_format") or "serialized_exported_program" in n or "/models/" in n and n.endswith(".json")
        for n in names
    )


def load_program(path: str):
    torch = torch_module()
    try:
        return torch.export.load(path)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"cannot load ExportedProgram ({msg})", path=path) from None


def _shape(val, names: dict[str, str] | None = None) -> tuple[int | str, ...]:
    names = names or {}
    return tuple(int(d) if isinstance(d, int) or str(d).isdigit() else names.get(str(d), str(d)) for d in val.shape)


def _user_input_vals(ep) -> list[tuple[str, object]]:
    torch = torch_module()
    user = set(ep.graph_signature.user_inputs)
    return [
        (n.name, n.meta.get("val"))
        for n in ep.graph.nodes
        if n.op == "placeholder" and n.name in user and isinstance(n.meta.get("val"), torch.Tensor)
    ]


def dim_names(ep) -> dict[str, str]:
    """Readable names for torch.export's symbols: the symbol at dim 0 of every input is "batch"."""
    firsts = {str(v.shape[0]) for _, v in _user_input_vals(ep) if v.dim()}
    if len(firsts) == 1:
        sym = next(iter(firsts))
        if not sym.isdigit():
            return {sym: "batch"}
    return {}


def program_inputs(ep) -> tuple[TensorSpec, ...]:
    names = dim_names(ep)
    return tuple(TensorSpec(name, np_dtype_of(val.dtype), _shape(val, names)) for name, val in _user_input_vals(ep))


def program_outputs(ep) -> tuple[TensorSpec, ...] | None:
    """The user outputs with their symbolic shapes, named as the runner names them; None if not all tensors."""
    torch = torch_module()
    user = list(ep.graph_signature.user_outputs)
    out_node = next((n for n in ep.graph.nodes if n.op == "output"), None)
    if out_node is None or not user:
        return None
    by_name = {getattr(a, "name", None): a for a in out_node.args[0]}
    names = dim_names(ep)
    specs = []
    for i, name in enumerate(user):
        val = getattr(by_name.get(name), "meta", {}).get("val")
        if not isinstance(val, torch.Tensor):
            return None
        specs.append(TensorSpec(f"output_{i}", np_dtype_of(val.dtype), _shape(val, names)))
    return tuple(specs)


class ExportedProgramRunner(TorchCallableRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        ep = load_program(path)
        inputs = fill_signature(program_inputs(ep), options.inputs, path)
        super().__init__(path, ep.module(), inputs, device=options.device)
        self.program = ep
        try:
            self._outputs = program_outputs(ep)
        except Exception:  # only a nicer signature: a run fills it in otherwise
            self._outputs = None


def open(path: str, options: LoadOptions) -> ExportedProgramRunner:  # noqa: A001
    return ExportedProgramRunner(path, options)
