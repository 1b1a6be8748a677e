"""Models above the external-data threshold (issue 11, "Large models"), proven small.

The mechanism that lets every command work on ONNX files whose weights exceed protobuf's 2 GiB limit
(weights memory-mapped from external data, never copied into a protobuf; outputs written with external
data and torch weights as safetensors shards; the two sides of a parity check one after the other) starts
above ``MODELPORT_EXTERNAL_DATA_THRESHOLD`` bytes. The tests lower it to 64 KiB and use MLPs of a few
hundred KiB, so every large-model path runs in seconds; benchmarks/large_models.py runs the same commands
on 2 GiB and 4+ GiB models and measures their peak memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

THRESHOLD = 64 * 1024
WIDTH = 96  # 96x96 float32 = 36 KiB per weight: three of them exceed the threshold, each alone does not


def _mlp(path: Path, width: int = WIDTH, layers: int = 3, seed: int = 0) -> Path:
    """MatMul+Add+Relu layers (the last MatMul alone), saved by onnx with every tensor in external data."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        last = i == layers - 1
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], ["y" if last else f"m{i}"], name=f"fc{i}"))
        if not last:
            inits.append(numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, f"b{i}"))
            nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"bias{i}"))
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"], name=f"relu{i}"))
            x = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    return path


@pytest.fixture
def large(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MODELPORT_EXTERNAL_DATA_THRESHOLD", str(THRESHOLD))
    return _mlp(tmp_path / "src" / "mlp.onnx")


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _x(n: int = 4) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, WIDTH)).astype(np.float32)


def _one_line(err: str, *fragments: str) -> str:
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, err
    assert line.startswith("modelport: error: "), line
    for frag in fragments:
        assert frag in line, line
    return line


# --------------------------------------------------------------------------- the mechanism


def test_external_tensors_are_memory_mapped_and_released(large):
    from modelport.formats import onnx_data

    bare = onnx.load(str(large), load_external_data=False)
    full = onnx.load(str(large))
    assert onnx_data.has_external(bare) and onnx_data.weight_bytes(bare) > THRESHOLD
    assert onnx_data.is_large(large)
    for t_bare, t_full in zip(bare.graph.initializer, full.graph.initializer):
        arr = onnx_data.array(t_bare, large.parent)
        assert isinstance(arr, np.memmap) and onnx_data.is_mapped(arr.T)  # a view of a map is still mapped
        np.testing.assert_array_equal(arr, numpy_helper.to_array(t_full))
        onnx_data.release(arr)  # pages given back: the values read again from the file, unchanged
        np.testing.assert_array_equal(arr, numpy_helper.to_array(t_full))
    assert not onnx_data.is_mapped(numpy_helper.to_array(full.graph.initializer[0]))


def test_threshold_decides_and_save_copies_external_tensors(large, tmp_path, monkeypatch):
    from modelport.formats import onnx_data

    bare = onnx.load(str(large), load_external_data=False)
    out = tmp_path / "copy" / "m.onnx"
    out.parent.mkdir()
    assert onnx_data.save(bare, out, base_dir=large.parent) is True
    assert (out.parent / "m.onnx.data").is_file()
    info = {e.key: e.value for e in onnx.load(str(out), load_external_data=False).graph.initializer[0].external_data}
    assert info["location"] == "m.onnx.data" and int(info.get("offset", 0)) % 4096 == 0
    np.testing.assert_array_equal(_run(out, _x()), _run(large, _x()))
    monkeypatch.setenv("MODELPORT_EXTERNAL_DATA_THRESHOLD", str(10 << 20))  # above the weights: embedded
    assert not onnx_data.is_large(large)
    small = tmp_path / "copy" / "embedded.onnx"
    assert onnx_data.save(onnx.load(str(large), load_external_data=False), small, base_dir=large.parent) is False
    assert not onnx_data.file_has_external(small)
    np.testing.assert_array_equal(_run(small, _x()), _run(large, _x()))


