"""The backend contract, for every registered backend: declarations, options
checked when the spec is (before any work: defect 3), idempotent
resolution, cache facts for machine-dependent choices (defect 6),
third-party exceptions as one-line typed errors (defect 4), runners with
``run(feeds, outputs)``, model files and sentence-transformers kwargs."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from embedc.errors import ArtifactError, CompileError, TargetError
from embedc.targets.base import Backend
from embedc.targets.registry import all_targets, backends, get_backend, get_target

# One non-default value for every option of every (backend, precision): resolution must keep them.
NON_DEFAULTS = {
    ("ort", "fp32"): {"optimization": "BASIC"},
    ("ort", "fp16"): {"op_block_list": "Softmax"},
    ("ort", "int8-dynamic"): {"exclude": "layer.0", "quantize_embedding": False, "per_channel": False,
                              "embedding_block_size": 64},
    ("ort", "int8-static"): {"calibrate_method": "percentile", "exclude": ["layer.*.output.dense"],
                             "auto_exclude": 3, "target_mean": 1, "target_min": 0.5, "excluded_as": "FP32",
                             "quantize_embedding": False, "embedding_block_size": 32, "percentile": 99,
                             "smooth_quant": False, "smooth_alpha": 0.5},
    ("ort", "int4"): {"algorithm": "HQQ", "block_size": 16, "is_symmetric": False, "accuracy_level": 0,
                      "quantize_embedding": False, "embedding_bits": 8, "embedding_block_size": 32,
                      "exclude": ["layer.1"], "gptq_samples": 8, "auto_exclude": 3, "target_mean": 0.9,
                      "target_min": 0.8},
    ("openvino", "int8-static"): {"device": "cpu.1", "smooth_quant_alpha": 0.5, "overflow_fix": "ENABLE",
                                  "preset": "performance", "exclude": "layer.1.output.dense"},
    ("openvino", "int8-weights"): {"mode": "int8_sym"},
    ("openvino", "int4"): {"mode": "int4_sym", "group_size": 64, "ratio": 1, "all_layers": True,
                           "backup_mode": "none", "scale_estimation": False, "awq": True},
    ("tensorrt", "fp16"): {"exclude": ["layer.1.output"], "threads": 1, "batch_opt": 8, "workspace_mb": 1024,
                           "timing_cache": "t.cache", "seq_max": 256},
    ("tensorrt", "int8"): {"method": "Entropy", "percentile": 99.9, "compute": "fp32", "search": False,
                           "search_mean": 0.99, "search_p01": 0.98, "search_min": 0.97, "search_texts": 8,
                           "search_trials": 3, "max_kept_fraction": 0.5},
    ("tensorrt", "int4"): {"block_size": 64, "algorithm": "rtn"},
}


def _pairs():
    return [(t.name, p) for t in all_targets().values() for p in t.precisions]


def test_every_backend_declares_the_contract():
    builtin = {"ort", "openvino", "tensorrt"}
    found = {n: b for n, b in backends().items() if n in builtin}  # the fast tier may add its fake backend
    assert set(found) == builtin
    for name, b in found.items():
        assert isinstance(b, Backend) and b.name == name and b.targets and b.libraries
        assert b.source_package == f"embedc.targets.{name}"
        assert all(t.backend == name and get_backend(t) is b for t in b.targets)
    caps = {n: b.capabilities for n, b in found.items()}
    assert (caps["ort"].st_backend, caps["openvino"].st_backend, caps["tensorrt"].st_backend) == ("onnx", "openvino",
                                                                                                  None)
    assert caps["tensorrt"].engine and not caps["ort"].engine and not caps["openvino"].engine
    assert [caps[n].report_marker for n in ("ort", "openvino", "tensorrt")] == ["o", "s", "^"]


@pytest.mark.parametrize("target, precision", _pairs())
def test_resolution_is_idempotent_and_keeps_every_given_value(target, precision):
    t = get_target(target)
    b = get_backend(t)
    given = NON_DEFAULTS.get((t.backend, precision), {})
    if "device" in given and t.settings.get("ov_device") != "CPU":
        given = {k: v for k, v in given.items() if k != "device"}
    if t.settings.get("static_shapes"):
        given = {**given, "buckets": ["2x64", 128]}
    defaults = b.resolve_options(t, precision, {})
    resolved = b.resolve_options(t, precision, given)
    assert set(resolved) == set(defaults) and set(given) <= set(resolved)
    assert all(resolved[k] != defaults[k] for k in given), "a given value was dropped"
    assert b.resolve_options(t, precision, resolved) == resolved
    assert b.resolve_options(t, precision, json.loads(json.dumps(resolved))) == resolved


@pytest.mark.parametrize("target, precision, options, named", [
    ("ort-cpu", "int8-dynamic", {"per_chanel": False}, "per_chanel"),
    ("ort-cpu", "int8-static", {"target_min": 1.5}, "target_min"),
    ("openvino-cpu", "int8-static", {"ignored_scopes": ["x"]}, "ignored_scopes"),
    ("openvino-cpu", "int8-static", {"overflow_fix": "sometimes"}, "overflow_fix"),
    ("openvino-cpu", "int4", {"all_layers": "False"}, "all_layers"),
    ("openvino-cpu", "int4", {"group_size": 32.5}, "group_size"),
    ("openvino-cpu", "int4", {"ratio": 1.5}, "ratio"),
    ("openvino-cpu", "fp32", {"device": "GPU"}, "device"),
    ("openvino-gpu", "fp32", {"buckets": [64]}, "buckets"),
    ("openvino-npu", "fp32", {"buckets": ["two"]}, "buckets"),
    ("tensorrt-sm90", "int8", {"metod": "minmax"}, "metod"),
    ("tensorrt-sm90", "int8", {"method": "kl"}, "method"),
    ("tensorrt-sm90", "int4", {"block_size": 24}, "block_size"),
    ("tensorrt-sm90", "int8", {"compute": "bf16"}, "compute"),
    ("tensorrt-sm90", "fp16", {"block_size": 32}, "block_size"),
    ("tensorrt-sm90", "fp16", {"batch_opt": 100}, "batch"),
    ("tensorrt-sm90", "int8", {"exclude": "layer.1 output"}, "exclude"),
])
def test_bad_options_fail_at_spec_time_with_one_line(target, precision, options, named):
    t = get_target(target)
    with pytest.raises(TargetError, match=named) as err:
        get_backend(t).resolve_options(t, precision, options)
    assert err.value.exit_code == 2 and err.value.hint and "\n" not in str(err.value)


def test_unknown_option_error_lists_the_valid_ones():
    t = get_target("tensorrt-sm90")
    with pytest.raises(TargetError) as err:
        get_backend(t).resolve_options(t, "int8", {"metod": "minmax"})
    assert "method" in err.value.hint and "search_mean" in err.value.hint


def test_resolving_options_imports_no_backend_library():
    """--dry-run stays fast: options of every pair resolve without onnx, onnxruntime, openvino or nncf."""
    code = ("import sys\n"
            "from embedc.targets.registry import all_targets, get_backend\n"
            "for t in all_targets().values():\n"
            "    for p in t.precisions:\n"
            "        get_backend(t).resolve_options(t, p, {})\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'openvino', 'nncf', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- cache facts: machine-dependent choices are in the key (defect 6) -------------------------
@pytest.mark.parametrize("flags, fix", [({"avx2", "fma"}, "enable|first_layer_only"),
                                        ({"avx2", "avx512_vnni"}, "disable"), ({"avx2", "avx_vnni"}, "disable"),
                                        ({"amx_int8"}, "disable")])
def test_openvino_overflow_fix_is_a_cache_fact(monkeypatch, flags, fix):
    """AVX2-only CPUs saturate u8*s8 in VPMADDUBSW, so NNCF's overflow fix is judged there only (on
    every layer, and on the first layer only), and the choice is part of the artifact's cache key:
    a VNNI-tuned IR is never served to an AVX2 host."""
    from embedc.targets.openvino import backend as ov_backend
    from embedc.targets import host

    monkeypatch.setattr(ov_backend, "cpu_flags", lambda: set(flags))  # the host probe, not the choice
    monkeypatch.setattr("embedc.machine.cpu_flags", lambda: set(flags))
    t = get_target("openvino-cpu")
    b = get_backend(t)
    facts = b.cache_facts(t, "int8-static", {})
    assert facts["overflow_fix"] == fix and facts["vnni"] == bool(set(flags) & host.VNNI_FLAGS)
    assert b.cache_facts(t, "int8-static", {"overflow_fix": "enable"})["overflow_fix"] == "enable"
    assert b.cache_facts(get_target("openvino-gpu"), "int8-static", {})["overflow_fix"] == "disable"
    assert ov_backend.overflow_fix_candidates("CPU", "auto")[0] == tuple(fix.split("|"))
    assert b.cache_facts(t, "int8-static", {"overflow_fix": ["disable", "enable"]})["overflow_fix"] == "disable|enable"


def test_ort_cache_facts_name_the_kernels_parity_ran_on(monkeypatch):
    t = get_target("ort-cpu-avx512-vnni")
    b = get_backend(t)
    monkeypatch.setattr("embedc.machine.cpu_flags", lambda: {"avx2"})
    avx2 = b.cache_facts(t, "int8-static", {})
    monkeypatch.setattr("embedc.machine.cpu_flags", lambda: {"avx2", "avx512_vnni"})
    vnni = b.cache_facts(t, "int8-static", {})
    assert avx2 != vnni and (avx2["vnni"], vnni["vnni"]) == (False, True)
    from embedc.targets.ort.backend import _unverified

    assert any("VNNI" in u or "vnni" in u for u in _unverified(t, "int8-static", avx2))
    assert not _unverified(t, "int8-static", vnni)
    # the reverse: an artifact for AVX2-only CPUs (or any CPU) judged on a VNNI host ran the VNNI kernels
    for name in ("ort-cpu-avx2", "ort-cpu"):
        assert any("AVX2 integer kernels (no VNNI) not exercised" in u
                   for u in _unverified(get_target(name), "int8-dynamic", {**vnni, "machine": "x86_64"}))
        assert not _unverified(get_target(name), "int8-dynamic", {**avx2, "machine": "x86_64"})
        assert not _unverified(get_target(name), "fp32", {**vnni, "machine": "x86_64"})


@pytest.mark.parametrize("vnni", [True, False])
def test_openvino_int8_static_built_on_a_vnni_host_says_avx2_kernels_were_not_exercised(monkeypatch, vnni):
    from embedc.targets.openvino import backend as ov_backend

    monkeypatch.setattr(ov_backend, "cpu_has_vnni", lambda: (vnni, "test"))
    unverified = ov_backend.OpenVINOBackend._unverified
    got = unverified("CPU", "int8-static", "disable")
    assert len(got) == vnni and all("AVX2 int8 kernels (no VNNI) not exercised" in u and "without the overflow fix"
                                    in u for u in got)
    for precision in ("fp32", "int8-weights", "int4"):   # no FakeQuantize on activations, no overflow fix
        assert unverified("CPU", precision) == ()


# ---- third-party exceptions come out typed, one line (defect 4) -------------------------------
@pytest.mark.parametrize("target, precision", [("ort-cpu", "int8-static"), ("openvino-cpu", "int8-static"),
                                               ("tensorrt-sm90", "int8")])
def test_a_library_failure_inside_compile_is_a_one_line_compile_error(compile_context, tmp_path, target,
                                                                      precision):
    # calibration batches without the attention mask: the quantizer itself fails deep inside
    broken = tuple({"input_ids": b["input_ids"]} for b in compile_context.calibration)
    ctx = dataclasses.replace(compile_context, calibration=broken)
    t = get_target(target)
    with pytest.raises(CompileError) as err:
        get_backend(t).compile(t, precision, ctx, tmp_path / "out")
    assert "\n" not in str(err.value) and err.value.hint and err.value.exit_code == 1


@pytest.mark.parametrize("target, files", [("ort-cpu", {"model.onnx": b"not a model"}),
                                           ("tensorrt-sm90", {"model.onnx": b"not a model"}),
                                           ("openvino-cpu", {"openvino_model.xml": b"<net", "openvino_model.bin": b""})])
def test_a_corrupt_model_file_is_a_one_line_artifact_error(tmp_path, target, files):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    t = get_target(target)
    meta = {"model_file": next(iter(files)), "runtime": {}}
    with pytest.raises(ArtifactError) as err:
        get_backend(t).load(tmp_path, meta)
    assert "\n" not in str(err.value) and err.value.hint


# ---- runners, model files, sentence-transformers kwargs ---------------------------------------
def test_ort_runner_runs_named_outputs_and_st_kwargs(tiny_reference, tiny_tokenizer):
    from embedc.artifact import read_meta

    b = backends()["ort"]
    meta = read_meta(tiny_reference)
    runner = b.load(tiny_reference, meta, threads=1)
    feeds = {k: np.asarray(v, dtype=np.int64) for k, v in
             tiny_tokenizer(["hello world", "hi"], padding=True, return_tensors="np").items()
             if k in ("input_ids", "attention_mask")}
    out = runner.run(feeds, ["last_hidden_state", "sentence_embedding"])
    assert out["last_hidden_state"].shape[:2] == feeds["input_ids"].shape
    np.testing.assert_array_equal(out["sentence_embedding"], runner.embed(feeds))
    kwargs, reason = b.st_model_kwargs(tiny_reference, meta)
    assert reason is None and kwargs == {"file_name": "model.onnx", "provider": "CPUExecutionProvider"}
    assert b.model_files(tiny_reference, meta) == ["model.onnx"]


def test_tensorrt_artifacts_have_no_sentence_transformers_backend(tmp_path):
    b = backends()["tensorrt"]
    kwargs, reason = b.st_model_kwargs(tmp_path, {"model_file": "model.onnx"})
    assert kwargs is None and "tensorrt" in reason
    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "model.plan").write_bytes(b"engine")  # built later on a GPU host: not the artifact's model
    assert b.model_files(tmp_path, {"model_file": "model.onnx"}) == ["model.onnx"]
