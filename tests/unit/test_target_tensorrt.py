"""TensorRT backend on the tiny XLM-R export: real FP16/INT8/INT4 graphs, the
structural checker on them, ORT-CPU parity of the graph, build files and the
engine builder's behaviour without a GPU.

The random tiny model's Linear layers barely move its output (weights ~N(0,
0.02) next to the residual stream), so any quantization scores cosine 1.0 on
it. Parity tests therefore use a copy whose Linear weights are scaled by 10:
the layers then matter and INT8/INT4 errors are measurable.
"""
from __future__ import annotations

import dataclasses
import shlex
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

from embedc.errors import ArtifactError, MissingDependencyError, UsageError
from embedc.fsutil import read_json
from embedc.targets.registry import get_backend, get_target
from embedc.targets.tensorrt.backend import TARGETS, UNVERIFIED_ENGINE
from embedc.targets.tensorrt.check import check_trt_onnx
from embedc.targets.tensorrt.cli import check_trt, engine
from embedc.targets.tensorrt.engine import build_engine
from embedc.targets.tensorrt.graph import node_scope
from embedc.targets.tensorrt.profiles import derive_profile

TARGET = "tensorrt-sm90"
WEIGHT_SCALE = 10.0
# ORT-CPU mean cosine of each precision's graph vs the FP32 scaled tiny model
# (measured: fp16 1.0, int8 0.99991, int4 GPTQ 0.99897, int4 RTN 0.99223).
MIN_COSINE = {"fp16": 0.9999, "int8": 0.9995, "int4": 0.997}


@pytest.fixture(scope="module")
def scaled_reference(tiny_reference, tmp_path_factory):
    """The tiny export with every Linear weight x10 (see the module docstring)."""
    from embedc.targets.tensorrt.graph import const_matmuls

    out = tmp_path_factory.mktemp("scaled") / "export"
    shutil.copytree(tiny_reference, out)
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    for n in const_matmuls(model):
        t = inits[n.input[1]]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * WEIGHT_SCALE, t.name))
    onnx.save(model, str(out / "model.onnx"))
    return out


@pytest.fixture()
def scaled_context(compile_context, scaled_reference):
    return dataclasses.replace(compile_context, reference_dir=scaled_reference)


@pytest.fixture(scope="module")
def eval_feeds(tiny_tokenizer, tiny_splits, tiny_reference):
    from embedc.artifact import read_meta
    from embedc.calibration import apply_prompt, tokenize_batches

    meta = read_meta(tiny_reference)
    texts = [apply_prompt(s, meta["prefixes"]["query"], meta["prefixes"]["passage"]) for s in tiny_splits.evaluation]
    names = [i["name"] for i in meta["inputs"]]
    return tokenize_batches(tiny_tokenizer, texts, batch_size=8, max_length=128, input_names=names)


@pytest.fixture(scope="module")
def reference_embeddings(scaled_reference, eval_feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(scaled_reference / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["sentence_embedding"], f)[0] for f in eval_feeds])


def _compile(ctx, precision, out, **options):
    target = get_target(TARGET)
    ctx = dataclasses.replace(ctx, options={"threads": 2, **options})
    out.mkdir()
    return get_backend(target).compile(target, precision, ctx, out), ctx


def _cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", a, b)


def _parity(out, result, feeds, ref):
    runner = get_backend(get_target(TARGET)).load(out, {"model_file": result.model_file}, threads=2)
    cand = np.concatenate([runner.embed(f) for f in feeds])
    assert cand.dtype == np.float32 and cand.shape == ref.shape
    return _cosines(ref.astype(np.float64), cand.astype(np.float64))


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


def test_fp16_artifact(scaled_context, tmp_path, eval_feeds, reference_embeddings):
    out = tmp_path / "fp16"
    result, ctx = _compile(scaled_context, "fp16", out)
    model = onnx.load(str(out / result.model_file))
    assert check_trt_onnx(model, "fp16") == []
    assert TensorProto.FLOAT16 in _init_types(model).values()
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.INT64] * 2
    outs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outs == {"sentence_embedding": TensorProto.FLOAT}  # token_embeddings dropped for the engine
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
    assert UNVERIFIED_ENGINE in result.unverified
    cos = _parity(out, result, eval_feeds, reference_embeddings)
    assert cos.min() >= MIN_COSINE["fp16"]


def test_int8_artifact(scaled_context, tmp_path, eval_feeds, reference_embeddings):
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
    # only the Linear inputs are quantized: no GEMM output and no residual Add reads a DequantizeLinear
    for n in model.graph.node:
        if n.op_type != "MatMul":
            assert all(prod[i].op_type != "DequantizeLinear" for i in n.input if i in prod), n.name
    # the forced exclusion was honoured: those Linear layers keep float weights
    forced = [n for n in model.graph.node if n.op_type == "MatMul" and "attention.output.dense" in node_scope(n)]
    assert len(forced) == 2
    for mm in forced:
        assert mm.name in kept and (mm.input[1] in inits or prod[mm.input[1]].op_type == "Cast")
    assert recipe["calibration_method"] == "MinMax" and recipe["search"]["trials"]
    assert recipe["compute"] == "fp16" and TensorProto.FLOAT16 in _init_types(model).values()
    cos = _parity(out, result, eval_feeds, reference_embeddings)
    assert cos.mean() >= MIN_COSINE["int8"]


