"""TorchScript archives (torch.jit.save): a zip holding `code/` and `constants.pkl`.

forward's int/float/bool parameters are no inputs: they take Python constants (``--input sr=16000``),
checked against the scripted schema and bound as for module files (``torch_module.bind_constants``).
"""

from __future__ import annotations

from pathlib import Path

from modelport.artifact import TensorSpec
from modelport.errors import BadInputError
from modelport.formats.base import LoadOptions, fill_signature, zip_names
from modelport.formats.torch_common import TorchCallableRunner, torch_module

NAME = "torchscript"


def detect(path: Path) -> bool:
    names = zip_names(path)
    return bool(names) and any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def forward_arg_names(module) -> list[str]:
    try:
        args = module.forward.schema.arguments[1:]
        return [a.name for a in args]
    except Exception:
        return []


class TorchScriptRunner(TorchCallableRunner):
    format = NAME

    def __init__(self, path: str, options: LoadOptions) -> None:
        torch = torch_module()
        try:
            module = torch.jit.load(path, map_location=options.device).eval()
        except Exception as exc:
            raise BadInputError(f"cannot load TorchScript archive ({str(exc).strip().splitlines()[0]})", path=path) from None
        from modelport.formats.torch_module import SCALAR_KINDS, bind_constants, forward_params

        params = forward_params(module)
        fn, given, constants = bind_constants(module, options.inputs, path)
        names = ([p.name for p in params if p.kind not in SCALAR_KINDS and p.name not in constants]
                 if params is not None else forward_arg_names(module))
        declared = tuple(TensorSpec(n, "float32", None) for n in names)
        inputs = fill_signature(declared, given, path)
        if not given or any(s.shape is None for s in inputs):
            raise BadInputError(
                f"TorchScript keeps no input shapes; give --input for {', '.join(names) or 'each input'} "
                "(e.g. --input x:batch x3x32x32:float32)".replace("batch x", "batchx"),
                path=path,
            )
        super().__init__(path, fn, inputs, device=options.device)
        self.module = module
        self.constants = constants


def open(path: str, options: LoadOptions) -> TorchScriptRunner:  # noqa: A001
    return TorchScriptRunner(path, options)
