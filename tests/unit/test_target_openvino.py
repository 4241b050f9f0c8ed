"""OpenVINO backend on the real tiny XLM-R export (Linear weights x10, see
conftest.scaled_reference): every precision converts, runs on the CPU plugin
and meets the parity floor a broken quantizer fails; the IRs hold what each
precision promises; NPU buckets are static and padding-invariant."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from embedc.errors import MissingDependencyError, TargetError
from embedc.targets.openvino import shapes
from embedc.targets.openvino import backend as ov_backend
from embedc.targets.openvino.backend import BACKEND, PRECISIONS, TARGETS, WEIGHTS
from helpers import compile_once, cosines, embed, floor_of, meets_floor

TARGET = {t.name: t for t in TARGETS}
_BUILT: dict = {}


@pytest.fixture()
def build(scaled_context, tmp_path_factory):
    """Compile (target, precision, options) on the scaled model once per session; returns (out_dir, result)."""
    return compile_once(BACKEND, TARGET, scaled_context, tmp_path_factory, _BUILT)


def _load(out, res, threads=1):
    return BACKEND.load(out, {"model_file": res.model_file, "runtime": res.runtime}, threads=threads)


@pytest.fixture()
def eval_batches(scaled_eval):
    return scaled_eval


def _read(out, xml):
    import openvino as ov

    return ov.Core().read_model(str(out / xml), str(out / WEIGHTS))


def _const_types(model) -> set[str]:
    return {op.get_output_element_type(0).get_type_name() for op in model.get_ops()
            if op.get_type_name() == "Constant"}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_precision_meets_its_floor(build, eval_batches, precision):
    out, res = build("openvino-cpu", precision)
    batches, ref = eval_batches
    emb = embed(_load(out, res), batches)
    assert emb.dtype == np.float32 and emb.shape == ref.shape
    cos = cosines(emb, ref)
    assert meets_floor(cos, precision), (precision, cos.mean(), cos.min(), floor_of(precision))
    model = _read(out, res.model_file)
    assert {p.get_any_name() for p in model.inputs} == {"input_ids", "attention_mask"}
    assert "sentence_embedding" in {n for p in model.outputs for n in p.get_names()}
    assert res.runtime["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    # only int8-static runs u8*s8 kernels, and only a VNNI host leaves the AVX2 ones unexercised
    vnni_only = precision == "int8-static" and ov_backend.cpu_has_vnni()[0]
    assert len(res.unverified) == vnni_only and all("AVX2 int8 kernels" in u for u in res.unverified)


def test_int8_static_has_fake_quantize_and_int8_table(build):
    out, res = build("openvino-cpu", "int8-static")
    model = _read(out, res.model_file)
    fq = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert fq, "no FakeQuantize nodes in the int8-static IR"
    assert "i8" in _const_types(model)
    assert res.recipe["ir"]["embedding_table"]["dtype"] == "i8"  # the 250k-row table is quantized too
    # the build CPU's candidates reach nncf.quantize: disable with VNNI; without it, both fixes judged
    fixes = ov_backend.overflow_fix_candidates("CPU", "auto")[0]
    assert res.recipe["overflow_fix"] in fixes and res.recipe["overflow_fix_reason"].startswith("build CPU")
    searched = res.recipe.get("calibration_search", {"trials": [{"overflow_fix": fixes[0]}]})
    assert tuple(t["overflow_fix"] for t in searched["trials"]) == fixes
    fp32_out, _ = build("openvino-cpu", "fp32")
    assert (out / WEIGHTS).stat().st_size < 0.3 * (fp32_out / WEIGHTS).stat().st_size


def test_fp16_bin_is_half_of_fp32(build):
    fp32, _ = build("openvino-cpu", "fp32")
    fp16, res = build("openvino-cpu", "fp16")
    ratio = (fp16 / WEIGHTS).stat().st_size / (fp32 / WEIGHTS).stat().st_size
    assert 0.45 < ratio < 0.55
    assert "f16" in _const_types(_read(fp16, res.model_file))


def test_int4_has_4bit_weights_and_all_layers_shrinks_table(build, eval_batches):
    out, res = build("openvino-cpu", "int4")
    assert _const_types(_read(out, res.model_file)) & {"u4", "i4"}
    assert res.recipe["ir"]["embedding_table"]["dtype"] in ("u8", "i8")  # NNCF keeps it 8-bit by default
    out_all, res_all = build("openvino-cpu", "int4", all_layers=True, ratio=1.0)  # ratio < 1 keeps the table 8-bit
    assert res_all.recipe["ir"]["embedding_table"]["dtype"] in ("u4", "i4")
    assert (out_all / WEIGHTS).stat().st_size < 0.7 * (out / WEIGHTS).stat().st_size
    batches, ref = eval_batches
    assert meets_floor(cosines(embed(_load(out_all, res_all), batches), ref), "int4")


def test_int4_float_zero_points_write_every_linear_as_u4_with_fp32_zero_points(build, eval_batches):
    """zero_points=float: every Linear is a u4 constant behind f32 zero-point / scale constants (the
    grid record says none was on a 4-bit grid before), the table and the rest are NNCF's 8-bit,
    and the IR meets the int4 floor."""
    out, res = build("openvino-cpu", "int4", zero_points="float")
    assert res.recipe["zero_points"] == "float" and res.recipe["grid"]["weights"] == 12
    assert res.recipe["grid"]["already_on_the_grid"] == 0 and res.recipe["linears_4bit"] == 12
    model = _read(out, res.model_file)
    matmuls = [op for op in model.get_ops() if op.get_type_name() == "MatMul" and _weight_source(op) == "u4"]
    assert len(matmuls) == 12
    for mm in matmuls:
        scale = mm.input_value(1).get_node().input_value(0).get_node()  # Reshape <- Multiply(Subtract, scale)
        assert scale.get_type_name() == "Multiply"
        subtract, scale_const = (scale.input_value(i).get_node() for i in (0, 1))
        assert subtract.get_type_name() == "Subtract"
        assert scale_const.get_output_element_type(0).get_type_name() == "f32"
        assert subtract.input_value(1).get_node().get_output_element_type(0).get_type_name() == "f32"
    assert res.recipe["ir"]["embedding_table"]["dtype"] in ("u8", "i8")
    batches, ref = eval_batches
    assert meets_floor(cosines(embed(_load(out, res), batches), ref), "int4")


@pytest.mark.parametrize("options, named", [({"zero_points": "float", "scale_estimation": False}, "scale_estimation"),
                                            ({"zero_points": "float", "ratio": 1.0}, "ratio"),
                                            ({"zero_points": "float", "mode": "int4_sym"}, "mode=int4_sym"),
                                            ({"zero_points": "float", "group_size": -1}, "group_size=-1")])
def test_float_zero_points_refuse_nncf_only_options(options, named):
    with pytest.raises(TargetError, match=named) as info:
        BACKEND.resolve_options(TARGET["openvino-cpu"], "int4", options)
    assert info.value.exit_code == 2 and "drop" in info.value.hint and "\n" not in str(info.value)
    resolved = BACKEND.resolve_options(TARGET["openvino-cpu"], "int4", {"zero_points": "float"})
    assert BACKEND.resolve_options(TARGET["openvino-cpu"], "int4", resolved) == resolved  # compile resolves again


def test_float_zero_points_give_a_q4_1_weight_back_exactly_on_the_cpu_plugin():
    """A weight on GGUF Q4_1's grid, rewritten by the OpenVINO writer, runs on the CPU plugin as a
    compressed u4 FullyConnected and gives x @ W back to fp32 rounding."""
    import openvino as ov
    import openvino.opset13 as ops

    from embedc.targets.openvino.float_zero import compress_float_zero
    from helpers import q4_1_weight

    rng = np.random.default_rng(0)
    w = q4_1_weight(rng, 256, 64)  # [K, N]
    x = ops.parameter([-1, 256], np.float32, name="x")
    mm = ops.matmul(x, ops.constant(w.T.copy()), False, True)  # the converted-ONNX layout of a Linear
    mm.set_friendly_name("linear")
    model = ov.Model([mm], [x])
    names, grid = compress_float_zero(model, 32)
    assert names == ["linear"] and grid["already_on_the_grid"] == 1
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feed = rng.standard_normal((8, 256)).astype(np.float32)
    got = compiled(feed)[0]
    np.testing.assert_allclose(got, feed @ w, rtol=0, atol=1e-5 * np.abs(feed @ w).max())
    fused = [op for op in compiled.get_runtime_model().get_ops()
             if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"]
    assert [op.get_rt_info()["runtimePrecision"].astype(str) for op in fused] == ["u4"]


def _weight_source(matmul) -> str:
    """The element type of the constant a MatMul's weight comes from (through its decompression
    ops). In a saved int8-static IR the quantized weights are i8 (symmetric, their FakeQuantize
    folded on save); NNCF's INT8_ASYM weight-only compression stores u8; an untouched weight is f32."""
    node = matmul.input_value(1).get_node()
    while node.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "FakeQuantize"):
        node = node.input_value(0).get_node()
    return node.get_output_element_type(0).get_type_name()


