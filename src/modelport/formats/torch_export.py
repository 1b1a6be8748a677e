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


def _shape(val) -> tuple[int | str, ...]:
    return tuple(int(d) if isinstance(d, int) or str(d).isdigit() else str(d) for d in val.shape)


def program_inputs(ep) -> tuple[TensorSpec, ...]:
    torch = torch_module()
    user = set(ep.graph_signature.user_inputs)
    specs = []
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        specs.append(TensorSpec(node.name, np_dtype_of(val.dtype), _shape(val)))
    return tuple(specs)


def program_outputs(ep) -> tuple[TensorSpec, ...] | None:
    """The user outputs with their symbolic shapes, named as the runner names them; None if not all tensors."""
    torch = torch_module()
    user = list(ep.graph_signature.user_outputs)
    out_node = next((n for n in ep.graph.nodes if n.op == "output"), None)
    if out_node is None or not user:
        return None
    by_name = {getattr(a, "name", None): a for a in out_node.args[0]}
    specs = []
    for i, name in enumerate(user):
        val = getattr(by_name.get(name), "meta", {}).get("val")
        if not isinstance(val, torch.Tensor):
            return None
        specs.append(TensorSpec(f"output_{i}", np_dtype_of(val.dtype), _shape(val)))
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