def test_safetensors_shards_stream_from_maps_and_load_mapped(large, tmp_path):
    import torch

    from modelport.formats import onnx_data, safetensors_io
    from modelport.to_torch import weights as torch_weights

    bare = onnx.load(str(large), load_external_data=False)
    w = onnx_data.array(bare.graph.initializer[0], large.parent)
    state = {"a.weight": w.T, "b.weight": w, "c.bias": np.arange(5, dtype=np.float32), "d.n": np.array(3, np.int64)}
    weights = tmp_path / "st" / "weights.safetensors"
    weights.parent.mkdir()
    files = torch_weights.save(state, weights, shard_bytes=w.nbytes + 64)
    assert len(files) == 3 and safetensors_io.is_sharded(weights) and not weights.exists()
    loaded = safetensors_io.load(weights)
    assert set(loaded) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(loaded[k].numpy(), np.asarray(v))
    assert loaded["d.n"].dtype == torch.int64 and loaded["a.weight"].is_contiguous()
    from safetensors.torch import load_file  # each shard is a plain safetensors file

    first = load_file(str(files[0]))
    np.testing.assert_array_equal(first["a.weight"].numpy(), np.ascontiguousarray(w.T))


# --------------------------------------------------------------------------- every command above the threshold


def test_inspect_and_check_read_no_weights(large, cli):
    shutil.copyfile(large.with_name("mlp.onnx.data"), large.with_name("mlp.onnx.data.bak"))
    # The weights are never read: with their bytes replaced (same size), inspect and check say the same.
    res = cli("check", large, "--target", "onnxruntime-cpu", "--json")
    assert res.exit_code == 0, res.stderr
    before = json.loads(res.stdout)
    data = large.with_name("mlp.onnx.data")
    data.write_bytes(b"\xff" * data.stat().st_size)
    res = cli("check", large, "--target", "onnxruntime-cpu", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["problems"] == before["problems"] == []
    assert not any("shape inference failed" in n for n in json.loads(res.stdout)["notes"])
    res = cli("inspect", large, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["params"] == 3 * WIDTH * WIDTH + 2 * WIDTH


def test_convert_to_torch_writes_shards_and_verifies_in_turn(large, tmp_path, cli):
    import torch

    out = tmp_path / "torch_out"
    res = cli("convert", large, "--to", "torch", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True and len(report["parity"]["runs"]) == 2
    shards = sorted(p.name for p in out.glob("weights-*.safetensors"))
    assert len(shards) >= 2 and (out / "weights.safetensors.index.json").is_file()
    assert not (out / "weights.safetensors").exists()
    index = json.loads((out / "weights.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    from modelport.formats.torch_dir import load_module

    net = load_module(out)  # the generated code with plain torch, weights mapped from the shards
    x = _x()
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _run(large, x), rtol=1e-4, atol=1e-5)
    meta = json.loads((out / "modelport_torch.json").read_text())
    import hashlib

    assert meta["source_sha256"] == hashlib.sha256(large.read_bytes()).hexdigest()


def test_compress_dynamic_matches_onnxruntimes_quantizer(large, tmp_path, cli):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path / "q" / "mlp.int8.onnx"
    res = cli("compress", large, "--quantize", "dynamic", "-o", out, "--json", "--runs", "0")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert any("memory-mapped" in n for n in report["notes"])
    assert (out.parent / "mlp.int8.onnx.data").is_file() and sorted(p.name for p in out.parent.iterdir()) == [
        "mlp.int8.onnx", "mlp.int8.onnx.data"]
    assert report["after"]["file_bytes"] < 0.5 * report["before"]["file_bytes"]
    ops = [n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node]
    assert ops.count("MatMulInteger") == 3 and "MatMul" not in ops
    # the same model through onnxruntime's own quantizer (embedded weights, below its limit): the same outputs
    embedded = tmp_path / "ort" / "mlp.onnx"
    embedded.parent.mkdir()
    onnx.save(onnx.load(str(large)), str(embedded))
    ref = tmp_path / "ort" / "mlp.int8.onnx"
    from modelport.quiet import quiet

    with quiet():
        quantize_dynamic(str(embedded), str(ref), per_channel=True, weight_type=QuantType.QInt8)
    x = _x()
    np.testing.assert_array_equal(_run(out, x), _run(ref, x))
    assert 0 < np.abs(_run(out, x) - _run(large, x)).max() < 0.1  # quantized: close, not equal


def test_adapt_opset_writes_external_data_named_for_the_output(large, tmp_path, cli):
    out = tmp_path / "a" / "mlp13.onnx"
    res = cli("adapt", large, "--opset", "13", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["parity"]["ok"] is True
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlp13.onnx", "mlp13.onnx.data"]
    moved = tmp_path / "elsewhere"
    shutil.move(str(out.parent), str(moved))  # the pair is self-contained: nothing points back at the source
    shutil.rmtree(large.parent)
    model = onnx.load(str(moved / "mlp13.onnx"), load_external_data=False)
    assert next(o.version for o in model.opset_import if o.domain == "") == 13
    assert _run(moved / "mlp13.onnx", _x()).shape == (4, WIDTH)


def test_verify_and_bench_take_a_large_model(large, tmp_path, cli):
    out = tmp_path / "a" / "mlp13.onnx"
    assert cli("adapt", large, "--opset", "13", "-o", out).exit_code == 0
    res = cli("verify", large, out, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"] is True, res.stderr


# --------------------------------------------------------------------------- bad input


def test_truncated_external_data_is_a_clean_error(large, tmp_path, cli):
    data = large.with_name("mlp.onnx.data")
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    for args in (("convert", large, "--to", "torch", "-o", tmp_path / "t"),
                 ("compress", large, "--quantize", "dynamic", "-o", tmp_path / "q.onnx"),
                 ("compress", large, "--quantize", "int4", "-o", tmp_path / "q4.onnx"),
                 ("compress", large, "--quantize", "fp16", "-o", tmp_path / "h.onnx"),
                 ("compress", large, "--prune", "0.5", "-o", tmp_path / "p.onnx"),
                 ("convert", large, "--to", "openvino", "-o", tmp_path / "ov.xml"),
                 ("adapt", large, "--opset", "13", "-o", tmp_path / "a.onnx")):
        res = cli(*args)
        assert res.exit_code == 2, (args, res.stderr)
        _one_line(res.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing half-written


def test_modes_that_would_load_the_weights_are_refused(large, tmp_path, cli):
    # (static int8 works above the threshold: tests/test_compress_static_large.py)
    res = cli("compress", large, "--prune", "0.3", "--structured", "-o", tmp_path / "q.onnx")
    assert res.exit_code == 3, res.stderr
    _one_line(res.stderr, "structured pruning", str(THRESHOLD), "static, int4 or fp16 and unstructured --prune are")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_bad_threshold_value(large, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("MODELPORT_EXTERNAL_DATA_THRESHOLD", "two gigs")
    res = cli("convert", large, "--to", "torch", "-o", tmp_path / "t")
    assert res.exit_code == 2
    _one_line(res.stderr, "MODELPORT_EXTERNAL_DATA_THRESHOLD", "two gigs")


def test_corrupt_shards_are_clean_errors(large, tmp_path, cli):
    from modelport.errors import BadInputError
    from modelport.formats import safetensors_io

    out = tmp_path / "torch_out"
    assert cli("convert", large, "--to", "torch", "-o", out).exit_code == 0
    index = out / "weights.safetensors.index.json"
    shard = sorted(out.glob("weights-*.safetensors"))[0]
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2])  # the header promises more bytes than there are
    with pytest.raises(BadInputError, match="outside the file"):
        safetensors_io.load(out / "weights.safetensors")
    shard.write_bytes(raw)
    doc = json.loads(index.read_text())
    doc["weight_map"][next(iter(doc["weight_map"]))] = "../escape.safetensors"
    index.write_text(json.dumps(doc))
    res = cli("inspect", out)
    assert res.exit_code == 2
    _one_line(res.stderr, "outside its directory")


# --------------------------------------------------------------------------- int4, fp16, pruning above the threshold


def _same_model(a: Path, b: Path) -> int:
    """Two ONNX files hold the same graph and bit-identical tensors (external data loaded); how many tensors."""
    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    ta = {t.name: numpy_helper.to_array(t) for t in ma.graph.initializer}
    tb = {t.name: numpy_helper.to_array(t) for t in mb.graph.initializer}
    assert list(ta) == list(tb)
    for name, arr in ta.items():
        assert arr.dtype == tb[name].dtype and arr.shape == tb[name].shape, name
        assert arr.tobytes() == tb[name].tobytes(), name

    def nodes(m):
        return [(n.op_type, n.domain, n.name, list(n.input), list(n.output),
                 [(x.name, helper.get_attribute_value(x)) for x in n.attribute]) for n in m.graph.node]

    assert nodes(ma) == nodes(mb)
    assert sorted((o.domain, o.version) for o in ma.opset_import) == sorted((o.domain, o.version) for o in mb.opset_import)
    assert [i.name for i in ma.graph.input] == [i.name for i in mb.graph.input]
    assert [(o.name, o.type.tensor_type.elem_type) for o in ma.graph.output] == [
        (o.name, o.type.tensor_type.elem_type) for o in mb.graph.output]
    return len(ta)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 1000 bytes: every weight is read and written in many pieces (slabs of 2 columns for int4)."""
    from modelport.compress import large as big

    monkeypatch.setattr(big, "_BLOCK_BYTES", 1000)


def test_int4_chunked_is_byte_identical_to_the_quantizer(tmp_path, monkeypatch, small_blocks, cli):
    monkeypatch.setenv("MODELPORT_EXTERNAL_DATA_THRESHOLD", str(THRESHOLD))
    src = _mlp(tmp_path / "src" / "mlp.onnx", width=100)  # K = 100: the last block of 32 is padded
    out = tmp_path / "q" / "mlp.int4.onnx"
    res = cli("compress", src, "--quantize", "int4", "-o", out, "--json", "--runs", "0")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert any("a block at a time" in n for n in report["notes"]), report["notes"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlp.int4.onnx", "mlp.int4.onnx.data"]
    from modelport.compress import quantize as quant

    ref = tmp_path / "ref" / "mlp.int4.onnx"
    ref.parent.mkdir()
    assert quant.quantize_int4(src, ref) == 3  # onnxruntime's MatMulNBitsQuantizer on the whole model in memory
    assert _same_model(out, ref) == 8
    ops = [n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 3 and "MatMul" not in ops
    x = np.random.default_rng(3).standard_normal((4, 100)).astype(np.float32)
    got = ort_run(out, x)
    np.testing.assert_array_equal(got, ort_run(ref, x))
    assert 0 < np.abs(got - ort_run(src, x)).max() < 0.5
    from modelport.compress import large as big  # a layer left in float (what accuracy control asks for)

    assert big.quantize_int4(src, tmp_path / "q" / "kept.onnx", exclude={"fc1"}) == 2
    assert quant.quantize_int4(src, tmp_path / "ref" / "kept.onnx", exclude={"fc1"}) == 2
    assert _same_model(tmp_path / "q" / "kept.onnx", tmp_path / "ref" / "kept.onnx") == 7


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_fp16_chunked_is_byte_identical_and_verified(large, tmp_path, small_blocks, cli):
    out = tmp_path / "h" / "mlp.fp16.onnx"
    res = cli("compress", large, "--quantize", "fp16", "-o", out, "--json", "--runs", "0")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["parity"]["ok"] is True and len(report["parity"]["runs"]) >= 1
    assert any("a block at a time" in n for n in report["notes"])
    from modelport.compress import fp16

    ref = tmp_path / "ref" / "mlp.fp16.onnx"
    ref.parent.mkdir()
    fp16.convert_fp16(large, ref)
    assert _same_model(out, ref) == 5
    types = {t.name: t.data_type for t in onnx.load(str(out), load_external_data=False).graph.initializer}
    assert types["w0"] == TensorProto.FLOAT16 and (out.parent / "mlp.fp16.onnx.data").stat().st_size < large.with_name(
        "mlp.onnx.data").stat().st_size
    x = _x()
    assert ort_run(out, x).dtype == np.float32  # float32 inputs/outputs kept
    np.testing.assert_array_equal(ort_run(out, x), ort_run(ref, x))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_chunked_matches_the_in_memory_pass(large, tmp_path, small_blocks, scope):
    from modelport.compress import large as big, prune

    out = tmp_path / "p" / "mlp.onnx"
    out.parent.mkdir()
    got = big.magnitude_prune(large, out, 0.6, scope=scope, fractions={"fc1": 0.25})
    model = onnx.load(str(large))
    want = prune.magnitude_prune(model, 0.6, scope=scope, fractions={"fc1": 0.25})
    assert got == want
    ref = tmp_path / "p" / "ref.onnx"
    onnx.save(model, str(ref))
    assert _same_model(out, ref) == 5
    fc1 = next(layer for layer in got if layer.node == "fc1")
    assert fc1.fraction == 0.25 and abs(fc1.sparsity_after - 0.25) < 1e-3


def test_prune_ties_zero_exactly_k_smallest(tmp_path, monkeypatch, small_blocks):
    """Weights of a few levels (ties everywhere): exactly floor(f * n) zeros, none larger than a kept value."""
    from modelport.compress import large as big

    monkeypatch.setenv("MODELPORT_EXTERNAL_DATA_THRESHOLD", str(THRESHOLD))
    src = _mlp(tmp_path / "src" / "mlp.onnx")
    model = onnx.load(str(src))
    for t in model.graph.initializer:
        if len(t.dims) == 2:
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array((np.round(a * 30) / 30).astype(np.float32), t.name))  # steps of 1/30: ties
    tied = tmp_path / "tied" / "mlp.onnx"
    tied.parent.mkdir()
    onnx.save(model, str(tied), save_as_external_data=True, location="mlp.onnx.data", size_threshold=0)
    for scope in ("layer", "global"):
        out = tmp_path / scope / "mlp.onnx"
        out.parent.mkdir()
        layers = big.magnitude_prune(tied, out, 0.45, scope=scope)
        before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tied)).graph.initializer}
        after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
        names = [layer.weight for layer in layers]
        zeroed = np.concatenate([np.abs(before[n][(after[n] == 0) & (before[n] != 0)]) for n in names])
        kept = np.concatenate([np.abs(after[n][after[n] != 0]) for n in names])
        assert zeroed.size and zeroed.max() <= kept.min()
        total = sum(before[n].size for n in names)
        if scope == "global":
            assert sum(int(np.count_nonzero(after[n] == 0)) for n in names) == int(0.45 * total)
        else:
            assert all(int(np.count_nonzero(after[n] == 0)) == int(0.45 * before[n].size) for n in names)
        for n in names:  # only zeros added: every other value unchanged
            np.testing.assert_array_equal(after[n][after[n] != 0], before[n][after[n] != 0])


def test_compress_prune_then_int4_through_the_cli(large, tmp_path, cli):
    out = tmp_path / "pq" / "mlp.pruned50.int4.onnx"
    res = cli("compress", large, "--prune", "0.5", "--prune-scope", "global", "--quantize", "int4", "-o", out,
              "--json", "--runs", "0")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert len(report["layers"]) == 3
    total = sum(layer["params"] for layer in report["layers"])
    assert abs(sum(layer["params"] * layer["sparsity_after"] for layer in report["layers"]) - total // 2) <= 1
    ops = [n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlp.pruned50.int4.onnx", "mlp.pruned50.int4.onnx.data"]
    assert ort_run(out, _x()).shape == (4, WIDTH)


def test_convert_to_openvino_above_the_threshold(large, tmp_path, cli):
    out = tmp_path / "ov" / "mlp.xml"
    res = cli("convert", large, "--to", "openvino", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True and len(report["parity"]["runs"]) == 2  # two sizes of the dynamic batch, in turn
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlp.bin", "mlp.xml"]
    assert (out.parent / "mlp.bin").stat().st_size >= onnx_data_weights(large)  # float32 weights in the .bin


def onnx_data_weights(path: Path) -> int:
    from modelport.formats import onnx_data

    return onnx_data.weight_bytes(onnx.load(str(path), load_external_data=False))


def test_tflite_above_two_gib_is_refused_before_converting(tmp_path, cli):
    """A 2.15 GiB weight in a sparse file (no disk used): refused from the protobuf alone, nothing written."""
    n = 24000
    src = tmp_path / "big" / "big.onnx"
    src.parent.mkdir()
    data = src.with_name("big.onnx.data")
    with open(data, "wb") as f:
        f.truncate(n * n * 4)
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[n, n])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", data.name), ("offset", "0"), ("length", str(n * n * 4))):
        e = t.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [t])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    out = tmp_path / "out" / "big.tflite"
    res = cli("convert", src, "--to", "tflite", "-o", out)
    assert res.exit_code == 3, res.stderr
    _one_line(res.stderr, "TFLite", str(n * n * 4), "2 GiB")
    assert not out.parent.exists() or not any(out.parent.iterdir())


# --------------------------------------------------------------------------- ONNX outputs above the threshold

MLP_PY = '''
import torch


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = (torch.nn.Linear(96, 96) for _ in range(3))

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))
'''


def test_torch_export_above_threshold_places_its_external_data_beside_the_output(large, tmp_path, cli):
    """torch.onnx names the data after the staged file; the output's data must be named for the output."""
    import torch

    (tmp_path / "mlp.py").write_text(MLP_PY)
    out = tmp_path / "out" / "mlp.onnx"
    res = cli("convert", f"{tmp_path / 'mlp.py'}:MLP", "--input", "x:4x96:float32", "--to", "onnx", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlp.onnx", "mlp.onnx.data"]
    from modelport.formats import onnx_data

    bare = onnx.load(str(out), load_external_data=False)
    assert onnx_data.data_files(bare) == ["mlp.onnx.data"] and onnx_data.weight_bytes(bare) > THRESHOLD
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlp_src", tmp_path / "mlp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = _x()
    import onnxruntime as ort

    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        want = mod.MLP()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    res = cli("inspect", out, "--json")  # the next command reads it where it was placed
    assert res.exit_code == 0, res.stderr


def test_data_in_several_files_becomes_one_file_named_for_the_destination(tmp_path):
    from modelport.formats import onnx_data

    src = _mlp(tmp_path / "one" / "m.onnx")
    model = onnx.load(str(src))
    staged = tmp_path / "stage" / "model.onnx"
    staged.parent.mkdir()
    onnx.save(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    before = onnx_data.data_files(onnx.load(str(staged), load_external_data=False))
    assert len(before) >= 3  # one file per tensor
    assert onnx_data.name_data_for(staged, "final.onnx") == [staged.parent / "final.onnx.data"]
    assert sorted(p.name for p in staged.parent.iterdir()) == ["final.onnx.data", "model.onnx"]
    final = tmp_path / "placed" / "final.onnx"
    final.parent.mkdir()
    staged.replace(final)
    (staged.parent / "final.onnx.data").replace(final.with_name("final.onnx.data"))
    x = _x()
    np.testing.assert_array_equal(_run(final, x), _run(src, x))
    # one file under another name: renamed, the model repointed
    again = tmp_path / "again" / "model.onnx"
    again.parent.mkdir()
    model = onnx.load(str(src))  # onnx.save above turned the tensors of ``model`` external
    onnx.save(model, str(again), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    assert onnx_data.name_data_for(again, "x.onnx") == [again.parent / "x.onnx.data"]
    assert onnx_data.data_files(onnx.load(str(again), load_external_data=False)) == ["x.onnx.data"]
    np.testing.assert_array_equal(_run(again, x), _run(src, x))