@pytest.mark.parametrize("excluded_as", ["int8-weight-only", "fp32"])
def test_int8_static_exclude_keeps_matched_layers_activations_in_fp32(build, compile_context, eval_batches,
                                                                      excluded_as):
    out, res = build("openvino-cpu", "int8-static", exclude=["layer.1.output.dense"], excluded_as=excluded_as)
    rec = res.recipe["ignored_scope"]
    assert rec["nodes"] == 1 and rec["modules"][0].endswith("layer.1.output.dense")
    assert res.recipe["excluded_as"] == excluded_as
    from embedc.targets.openvino.backend import module_paths

    paths = module_paths(compile_context.reference_onnx)
    dense = [op for op in _read(out, res.model_file).get_ops()
             if op.get_type_name() == "MatMul" and paths.get(op.get_friendly_name(), "").endswith(".dense")]
    fed_by_fq = {paths[op.get_friendly_name()]: op.input_value(0).get_node().get_type_name() == "FakeQuantize"
                 for op in dense}
    assert fed_by_fq and {p for p, fq in fed_by_fq.items() if not fq} == set(rec["modules"])
    weights = {paths[op.get_friendly_name()]: _weight_source(op) for op in dense}
    # the excluded layer's weights: 8-bit without activation quantization, or left FP32; every other
    # layer keeps int8-static's symmetric int8 weights
    assert weights.pop(rec["modules"][0]) == ("u8" if excluded_as == "int8-weight-only" else "f32")
    assert set(weights.values()) == {"i8"}
    batches, ref = eval_batches
    assert meets_floor(cosines(embed(_load(out, res), batches), ref), "int8-static")


