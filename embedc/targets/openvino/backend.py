"""OpenVINO backend: IR (.xml + .bin) converted from the validated reference
ONNX, quantized with NNCF, reshaped to static buckets for NPU.

Precisions: ``fp32`` / ``fp16`` (IR weights in that type), ``int8-static``
(``nncf.quantize``: SmoothQuant + FakeQuantize on activations and weights,
embedding table int8), ``int8-weights`` / ``int4`` (``nncf.compress_weights``,
activations stay float). Parity runs the IR on the CPU plugin in f32 for every
target: the IR is device-independent, the device's own kernels are not
checked here (``CompileResult.unverified`` says so).

openvino / nncf are imported inside functions (``embedc[openvino]`` extra).
"""
from __future__ import annotations

import ast
import contextlib
import logging
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import ArtifactError, CompileError, MissingDependencyError, TargetError
from ...machine import cpu_flags
from . import shapes
from ..base import CompileContext, CompileResult, Target

PRECISIONS = ("fp32", "fp16", "int8-static", "int8-weights", "int4")
INSTALL_HINT = "pip install 'embedc[openvino]'"
MODEL_XML = "openvino_model.xml"  # the name optimum-intel / sentence-transformers look for
WEIGHTS = "openvino_model.bin"
OUTPUT = "sentence_embedding"
# Parity is measured in f32; CPUs with AMX/AVX512-BF16 (this one) otherwise run bf16 silently.
PARITY_PRECISION = "f32"

_LATENCY = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
TARGETS = (
    Target(name="openvino-cpu", backend="openvino", device="cpu",
           description="OpenVINO IR for x86 CPUs (dynamic batch and length)",
           precisions=PRECISIONS,
           settings={"ov_device": "CPU", "config": _LATENCY}),
    Target(name="openvino-gpu", backend="openvino", device="gpu",
           description="OpenVINO IR for Intel GPUs (dynamic batch and length)",
           precisions=PRECISIONS,
           settings={"ov_device": "GPU", "config": _LATENCY}),
    Target(name="openvino-npu", backend="openvino", device="npu",
           description="OpenVINO IR for Intel NPUs: one static (batch, length) IR per bucket",
           precisions=PRECISIONS,
           settings={"ov_device": "NPU", "config": {"PERFORMANCE_HINT": "LATENCY"},
                     "static_shapes": True},
           notes=("NPU compiles static shapes only; inputs are padded to the smallest bucket that fits",)),
)

# Option keys each precision accepts (besides "device", and "buckets" on NPU).
_PRECISION_OPTIONS = {
    "fp32": (), "fp16": (),
    "int8-static": ("smooth_quant_alpha", "overflow_fix", "ignored_scopes", "preset"),
    "int8-weights": ("mode",),
    "int4": ("mode", "group_size", "ratio", "all_layers", "backup_mode", "scale_estimation", "awq"),
}
# int8-static SmoothQuant alpha for MatMul: NNCF's TRANSFORMER default is 0.95; 0.85 measured
# best on multilingual-e5-small (min cosine 0.9985 vs 0.9957) and MiniLM (0.968 vs 0.928).
DEFAULT_SQ_ALPHA = 0.85
# int4 defaults, measured on all-MiniLM-L6-v2 (true FP32; e5-small here sits on a
# Q4_0 grid and flatters any 32-group scheme): 32-wide groups (divide 384/768/1024
# and the FFNs) beat 128 (mean cosine 0.947 vs 0.918); asymmetric + scale estimation
# + half the MatMul weights kept int8 by activation-variance ranking (ratio 0.5) is
# the only mix that met the int4 gates (mean 0.9895, min 0.972 vs 0.947 / 0.862 at
# ratio 1). The word-embedding table stays int8 (all_layers=False): a 4-bit table
# costs parity (MiniLM mean 0.957 vs 0.966 at ratio 1) and NNCF keeps it 8-bit at ratio < 1.
INT4_DEFAULTS = {"mode": "int4_asym", "group_size": 32, "ratio": 0.5, "all_layers": False,
                 "backup_mode": "int8_asym", "scale_estimation": True, "awq": False}
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


# ---- imports and settings --------------------------------------------------
def _import_openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingDependencyError("the openvino target needs the openvino package", INSTALL_HINT) from exc
    return ov


def _import_nncf():
    try:
        import nncf
    except ImportError as exc:
        raise MissingDependencyError("OpenVINO quantization needs the nncf package", INSTALL_HINT) from exc
    return nncf


