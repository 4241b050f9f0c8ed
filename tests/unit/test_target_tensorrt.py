"""TensorRT backend on the tiny XLM-R export: real FP16/INT8/INT4 graphs that
pass the structural checker and meet the parity floors (ORT-CPU parity of
the graph, on the scaled tiny model of conftest.scaled_reference), the
exclusion grammar on dot boundaries, the pooling tail and FP16 keep-list of
an RMSNorm model, build files, and ``embedc engine``: what runs without a
GPU, and the recording of engine parity (with a test double for the engine,
which never claims parity)."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shlex
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from embedc.errors import ArtifactError, MissingDependencyError, ParityGateError, TargetError
from embedc.fsutil import read_json
from embedc.onnxkit.scopes import module_path
from embedc.targets.registry import get_backend, get_target
from embedc.targets.tensorrt.backend import TARGETS, UNVERIFIED_ENGINE
from embedc.targets.tensorrt.check import check_trt_onnx
from embedc.targets.tensorrt.cli import check_trt, engine
from embedc.targets.tensorrt.engine import build_engine, record_engine
from embedc.targets.tensorrt.profiles import derive_profile
from helpers import cosines, floor_of, meets_floor

TARGET = "tensorrt-sm90"


def _compile(ctx, precision, out, **options):
    target = get_target(TARGET)
    ctx = dataclasses.replace(ctx, options={"threads": 2, **options})
    return get_backend(target).compile(target, precision, ctx, out), ctx


def _parity(out, result, scaled_eval):
    batches, ref = scaled_eval
    runner = get_backend(get_target(TARGET)).load(out, {"model_file": result.model_file}, threads=2)
    cand = np.concatenate([runner.embed(f) for f in batches])
    assert cand.dtype == np.float32 and cand.shape == ref.shape
    return cosines(ref.astype(np.float64), cand.astype(np.float64))


def _init_types(model):
    return {i.name: i.data_type for i in model.graph.initializer}


def test_targets_are_registered():
    names = {t.name for t in TARGETS}
    assert names == {"tensorrt-sm80", "tensorrt-sm89", "tensorrt-sm90"}
    for name in names:
        t = get_target(name)
        assert t.backend == "tensorrt" and t.precisions == ("fp16", "int8", "int4") and not t.runs_here
    assert get_target("tensorrt-sm89").settings["fp8_capable"]
    assert not get_target("tensorrt-sm80").settings["fp8_capable"]


def test_fp16_artifact(scaled_context, tmp_path, scaled_eval):
    out = tmp_path / "fp16"  # compile creates the folder
    result, ctx = _compile(scaled_context, "fp16", out)
    model = onnx.load(str(out / result.model_file))
    assert check_trt_onnx(model, "fp16") == []
    assert TensorProto.FLOAT16 in _init_types(model).values()
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.INT64] * 2
    outs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outs == {"sentence_embedding": TensorProto.FLOAT}  # token states dropped for the engine
    # LayerNorm reads FP32 through an explicit Cast inserted by the converter
    prod = {o: n for n in model.graph.node for o in n.output}
    for ln in (n for n in model.graph.node if n.op_type == "LayerNormalization"):
        assert prod[ln.input[0]].op_type == "Cast"
    # the mean-pool / L2-norm tail runs in FP32 end to end: no FP32->FP16->FP32 round trip anywhere
    to = {n.name: next((a.i for a in n.attribute if a.name == "to"), None) for n in model.graph.node}
    for n in model.graph.node:
        if n.op_type == "Cast" and to[n.name] == TensorProto.FLOAT and n.input[0] in prod:
            src = prod[n.input[0]]
            assert not (src.op_type == "Cast" and to[src.name] == TensorProto.FLOAT16), n.name
    last = prod["sentence_embedding"]
    last = prod[last.input[0]] if last.op_type == "Cast" else last
    assert last.op_type == "Div"
    assert result.recipe["final_norm"] == "layernorm" and result.recipe["pooling_tail_nodes"] > 5
    assert result.unverified == (UNVERIFIED_ENGINE,) and result.runtime["engine_parity"] == "unverified"
    assert meets_floor(_parity(out, result, scaled_eval), "fp16")


def test_int8_artifact(scaled_context, tmp_path, scaled_eval):
    out = tmp_path / "int8"
    result, ctx = _compile(scaled_context, "int8", out, exclude=["attention.output.dense"])
    model = onnx.load(str(out / result.model_file))
    assert check_trt_onnx(model, "int8") == []
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    inits = {i.name: i for i in model.graph.initializer}
    for n in qdq:  # symmetric int8 everywhere
        zp = numpy_helper.to_array(inits[n.input[2]])
        assert zp.dtype == np.int8 and not zp.any()
    prod = {o: n for n in model.graph.node for o in n.output}
    recipe = result.recipe
    kept = {k["node"] for k in recipe["kept_high_precision"]}
    n_quantized = 0
    for mm in (n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in prod):
        w_dq = prod[mm.input[1]]
        if w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in inits:
            continue  # attention BMMs (QK^T, attn*V) read activations and stay unquantized
        n_quantized += 1
        assert mm.name not in kept
        axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)  # ONNX default axis is 1
        assert axis == 1 and inits[w_dq.input[0]].data_type == TensorProto.INT8
        a_dq = prod[mm.input[0]]  # the activation input: per-tensor Q/DQ
        assert a_dq.op_type == "DequantizeLinear" and list(inits[a_dq.input[1]].dims) == []
    assert n_quantized == recipe["quantized_layers"] == 12 - len(kept)
    # the QDQ consumer fix: no GEMM output and no residual Add reads a DequantizeLinear
    for n in model.graph.node:
        if n.op_type != "MatMul":
            assert all(prod[i].op_type != "DequantizeLinear" for i in n.input if i in prod), n.name
    # the forced exclusion was honoured: those Linear layers keep float weights
    forced = [n for n in model.graph.node if n.op_type == "MatMul"
              and module_path(n).endswith("attention.output.dense")]
    assert len(forced) == 2
    for mm in forced:
        assert mm.name in kept and (mm.input[1] in inits or prod[mm.input[1]].op_type == "Cast")
    assert recipe["calibration_method"] == "MinMax" and recipe["search"]["trials"]
    assert recipe["compute"] == "fp16" and TensorProto.FLOAT16 in _init_types(model).values()
    assert meets_floor(_parity(out, result, scaled_eval), "int8")


def test_int4_artifact_and_its_floor_fails_a_broken_quantizer(scaled_context, tmp_path, scaled_eval):
    out = tmp_path / "int4"
    result, ctx = _compile(scaled_context, "int4", out, block_size=16, search=False)
    model = onnx.load(str(out / result.model_file))
    assert check_trt_onnx(model, "int4") == []
    assert next(o.version for o in model.opset_import if o.domain == "") == 21
    inits = {i.name: i for i in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 12  # every Linear of the 2-layer model (search off: none kept)
    for dq in dqs:
        attrs = {a.name: a.i for a in dq.attribute}
        assert attrs["block_size"] == 16 and attrs["axis"] == 0
        w, s = inits[dq.input[0]], inits[dq.input[1]]
        assert w.data_type == TensorProto.INT4 and s.data_type == TensorProto.FLOAT16
        assert list(s.dims) == [-(-w.dims[0] // 16), w.dims[1]]
    assert not any(n.domain for n in model.graph.node)
    cos = _parity(out, result, scaled_eval)
    assert meets_floor(cos, "int4"), (cos.mean(), cos.min(), floor_of("int4"))
    assert result.recipe["algorithm"].startswith("gptq")
    # the same graph with its 4-bit weights coarsened to 2-bit levels must miss the floor
    for dq in dqs:
        t = inits[dq.input[0]]
        q = numpy_helper.to_array(t).astype(np.int32)
        t.CopyFrom(_int4(np.clip(np.round(q / 4) * 4, -8, 7), t.name))
    broken = tmp_path / "broken"
    broken.mkdir()
    onnx.save(model, str(broken / "model.onnx"))
    assert not meets_floor(_parity(broken, result, scaled_eval), "int4")


def _int4(values: np.ndarray, name: str):
    import ml_dtypes

    return numpy_helper.from_array(values.astype(ml_dtypes.int4), name)


def test_int4_gptq_beats_round_to_nearest(scaled_context, tmp_path, scaled_eval):
    means = {}
    for algorithm in ("gptq", "rtn"):
        out = tmp_path / algorithm
        result, _ = _compile(scaled_context, "int4", out, algorithm=algorithm, search=False)
        means[algorithm] = _parity(out, result, scaled_eval).mean()
    assert 1 - means["gptq"] < 0.5 * (1 - means["rtn"])


def test_int8_histogram_calibration(scaled_context, tmp_path, scaled_eval):
    out = tmp_path / "percentile"
    result, _ = _compile(scaled_context, "int8", out, method="percentile", search=False)
    assert result.recipe["calibration_method"] == "Percentile"
    assert check_trt_onnx(out / result.model_file, "int8") == []
    assert meets_floor(_parity(out, result, scaled_eval), "int8")


def test_bad_options_fail_before_any_work(scaled_context, tmp_path):
    with pytest.raises(TargetError, match="metod"):
        _compile(scaled_context, "int8", tmp_path / "x", metod="minmax")
    assert not (tmp_path / "x").exists()


def test_int8_search_keeps_layers_for_stricter_targets(scaled_context, tmp_path):
    out = tmp_path / "int8"
    result, _ = _compile(scaled_context, "int8", out, search_mean=0.99995, search_min=0.9999, search_p01=0.9999)
    search = result.recipe["search"]
    trials = search["trials"]
    assert trials[0]["excluded"] == 0 and len(trials) > 1
    kept = result.recipe["kept_high_precision"]
    assert kept and all(k["module"].startswith("encoder.") and "local_error" in k for k in kept)
    # the layers are kept worst-first by their measured local error
    errors = [k["local_error"] for k in kept]
    assert errors == sorted(errors, reverse=True)
    assert result.recipe["calibration_parity"]["mean"] > trials[0]["mean"]


# ---- the exclusion grammar: module-path patterns on dot boundaries --------------------------------
@pytest.fixture(scope="module")
def twelve_layer_names(scaled_reference, tmp_path_factory):
    """The scaled export with layer 0's modules renamed layer 11 (so 'layer.1' has a 'layer.11' to miss)."""
    out = tmp_path_factory.mktemp("layer11") / "export"
    shutil.copytree(scaled_reference, out)
    model = onnx.load(str(out / "model.onnx"))
    for n in model.graph.node:
        for p in n.metadata_props:
            if p.key == "pkg.torch.onnx.name_scopes":
                p.value = p.value.replace("layer.0", "layer.11")
    onnx.save(model, str(out / "model.onnx"))
    return out