def test_threads_and_f32_are_pinned(build):
    out, res = build("openvino-cpu", "fp32")
    compiled = _load(out, res, threads=1).compiled
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


def test_npu_buckets_are_static_and_cover_calibration(build, compile_context):
    out, res = build("openvino-npu", "fp32")
    buckets = res.runtime["buckets"]
    assert res.runtime["static_shapes"] and res.runtime["device"] == "NPU"
    assert max(b["length"] for b in buckets) >= compile_context.length_stats["max"]
    assert max(b["length"] for b in buckets) == compile_context.reference_meta["max_length"]
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS] + [b["model"] for b in buckets])
    for b in buckets:
        model = _read(out, b["model"])
        for port in model.inputs:
            assert port.get_partial_shape().is_static
            assert list(port.get_shape()) == [b["batch"], b["length"]]
    assert res.unverified and "NPU" in res.unverified[0]


@pytest.mark.parametrize("buckets", [None, ["2x64", 128]])
def test_npu_padding_matches_dynamic_ir(build, eval_batches, buckets):
    """Batches of 8 split into bucket batches and padded give the dynamic IR's embeddings."""
    opts = {} if buckets is None else {"buckets": buckets}
    out, res = build("openvino-npu", "fp32", **opts)
    dyn_out, dyn_res = build("openvino-cpu", "fp32")
    batches, _ = eval_batches
    if buckets is not None:  # cut to 64 tokens (mask included) so every batch fits these buckets
        batches = [{k: v[:, :64] for k, v in b.items()} for b in batches]
    npu, dyn = _load(out, res), _load(dyn_out, dyn_res)
    np.testing.assert_allclose(embed(npu, batches), embed(dyn, batches), atol=2e-5)


