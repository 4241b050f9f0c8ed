"""The torch-computed INT4 recipe (embedc.int4): AutoRound / INC GPTQ codes
computed once on the calibration split (a cached stage), written into each
backend's INT4 form (ORT MatMulNBits, OpenVINO i4 constants, TensorRT
blockwise DequantizeLinear run through ORT), each meeting the int4 parity
floor on the scaled tiny model, while the same writers fed deliberately
broken codes (2-bit levels) miss it; the stage is reused; a missing
auto-round is one line with the install hint; options are checked at spec
time."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from embedc.errors import MissingDependencyError, TargetError
from helpers import cosines, embed, floor_of, meets_floor

pytest.importorskip("auto_round")

# small enough for CI (2 cores): 6 sign-gradient steps on 8 windows of 32 tokens
FAST = {"iters": 6, "nsamples": 8, "seqlen": 32}


def _scaled_torch(tiny_source):
    """The torch twin of conftest's scaled_reference: every Linear weight x10 (so int4 matters)."""
    import torch

    from embedc.families import load_embedder
    from helpers import LINEAR_WEIGHT_SCALE

    embedder, tokenizer, _ = load_embedder(tiny_source)
    with torch.no_grad():
        for m in embedder.encoder.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(LINEAR_WEIGHT_SCALE)
    return embedder.encoder, tokenizer


@pytest.fixture(scope="module")
def stage(tiny_source, tmp_path_factory):
    """A fetch callable as the artifact job builds it (a StageCache in tmp), counting computations."""
    from embedc.build.cache import StageCache
    from embedc.int4.stage import cached_int4_weights

    cache = StageCache(tmp_path_factory.mktemp("stages"))
    calls = {"loads": 0, "feeds": None}

    def load():
        calls["loads"] += 1
        return _scaled_torch(tiny_source)

    def fetch(settings):
        return cached_int4_weights(cache, export_key="scaled-tiny", calibration_hash="calib", settings=settings,
                                   load_model=load, feeds=calls["feeds"])
    fetch.calls = calls
    return fetch


@pytest.fixture()
def ctx(scaled_context, stage):
    stage.calls["feeds"] = scaled_context.calibration
    return dataclasses.replace(scaled_context, int4_weights=stage)


def _compile(backend, target_name, ctx, out, **options):
    target = next(t for t in backend.targets if t.name == target_name)
    resolved = backend.resolve_options(target, "int4", {**FAST, **options})
    res = backend.compile(target, "int4", dataclasses.replace(ctx, options=resolved), out)
    return res, backend.load(out, {"model_file": res.model_file}, threads=1)


def _cos(runner, scaled_eval):
    batches, ref = scaled_eval
    return cosines(ref, embed(runner, batches))


def _break(stage_fetch, monkeypatch):
    """Make the stage hand out 2-bit codes (q rounded to multiples of 4): a broken rounding."""
    import embedc.int4 as int4

    real = int4.weights_for

    def broken(ctx, options):
        layers, info = real(ctx, options)
        return {k: {"q": (np.rint(d["q"] / 4.0) * 4).clip(-8, 7).astype(np.int8), "scale": d["scale"]}
                for k, d in layers.items()}, info
    monkeypatch.setattr(int4, "weights_for", broken)


# ---- ORT: MatMulNBits from the codes -------------------------------------------------------------
def test_ort_autoround_meets_the_floor_and_records_the_recipe(ctx, scaled_eval, tmp_path):
    import onnx

    from embedc.targets.ort.backend import BACKEND

    res, runner = _compile(BACKEND, "ort-cpu-avx2", ctx, tmp_path / "ort", algorithm="autoround")
    cos = _cos(runner, scaled_eval)
    assert meets_floor(cos, "int4"), (cos.mean(), cos.min(), floor_of("int4"))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "ort" / res.model_file)).graph.node]
    assert ops.count("MatMulNBits") == 12 and "MatMul" in ops  # 12 Linear layers; QK^T / attn x V stay MatMul
    r = res.recipe
    assert r["int4_weights"]["algorithm"] == "autoround" and r["int4_weights"]["calibration_sha256"] == "calib"
    assert r["int4_weights"]["settings"]["iters"] == FAST["iters"] and r["int4_weights"]["settings"]["group_size"] == 32
    assert r["size_ratio"] < 0.2 and r["weight_match_cosine_min"] > 0.95


