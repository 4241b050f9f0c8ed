"""ONNX Runtime backend on the real tiny XLM-R export: every precision compiles,
loads in ORT with the reference's I/O, stays close to the reference ONNX, and
the files hold what each precision promises (QDQ / dynamic INT8 ops, an INT8
or INT4 embedding table, MatMulNBits); presets and option errors are exact."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from embedc.errors import ArtifactError, CompileError, TargetError  # noqa: E402
from embedc.targets.ort import graph as og  # noqa: E402
from embedc.targets.ort.backend import BACKEND, PRECISIONS, TARGETS, resolve_options  # noqa: E402
from helpers import compile_once, cosines, embed  # noqa: E402

TARGET = {t.name: t for t in TARGETS}
# minimum per-text cosine vs the reference ONNX on the tiny random model (measured:
# fp32 1.0, fp16 >0.99999, int8-dynamic >0.99998, int8-static >0.9999, int4 >0.9997)
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.9999, "int8-dynamic": 0.999, "int8-static": 0.999, "int4": 0.998}
# artifact size / reference size upper bounds (the 250k x 32 table is ~99% of the tiny model)
MAX_RATIO = {"fp32": 1.01, "fp16": 0.55, "int8-dynamic": 0.31, "int8-static": 0.31, "int4": 0.2}
_BUILT: dict = {}


@pytest.fixture()
def build(compile_context, tmp_path_factory):
    """Compile (target, precision, options) once per session; returns (out_dir, CompileResult)."""
    return compile_once(BACKEND, TARGET, compile_context, tmp_path_factory, _BUILT)


@pytest.fixture(scope="module")
def eval_batches(tiny_reference, tiny_tokenizer, tiny_splits):
    """Held-out texts in batches of 8, and the reference ONNX's FP32 embeddings."""
    from embedc.artifact import read_meta
    from embedc.calibration import PromptStyle, tokenize_batches

    meta = read_meta(tiny_reference)
    style = PromptStyle(meta["prefixes"]["query"], meta["prefixes"]["passage"])
    batches = tokenize_batches(tiny_tokenizer, style.apply_all(tiny_splits.evaluation), batch_size=8,
                               max_length=128, input_names=[i["name"] for i in meta["inputs"]])
    ref = BACKEND.load(tiny_reference, meta, threads=1)
    return batches, embed(ref, batches)


def _graph(out, res):
    return onnx.load(str(out / res.model_file))