def test_npu_batch_longer_than_buckets_is_refused(build, eval_batches):
    out, res = build("openvino-npu", "fp32", buckets=[32])
    batches, _ = eval_batches
    long = next(b for b in batches if shapes.used_length(b) > 32)
    with pytest.raises(TargetError, match="exceeds the largest NPU bucket"):
        _load(out, res).embed(long)


@pytest.mark.parametrize("options, match", [({"buckets": []}, "at least one"),
                                            ({"buckets": [1024]}, "exceeds the model's max length")])
def test_npu_without_usable_shapes_is_refused(compile_context, tmp_path, options, match):
    ctx = dataclasses.replace(compile_context, options=options)
    with pytest.raises(TargetError, match=match):
        BACKEND.compile(TARGET["openvino-npu"], "fp32", ctx, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_exclude_pattern_that_matches_nothing_is_a_usage_error(compile_context, tmp_path):
    ctx = dataclasses.replace(compile_context, options={"exclude": ["no_such_module"]})
    with pytest.raises(TargetError, match="matches no MatMul or Gather") as info:
        BACKEND.compile(TARGET["openvino-cpu"], "int8-static", ctx, tmp_path / "out")
    assert info.value.exit_code == 2 and info.value.hint


def test_gpu_artifact_records_device_settings(build):
    out, res = build("openvino-gpu", "fp16")
    assert res.runtime["device"] == "GPU" and res.runtime["config"]["INFERENCE_PRECISION_HINT"] == "f16"
    assert res.unverified and "CPU plugin" in res.unverified[0]
    assert (out / res.model_file).is_file()


def test_missing_openvino_is_a_one_line_install_hint(compile_context, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes 'import openvino' fail
    with pytest.raises(MissingDependencyError) as info:
        BACKEND.compile(TARGET["openvino-cpu"], "fp32", compile_context, tmp_path / "out")
    assert info.value.hint == "pip install 'embedc[openvino]'" and "\n" not in str(info.value)


def test_default_buckets_follow_length_stats():
    stats = {"p50": 20, "p90": 70, "p99": 130, "max": 200}
    assert [b.length for b in shapes.default_buckets(stats, 512)] == [32, 96, 160, 224, 512]
    assert [b.length for b in shapes.default_buckets({**stats, "max": 600}, 256)] == [32, 96, 160, 256]
    assert shapes.pick_bucket(shapes.parse_buckets(["4x128", 128, 64], 512), 100) == shapes.Bucket(128, 4)


def test_each_precision_quantizes_its_own_copy_of_the_converted_reference(scaled_context, tmp_path):
    """The converted reference is kept per thread and cloned: compressing weights for one
    precision must leave the next fp32 compile of the same export at FP32."""
    w8 = BACKEND.compile(TARGET["openvino-cpu"], "int8-weights", scaled_context, tmp_path / "w8")
    assert "u8" in _const_types(_read(tmp_path / "w8", w8.model_file))
    res = BACKEND.compile(TARGET["openvino-cpu"], "fp32", scaled_context, tmp_path / "fp32")
    types = _const_types(_read(tmp_path / "fp32", res.model_file))
    assert "f32" in types and not types & {"u8", "i8"}, types


def test_a_large_reference_is_quantized_from_a_mapped_ir_with_the_same_result(build, scaled_context, tmp_path,
                                                                              monkeypatch):
    """Above the size kept in memory, NNCF works on convert_model's graph saved to a scratch IR and
    read back mapped (its weights file-backed, not a heap copy: 1.76 GB at a 0.6B decoder). The
    int4 IR (data-aware, with scale estimation, which needs convert_model's weight layout) is
    byte for byte the one from the in-memory conversion."""
    from embedc.targets.openvino import convert

    out, res = build("openvino-cpu", "int4")
    monkeypatch.setattr(convert, "KEEP_CONVERTED_BYTES", 0)
    work = tmp_path / "work"
    work.mkdir()
    mapped = BACKEND.compile(TARGET["openvino-cpu"], "int4", dataclasses.replace(scaled_context, work_dir=work),
                             tmp_path / "mapped")
    assert res.recipe["scale_estimation"] and "read back memory-mapped" in mapped.recipe["converter"]
    assert (work / "converted" / "converted.bin").is_file()   # the IR NNCF read, mapped
    assert "read back" not in res.recipe["converter"]
    assert (tmp_path / "mapped" / WEIGHTS).read_bytes() == (out / WEIGHTS).read_bytes()
    ops = [[op.get_type_name() for op in _read(d, res.model_file).get_ordered_ops()] for d in (tmp_path / "mapped", out)]
    assert ops[0] == ops[1]   # the XML differs only in generated node names


def test_nncf_run_step_by_step_gives_nncf_quantizes_model(scaled_context, tmp_path, monkeypatch):
    """int8-static runs NNCF's pipeline one step at a time (embedc.targets.openvino.nncf_steps)
    so that a large model's memory can be freed between SmoothQuant and the ranges; the IR
    must be the one ``nncf.quantize`` writes (here with the mapped IR between steps; the next
    test checks the in-memory run against the mapped one through the backend)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    from embedc.targets.openvino.backend import _calibration_rows
    from embedc.targets.openvino.convert import converted_reference
    from embedc.targets.openvino.nncf_steps import quantize_in_steps

    def args():
        model = converted_reference(ov, scaled_context.reference_onnx)[0]
        rows = _calibration_rows(scaled_context, [p.get_any_name() for p in model.inputs])
        return model, nncf.Dataset(rows), dict(
            model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED, subset_size=len(rows),
            advanced_parameters=AdvancedQuantizationParameters(
                overflow_fix=nncf.OverflowFix.DISABLE, smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=0.95)))

    from nncf.openvino.graph.model_transformer import OVModelTransformer

    created = OVModelTransformer.__dict__["_create_constant"].__func__
    smoothed: dict[str, list] = {}

    def spy(value, dtype, name, shared_memory=False):  # what reaches the model builder, per run
        if shared_memory:   # SmoothQuant's weight updates are the shared-memory constants
            smoothed.setdefault(run_name, []).append(value.dtype)
        return created(value, dtype, name, shared_memory)

    monkeypatch.setattr(OVModelTransformer, "_create_constant", staticmethod(spy))
    saved = {}
    for run_name, run in {"nncf.quantize": lambda m, d, kw: nncf.quantize(m, d, **kw),
                      "steps-mapped": lambda m, d, kw: quantize_in_steps(ov, nncf, m, d, scratch=tmp_path / "s", **kw)
                      }.items():
        model, data, kw = args()
        ov.save_model(run(model, data, kw), str(tmp_path / f"{run_name}.xml"), compress_to_fp16=False)
        saved[run_name] = (tmp_path / f"{run_name}.bin").read_bytes()
    assert len(saved["nncf.quantize"]) > 0
    assert saved["steps-mapped"] == saved["nncf.quantize"]
    assert (tmp_path / "s" / "step0.bin").is_file()   # SmoothQuant's model went through the mapped IR
    # NNCF alone hands over float64 weights (twice the model's size, held until the end of SmoothQuant)
    assert set(smoothed["nncf.quantize"]) == {np.dtype("float64")}
    assert set(smoothed["steps-mapped"]) == {np.dtype("float32")}
    types = _const_types(ov.Core().read_model(str(tmp_path / "steps-mapped.xml")))
    assert "i8" in types or "u8" in types, types   # really quantized, not the FP32 graph twice


def test_a_large_reference_runs_int8_static_through_mapped_steps_with_the_same_result(build, scaled_context,
                                                                                      tmp_path, monkeypatch):
    from embedc.targets.openvino import convert

    out, res = build("openvino-cpu", "int8-static")
    monkeypatch.setattr(convert, "KEEP_CONVERTED_BYTES", 0)
    work = tmp_path / "work"
    work.mkdir()
    mapped = BACKEND.compile(TARGET["openvino-cpu"], "int8-static",
                             dataclasses.replace(scaled_context, work_dir=work), tmp_path / "mapped")
    assert "read back memory-mapped" in mapped.recipe["run"] and "memory-mapped" not in res.recipe["run"]
    # without VNNI the default judges two overflow fixes, each candidate through its own steps
    steps = "nncf-steps-0" if "calibration_search" in res.recipe else "nncf-steps"
    assert (work / steps / "step0.bin").is_file()
    assert (tmp_path / "mapped" / WEIGHTS).read_bytes() == (out / WEIGHTS).read_bytes()


def test_openvino_and_nncf_write_nothing_into_the_home_folder_and_send_nothing(tmp_path):
    """Imported plainly, openvino and nncf write ~/intel/openvino_ga_cid and ~/intel/stats, and
    convert_model forks a process that posts usage telemetry. Through embedc: nothing in HOME."""
    import os
    import subprocess
    import sys

    code = (
        "import onnx\n"
        "from onnx import TensorProto, helper\n"
        "from embedc.targets.openvino.backend import _import_nncf, _import_openvino\n"
        "ov = _import_openvino(); nncf = _import_nncf()\n"
        "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',\n"
        "    [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],\n"
        "    [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])\n"
        f"onnx.save(helper.make_model(g), {str(tmp_path / 'm.onnx')!r})\n"
        f"ov.convert_model({str(tmp_path / 'm.onnx')!r})\n"
        "import multiprocessing; assert not multiprocessing.active_children()\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI", "TF_BUILD", "JENKINS_URL")}
    subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(home)}, check=True, timeout=120)
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("value, resolved", [([0.85, 1.0], (0.85, 1.0)), ([0.9], 0.9), (0.5, 0.5), ((1.0, 0.7), (1.0, 0.7))])
def test_smooth_quant_alpha_takes_one_number_or_distinct_candidates(value, resolved):
    import json

    got = BACKEND.resolve_options(TARGET["openvino-cpu"], "int8-static", {"smooth_quant_alpha": value})
    assert got["smooth_quant_alpha"] == resolved
    again = json.loads(json.dumps(got))  # the recipe and the cache key hold it as JSON: resolves to itself
    assert BACKEND.resolve_options(TARGET["openvino-cpu"], "int8-static", again) == got


@pytest.mark.parametrize("value", [[], [0.85, 0.85], [0.5, 1.5], "auto", [True]])
def test_smooth_quant_alpha_refuses_an_empty_repeated_or_out_of_range_list(value):
    with pytest.raises(TargetError, match="smooth_quant_alpha") as err:
        BACKEND.resolve_options(TARGET["openvino-cpu"], "int8-static", {"smooth_quant_alpha": value})
    assert "distinct" in err.value.hint


def test_a_list_of_smooth_quant_alphas_keeps_the_candidate_best_on_the_calibration_texts(build, scaled_context):
    """Each candidate is quantized and judged on the calibration texts; the artifact is the winner
    (the same bytes as a build with that alpha alone), and its own calibration cosine is the
    winner's recorded one, not the last candidate's."""
    from embedc.onnxkit.metrics import cosine_stats
    from embedc.targets.openvino.backend import _calibration_rows
    from embedc.targets.openvino.calibration_search import reference_embeddings

    alphas = [1.0, 0.3]
    out, res = build("openvino-cpu", "int8-static", smooth_quant_alpha=alphas, overflow_fix="disable")
    search = res.recipe["calibration_search"]
    trials = {t["smooth_quant_alpha"]: t for t in search["trials"]}
    assert list(trials) == alphas
    assert search["candidates"] == [{"smooth_quant_alpha": a, "overflow_fix": "disable"} for a in alphas]
    assert trials[1.0]["mean"] != trials[0.3]["mean"]   # the alphas really give different models
    best = max(alphas, key=lambda a: (trials[a]["mean"], trials[a]["min"]))
    assert search["chosen"]["smooth_quant_alpha"] == best == res.recipe["smooth_quant_alpha_matmul"]
    rows = _calibration_rows(scaled_context, ["input_ids", "attention_mask"])
    runner = _load(out, res)
    got = cosine_stats(reference_embeddings(scaled_context.reference_onnx, rows),
                       np.concatenate([runner.embed(r) for r in rows]))
    assert got["mean"] == pytest.approx(trials[best]["mean"], abs=2e-6)
    alone, _ = build("openvino-cpu", "int8-static", smooth_quant_alpha=best, overflow_fix="disable")
    assert (alone / WEIGHTS).read_bytes() == (out / WEIGHTS).read_bytes()


def test_a_list_of_overflow_fixes_keeps_the_one_this_cpu_runs_best(build):
    """The overflow fix's 7-bit weights cost parity where int8 runs on VNNI dot products; on an
    AVX2-only CPU, u8*s8 pairs saturate VPMADDUBSW's int16 sums, and on this scaled model (Linear
    weights x10) that costs more than the 7-bit weights do. Judged on the build CPU's calibration
    texts, the search keeps whichever this CPU runs better, and the artifact is that candidate."""
    out, res = build("openvino-cpu", "int8-static", overflow_fix=["enable", "disable"])
    search = res.recipe["calibration_search"]
    trials = {t["overflow_fix"]: t for t in search["trials"]}
    assert list(trials) == ["enable", "disable"] and trials["enable"]["mean"] != trials["disable"]["mean"]
    expected = "disable" if ov_backend.cpu_has_vnni()[0] else "enable"
    assert max(trials, key=lambda f: trials[f]["mean"]) == expected, trials
    assert search["chosen"]["overflow_fix"] == expected == res.recipe["overflow_fix"]
    alone, _ = build("openvino-cpu", "int8-static", overflow_fix=expected)
    assert (alone / WEIGHTS).read_bytes() == (out / WEIGHTS).read_bytes()


@pytest.mark.parametrize("value, resolved", [(["enable", "first_layer_only"], ("enable", "first_layer_only")),
                                             (["DISABLE"], "disable"), ("auto", "auto")])
def test_overflow_fix_takes_one_choice_or_distinct_candidates(value, resolved):
    got = BACKEND.resolve_options(TARGET["openvino-cpu"], "int8-static", {"overflow_fix": value})
    assert got["overflow_fix"] == resolved


@pytest.mark.parametrize("value", [[], ["enable", "enable"], ["auto", "enable"], ["enable", "sometimes"]])
def test_overflow_fix_refuses_auto_in_a_list_and_repeats(value):
    with pytest.raises(TargetError, match="overflow_fix") as err:
        BACKEND.resolve_options(TARGET["openvino-cpu"], "int8-static", {"overflow_fix": value})
    assert "distinct" in err.value.hint
