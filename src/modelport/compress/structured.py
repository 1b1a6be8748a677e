"""Structured pruning: remove whole channels / neurons, so dense runtimes really do less work.

ONNX -> our PyTorch module (modelport.to_torch) -> Torch-Pruning's DependencyGraph
(coupled Conv/BN/Linear channels and residual groups are pruned together) -> ONNX again
(torch.onnx, dynamo). Channels are ranked per layer by the L2 norm of their weights:

    importance(c) = || W[c, ...] ||_2     (summed over every layer coupled to channel c)
    keep the top (1 - fraction) of each prunable layer's output channels

Layers whose output is a model output are never pruned (their width is the model's
contract). A Reshape that the generated module hard-codes as ``x.reshape(-1, N)`` right
after a Conv stack would freeze the old width; it is rewritten to ``x.flatten(1)`` when
that is provably the same op on this model (checked by running both on the example).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from modelport.errors import BadInputError, UnsupportedError
from modelport.quiet import quiet

__all__ = ["Prunable", "StructuredLayer", "export", "load", "prune", "structured_prune"]

_RESHAPE = re.compile(r"^(\s*)(\w+) = (\w+)\.reshape\(-1, (\d+)\)$", re.M)


@dataclasses.dataclass(frozen=True)
class StructuredLayer:
    """One layer's width before and after (out channels for Conv, out features for Linear)."""

    module: str
    kind: str
    width_before: int
    width_after: int
    fraction: float | None = None  # the share asked for this layer (None: an output layer, never pruned)


def _widths(net) -> dict[str, tuple[str, int]]:
    import torch

    out = {}
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            out[name] = (type(m).__name__, m.out_channels)
        elif isinstance(m, torch.nn.Linear):
            out[name] = ("Linear", m.out_features)
    return out


def _flatten_reshapes(model_py: Path) -> int:
    text = model_py.read_text()
    new, count = _RESHAPE.subn(r"\1\2 = \3.flatten(1)", text)
    if count:
        model_py.write_text(new)
    return count


def _run(net, feeds: dict[str, np.ndarray], names: list[str]):
    import torch

    with torch.no_grad():
        out = net(*[torch.from_numpy(feeds[n]) for n in names])
    return out if isinstance(out, (tuple, list)) else (out,)


def _output_layers(net, example: tuple) -> list:
    """Modules whose output tensor is returned by the model: their width is fixed."""
    import torch

    produced: dict[int, torch.nn.Module] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, o: produced.__setitem__(id(o), mod))
             for m in net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            out = net(*example)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [produced[id(o)] for o in outs if id(o) in produced]


def _load_module(src: Path, work: Path, feeds: dict[str, np.ndarray], names: list[str], notes: list[str]):
    import onnxruntime as ort

    from modelport import to_torch

    torch_dir = work / "torch"
    torch_dir.mkdir()
    try:
        to_torch.convert(str(src), torch_dir)
    except to_torch.UnsupportedOpsError as exc:
        raise UnsupportedError(f"structured pruning needs the model as PyTorch: {exc}"[:400]) from None
    reference = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
    rewritten = _flatten_reshapes(torch_dir / "model.py")
    net = to_torch.load(torch_dir)
    got = [o.numpy() for o in _run(net, feeds, names)]
    if not all(np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(reference, got)):
        raise UnsupportedError("the PyTorch module generated for structured pruning does not match the ONNX model")
    if rewritten:
        notes.append(f"{rewritten} hard-coded reshape(-1, N) rewritten to flatten(1) so pruned widths flow through")
    return net


def _rename_outputs(model, names: list[str]) -> None:
    """Give the re-exported graph the original model's output names."""
    for vi, want in zip(model.graph.output, names):
        old = vi.name
        if old == want:
            continue
        for node in model.graph.node:
            node.output[:] = [want if o == old else o for o in node.output]
            node.input[:] = [want if i == old else i for i in node.input]
        vi.name = want


@dataclasses.dataclass
class Prunable:
    """The model as a PyTorch module, loaded once; every trial prunes a copy of ``net``."""

    net: object
    names: list[str]
    sig: object
    feeds: dict[str, np.ndarray]
    example: tuple
    ignored: list  # modules whose output is a model output: never pruned
    notes: list[str]

    @property
    def layers(self) -> list[str]:
        """Names of the prunable layers (Conv/Linear not producing a model output), in module order."""
        ignored, widths = {id(m) for m in self.ignored}, _widths(self.net)
        return [name for name, m in self.net.named_modules() if name in widths and id(m) not in ignored]