def _ops(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


# ---- presets ------------------------------------------------------------------------------
def test_targets_are_presets_with_all_precisions():
    assert set(TARGET) == {"ort-cpu", "ort-cpu-avx2", "ort-cpu-avx512-vnni", "ort-cpu-arm64"}
    for t in TARGETS:
        assert t.backend == "ort" and t.device == "cpu" and t.precisions == PRECISIONS and t.description
    assert TARGET["ort-cpu-avx2"].settings["reduce_range"] is True
    assert TARGET["ort-cpu"].settings["reduce_range"] is True  # portable: must be safe without VNNI
    assert TARGET["ort-cpu-avx512-vnni"].settings["reduce_range"] is False
    arm = TARGET["ort-cpu-arm64"].settings
    assert (arm["activation_type"], arm["weight_type"], arm["activation_symmetric"]) == ("QInt8", "QInt8", True)


def test_registry_finds_the_ort_targets():
    from embedc.targets.registry import get_backend, get_target

    assert get_backend(get_target("ort-cpu-avx2")) is BACKEND


# ---- every precision compiles, loads, keeps I/O and stays close ----------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_precision_compiles_loads_and_matches_reference(build, precision, eval_batches, tiny_reference):
    out, res = build("ort-cpu-avx2", precision)
    batches, ref = eval_batches
    got = _graph(out, res).graph
    want = onnx.load(str(tiny_reference / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in got.input] == [i.name for i in want.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in got.output] == [o.name for o in want.output]
    runner = BACKEND.load(out, {"model_file": res.model_file}, threads=1)
    emb = embed(runner, batches)
    assert emb.dtype == np.float32 and emb.shape == ref.shape
    assert cosines(ref, emb).min() > MIN_COSINE[precision]
    assert res.recipe["size_ratio"] < MAX_RATIO[precision]
    assert res.recipe["bytes"] == sum(p.stat().st_size for p in out.iterdir())
    assert res.runtime["providers"][-1] == "CPUExecutionProvider"


def test_fp32_is_saved_at_a_portable_optimization_level(build):
    out, res = build("ort-cpu-avx2", "fp32")
    assert res.recipe["settings"]["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"
    assert "SkipLayerNormalization" in _ops(_graph(out, res))  # ORT's extended fusions ran
    # ORT_ENABLE_ALL's NCHWc layout ops would tie the file to this CPU
    assert not {op for op in _ops(_graph(out, res)) if "Nchwc" in op or op == "ReorderInput"}


def test_fp16_keeps_normalization_in_fp32_and_io_types(build):
    out, res = build("ort-cpu-avx2", "fp16")
    model = _graph(out, res)
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert sum(np.prod(t.dims) for t in halves) > 0.9 * sum(np.prod(t.dims) for t in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)  # topologically sorted, types consistent
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    blocked = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax", "ReduceL2")]
    assert blocked and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in blocked)
    assert all(types[i] == onnx.TensorProto.FLOAT for n in blocked for i in n.input[:1])
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any("GPU" in u for u in res.unverified)


# ---- INT8 / INT4 hold what they promise -------------------------------------------------
def _table_node(model):
    return next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")


def test_int8_static_is_qdq_on_linear_matmuls_with_an_int8_table(build):
    out, res = build("ort-cpu-avx2", "int8-static")
    model = _graph(out, res)
    ops = _ops(model)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = og.initializer_map(model)
    table = _table_node(model)
    assert inits[table.input[0]].data_type == onnx.TensorProto.UINT8
    assert next(a.i for a in table.attribute if a.name == "bits") == 8
    # only the Linear MatMuls get Q/DQ: attention MatMuls, LayerNorm, Softmax and outputs stay float
    producer = {o: n for n in model.graph.node for o in n.output}
    quantized = [n for n in model.graph.node if n.op_type == "MatMul"
                 and getattr(producer.get(n.input[1]), "op_type", "") == "DequantizeLinear"]
    assert len(quantized) == len(res.recipe["quantized"]) == 12  # 2 layers x (q, k, v, o, up, down)
    # every activation Q -> DQ feeds Linear MatMuls only; no MatMul / Softmax output is quantized
    users: dict = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert q_nodes
    for qn in q_nodes:
        (dq,) = users[qn.output[0]]
        assert {u.name for u in users[dq.output[0]]} <= {n.name for n in quantized}
        assert producer[qn.input[0]].op_type not in ("MatMul", "Softmax")
    r = res.recipe
    assert r["settings"]["reduce_range"] is True and r["settings"]["per_channel"] is True
    assert r["calibration"]["method"] == "MinMax" and r["calibration"]["count"] > 0
    assert all(e["module"].startswith("encoder.") for e in r["quantized"])


def test_int8_dynamic_uses_integer_matmuls_and_an_int8_table(build):
    out, res = build("ort-cpu-avx2", "int8-dynamic")
    model = _graph(out, res)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(model)
    table = _table_node(model)
    assert og.initializer_map(model)[table.input[0]].data_type == onnx.TensorProto.UINT8
    assert res.recipe["settings"]["reduce_range"] is True


def test_int4_has_matmulnbits_and_a_4bit_table(build):
    out, res = build("ort-cpu-avx2", "int4")
    model = _graph(out, res)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 12
    for n in nbits:
        attrs = {a.name: a.i for a in n.attribute}
        assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (4, 32, 4)
    table = _table_node(model)
    assert og.initializer_map(model)[table.input[0]].data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)


def test_quantize_embedding_false_keeps_the_table_fp32(build):
    out, res = build("ort-cpu-avx2", "int8-dynamic", quantize_embedding=False)
    assert "GatherBlockQuantized" not in _ops(_graph(out, res)) and res.recipe["embedding"] is None
    assert res.recipe["size_ratio"] > 0.9  # the 250k-row table is nearly all of the tiny model


def test_sizes_shrink_in_precision_order(build):
    ratio = {p: build("ort-cpu-avx2", p)[1].recipe["size_ratio"] for p in PRECISIONS}
    assert ratio["int4"] < ratio["int8-static"] < ratio["fp16"] < ratio["fp32"]
    assert ratio["int8-dynamic"] < ratio["fp16"]


# ---- recipes: exclusions, calibration methods, targets ----------------------------------
def test_exclude_keeps_a_module_out_of_static_quantization(build):
    out, res = build("ort-cpu-avx2", "int8-static", exclude=["layer.1.output.dense"], auto_exclude=False)
    (entry,) = res.recipe["excluded"]
    assert entry["module"].endswith("layer.1.output.dense") and entry["reason"] == "option exclude"
    nbits = [n for n in _graph(out, res).graph.node if n.op_type == "MatMulNBits"]
    assert [n.name for n in nbits] == [entry["node"] + "_Q8"]
    assert {a.name: a.i for a in nbits[0].attribute}["bits"] == 8
    assert len(res.recipe["quantized"]) == 11


def test_auto_exclude_takes_out_the_lowest_sqnr_matmuls_until_the_cap(build):
    # a target no INT8 model meets: the search must stop at the cap and say so
    out, res = build("ort-cpu-avx2", "int8-static", auto_exclude=2, target_min=1.0)
    auto = res.recipe["auto_exclude"]
    assert auto["target_met"] is False and auto["max"] == 2
    assert [s["excluded"] for s in auto["steps"]] == [0, 1, 2]
    sens = res.recipe["sensitivity_db"]
    assert len(sens) == 12 and sens == sorted(sens, key=lambda s: s["sqnr_db"])
    assert [e["module"] for e in res.recipe["excluded"]] == [s["module"] for s in sens[:2]]
    assert all(e["reason"].startswith("auto: output SQNR") for e in res.recipe["excluded"])


def test_int4_auto_exclude_keeps_the_most_sensitive_matmuls_at_8_bits(build):
    out, res = build("ort-cpu-avx2", "int4", auto_exclude=2, target_min=1.0)
    assert [s["excluded"] for s in res.recipe["auto_exclude"]["steps"]] == [0, 1, 2]
    worst = [s["node"] for s in res.recipe["sensitivity_db"][:2]]
    bits = {n.name: {a.name: a.i for a in n.attribute}["bits"] for n in _graph(out, res).graph.node
            if n.op_type == "MatMulNBits"}
    assert sorted(n for n, b in bits.items() if b == 8) == sorted(w + "_Q8" for w in worst)
    assert sum(b == 4 for b in bits.values()) == 10


@pytest.mark.parametrize("method", ["Entropy", "Percentile"])
def test_histogram_calibration_needs_no_padding(build, method, eval_batches):
    out, res = build("ort-cpu-avx2", "int8-static", calibrate_method=method.lower(), auto_exclude=False)
    assert res.recipe["calibration"]["method"] == method
    batches, ref = eval_batches
    runner = BACKEND.load(out, {"model_file": res.model_file}, threads=1)
    assert cosines(ref, embed(runner, batches)).min() > 0.99


def test_vnni_and_arm64_targets_change_the_int8_recipe(build):
    _, vnni = build("ort-cpu-avx512-vnni", "int8-static", auto_exclude=False)
    out, arm = build("ort-cpu-arm64", "int8-static", auto_exclude=False)
    assert vnni.recipe["settings"]["reduce_range"] is False
    assert arm.recipe["settings"]["activation_type"] == "QInt8"
    zps = [og.initializer_map(_graph(out, arm))[n.input[2]] for n in _graph(out, arm).graph.node
           if n.op_type == "QuantizeLinear"]
    assert zps and all(z.data_type == onnx.TensorProto.INT8 and not np.any(onnx.numpy_helper.to_array(z))
                       for z in zps)  # S8S8, symmetric activations
    assert any("arm64 kernels not exercised" in u for u in arm.unverified)


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("precision, options, named", [
    ("int8-static", {"calibrate_method": "kl-divergence"}, "kl-divergence"),
    ("int4", {"algorithm": "awq"}, "awq"),
    ("int4", {"block_size": 48}, "block_size"),
    ("int8-dynamic", {"calibrate_method": "MinMax"}, "calibrate_method"),
])
def test_bad_options_raise_target_error_naming_them(compile_context, tmp_path, precision, options, named):
    ctx = dataclasses.replace(compile_context, options=options)
    with pytest.raises(TargetError, match=named) as err:
        BACKEND.compile(TARGET["ort-cpu"], precision, ctx, tmp_path / "out")
    assert err.value.hint and err.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_resolve_options_coerces_and_defaults():
    opts = resolve_options("int8-static", {"calibrate_method": "entropy", "auto_exclude": True, "exclude": "x"})
    assert (opts["calibrate_method"], opts["auto_exclude"], opts["exclude"]) == ("Entropy", 12, ("x",))
    assert resolve_options("int8-static", {"auto_exclude": False})["auto_exclude"] == 0
    assert resolve_options("int4", {})["block_size"] == 32


def _copied_reference(tiny_reference, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(tiny_reference, ref)
    return ref


@pytest.mark.parametrize("keep_hashes", [True, False])
def test_truncated_reference_raises_compile_error(compile_context, tiny_reference, tmp_path, keep_hashes):
    ref = _copied_reference(tiny_reference, tmp_path)
    model = ref / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    meta = dict(compile_context.reference_meta)
    if not keep_hashes:  # the protobuf itself must be judged unreadable
        meta["files"] = []
    ctx = dataclasses.replace(compile_context, reference_dir=ref, reference_meta=meta)
    with pytest.raises(CompileError, match="truncated or corrupted") as err:
        BACKEND.compile(TARGET["ort-cpu"], "int8-dynamic", ctx, tmp_path / "out")
    assert "embedc export" in err.value.hint


def test_load_reports_a_missing_model_file(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        BACKEND.load(tmp_path, {"model_file": "model.onnx"})


# ---- graph helpers ---------------------------------------------------------------------------
def test_module_paths_come_from_the_dynamo_name_scopes(tiny_reference):
    model = onnx.load(str(tiny_reference / "model.onnx"))
    paths = [og.module_path(n) for n in og.weight_matmuls(model)]
    assert len(paths) == 12 and "encoder.encoder.layer.1.output.dense" in paths
    table = og.word_embedding_gather(model)
    assert og.module_path(table).endswith("word_embeddings")
    assert og.scope_matches("encoder.encoder.layer.1.output.dense", ["layer.1"])
    assert not og.scope_matches("encoder.encoder.layer.11.output.dense", ["layer.1"])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_models_over_the_protobuf_limit_use_external_data(compile_context, monkeypatch, tmp_path, precision,
                                                          eval_batches):
    # the same code path a > 2 GB model takes, on the tiny model: lower the threshold
    monkeypatch.setattr(og, "EXTERNAL_DATA_BYTES", 1_000_000)
    ctx = dataclasses.replace(compile_context, options={"auto_exclude": False} if precision == "int8-static" else {})
    out = tmp_path / "out"
    res = BACKEND.compile(TARGET["ort-cpu"], precision, ctx, out)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (out / "model.onnx").stat().st_size < 1_000_000 < (out / "model.onnx.data").stat().st_size
    batches, ref = eval_batches
    runner = BACKEND.load(out, {"model_file": res.model_file}, threads=1)
    assert cosines(ref, embed(runner, batches)).min() > MIN_COSINE[precision]