def test_ort_writer_with_broken_rounding_misses_the_floor(ctx, scaled_eval, tmp_path, monkeypatch):
    from embedc.targets.ort.backend import BACKEND

    _break(ctx.int4_weights, monkeypatch)
    _, runner = _compile(BACKEND, "ort-cpu-avx2", ctx, tmp_path / "broken", algorithm="autoround")
    cos = _cos(runner, scaled_eval)
    assert not meets_floor(cos, "int4"), (cos.mean(), cos.min())


def test_matmulnbits_packing_is_exact():
    """Codes and scales written as MatMulNBits reproduce q * scale through ORT (padding K included)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from embedc.int4.ort import pack_matmulnbits

    rng = np.random.default_rng(0)
    k, n, block = 48, 8, 32  # K not a multiple of the block
    q = rng.integers(-8, 8, (k, n)).astype(np.int8)
    s = rng.uniform(-0.1, 0.1, (2, n)).astype(np.float32)
    b, scales = pack_matmulnbits(q, s, block)
    node = helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
                          [numpy_helper.from_array(b, "b"), numpy_helper.from_array(scales, "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    x = rng.standard_normal((3, k)).astype(np.float32)
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = x @ (q.astype(np.float32) * np.repeat(s, block, axis=0)[:k])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert onnx.checker.check_model(m) is None


# ---- OpenVINO: i4 constants from the codes ------------------------------------------------------------
def test_openvino_autoround_meets_the_floor(ctx, scaled_eval, tmp_path):
    pytest.importorskip("openvino")
    from embedc.targets.openvino.backend import BACKEND

    res, runner = _compile(BACKEND, "openvino-cpu", ctx, tmp_path / "ov", algorithm="autoround")
    cos = _cos(runner, scaled_eval)
    assert meets_floor(cos, "int4"), (cos.mean(), cos.min())
    xml = (tmp_path / "ov" / res.model_file).read_text()
    assert xml.count('element_type="i4"') == 12 and 'element_type="i8"' in xml  # Linears int4, table int8
    assert res.recipe["int4_weights"]["settings"]["algorithm"] == "autoround"


def test_openvino_writer_with_broken_rounding_misses_the_floor(ctx, scaled_eval, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from embedc.targets.openvino.backend import BACKEND

    _break(ctx.int4_weights, monkeypatch)
    _, runner = _compile(BACKEND, "openvino-cpu", ctx, tmp_path / "ov-broken", algorithm="autoround")
    assert not meets_floor(_cos(runner, scaled_eval), "int4")


# ---- TensorRT: blockwise DequantizeLinear from the codes, run through ORT ----------------------------------
def test_tensorrt_autoround_meets_the_floor(ctx, scaled_eval, tmp_path):
    import onnx
    from onnx import numpy_helper

    from embedc.targets.tensorrt.backend import BACKEND

    res, runner = _compile(BACKEND, "tensorrt-sm90", ctx, tmp_path / "trt", algorithm="autoround", search=False)
    cos = _cos(runner, scaled_eval)
    assert meets_floor(cos, "int4"), (cos.mean(), cos.min())
    model = onnx.load(str(tmp_path / "trt" / res.model_file))
    inits = {i.name: i for i in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.name.endswith("_dq_int4")]
    assert len(dqs) == 12
    assert all((numpy_helper.to_array(inits[n.input[1]]) > 0).all() for n in dqs)  # TensorRT: scale > 0
    assert res.recipe["int4_weights"]["algorithm"] == "autoround"


def test_tensorrt_writer_with_broken_rounding_misses_the_floor(ctx, scaled_eval, tmp_path, monkeypatch):
    from embedc.targets.tensorrt.backend import BACKEND

    _break(ctx.int4_weights, monkeypatch)
    _, runner = _compile(BACKEND, "tensorrt-sm90", ctx, tmp_path / "trt-broken", algorithm="autoround", search=False)
    assert not meets_floor(_cos(runner, scaled_eval), "int4")


# ---- layers kept out of 4 bits -------------------------------------------------------------------------
KEPT = "attention.self.value"  # 2 of the tiny model's 12 Linears


def test_excluded_layers_are_computed_around_and_stored_in_8_bits(ctx, stage, scaled_eval, tmp_path):
    """``exclude`` with a torch algorithm: the named Linears are left out of the AutoRound computation
    (no codes; another stage entry, whose other codes differ because AutoRound tuned them around the
    full-precision layers), then stored 8-bit by ORT and OpenVINO and FP16 by TensorRT; each artifact
    meets the int4 floor."""
    import onnx
    from onnx import helper

    from embedc.int4.compute import Int4Settings, load_layers
    from embedc.targets.openvino.backend import BACKEND as OV
    from embedc.targets.ort.backend import BACKEND as ORT
    from embedc.targets.tensorrt.backend import BACKEND as TRT

    res, runner = _compile(ORT, "ort-cpu-avx2", ctx, tmp_path / "ort", algorithm="autoround", exclude=KEPT)
    assert meets_floor(_cos(runner, scaled_eval), "int4")
    info = res.recipe["int4_weights"]
    kept = info["settings"]["keep"]
    assert len(kept) == 2 and all(k.endswith(KEPT) for k in kept)
    bits = [helper.get_attribute_value(a) for n in onnx.load(str(tmp_path / "ort" / res.model_file)).graph.node
            if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"]
    assert sorted(bits) == [4] * 10 + [8] * 2

    with_keep = load_layers(stage(Int4Settings(**FAST, keep=tuple(kept)))[0] / "layers.npz")
    without = load_layers(stage(Int4Settings(**FAST))[0] / "layers.npz")
    assert set(without) - set(with_keep) == set(kept) and len(with_keep) == 10
    assert any(not np.array_equal(with_keep[k]["q"], without[k]["q"]) for k in with_keep)
    # neural-compressor's GPTQ keeps them out the same way (its error feedback runs through them in fp32)
    gptq, info_gptq = stage(Int4Settings(**FAST, algorithm="gptq-inc", keep=tuple(kept)))
    assert info_gptq["layers"] == 10 and not set(kept) & set(load_layers(gptq / "layers.npz"))

    res, runner = _compile(OV, "openvino-cpu", ctx, tmp_path / "ov", algorithm="autoround", exclude=KEPT)
    assert meets_floor(_cos(runner, scaled_eval), "int4")
    xml = (tmp_path / "ov" / res.model_file).read_text()
    assert xml.count('element_type="i4"') == 10 and xml.count('element_type="i8"') == 3  # + the table
    assert res.recipe["int4_weights"]["stage_key"] == info["stage_key"]  # one computation for both backends
    assert [e["module"] for e in res.recipe["excluded"]] == kept

    # NNCF's own int4 takes the same option as its ignored_scope (those MatMuls stay FP32)
    def u4_constants(out, **extra):
        res, _ = _compile(OV, "openvino-cpu", ctx, tmp_path / out, ratio=1.0, scale_estimation=False, **extra)
        return res, (tmp_path / out / res.model_file).read_text().count('element_type="u4"')  # int4_asym

    res, with_exclude = u4_constants("ov-nncf", exclude=KEPT)
    assert res.recipe["ignored_scope"]["nodes"] == 2
    assert 0 < with_exclude < u4_constants("ov-nncf-all")[1]

    res, runner = _compile(TRT, "tensorrt-sm90", ctx, tmp_path / "trt", algorithm="autoround", exclude=KEPT,
                           search=False)
    assert meets_floor(_cos(runner, scaled_eval), "int4")
    dqs = [n for n in onnx.load(str(tmp_path / "trt" / res.model_file)).graph.node if n.name.endswith("_dq_int4")]
    assert len(dqs) == 10


# ---- the stage ---------------------------------------------------------------------------------------
def test_stage_computes_once_per_settings_and_is_reused(ctx, stage, tmp_path, monkeypatch):
    from embedc.int4.compute import Int4Settings

    settings = Int4Settings(**FAST)
    stage.calls["feeds"] = ctx.calibration
    before = stage.calls["loads"]
    first, info1 = stage(settings)
    again, info2 = stage(settings)
    assert first == again and info2["reused"] is True
    assert stage.calls["loads"] - before <= 1  # computed at most once here (earlier tests may have done it)
    assert info1["stage_key"] == info2["stage_key"]
    # other settings are another entry (INC's GPTQ: the second choice, and quick)
    monkeypatch.chdir(tmp_path)  # neural-compressor's default workspace is ./nc_workspace/<time>/
    other, info3 = stage(dataclasses.replace(settings, algorithm="gptq-inc"))
    assert list(tmp_path.iterdir()) == []  # nothing written into the caller's working folder
    assert other != first and info3["reused"] is False and info3["stage_key"] != info1["stage_key"]
    assert info3["algorithm"] == "gptq-inc" and info3["layers"] == 12


# ---- errors --------------------------------------------------------------------------------------------
def test_missing_auto_round_is_one_line_with_the_install_hint(ctx, tmp_path, monkeypatch):
    from embedc.targets.ort.backend import BACKEND

    monkeypatch.setitem(sys.modules, "auto_round", None)  # import auto_round -> ImportError
    with pytest.raises(MissingDependencyError) as err:
        _compile(BACKEND, "ort-cpu-avx2", ctx, tmp_path / "x", algorithm="autoround", iters=999)
    assert "pip install 'embedc[int4]'" in str(err.value) and "\n" not in str(err.value)
    assert "auto-round" in str(err.value)


@pytest.mark.parametrize("backend_mod, target", [("embedc.targets.ort.backend", "ort-cpu"),
                                                 ("embedc.targets.openvino.backend", "openvino-cpu"),
                                                 ("embedc.targets.tensorrt.backend", "tensorrt-sm90")])
def test_algorithm_options_are_checked_at_spec_time(backend_mod, target):
    import importlib

    backend = importlib.import_module(backend_mod).BACKEND
    t = next(x for x in backend.targets if x.name == target)
    for algo in ("autoround", "gptq-inc", "AutoRound"):
        assert backend.resolve_options(t, "int4", {"algorithm": algo})["algorithm"] in ("autoround", "gptq-inc")
    with pytest.raises(TargetError, match="autoround"):
        backend.resolve_options(t, "int4", {"algorithm": "auto-round"})
    with pytest.raises(TargetError, match="iters"):
        backend.resolve_options(t, "int4", {"algorithm": "autoround", "iters": 0})


def test_spec_time_combinations():
    from embedc.targets.ort.backend import BACKEND as ORT
    from embedc.targets.tensorrt.backend import BACKEND as TRT

    with pytest.raises(TargetError, match="auto_exclude"):
        ORT.resolve_options(ORT.targets[0], "int4", {"algorithm": "autoround", "auto_exclude": 4})
    with pytest.raises(TargetError, match="positive scales"):
        TRT.resolve_options(TRT.targets[0], "int4", {"algorithm": "autoround", "full_range": True})


def test_artifact_job_hands_backends_the_cached_stage(monkeypatch, tmp_path):
    """The artifact job's CompileContext.int4_weights calls the stage with this build's export key,
    calibration hash and feeds (one computation per build inputs, whichever backend asks)."""
    from types import SimpleNamespace

    import embedc.int4.stage as stage_mod
    from embedc.build.artifact_job import _int4_weights
    from embedc.int4.compute import Int4Settings

    seen = {}
    monkeypatch.setattr(stage_mod, "cached_int4_weights", lambda cache, **kw: seen.update(kw, cache=cache) or "hit")
    job = SimpleNamespace(cache_root=str(tmp_path), export_dir=str(tmp_path / "export" / "abc123"),
                          summary={"calibration": {"sha256": "c0ffee"}}, calibration=("feed",),
                          source={"name": "m", "kind": "local"}, source_dir=str(tmp_path))
    assert _int4_weights(job)(Int4Settings()) == "hit"
    assert seen["export_key"] == "abc123" and seen["calibration_hash"] == "c0ffee" and seen["feeds"] == ("feed",)
    assert seen["settings"] == Int4Settings() and callable(seen["load_model"])
    assert seen["cache"].root == tmp_path


@pytest.mark.parametrize("model, bidirectional", [("random-tiny-pplx", True), ("random-tiny-qwen3-embedding", False)])
def test_torch_calibration_runs_the_decoder_in_its_attention_mode(model, bidirectional):
    """AutoRound and neural-compressor call the HF body with a 2-D mask: the loader makes that call
    run the way the artifact runs (a bidirectional decoder's first token sees the last one)."""
    import torch

    from embedc.families import load_embedder
    from embedc.int4.stage import source_loader
    from embedc.models import resolve_model

    source = resolve_model(model)
    hf, _ = source_loader(source)()
    ids = torch.tensor([[11, 12, 13, 14, 15, 16]])
    other = ids.clone()
    other[0, -1] = 17
    mask = torch.ones_like(ids)
    with torch.no_grad():
        first = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        second = hf(input_ids=other, attention_mask=mask).last_hidden_state
        embedder, _, adapter = load_embedder(source)
        want = embedder.family.hidden_states(embedder.encoder, ids, mask, adapter)
    torch.testing.assert_close(first, want)     # exactly what export and reference compute
    assert (not torch.allclose(first[0, 0], second[0, 0])) == bidirectional