def test_exclude_layer_1_does_not_hit_layer_11(scaled_context, twelve_layer_names, tmp_path):
    ctx = dataclasses.replace(scaled_context, reference_dir=twelve_layer_names)
    result, _ = _compile(ctx, "int8", tmp_path / "int8", exclude=["layer.1"], search=False)
    kept = [k["module"] for k in result.recipe["kept_high_precision"]]
    assert len(kept) == 6 and all(".layer.1." in m for m in kept)
    result, _ = _compile(ctx, "int8", tmp_path / "ffn", exclude=["layer.*.output.dense"], search=False)
    kept = sorted(k["module"] for k in result.recipe["kept_high_precision"])
    assert kept == ["encoder.encoder.layer.1.output.dense", "encoder.encoder.layer.11.output.dense"]


# ---- RMSNorm models: the pooling tail and the FP16 keep-list -------------------------------------
H = 16


def _rmsnorm_model(scale: float = 300.0):
    """A decoder-style body as the dynamo exporter writes it at opset 18 (the node sequence measured on
    a torch RMSNorm module): Gather -> MatMul -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Reciprocal
    -> Mul -> Mul(weight) = last_hidden_state, then masked mean pooling and L2 normalization.
    Token states of ~``scale`` overflow FP16 in x^2 and in the mean."""
    rng = np.random.default_rng(0)
    c = lambda name, a: numpy_helper.from_array(np.asarray(a), name)  # noqa: E731
    inits = [c("table", (rng.normal(size=(50, H)) * scale).astype(np.float32)),
             c("w", (rng.normal(size=(H, H)) / np.sqrt(H) + np.eye(H)).astype(np.float32)),
             c("two", np.float32(2.0)), c("axes_last", np.array([-1], np.int64)), c("eps", np.float32(1e-6)),
             c("norm_weight", rng.uniform(0.5, 1.5, H).astype(np.float32)), c("axes_seq", np.array([1], np.int64)),
             c("tiny", np.float32(1e-9))]
    n = helper.make_node
    nodes = [n("Gather", ["table", "input_ids"], ["emb"], name="node_embedding"),
             n("MatMul", ["emb", "w"], ["h"], name="node_MatMul_5"),
             n("Pow", ["h", "two"], ["pow_1"], name="node_pow_1"),
             n("ReduceMean", ["pow_1", "axes_last"], ["mean"], name="node_mean", keepdims=1),
             n("Add", ["mean", "eps"], ["add"], name="node_add"),
             n("Sqrt", ["add"], ["sqrt"], name="node_Sqrt"),
             n("Reciprocal", ["sqrt"], ["rsqrt"], name="node_rsqrt"),
             n("Mul", ["h", "rsqrt"], ["normed"], name="node_mul_15"),
             n("Mul", ["norm_weight", "normed"], ["last_hidden_state"], name="node_mul_19"),
             n("Unsqueeze", ["attention_mask", "axes_last"], ["mask3"], name="node_unsqueeze"),
             n("Cast", ["mask3"], ["maskf"], name="node_to_copy", to=TensorProto.FLOAT),
             n("Mul", ["last_hidden_state", "maskf"], ["masked"], name="node_mul_27"),
             n("ReduceSum", ["masked", "axes_seq"], ["summed"], name="node_sum_1", keepdims=0),
             n("ReduceSum", ["maskf", "axes_seq"], ["count"], name="node_sum_2", keepdims=0),
             n("Max", ["count", "tiny"], ["count1"], name="node_clamp"),
             n("Div", ["summed", "count1"], ["pooled"], name="node_div"),
             n("ReduceL2", ["pooled", "axes_last"], ["norm"], name="node_norm", keepdims=1),
             n("Div", ["pooled", "norm"], ["sentence_embedding"], name="node_div_1")]
    io = lambda name, t, shape: helper.make_tensor_value_info(name, t, shape)  # noqa: E731
    graph = helper.make_graph(nodes, "rms", [io("input_ids", TensorProto.INT64, ["b", "s"]),
                                             io("attention_mask", TensorProto.INT64, ["b", "s"])],
                              [io("sentence_embedding", TensorProto.FLOAT, ["b", H]),
                               io("last_hidden_state", TensorProto.FLOAT, ["b", "s", H])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


POOLING = {"node_unsqueeze", "node_to_copy", "node_mul_27", "node_sum_1", "node_sum_2", "node_clamp", "node_div",
           "node_norm", "node_div_1"}
RMSNORM = ["node_pow_1", "node_mean", "node_add", "node_Sqrt", "node_rsqrt", "node_mul_15", "node_mul_19"]


def test_rmsnorm_pattern_and_pooling_tail():
    from embedc.onnxkit.norms import final_norm_output, rmsnorm_groups
    from embedc.targets.tensorrt.graph import pooling_tail_nodes, sentence_output_only

    model = _rmsnorm_model()
    (group,) = rmsnorm_groups(model)
    assert list(group.nodes) == RMSNORM and group.output == "last_hidden_state"
    assert pooling_tail_nodes(model, "rmsnorm") == POOLING           # boundary: the last_hidden_state output
    only = sentence_output_only(_rmsnorm_model())
    assert final_norm_output(only, "rmsnorm", "sentence_embedding") == "last_hidden_state"
    assert pooling_tail_nodes(only, "rmsnorm") == POOLING            # boundary: the family's final norm
    assert pooling_tail_nodes(only, "layernorm") == set()            # "the last LayerNormalization": none here


def test_fp16_keeps_the_rmsnorm_pattern_in_fp32(tmp_path):
    from embedc.onnxkit.norms import rmsnorm_groups
    from embedc.onnxkit.session import cpu_session
    from embedc.targets.tensorrt.graph import KEEP_FP32_OPS, pooling_tail_nodes, sentence_output_only, to_fp16

    model = sentence_output_only(_rmsnorm_model())
    tail = pooling_tail_nodes(_rmsnorm_model(), "rmsnorm")
    feeds = {"input_ids": np.array([[1, 5, 9, 3], [7, 2, 0, 0]], np.int64),
             "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int64)}

    def run(m, name):
        onnx.save(m, str(tmp_path / name))
        return cpu_session(tmp_path / name, 1, level="exact").run(["sentence_embedding"], feeds)[0]

    fp32 = run(model, "fp32.onnx")
    fp16 = to_fp16(sentence_output_only(_rmsnorm_model()), tail=tail)
    assert check_trt_onnx(fp16, "fp16") == []
    cos = cosines(fp32.astype(np.float64), run(fp16, "fp16.onnx").astype(np.float64))
    assert np.all(cos > 0.9999)
    kept = {n for g in rmsnorm_groups(model) for n in g.nodes}
    types = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(fp16).graph.value_info}
    assert all(types.get(n.output[0]) == TensorProto.FLOAT for n in fp16.graph.node if n.name in kept)
    # without the whole pattern kept (the op keep-list alone), the Add after ReduceMean overflows FP16
    from onnxruntime.transformers.float16 import convert_float_to_float16

    ops_only = convert_float_to_float16(sentence_output_only(_rmsnorm_model()), keep_io_types=True,
                                        op_block_list=list(KEEP_FP32_OPS), node_block_list=sorted(tail))
    assert not np.all(np.isfinite(run(ops_only, "ops-only.onnx")))


# ---- build files and profiles ---------------------------------------------------------------------
def test_build_files_match_profile(compile_context, tmp_path):
    out = tmp_path / "fp16"
    result, ctx = _compile(compile_context, "fp16", out, batch_opt=8, workspace_mb=2048)
    build = read_json(out / "build.json")
    stats = ctx.length_stats
    shapes = build["profiles"][0]
    assert set(shapes) == {"input_ids", "attention_mask"}
    for s in shapes.values():
        assert s["min"] == [1, 1] and s["max"] == [64, ctx.reference_meta["max_length"]]
        assert s["opt"][0] == 8 and s["opt"][1] % 16 == 0 and stats["p90"] <= s["opt"][1] <= s["max"][1]
        assert s["max"][1] >= stats["max"]
    assert build["strongly_typed"] and build["builder_flags"] == [] and (out / build["onnx"]).is_file()
    script = (out / "trtexec.sh").read_text()
    assert build["trtexec"] in script
    args = dict(a.split("=", 1) for a in shlex.split(build["trtexec"])[1:] if "=" in a)
    assert "--stronglyTyped" in build["trtexec"]
    assert args["--onnx"] == build["onnx"] and args["--saveEngine"] == build["engine"]
    assert args["--timingCacheFile"] == build["timing_cache"] and args["--memPoolSize"] == "workspace:2048M"
    for flag, kind in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
        parsed = {k: [int(d) for d in v.split("x")] for k, v in (p.split(":") for p in args[flag].split(","))}
        assert parsed == {name: s[kind] for name, s in shapes.items()}
    # the CLI reads the precision from build.json when given the artifact folder
    r = CliRunner().invoke(check_trt, [str(out)])
    assert r.exit_code == 0, r.output


def test_profile_defaults_cover_calibration_lengths():
    stats = {"min": 3, "p50": 40, "p90": 117, "p99": 300, "max": 333}
    p = derive_profile(stats, 512)
    assert p.batch == (1, 32, 64)
    assert p.seq == (1, 128, 512) and p.seq[2] >= stats["max"]


def test_profile_overrides_and_validation():
    from embedc.errors import UsageError

    stats = {"min": 3, "p50": 40, "p90": 117, "p99": 300, "max": 333}
    p = derive_profile(stats, 512, {"batch_opt": 8, "batch_max": 16, "seq_opt": 64, "seq_max": 256, "seq_min": 4})
    assert p.batch == (1, 8, 16) and p.seq == (4, 64, 256)
    assert derive_profile(stats, 128).seq == (1, 128, 128)  # opt capped at the model max_length
    for bad in ({"batch_opt": 100}, {"seq_max": 1024}, {"batch_min": 0}, {"seq_opt": "64"}):
        with pytest.raises(UsageError):
            derive_profile(stats, 512, bad)


def test_external_data_models_compile_for_every_precision(scaled_context, monkeypatch, tmp_path, scaled_eval):
    """The > 2 GB path on the tiny model (the one threshold lowered): INT8/INT4 once crashed here."""
    from embedc.onnxkit import files

    monkeypatch.setattr(files, "EXTERNAL_DATA_BYTES", 1_000_000)
    for precision in ("fp16", "int8", "int4"):
        out = tmp_path / precision
        result, _ = _compile(scaled_context, precision, out, search=False) if precision != "fp16" else \
            _compile(scaled_context, precision, out)
        assert (out / "model.onnx.data").stat().st_size > 1_000_000 > (out / "model.onnx").stat().st_size
        assert check_trt_onnx(out / "model.onnx", precision) == []
        assert meets_floor(_parity(out, result, scaled_eval), precision)


# ---- embedc engine: what runs here, and the recording ---------------------------------------------
@pytest.fixture(scope="module")
def trt_artifact(tiny_reference, tiny_source, tiny_tokenizer, tmp_path_factory):
    """A tensorrt-sm90/fp16 artifact folder of the (unscaled) tiny model, as a build writes it: model
    files, tokenizer, embedc.json with its evaluation split, ONNX-CPU parity and gate outcomes."""
    from embedc.artifact import file_inventory, read_meta, write_meta
    from embedc.calibration import PromptStyle, length_distribution, load_default_corpus, make_splits, \
        tokenize_batches
    from embedc.parity import compute_parity, evaluate_gates, resolve_gates
    from embedc.parity.harness import embed_texts
    from embedc.parity.recheck import _reference_for_artifact
    from embedc.spec import CalibrationSpec
    from embedc.targets.base import CompileContext

    spec = CalibrationSpec(calib_per_lang=2, eval_per_lang=4, max_length=64, long_per_lang=0)  # the split below
    splits = make_splits(load_default_corpus(), calib_per_lang=2, eval_per_lang=4, seed=0)
    ref_meta = read_meta(tiny_reference)
    style = PromptStyle(ref_meta["prefixes"]["query"], ref_meta["prefixes"]["passage"])
    names = [i["name"] for i in ref_meta["inputs"]]
    calib = style.apply_all(splits.calibration)
    root = tmp_path_factory.mktemp("trt-artifact")
    folder = root / "tensorrt-sm90" / "fp16"
    ctx = CompileContext(reference_dir=tiny_reference, reference_meta=ref_meta,
                         calibration=tuple(tokenize_batches(tiny_tokenizer, calib, batch_size=1, max_length=64,
                                                            input_names=names)),
                         length_stats=length_distribution(tiny_tokenizer, calib, 64), options={},
                         work_dir=root / "work")
    target = get_target(TARGET)
    backend = get_backend(target)
    res = backend.compile(target, "fp16", ctx, folder)
    tiny_tokenizer.save_pretrained(str(folder))
    meta = {"stage": "artifact", "target": TARGET, "backend": "tensorrt", "device": "cuda", "precision": "fp16",
            "model": tiny_source.to_dict(), "model_file": res.model_file, "inputs": ref_meta["inputs"],
            "outputs": ref_meta["outputs"][:1], "max_length": ref_meta["max_length"],
            "prefixes": ref_meta["prefixes"], "prompt_style": style.to_dict(), "recipe": res.recipe,
            "runtime": res.runtime, "unverified": list(res.unverified), "calibration": splits.summary(),
            "calibration_spec": dataclasses.asdict(spec), "parity_max_length": 64}
    cache = root / "stage-cache"
    samples, texts, reference = _reference_for_artifact(folder, meta, cache)
    cand = embed_texts(backend.load(folder, meta).embed, tiny_tokenizer, texts, input_names=names, max_length=64)
    result = compute_parity(reference, cand, ids=[s.id for s in samples], langs=[s.lang for s in samples],
                            kinds=[s.kind for s in samples])
    meta["parity"] = result.to_dict()
    meta["gates"] = {"verdict": "pass", "outcomes": [o.to_dict() for o in evaluate_gates(result,
                                                                                           resolve_gates("fp16"))]}
    meta["files"] = file_inventory(folder)
    write_meta(folder, meta)
    return folder, cache


def _copy(folder, tmp_path):
    dst = tmp_path / "tensorrt-sm90" / "fp16"
    shutil.copytree(folder, dst)
    return dst


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="this host has TensorRT")
def test_engine_without_gpu_checks_the_artifact_then_names_what_is_missing(trt_artifact, tmp_path):
    folder = _copy(trt_artifact[0], tmp_path)
    before = (folder / "embedc.json").read_bytes()
    with pytest.raises(MissingDependencyError, match="needs an NVIDIA GPU with TensorRT") as exc:
        record_engine(folder)
    assert "tensorrt" in str(exc.value)
    r = CliRunner().invoke(engine, [str(folder)])
    assert isinstance(r.exception, MissingDependencyError)
    assert (folder / "embedc.json").read_bytes() == before and not (folder / "model.plan").exists()
    meta = read_json(folder / "embedc.json")
    assert meta["unverified"] == [UNVERIFIED_ENGINE] and "engine" not in meta
    with pytest.raises(MissingDependencyError):
        build_engine(folder)


def test_engine_refuses_what_is_not_a_tensorrt_artifact(trt_artifact, tiny_reference, tmp_path):
    with pytest.raises(ArtifactError, match="not a TensorRT artifact"):
        record_engine(tiny_reference)  # the reference export
    folder = _copy(trt_artifact[0], tmp_path)
    (folder / "build.json").unlink()
    with pytest.raises(ArtifactError, match="build.json"):
        record_engine(folder)
    with pytest.raises(ArtifactError, match="build.json"):
        build_engine(tmp_path)


class OnnxCpuTestDouble:
    """Test double for the engine step, used ONLY to test the recording: it 'builds' a placeholder
    plan and runs the artifact's ONNX on ONNX Runtime CPU. Its numbers are the ONNX-CPU parity,
    never an engine's; its facts say so."""

    def facts(self) -> dict:
        return {"gpu": "none (test double)", "compute_capability": None, "tensorrt": None, "cuda": None,
                "runner": "test double: onnxruntime CPU"}

    def build(self, artifact_dir, timing_cache):
        plan = artifact_dir / "model.plan"
        plan.write_bytes(b"test double, not an engine")
        return plan

    def runner(self, plan):
        return get_backend(get_target(TARGET)).load(plan.parent, {"model_file": "model.onnx"})


def test_engine_parity_is_recorded_in_the_artifact(trt_artifact, tmp_path):
    from embedc.artifact import read_meta, verify_files

    folder = _copy(trt_artifact[0], tmp_path)
    section = record_engine(folder, OnnxCpuTestDouble(), cache_dir=trt_artifact[1])
    meta = read_meta(folder)
    assert meta["engine"] == json.loads(json.dumps(section))
    assert meta["unverified"] == [] and meta["runtime"]["engine_parity"].startswith("recorded")
    verify_files(folder, meta)  # the artifact's own files are untouched
    # the same graph on the same texts and batches as the build's parity run: the recorded numbers agree
    assert section["parity"]["per_text"] == meta["parity"]["per_text"]
    assert section["vs_onnx_cpu"] == {"mean": 0.0, "p01": 0.0, "min": 0.0}
    assert section["gates"]["verdict"] == "pass"
    assert [o["metric"] for o in section["gates"]["outcomes"]] == [o["metric"] for o in meta["gates"]["outcomes"]]
    assert section["gpu"] == "none (test double)" and section["engine_file"] == "model.plan"
    t = section["timing"]
    assert t["texts"] == meta["parity"]["n_texts"] and t["build_seconds"] >= 0 and t["parity_run_seconds"] > 0


class NoisyTestDouble(OnnxCpuTestDouble):
    """The test double with noise added to every embedding: an engine that misses the gates."""

    def runner(self, plan):
        inner = super().runner(plan)

        class Noisy:
            def embed(self, feeds):
                emb = inner.embed(feeds)
                return emb + np.random.default_rng(0).normal(scale=0.2, size=emb.shape).astype(np.float32)
        return Noisy()


def test_an_engine_that_misses_the_artifacts_gate_is_recorded_then_exits_3(trt_artifact, tmp_path):
    from embedc.artifact import read_meta

    folder = _copy(trt_artifact[0], tmp_path)
    with pytest.raises(ParityGateError) as err:
        record_engine(folder, NoisyTestDouble(), cache_dir=trt_artifact[1])
    assert err.value.exit_code == 3 and "\n" not in str(err.value)
    recorded = read_meta(folder)["engine"]
    assert recorded["gates"]["verdict"] == "fail" and recorded["vs_onnx_cpu"]["mean"] < 0


def test_load_missing_model_raises(tmp_path):
    with pytest.raises(ArtifactError):
        get_backend(get_target(TARGET)).load(tmp_path, {"model_file": "model.onnx"})