@contextlib.contextmanager
def _nncf_output(nncf):
    """NNCF logs tables at INFO (its import resets the level) and draws rich
    progress bars on stdout: keep stdout clean for --json, follow embedc's level."""
    embedc_log = logging.getLogger("embedc")
    nncf.set_log_level(logging.INFO if embedc_log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    with contextlib.ExitStack() as stack:
        sink = sys.stderr if embedc_log.isEnabledFor(logging.INFO) else stack.enter_context(open(os.devnull, "w"))
        stack.enter_context(contextlib.redirect_stdout(sink))
        yield


def _device(target: Target, options: dict) -> str:
    """The OpenVINO device name (CPU, GPU, NPU, or an indexed one like GPU.1)."""
    family = target.settings.get("ov_device")
    dev = str(options.get("device", family) or "")
    m = re.fullmatch(r"(CPU|GPU|NPU)(\.\d+)?", dev.upper())
    if not m or family not in ("CPU", "GPU", "NPU"):
        raise TargetError(f"unknown OpenVINO device {dev!r} for target {target.name}",
                          "use CPU, GPU or NPU (optionally indexed, e.g. GPU.1)")
    if m.group(1) != family:
        raise TargetError(f"device {dev} does not belong to target {target.name} ({family})",
                          f"use target openvino-{m.group(1).lower()} for {m.group(1)}")
    return dev.upper()


def _check_options(target: Target, precision: str, options: dict) -> None:
    if precision not in PRECISIONS:
        raise TargetError(f"OpenVINO has no precision {precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
    allowed = {"device", *_PRECISION_OPTIONS[precision]}
    if target.settings.get("static_shapes"):
        allowed.add("buckets")
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TargetError(f"unknown option(s) {', '.join(unknown)} for {target.name} {precision}",
                          f"valid options: {', '.join(sorted(allowed))}")


def _flag(opts: dict, name: str) -> bool:
    value = opts[name]
    if not isinstance(value, bool):  # "False" from a CLI string must not read as True
        raise TargetError(f"option {name} must be true or false, got {value!r}", f"write {name}=true or {name}=false")
    return value


def _number(opts: dict, name: str, kind=float):
    value = opts[name]
    try:
        if isinstance(value, bool) or kind(value) != float(value):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise TargetError(f"option {name} must be a{'n integer' if kind is int else ' number'}, got {value!r}",
                          f"e.g. {name}={INT4_DEFAULTS.get(name, DEFAULT_SQ_ALPHA)}") from None


def _enum(enum_cls, value, what: str):
    try:
        return value if isinstance(value, enum_cls) else enum_cls(str(value).lower())
    except ValueError:
        valid = ", ".join(e.value for e in enum_cls)
        raise TargetError(f"invalid {what} {value!r}", f"choose one of: {valid}") from None


# ---- calibration, names ----------------------------------------------------
def _calibration_rows(ctx: CompileContext, input_names: list[str]) -> list[dict[str, np.ndarray]]:
    if not ctx.calibration:
        raise CompileError("no calibration batches for OpenVINO quantization",
                           "check that the calibration split is not empty")
    missing = sorted(set(input_names) - set(ctx.calibration[0]))
    if missing:
        raise CompileError(f"calibration batches lack model input(s) {', '.join(missing)}",
                           "tokenize calibration with the reference's input names")
    # batch 1, trimmed to the attended tokens: padding never enters the statistics
    return [row for b in ctx.calibration for row in shapes.split_rows({n: b[n] for n in input_names})]


def module_paths(onnx_path: Path) -> dict[str, str]:
    """ONNX node name -> torch module path (from the dynamo exporter's
    ``pkg.torch.onnx.name_scopes``); OpenVINO keeps node names as op names."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    out = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                scopes = ast.literal_eval(prop.value)  # [..., module path, op name]
                out[node.name] = scopes[-2] if len(scopes) >= 2 else ""
    return out


def _ignored_scope(nncf, model, ctx: CompileContext, patterns) -> tuple[object | None, dict]:
    """Patterns are regexes over module paths (e.g. ``layer\\.11\\.output\\.dense``)."""
    if not patterns:
        return None, {"patterns": [], "modules": [], "nodes": 0}
    if isinstance(patterns, str):
        patterns = [patterns]
    paths = module_paths(ctx.reference_onnx)
    op_names = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in ("MatMul", "Gather")}
    nodes, modules = [], set()
    for pat in patterns:
        try:
            rx = re.compile(pat)
        except re.error as exc:
            raise TargetError(f"ignored scope {pat!r} is not a valid regex ({exc})",
                              "write module-path regexes, e.g. 'layer\\.11\\.output\\.dense'") from None
        hits = sorted(n for n in op_names if n in paths and rx.search(paths[n]))
        if not hits:
            raise TargetError(f"ignored scope {pat!r} matches no MatMul/Gather module path",
                              "use paths like 'encoder.layer.11.output.dense' (see the export's name scopes)")
        nodes += hits
        modules.update(paths[n] for n in hits)
    nodes = sorted(set(nodes))
    return nncf.IgnoredScope(names=nodes), {"patterns": list(patterns), "modules": sorted(modules),
                                            "nodes": len(nodes)}


# ---- CPU capability -> overflow fix ----------------------------------------
def cpu_has_vnni(ov) -> tuple[bool, str]:
    """Whether this CPU has int8 dot-product instructions (VNNI/AMX), and the evidence."""
    flags = cpu_flags()
    if flags is not None:
        hits = sorted(flags & _VNNI_FLAGS)
        return bool(hits), "cpuinfo flags: " + (", ".join(hits) if hits else "no avx512_vnni/avx_vnni/amx_int8")
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    # OpenVINO lists BF16 only on AVX512-BF16/AMX CPUs, all of which have VNNI
    return "BF16" in caps, f"OpenVINO CPU capabilities: {', '.join(caps)}"


def _overflow_fix(nncf, ov, device: str, value) -> tuple[object, str]:
    of = nncf.OverflowFix
    if value not in (None, "auto"):
        return _enum(of, value, "overflow_fix"), "set by the overflow_fix option"
    if not device.startswith("CPU"):
        return of.DISABLE, f"{device} has no x86 int8 saturation issue"
    vnni, evidence = cpu_has_vnni(ov)
    if vnni:
        return of.DISABLE, (f"build CPU has VNNI/AMX ({evidence}): no u8*s8 saturation; "
                            "rebuild with overflow_fix=enable for AVX2-only CPUs")
    return of.ENABLE, (f"build CPU lacks VNNI ({evidence}): 7-bit weights avoid VPMADDUBSW saturation")


# ---- precision steps: model -> (model, recipe, compress_to_fp16) -----------
def _fp32(ov, nncf, model, ctx, opts, device):
    return model, {}, False


def _fp16(ov, nncf, model, ctx, opts, device):
    return model, {"weights": "fp16 via save_model(compress_to_fp16=True)"}, True


def _int8_static(ov, nncf, model, ctx, opts, device):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    names = [p.get_any_name() for p in model.inputs]
    rows = _calibration_rows(ctx, names)
    alpha = _number({"smooth_quant_alpha": DEFAULT_SQ_ALPHA, **opts}, "smooth_quant_alpha")
    fix, why = _overflow_fix(nncf, ov, device, opts.get("overflow_fix"))
    preset = _enum(nncf.QuantizationPreset, opts.get("preset", "mixed"), "preset")
    ignored, ignored_rec = _ignored_scope(nncf, model, ctx, opts.get("ignored_scopes"))
    target_device = nncf.TargetDevice[device.split(".")[0]]
    quantized = nncf.quantize(
        model, nncf.Dataset(rows), model_type=nncf.ModelType.TRANSFORMER, preset=preset,
        target_device=target_device, subset_size=len(rows), ignored_scope=ignored,
        advanced_parameters=AdvancedQuantizationParameters(
            overflow_fix=fix, smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha)))
    recipe = {"call": "nncf.quantize", "model_type": "TRANSFORMER", "preset": preset.value,
              "target_device": target_device.value, "calibration_rows": len(rows), "subset_size": len(rows),
              "smooth_quant_alpha_matmul": alpha, "overflow_fix": fix.value, "overflow_fix_reason": why,
              "ignored_scope": ignored_rec}
    return quantized, recipe, False


def _int8_weights(ov, nncf, model, ctx, opts, device):
    mode = _enum(nncf.CompressWeightsMode, opts.get("mode", "int8_asym"), "int8-weights mode")
    if mode not in (nncf.CompressWeightsMode.INT8_ASYM, nncf.CompressWeightsMode.INT8_SYM):
        raise TargetError(f"int8-weights mode must be int8_asym or int8_sym, got {mode.value}",
                          "use precision int4 for 4-bit modes")
    return nncf.compress_weights(model, mode=mode), {"call": "nncf.compress_weights", "mode": mode.value}, False


def _int4(ov, nncf, model, ctx, opts, device):
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    o = {**INT4_DEFAULTS, **opts}
    mode = _enum(nncf.CompressWeightsMode, o["mode"], "int4 mode")
    if mode not in (nncf.CompressWeightsMode.INT4_SYM, nncf.CompressWeightsMode.INT4_ASYM):
        raise TargetError(f"int4 mode must be int4_sym or int4_asym, got {mode.value}",
                          "use precision int8-weights for 8-bit modes")
    ratio = _number(o, "ratio")
    if not 0.0 < ratio <= 1.0:
        raise TargetError(f"int4 ratio {ratio} is outside (0, 1]",
                          "ratio is the share of weight parameters in 4 bits")
    kwargs = dict(mode=mode, group_size=_number(o, "group_size", int), ratio=ratio,
                  all_layers=_flag(o, "all_layers"),
                  backup_mode=_enum(nncf.BackupMode, o["backup_mode"], "backup_mode"),
                  # a group size that does not divide a layer's width is shrunk (>= 32), not fatal
                  advanced_parameters=AdvancedCompressionParameters(
                      group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
    algos = {k: _flag(o, k) for k in ("scale_estimation", "awq")}
    # the calibration set drives mixed precision (which layers stay 8-bit) and SE/AWQ; else unused
    data_aware = ratio < 1.0 or any(algos.values())
    if data_aware:
        rows = _calibration_rows(ctx, [p.get_any_name() for p in model.inputs])
        kwargs.update(dataset=nncf.Dataset(rows), subset_size=len(rows), **algos)
    compressed = nncf.compress_weights(model, **kwargs)
    recipe = {"call": "nncf.compress_weights", "mode": mode.value, "group_size": kwargs["group_size"],
              "ratio": ratio, "all_layers": kwargs["all_layers"], "backup_mode": kwargs["backup_mode"].value,
              "group_size_fallback": "adjust", **algos, "data_aware": data_aware,
              # NNCF's default with a dataset: rank layers for the 8-bit backup by activation variance
              "sensitivity_metric": "max_activation_variance" if ratio < 1.0 else None,
              "calibration_rows": kwargs.get("subset_size", 0)}
    return compressed, recipe, False


_STEPS = {"fp32": _fp32, "fp16": _fp16, "int8-static": _int8_static, "int8-weights": _int8_weights,
          "int4": _int4}


# ---- IR inspection ----------------------------------------------------------
def ir_summary(model) -> dict:
    """What the IR holds: quantizer nodes, weight element types (by parameter
    count) and the word-embedding table's storage type."""
    ops = model.get_ordered_ops()
    kinds = Counter(op.get_type_name() for op in ops)
    weights: Counter = Counter()
    for op in ops:
        if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).is_static:
            n = int(np.prod(list(op.get_output_shape(0)), dtype=np.int64))
            if n >= 1024:  # weights, not shape constants
                weights[op.get_output_element_type(0).get_type_name()] += n
    table = None
    for op in ops:  # the largest Gather data input is the word-embedding table
        if op.get_type_name() != "Gather":
            continue
        src = op.input_value(0).get_node()
        while src.get_type_name() in ("Multiply", "Subtract", "Convert", "Reshape") and src.get_input_size():
            src = src.input_value(0).get_node()
        if src.get_type_name() == "Constant" and src.get_output_partial_shape(0).is_static:
            shape = list(src.get_output_shape(0))
            if table is None or np.prod(shape) > np.prod(table["shape"]):
                table = {"shape": shape, "dtype": src.get_output_element_type(0).get_type_name()}
    return {"fake_quantize": kinds.get("FakeQuantize", 0), "fake_convert": kinds.get("FakeConvert", 0),
            "weight_params_by_type": dict(sorted(weights.items())), "embedding_table": table}


def _check_io(model, input_names: list[str], where: str) -> None:
    ins = {n for p in model.inputs for n in p.get_names()}
    outs = {n for p in model.outputs for n in p.get_names()}
    missing = [n for n in input_names if n not in ins] + ([OUTPUT] if OUTPUT not in outs else [])
    if missing:
        raise CompileError(f"{where} lacks {', '.join(missing)}", "re-export the reference model")


def _first_line(exc: Exception) -> str:
    """The first informative line of an OpenVINO/NNCF error (they start with source locations)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return ((useful or lines or [type(exc).__name__])[0])[:300]


def _pad_token_id(reference_dir: Path) -> int:
    from ...errors import ModelSourceError
    from ...models import load_tokenizer

    try:
        pad = load_tokenizer(reference_dir).pad_token_id
    except ModelSourceError as exc:
        raise CompileError(f"cannot read the tokenizer in {reference_dir} for the NPU pad id",
                           "re-export the reference (it carries the tokenizer files)") from exc
    return 0 if pad is None else int(pad)  # masked either way; 0 when the tokenizer has no pad token


# ---- backend ----------------------------------------------------------------
class OpenVINOBackend:
    name = "openvino"

    def compile(self, target: Target, precision: str, ctx: CompileContext, out_dir: Path) -> CompileResult:
        _check_options(target, precision, ctx.options)
        device = _device(target, ctx.options)
        opts = {k: v for k, v in ctx.options.items() if k not in ("device", "buckets")}
        buckets = None
        if target.settings.get("static_shapes"):  # validate before the slow steps
            max_len = int(ctx.reference_meta.get("max_length", 512))
            buckets = (shapes.parse_buckets(ctx.options["buckets"], max_len) if "buckets" in ctx.options
                       else shapes.default_buckets(ctx.length_stats, max_len))
        ov = _import_openvino()
        nncf = _import_nncf() if precision not in ("fp32", "fp16") else None
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        input_names = ctx.input_names
        seconds = {}

        t0 = time.perf_counter()
        try:
            model = ov.convert_model(str(ctx.reference_onnx))
        except Exception as exc:  # the ONNX frontend raises bare RuntimeErrors
            raise CompileError(f"openvino.convert_model failed on {ctx.reference_onnx}: {_first_line(exc)}",
                               "check that the reference export is complete (model.onnx and its .data)") from exc
        _check_io(model, input_names, "the converted model")
        seconds["convert"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        try:
            with _nncf_output(nncf) if nncf else contextlib.nullcontext():
                model, step, fp16 = _STEPS[precision](ov, nncf, model, ctx, opts, device)
        except (TargetError, CompileError):
            raise
        except Exception as exc:  # NNCF errors are plain exceptions with long messages
            raise CompileError(f"{precision} optimization failed: {_first_line(exc)}",
                               "try other options for this precision (see 'embedc targets')") from exc
        seconds["optimize"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        runtime = {"device": device, "config": self._config(target, precision), "weights": WEIGHTS}
        if step.get("overflow_fix") == "disable" and device.startswith("CPU"):
            runtime["cpu_requirement"] = ("int8 dot-product instructions (VNNI or AMX): built without the "
                                          "overflow fix; rebuild with overflow_fix=enable for AVX2-only CPUs")
        if buckets is None:
            ov.save_model(model, str(out_dir / MODEL_XML), compress_to_fp16=fp16)
            model_file = MODEL_XML
        else:
            runtime.update(self._save_buckets(ov, model, buckets, input_names, out_dir, fp16))
            runtime["pad_token_id"] = _pad_token_id(ctx.reference_dir)
            model_file = runtime["buckets"][-1]["model"]
        seconds["save"] = time.perf_counter() - t0

        saved = ov.Core().read_model(str(out_dir / model_file), str(out_dir / WEIGHTS))
        _check_io(saved, input_names, f"the saved IR {model_file}")
        recipe = {"converter": "openvino.convert_model(reference ONNX)", "precision": precision,
                  "save_model": {"compress_to_fp16": fp16}, **step, "ir": ir_summary(saved),
                  "ir_bytes": sum(p.stat().st_size for p in out_dir.iterdir() if p.suffix in (".xml", ".bin")),
                  "seconds": {k: round(v, 2) for k, v in seconds.items()},
                  "versions": {"openvino": ov.get_version(), **({"nncf": nncf.__version__} if nncf else {})}}
        return CompileResult(model_file=model_file, recipe=recipe, runtime=runtime,
                             unverified=self._unverified(device, precision))

    @staticmethod
    def _config(target: Target, precision: str) -> dict:
        config = dict(target.settings.get("config", {}))
        if target.settings["ov_device"] == "CPU":
            config["INFERENCE_PRECISION_HINT"] = PARITY_PRECISION  # what parity was measured with
        elif target.settings["ov_device"] == "GPU":
            # GPUs default to f16; fp32 artifacts ask for f32, the rest run as designed
            config["INFERENCE_PRECISION_HINT"] = "f32" if precision == "fp32" else "f16"
        return config  # NPU computes in FP16 and takes no precision hint

    @staticmethod
    def _save_buckets(ov, model, buckets, input_names, out_dir: Path, fp16: bool) -> dict:
        """One static IR per bucket. Reshaping leaves constants untouched, so
        the buckets' .bin files are identical: keep one (``WEIGHTS``)."""
        import filecmp

        entries = []
        for b in buckets:
            static = model.clone()
            static.reshape({n: [b.batch, b.length] for n in input_names})
            xml = f"model_{b.name}.xml"
            ov.save_model(static, str(out_dir / xml), compress_to_fp16=fp16)
            entries.append({**b.to_dict(), "model": xml})
        first = out_dir / Path(entries[0]["model"]).with_suffix(".bin")
        first.replace(out_dir / WEIGHTS)
        for e in entries[1:]:
            own = out_dir / Path(e["model"]).with_suffix(".bin")
            if not filecmp.cmp(own, out_dir / WEIGHTS, shallow=False):
                raise CompileError(f"NPU bucket {e['model']} has weights that differ from the other buckets",
                                   "report this; build one bucket per artifact meanwhile")
            own.unlink()
        return {"static_shapes": True, "buckets": entries,
                "layout": f"one static IR per bucket, all reading weights from {WEIGHTS}: "
                          f"core.read_model(bucket_xml, '{WEIGHTS}')"}

    @staticmethod
    def _unverified(device: str, precision: str) -> tuple[str, ...]:
        if device.startswith("CPU"):
            return ()
        out = [f"the IR was not compiled for {device} here (no {device} on this machine); "
               f"parity ran the same IR on the CPU plugin in f32",
               f"{device} kernels and precision ({'FP16 compute' if device.startswith('NPU') else 'f16 default'}) "
               "may differ from the CPU parity numbers"]
        if device.startswith("NPU") and precision == "int4":
            out.append("NPU compilers favour symmetric int4 weights; group-wise int4_asym may be "
                       "rejected or decompressed on some NPU generations")
        return tuple(out)

    def load(self, artifact_dir: Path, meta: dict, *, threads: int | None = None):
        ov = _import_openvino()
        artifact_dir = Path(artifact_dir)
        runtime = meta.get("runtime") or {}
        weights = artifact_dir / runtime.get("weights", WEIGHTS)
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                  "INFERENCE_PRECISION_HINT": PARITY_PRECISION}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()

        def compile_ir(xml: str):
            path = artifact_dir / xml
            if not path.is_file() or not weights.is_file():
                raise ArtifactError(f"OpenVINO IR {path} or its weights {weights.name} is missing",
                                    "rebuild the artifact")
            return core.compile_model(core.read_model(str(path), str(weights)), "CPU", config)

        if runtime.get("static_shapes"):
            compiled = {shapes.Bucket(length=e["length"], batch=e["batch"]): compile_ir(e["model"])
                        for e in runtime["buckets"]}
            return _BucketRunner(compiled, int(runtime.get("pad_token_id", 0)))
        return _Runner(compile_ir(meta["model_file"]))