def test_int4_artifact(scaled_context, tmp_path, eval_feeds, reference_embeddings):
    out = tmp_path / "int4"
    result, ctx = _compile(scaled_context, "int4", out, block_size=16, search=False)
    model = onnx.load(str(out / result.model_file))
    assert check_trt_onnx(model, "int4") == []
    opset = next(o.version for o in model.opset_import if o.domain == "")
    assert opset == 21
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
    cos = _parity(out, result, eval_feeds, reference_embeddings)
    assert cos.mean() >= MIN_COSINE["int4"]
    assert result.recipe["algorithm"].startswith("gptq")


def test_int4_gptq_beats_round_to_nearest(scaled_context, tmp_path, eval_feeds, reference_embeddings):
    means = {}
    for algorithm in ("gptq", "rtn"):
        out = tmp_path / algorithm
        result, _ = _compile(scaled_context, "int4", out, algorithm=algorithm, search=False)
        means[algorithm] = _parity(out, result, eval_feeds, reference_embeddings).mean()
    assert 1 - means["gptq"] < 0.5 * (1 - means["rtn"])


@pytest.mark.parametrize("method,name", [("percentile", "Percentile"), ("entropy", "Entropy")])
def test_int8_histogram_calibration_methods(scaled_context, tmp_path, eval_feeds, reference_embeddings, method, name):
    out = tmp_path / method
    result, _ = _compile(scaled_context, "int8", out, method=method, search=False)
    assert result.recipe["calibration_method"] == name
    assert check_trt_onnx(out / result.model_file, "int8") == []
    assert _parity(out, result, eval_feeds, reference_embeddings).mean() >= MIN_COSINE["int8"]


def test_unknown_options_are_usage_errors(scaled_context, tmp_path):
    for precision, opts in (("int8", {"method": "kl"}), ("int4", {"block_size": 24}), ("int4", {"algorithm": "awq"}),
                            ("int8", {"compute": "bf16"}), ("fp16", {"block_size": 32}), ("int8", {"metod": "minmax"})):
        with pytest.raises(UsageError):
            _compile(scaled_context, precision, tmp_path / f"{precision}-{len(list(tmp_path.iterdir()))}", **opts)


def test_int8_search_keeps_layers_for_stricter_targets(scaled_context, tmp_path):
    out = tmp_path / "int8"
    result, _ = _compile(scaled_context, "int8", out, search_mean=0.99995, search_min=0.9999, search_p01=0.9999)
    search = result.recipe["search"]
    trials = search["trials"]
    assert trials[0]["kept"] == 0 and len(trials) > 1
    kept = result.recipe["kept_high_precision"]
    assert kept and all(k["module"].startswith("encoder.") and "local_error" in k for k in kept)
    # the layers are kept worst-first by their measured local error
    errors = [k["local_error"] for k in kept]
    assert errors == sorted(errors, reverse=True)
    assert result.recipe["calibration_parity"]["mean"] > trials[0]["mean"]


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
    stats = {"min": 3, "p50": 40, "p90": 117, "p99": 300, "max": 333}
    p = derive_profile(stats, 512, {"batch_opt": 8, "batch_max": 16, "seq_opt": 64, "seq_max": 256, "seq_min": 4})
    assert p.batch == (1, 8, 16) and p.seq == (4, 64, 256)
    assert derive_profile(stats, 128).seq == (1, 128, 128)  # opt capped at the model max_length
    for bad in ({"batch_opt": 100}, {"seq_max": 1024}, {"batch_min": 0}, {"seq_opt": "64"}):
        with pytest.raises(UsageError):
            derive_profile(stats, 512, bad)


def _has_gpu_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_gpu_tensorrt(), reason="this host can build engines")
def test_build_engine_without_gpu_names_what_is_missing(compile_context, tmp_path):
    out = tmp_path / "fp16"
    _compile(compile_context, "fp16", out)
    with pytest.raises(MissingDependencyError, match="needs an NVIDIA GPU with TensorRT") as exc:
        build_engine(out)
    assert "tensorrt" in str(exc.value) or "CUDA" in str(exc.value)
    assert not (out / "model.plan").exists()
    r = CliRunner().invoke(engine, [str(out)])
    assert isinstance(r.exception, MissingDependencyError)


def test_build_engine_needs_build_json(tmp_path):
    with pytest.raises(ArtifactError, match="build.json"):
        build_engine(tmp_path)


def test_load_missing_model_raises(tmp_path):
    with pytest.raises(ArtifactError):
        get_backend(get_target(TARGET)).load(tmp_path, {"model_file": "model.onnx"})