def load(src: str | Path, work: str | Path, feeds: dict[str, np.ndarray]) -> Prunable:
    """Compile the ONNX model to PyTorch (checked against onnxruntime on ``feeds``) for pruning."""
    import onnx
    import torch

    from modelport.formats.onnx_format import graph_signature

    notes: list[str] = []
    sig = graph_signature(onnx.load(str(src), load_external_data=False))
    names = sig.input_names
    net = _load_module(Path(src), Path(work), feeds, names, notes)
    if not _widths(net):
        raise BadInputError("nothing to prune: no Conv or Linear layers in the model")
    example = tuple(torch.from_numpy(feeds[n]) for n in names)
    return Prunable(net, names, sig, feeds, example, _output_layers(net, example), notes)


def prune(model: Prunable, fraction: float, fractions: dict[str, float] | None = None):
    """A pruned copy of the module: (net, per-layer widths); ``fractions`` overrides per layer name (0: unpruned)."""
    import copy

    import torch_pruning as tp

    if not 0.0 < fraction < 1.0:
        raise BadInputError(f"prune fraction must be in (0, 1), got {fraction}")
    own = dict(fractions or {})
    bad = {k: f for k, f in own.items() if not 0.0 <= f < 1.0}
    if bad:
        raise BadInputError(f"per-layer prune fractions must be in [0, 1), got {bad}")
    net = copy.deepcopy(model.net)
    modules = dict(net.named_modules())
    for p in net.parameters():
        p.requires_grad_(True)
    original = dict(model.net.named_modules())
    position = {id(m): name for name, m in original.items()}
    ignored = [modules[position[id(m)]] for m in model.ignored]
    ignored += [modules[k] for k, f in own.items() if f == 0.0 and k in modules]
    ratios = {modules[k]: f for k, f in own.items() if f > 0.0 and k in modules}
    before = _widths(net)
    try:
        pruner = tp.pruner.MagnitudePruner(net, model.example, importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=fraction, pruning_ratio_dict=ratios, ignored_layers=ignored)
        pruner.step()
        _run(net, model.feeds, model.names)
    except Exception as exc:
        raise UnsupportedError(f"Torch-Pruning could not prune this model: {type(exc).__name__}: {exc}"[:400]) from None
    after = _widths(net)
    layers = tuple(StructuredLayer(k, kind, w, after[k][1], None if k in {position[id(m)] for m in model.ignored}
                                   else own.get(k, fraction))
                   for k, (kind, w) in before.items() if k in after)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, layers


def export(model: Prunable, net, dst: str | Path) -> None:
    """Export a pruned module to ONNX (dynamic dims kept, the original's output names), checked against the module."""
    import onnx
    import torch

    dims: dict[str, object] = {}  # one Dim per symbolic name, shared across inputs

    def dim(spec_name: str, i: int, d) -> object:
        key = d if isinstance(d, str) else f"{spec_name}_{i}"
        if key not in dims:
            ident = re.sub(r"\W", "_", key)
            dims[key] = torch.export.Dim(ident if ident[:1].isalpha() else "d_" + ident)
        return dims[key]

    sig, names = model.sig, model.names
    dynamic = {spec.name: ({i: dim(spec.name, i, d) for i, d in enumerate(spec.shape or ()) if not isinstance(d, int)} or None)
               for spec in sig.inputs}
    with quiet():  # torch.onnx's progress lines and warnings
        program = torch.onnx.export(net, model.example, dynamo=True, input_names=names, output_names=sig.output_names,
                                    dynamic_shapes=tuple(dynamic[n] for n in names), verbose=False)
    proto = program.model_proto
    _rename_outputs(proto, sig.output_names)
    onnx.save(proto, str(dst))
    _check_export(dst, net, model.feeds, names)


def structured_prune(src: str | Path, dst: str | Path, fraction: float, work: str | Path,
                     feeds: dict[str, np.ndarray]) -> tuple[tuple[StructuredLayer, ...], list[str]]:
    """Remove ``fraction`` of the output channels of every prunable layer; write ONNX to ``dst``.

    Args:
        src: the ONNX model.
        dst: where the pruned ONNX model goes.
        fraction: share of channels / neurons removed per layer, in (0, 1).
        work: a scratch directory.
        feeds: example inputs (batch >= 2 when the batch dim is dynamic).

    Returns (per-layer widths, notes).
    """
    if not 0.0 < fraction < 1.0:
        raise BadInputError(f"prune fraction must be in (0, 1), got {fraction}")
    model = load(src, work, feeds)
    net, layers = prune(model, fraction)
    if all(layer.width_after == layer.width_before for layer in layers):
        raise BadInputError("nothing to prune: every Conv/Linear layer produces a model output")
    export(model, net, dst)
    return layers, model.notes


def _check_export(path: str | Path, net, feeds: dict[str, np.ndarray], names: list[str]) -> None:
    """The re-exported ONNX model computes what the pruned module does (same shapes, same values)."""
    import onnxruntime as ort

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    want = [o.numpy() for o in _run(net, feeds, names)]
    if len(got) != len(want) or not all(a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-5)
                                        for a, b in zip(got, want)):
        raise UnsupportedError("the pruned model re-exported to ONNX does not compute what the pruned PyTorch "
                               "module does")