def _select_inputs(names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ArtifactError(f"the OpenVINO model needs input(s) {', '.join(missing)}",
                            "tokenize with the artifact's input names")
    return {n: np.ascontiguousarray(feeds[n], dtype=np.int64) for n in names}


class _Runner:
    """One compiled IR; ``compiled`` is the ``openvino.CompiledModel``."""

    def __init__(self, compiled):
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._inputs = [p.get_any_name() for p in compiled.inputs]
        self._output = compiled.output(OUTPUT)

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        result = self._request.infer(_select_inputs(self._inputs, feeds))
        return np.array(result[self._output], dtype=np.float32)


class _BucketRunner:
    """Static-shape IRs: each batch is split and padded into the smallest bucket that fits."""

    def __init__(self, compiled: dict, pad_token_id: int):
        self._runners = {b: _Runner(c) for b, c in compiled.items()}
        self._buckets = sorted(self._runners)
        self._inputs = self._runners[self._buckets[0]]._inputs
        self._pad = {"input_ids": pad_token_id}  # every other input pads with 0

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = _select_inputs(self._inputs, feeds)
        parts = [self._runners[b].embed(padded)[:rows]
                 for b, rows, padded in shapes.bucket_chunks(feeds, self._buckets, self._pad)]
        return np.concatenate(parts, axis=0)


BACKEND = OpenVINOBackend()
