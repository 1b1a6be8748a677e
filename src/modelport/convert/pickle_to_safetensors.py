"""A pickled PyTorch checkpoint -> safetensors, without running it.

``modelport convert ckpt.pt --to safetensors -o out.safetensors``:

1. the file is scanned statically (:func:`modelport.security.pickles.scan_path`): any global off
   the allow-list, TorchScript code, or a computed call refuses it (exit 4) before anything is read;
2. it is rebuilt with the restricted unpickler (:func:`~modelport.security.pickles.load_checkpoint`),
   which imports nothing, calls only allow-listed tensor rebuilds and reads the storages from the
   file itself; there is no fallback to ``weights_only=False``;
3. the state_dict is chosen: the object itself when it is a dict of tensors, else the first of
   :data:`STATE_DICT_KEYS` holding one (``{"state_dict": ...}``, Lightning checkpoints, ``{"model": ...}``),
   else the only entry that is one; an ambiguous or tensor-less checkpoint is refused, not guessed.
   A ``module.`` prefix on every key (DataParallel/DDP) is removed. What was skipped is reported;
4. the tensors are written as safetensors (tied weights as copies) into the staging area;
5. verification reads the source a second, independent way: ``torch.load(weights_only=True)``, or
   where torch's reader cannot parse the pickle (protocols 0, 1, 4, 5) the static reader
   (:func:`~modelport.security.pickles.read_static`: the scanner's symbolic evaluation with tensors
   cut from the raw storage bytes); the same choice of state_dict must come out, and every tensor
   of the written file must be bitwise equal to it (exit 1 otherwise; nothing is written).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

from modelport.convert.registry import ConvertOptions, ConverterResult, register
from modelport.errors import BadInputError, ModelportError, UnsupportedError

__all__ = ["STATE_DICT_KEYS", "Selection", "select_state_dict", "pickle_to_safetensors", "tensor_verifier",
           "second_read", "convert_checkpoint", "SOURCE_FORMAT"]

SOURCE_FORMAT = "torch-pickle"
TOOL = "modelport restricted unpickler"
# Where checkpoints keep their state_dict, in the order they are tried.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params")
_PREFIX = "module."


@dataclasses.dataclass(frozen=True)
class Selection:
    """The state_dict found in a checkpoint, and what was left out."""

    tensors: dict[str, Any]
    key: tuple[Any, ...]  # the path to it: () for the checkpoint itself, ("state_dict",), ...
    skipped: tuple[str, ...]  # the other entries, described
    stripped: str = ""  # a prefix removed from every key

    def describe(self) -> str:
        where = "the checkpoint itself" if not self.key else "key " + "/".join(repr(k) for k in self.key)
        text = f"took {where}: {len(self.tensors)} tensors"
        if self.stripped:
            text += f", prefix {self.stripped!r} removed from every key"
        if self.skipped:
            text += f"; skipped: {', '.join(self.skipped[:8])}" + (" ..." if len(self.skipped) > 8 else "")
        return text


def _is_tensor(v: Any) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def _is_state_dict(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(k, str) for k in v) and all(map(_is_tensor, v.values()))


def _summary(v: Any) -> str:
    if _is_tensor(v):
        return "a tensor"
    if isinstance(v, dict):
        n = _count_tensors(v)
        return f"a dict of {len(v)}" + (f" ({n} tensors)" if n else "")
    if isinstance(v, (list, tuple)):
        n = _count_tensors(v)
        return f"a {type(v).__name__} of {len(v)}" + (f" ({n} tensors)" if n else "")
    return type(v).__name__ if not hasattr(v, "name") else str(getattr(v, "name"))


def _count_tensors(v: Any, depth: int = 0) -> int:
    if depth > 50:
        return 0
    if _is_tensor(v):
        return 1
    if isinstance(v, dict):
        return sum(_count_tensors(x, depth + 1) for x in v.values())
    if isinstance(v, (list, tuple)):
        return sum(_count_tensors(x, depth + 1) for x in v)
    return 0


def select_state_dict(obj: Any, path: str | Path | None = None) -> Selection:
    """The state_dict inside a loaded checkpoint (see the module docstring); UnsupportedError if none or several."""
    key: tuple[Any, ...] = ()
    skipped: list[str] = []
    found = obj if _is_state_dict(obj) else None
    if found is None and isinstance(obj, dict):
        for name in STATE_DICT_KEYS:
            if name in obj and _is_state_dict(obj[name]):
                key = (name,)
                break
        else:
            candidates = [k for k, v in obj.items() if _is_state_dict(v)]
            if len(candidates) > 1:
                raise UnsupportedError(
                    f"the checkpoint holds {len(candidates)} state_dicts ({', '.join(map(repr, candidates[:6]))}): "
                    "not guessing which one is the model", path=path)
            if candidates:
                key = (candidates[0],)
        if key:
            found = obj[key[0]]
            skipped = [f"{k!r} ({_summary(v)})" for k, v in obj.items() if k != key[0]]
    if found is None:
        what = (f"a dict with keys {', '.join(map(repr, list(obj)[:8]))}" if isinstance(obj, dict)
                else f"a {type(obj).__name__}")
        raise UnsupportedError(f"no state_dict (a dict of tensors) in the checkpoint: it holds {what}", path=path)
    tensors, stripped = dict(found), ""
    while tensors and all(k.startswith(_PREFIX) and len(k) > len(_PREFIX) for k in tensors):
        tensors = {k[len(_PREFIX):]: v for k, v in tensors.items()}
        stripped += _PREFIX
    return Selection(tensors, key, tuple(skipped), stripped)


def _writable(tensors: dict[str, Any], path: str) -> tuple[dict[str, Any], list[str]]:
    """Dense, contiguous, unshared CPU tensors safetensors can store; notes on what was copied."""
    import torch
    from safetensors.torch import _TYPES

    supported = set(_TYPES.values())
    out: dict[str, Any] = {}
    owners: dict[int, list[str]] = {}
    for name, t in tensors.items():
        if t.layout != torch.strided or t.is_quantized or t.is_meta or t.is_nested:
            raise UnsupportedError(f"tensor {name!r} is {'quantized' if t.is_quantized else t.layout}: "
                                   "safetensors stores dense tensors only", path=path)
        if t.dtype not in supported:
            raise UnsupportedError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store", path=path)
        t = t.detach()
        if t.numel():
            owners.setdefault(t.untyped_storage().data_ptr(), []).append(name)
        out[name] = t
    notes = []
    for names in owners.values():
        if len(names) > 1:
            for n in names:
                out[n] = out[n].clone()
            notes.append(" = ".join(names[:4]) + (" ..." if len(names) > 4 else ""))
    out = {k: v.contiguous() for k, v in out.items()}
    warns = [f"{len(notes)} group(s) of tensors shared storage (tied weights), each written as its own copy: "
             + "; ".join(notes[:3])] if notes else []
    return out, warns


@register(SOURCE_FORMAT, "safetensors", TOOL)
def pickle_to_safetensors(src: str, out: str, options: ConvertOptions) -> ConverterResult:
    """Rebuild the state_dict of a pickled checkpoint without running it; write it as safetensors at ``out``."""
    import safetensors
    import torch
    from safetensors.torch import save_file

    from modelport.security.pickles import load_checkpoint, scan_path

    scan_path(src).check()
    ckpt = load_checkpoint(src)
    sel = select_state_dict(ckpt.obj, src)
    tensors, warns = _writable(sel.tensors, src)
    metadata = {"format": "pt", "modelport.source": Path(src).name,
                "modelport.source_key": "/".join(map(str, sel.key)), "modelport.stripped_prefix": sel.stripped}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out, metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)  # safetensors writes 0600; a model file is as readable as any other output
    detail = f"{ckpt.container} checkpoint, {ckpt.storages} storages; {sel.describe()}"
    return ConverterResult(tool=TOOL, versions=(("torch", torch.__version__), ("safetensors", safetensors.__version__)),
                           detail=detail, warnings=tuple(warns))


def second_read(path: str | Path) -> tuple[Any, str]:
    """The checkpoint read independently of the restricted unpickler: (object, how it was read).

    ``torch.load(weights_only=True)`` (with frozenset and numpy's reconstruction allowed too),
    or, where torch's weights_only reader cannot parse the pickle, the static reader.
    """
    import torch

    from modelport.security.pickles import read_static

    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_extra_safe_globals()):
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=False), \
                "torch.load(weights_only=True)"
    except Exception as exc:  # noqa: BLE001  (its reader lacks opcodes of protocols 0, 1, 4, 5)
        found = re.search(r"Unsupported operand (\d+)", str(exc))
        reason = (f"it has no opcode {int(found.group(1)):#04x} (pickle protocol {_protocol(path)})" if found
                  else " ".join(str(exc).split())[:120])
    return read_static(path).obj, f"the static reader; torch.load(weights_only=True) could not: {reason}"


def _protocol(path: str | Path) -> str:
    from modelport.security.pickles import scan_path

    found = {p.protocol for p in scan_path(path).pickles}
    return "/".join(map(str, sorted(found))) or "?"


def _extra_safe_globals() -> list[Any]:
    import builtins

    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    extra: list[Any] = [builtins.frozenset, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
                        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                        (multiarray.scalar, "numpy.core.multiarray.scalar")]
    extra += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return extra


def _bytes(t: Any) -> bytes:
    import torch

    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def tensor_verifier(source: Any, result: Any, tolerance: Any) -> Any:
    """The Pipeline's verifier: the written tensors against a second, independent read of the source."""
    from safetensors.torch import load_file

    from modelport.pipeline import Verdict

    obj, how = second_read(source.path)
    try:
        sel = select_state_dict(obj, source.path)
    except ModelportError as exc:
        return Verdict(False, f"the second read ({how}) finds no state_dict the same way: {exc}")
    written = load_file(result.path)
    missing = sorted(set(sel.tensors) - set(written))
    extra = sorted(set(written) - set(sel.tensors))
    differ = sorted(k for k in set(sel.tensors) & set(written) if not _equal(sel.tensors[k], written[k]))
    if missing or extra or differ:
        parts = [f"{len(v)} {label}: {', '.join(v[:3])}" for label, v in
                 (("missing", missing), ("unexpected", extra), ("different", differ)) if v]
        return Verdict(False, f"the written tensors do not match a second read of the source ({how}): {'; '.join(parts)}")
    return Verdict(True, f"verified: all {len(written)} tensors bitwise equal to a second, independent read ({how})")


def _equal(a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and _bytes(a) == _bytes(b)


def convert_checkpoint(src: str | Path, out: str | Path | None = None, *, src_format: str | None = None,
                       verify: bool = True, progress: Any = None, ignored: tuple[str, ...] = ()) -> Any:
    """``convert SRC --to safetensors``: scan, rebuild, write and verify; returns a ConvertReport.

    Raises:
        UnsafeError: the checkpoint imports or runs something outside the allow-list (exit 4).
        UnsupportedError: not a pickled checkpoint, or no single state_dict in it (exit 3).
        CheckFailedError: the second read disagrees with the written file (exit 1; nothing written).
    """
    from modelport.artifact import Artifact
    from modelport.convert.registry import plan
    from modelport.convert.run import ConvertReport, ConvertStep
    from modelport.pipeline import Pipeline, Staging
    from modelport.security.pickles import scan_path

    started = time.perf_counter()
    src = str(src)
    if src_format not in (None, SOURCE_FORMAT):
        raise UnsupportedError(f"--from {src_format}: safetensors is written from pickled torch checkpoints only "
                               f"(--from {SOURCE_FORMAT}, or no --from)")
    if ignored:
        raise BadInputError(f"{', '.join(ignored)}: not for --to safetensors (its tensors are compared bitwise)")
    p = Path(src)
    if not p.is_file():
        raise BadInputError("no such file" if not p.exists() else "not a file: give the checkpoint file", path=src)
    try:
        scan_path(p).check()
    except BadInputError:
        _no_route(src)
        raise
    out_path = Path(out) if out else p.with_suffix(".safetensors")
    if out_path.resolve() == p.resolve():
        raise BadInputError("the output would replace the checkpoint itself; give -o", path=src)
    if out_path.is_dir():
        raise BadInputError("output exists and is a directory", path=out_path)
    (edge,) = plan(SOURCE_FORMAT, "safetensors")
    step = ConvertStep(edge, ConvertOptions(), 0, kind=".safetensors")
    with Staging(out_path) as staging:
        result = Pipeline([step], verify=tensor_verifier if verify else None, progress=progress).run(
            Artifact(src, SOURCE_FORMAT), staging)
        staging.place(result.artifact.path, out_path)
    verdict = result.verdict
    lineage = result.artifact.lineage
    if verdict is not None:  # the second read's result belongs with the step it checked
        lineage = lineage[:-1] + (dataclasses.replace(lineage[-1], detail=f"{lineage[-1].detail}; {verdict.summary}"),)
    artifact = dataclasses.replace(result.artifact, path=str(out_path), lineage=lineage)
    return ConvertReport(src=src, src_format=SOURCE_FORMAT, dst_format="safetensors", artifact=artifact,
                         route=(edge.name,), parity=None, warnings=result.warnings,
                         seconds=time.perf_counter() - started, ok=verdict.ok if verdict else None)


def _no_route(src: str) -> None:
    """A model of a known format is no checkpoint: say so (exit 3) rather than 'not a pickle'."""
    from modelport.formats import detect

    try:
        fmt = detect(src)
    except Exception:  # noqa: BLE001  (only a better message is at stake: the scan's error stands)
        return
    raise UnsupportedError(f"no conversion route from {fmt} to safetensors (safetensors is written from "
                           "pickled torch checkpoints)", path=src)
