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

import contextlib
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import ArtifactError, CompileError, EmbedcError, MissingDependencyError, TargetError
from ...machine import cpu_flags
from .. import options as opt
from .telemetry import block_telemetry
from ..base import Backend, Capabilities, CompileContext, CompileResult, Target
from ..registry import check_precision
from . import shapes
from .convert import converted_reference, is_large, untransposed_weights
from .nncf_steps import quantize_in_steps
from ...int4 import is_torch_algorithm, options_schema as int4_options
from ...int4.grid import SCHEME as FLOAT_ZERO_SCHEME

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
TOKEN_OUTPUT = "last_hidden_state"   # the name optimum-intel reads
OV_FILE_PATTERN = r"(.*)?openvino(.*)?\_(.*)?.xml$"  # optimum-intel 1.27 OVBaseModel._search_pattern


def _buckets_option() -> opt.Option:
    def parse(v):
        if v is None:
            return None
        try:  # lengths are checked against the model's max length at compile time
            return [b.to_dict() for b in shapes.parse_buckets(v, 1 << 30)]
        except TargetError as exc:
            raise opt.Invalid(f"{exc.message}; {exc.hint}" if exc.hint else exc.message) from None
    return opt.Option(None, parse, "lengths or [batch, length] pairs")


def _group_size() -> opt.Option:
    def parse(v):
        if isinstance(v, bool) or not isinstance(v, int) or v == 0 or v < -1:
            raise opt.Invalid("use a positive integer (e.g. 32, 64, 128) or -1 for per-channel")
        return v
    return opt.Option(INT4_DEFAULTS["group_size"], parse, "a positive integer or -1")


def _device_option(family: str) -> opt.Option:
    def parse(v):
        m = re.fullmatch(r"(CPU|GPU|NPU)(\.\d+)?", str(v or "").upper())
        if not m:
            raise opt.Invalid("use CPU, GPU or NPU (optionally indexed, e.g. GPU.1)")
        if m.group(1) != family:
            raise opt.Invalid(f"this target is for {family}; use target openvino-{m.group(1).lower()} for {m.group(1)}")
        return str(v).upper()
    return opt.Option(family, parse, "CPU, GPU or NPU")


def _schema(target: Target, precision: str) -> dict[str, opt.Option]:
    common = {"device": _device_option(target.settings["ov_device"])}
    if target.settings.get("static_shapes"):
        common["buckets"] = _buckets_option()
    per = {
        "fp32": {}, "fp16": {},
        # a list of alphas: each quantized and judged on the calibration texts (calibration_search.py)
        "int8-static": {"smooth_quant_alpha": opt.number_or_numbers(DEFAULT_SQ_ALPHA, lo=-1.0, hi=1.0),
                        # a list: each judged on the calibration texts with every alpha (auto: see
                        # overflow_fix_candidates)
                        "overflow_fix": opt.one_or_many(
                            opt.choice("auto", ("auto", "enable", "disable", "first_layer_only")),
                            "[enable, first_layer_only]", alone=("auto",)),
                        "preset": opt.choice("mixed", ("mixed", "performance")), "exclude": opt.patterns(),
                        # what the excluded MatMuls become: 8-bit weights with FP32 activations (as ORT's
                        # int8-static does), or FP32 altogether
                        "excluded_as": opt.choice("int8-weight-only", ("int8-weight-only", "fp32"))},
        "int8-weights": {"mode": opt.choice("int8_asym", ("int8_asym", "int8_sym"))},
        # exclude: kept out of 4 bits (torch algorithms: int8 per channel, computed around; nncf: ignored_scope)
        "int4": {"algorithm": opt.choice("nncf", ("nncf", "autoround", "gptq-inc")), **int4_options(),
                 "exclude": opt.patterns(),
                 "mode": opt.choice(INT4_DEFAULTS["mode"], ("int4_asym", "int4_sym")), "group_size": _group_size(),
                 "ratio": opt.number(INT4_DEFAULTS["ratio"], lo=0.0, hi=1.0, open_lo=True),
                 "all_layers": opt.flag(INT4_DEFAULTS["all_layers"]),
                 "backup_mode": opt.choice(INT4_DEFAULTS["backup_mode"], ("int8_asym", "int8_sym", "none")),
                 "scale_estimation": opt.flag(INT4_DEFAULTS["scale_estimation"]),
                 "awq": opt.flag(INT4_DEFAULTS["awq"]),
                 # float: embedc's min/max groups with fp32 zero points (float_zero.py) instead of NNCF
                 "zero_points": opt.choice("uint4", ("uint4", "float"))},
    }
    return {**common, **per[precision]}


# ---- imports and settings --------------------------------------------------
def _import_openvino():
    block_telemetry()
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingDependencyError("the openvino target needs the openvino package", INSTALL_HINT) from exc
    return ov


def _import_nncf():
    block_telemetry()
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


def _enum(enum_cls, value: str):
    """An NNCF enum from an option already validated by the schema."""
    return enum_cls(str(value).lower())


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
    """ONNX node name -> torch module path (:mod:`embedc.onnxkit.scopes`); OpenVINO keeps
    ONNX node names as its ops' friendly names."""
    import onnx

    from ...onnxkit.scopes import module_paths as paths_of

    return paths_of(onnx.load(str(onnx_path), load_external_data=False))


def _ignored_scope(nncf, model, ctx: CompileContext, patterns: Sequence[str]) -> tuple[object | None, dict]:
    """The MatMul/Gather ops whose module path an ``exclude`` pattern matches (the shared grammar)."""
    from ...onnxkit.scopes import select_strict

    if not patterns:
        return None, {"patterns": [], "modules": [], "nodes": 0}
    paths = module_paths(ctx.reference_onnx)
    ops = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in ("MatMul", "Gather")}
    nodes = sorted(select_strict({n: paths[n] for n in sorted(ops) if n in paths}, patterns,
                                 what="MatMul or Gather"))
    return nncf.IgnoredScope(names=nodes), {"patterns": list(patterns), "modules": sorted({paths[n] for n in nodes}),
                                            "nodes": len(nodes)}


# ---- CPU capability -> overflow fix ----------------------------------------
def cpu_has_vnni() -> tuple[bool, str]:
    """Whether this CPU has int8 dot-product instructions (VNNI/AMX), and the evidence."""
    flags = cpu_flags()
    if flags is not None:
        hits = sorted(flags & _VNNI_FLAGS)
        return bool(hits), "cpuinfo flags: " + (", ".join(hits) if hits else "no avx512_vnni/avx_vnni/amx_int8")
    caps = _import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    # OpenVINO lists BF16 only on AVX512-BF16/AMX CPUs, all of which have VNNI
    return "BF16" in caps, f"OpenVINO CPU capabilities: {', '.join(caps)}"


def overflow_fix_candidates(device: str, value) -> tuple[tuple[str, ...], str]:
    """NNCF's overflow fix (``enable`` / ``disable`` / ``first_layer_only``) candidates and why;
    two or more are each quantized and judged on the calibration texts (calibration_search.py).
    ``auto`` on a CPU target reads the build CPU: this is a machine-dependent choice, so it is
    part of the artifact's cache facts."""
    if isinstance(value, tuple):
        return value, "candidates set by the overflow_fix option"
    if value != "auto":
        return (value,), "set by the overflow_fix option"
    if not device.startswith("CPU"):
        return ("disable",), f"{device} has no x86 int8 saturation issue"
    vnni, evidence = cpu_has_vnni()
    if vnni:
        return ("disable",), (f"build CPU has VNNI/AMX ({evidence}): no u8*s8 saturation; "
                              "for AVX2-only CPUs build (and judge) on one")
    # Whether VPMADDUBSW saturation costs more than 7-bit weights depends on the model: on an
    # AVX2-only CPU the fix on every layer scored MiniLM 0.98633 against 0.99082 without it (e5
    # 0.99791 against 0.99850), while a tiny model with x10 weights needs it (0.9933 without)
    return ("enable", "first_layer_only"), (
        f"build CPU lacks VNNI ({evidence}): VPMADDUBSW saturation depends on the model, so the fix on "
        "every layer (7-bit weights) and NNCF's default (first layer only) are judged on this CPU")


# ---- precision steps: model -> (model, recipe, compress_to_fp16) -----------
# Each step takes the converted model out of ``held`` (a one-item list), so that it holds the only
# reference: int8-static on a large model frees the original weights between NNCF's pipeline steps.

def _fp32(ov, nncf, held, ctx, opts, device):
    return held.pop(), {}, False


def _fp16(ov, nncf, held, ctx, opts, device):
    return held.pop(), {"weights": "fp16 via save_model(compress_to_fp16=True)"}, True


def _int8_static(ov, nncf, held, ctx, opts, device):
    """``nncf.quantize`` with one SmoothQuant alpha and overflow fix, or the best of several
    candidates on the calibration texts."""
    alphas = opts["smooth_quant_alpha"]
    fixes, why = overflow_fix_candidates(device, opts["overflow_fix"])
    candidates = [{"smooth_quant_alpha": a, "overflow_fix": f}
                  for a in (alphas if isinstance(alphas, tuple) else (alphas,)) for f in fixes]
    rows = _calibration_rows(ctx, [p.get_any_name() for p in held[0].inputs])
    if len(candidates) == 1:
        return (*_nncf_quantize(ov, nncf, held, rows, ctx, opts, device, **candidates[0], why=why), False)
    from .calibration_search import choose_candidate, reference_embeddings

    reference = reference_embeddings(ctx.reference_onnx, rows)

    def quantize(i: int, candidate: dict):
        if i > 0:  # a new copy of the reference: nncf.quantize changes the model it is given
            held.append(converted_reference(ov, ctx.reference_onnx, low_memory=_low_memory(ctx),
                                            mapped_in=Path(ctx.work_dir) / f"converted-{i}")[0])
        return _nncf_quantize(ov, nncf, held, rows, ctx, opts, device, **candidate, why=why,
                              steps=f"nncf-steps-{i}")

    def judge(model) -> np.ndarray:  # as the artifact runs in parity: the CPU plugin in f32
        runner = _Runner(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": PARITY_PRECISION}))
        return np.concatenate([runner.embed(r) for r in rows])

    chosen, recipe = choose_candidate(candidates, quantize, judge, reference, ov,
                                      Path(ctx.work_dir) / "calibration-search")
    return chosen, recipe, False


def _nncf_quantize(ov, nncf, held: list, rows, ctx, opts, device, smooth_quant_alpha: float, overflow_fix: str,
                   why: str, steps: str = "nncf-steps") -> tuple[object, dict]:
    """(the model ``held`` hands over, quantized by ``nncf.quantize`` with MatMul SmoothQuant
    ``smooth_quant_alpha`` and ``overflow_fix``; its recipe). No other reference to the float
    model stays alive meanwhile."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    fix = _enum(nncf.OverflowFix, overflow_fix)
    preset = _enum(nncf.QuantizationPreset, opts["preset"])
    ignored, ignored_rec = _ignored_scope(nncf, held[0], ctx, opts["exclude"])
    target_device = nncf.TargetDevice[device.split(".")[0]]
    # a large model goes through a mapped IR between NNCF's steps (nncf_steps); the result is the same
    scratch = Path(ctx.work_dir) / steps if _low_memory(ctx) or is_large(ctx.reference_onnx) else None
    quantized = quantize_in_steps(
        ov, nncf, held.pop(), nncf.Dataset(rows), scratch=scratch, model_type=nncf.ModelType.TRANSFORMER,
        preset=preset, target_device=target_device, subset_size=len(rows), ignored_scope=ignored,
        advanced_parameters=AdvancedQuantizationParameters(
            overflow_fix=fix, smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=smooth_quant_alpha)))
    run = "one pipeline step at a time" + (", each step's model saved and read back memory-mapped" if scratch else "")
    recipe = {"call": "nncf.quantize", "run": run, "model_type": "TRANSFORMER", "preset": preset.value,
              "target_device": target_device.value, "calibration_rows": len(rows), "subset_size": len(rows),
              "smooth_quant_alpha_matmul": smooth_quant_alpha, "overflow_fix": fix.value, "overflow_fix_reason": why,
              "ignored_scope": ignored_rec}
    if ignored is not None:
        recipe["excluded_as"] = opts["excluded_as"]
        if opts["excluded_as"] == "int8-weight-only":
            quantized = _weights_only(nncf, quantized, set(ignored.names))
            recipe["excluded_call"] = "nncf.compress_weights(mode=INT8_ASYM) on the excluded MatMuls only"
    return quantized, recipe


def _weights_only(nncf, model, names: set[str]):
    """8-bit per-channel weights (FP32 activations) for the MatMuls ``nncf.quantize`` was told to
    ignore: the rest already carry FakeQuantize, and everything else is kept out by name."""
    others = sorted(op.get_friendly_name() for op in model.get_ops()
                    if op.get_type_name() in ("MatMul", "Gather") and op.get_friendly_name() not in names)
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                 ignored_scope=nncf.IgnoredScope(names=others, validate=False))


def _int8_weights(ov, nncf, held, ctx, opts, device):
    mode = _enum(nncf.CompressWeightsMode, opts["mode"])
    return nncf.compress_weights(held.pop(), mode=mode), {"call": "nncf.compress_weights", "mode": mode.value}, False


def _int4(ov, nncf, held, ctx, opts, device):
    model = held.pop()
    if is_torch_algorithm(opts):  # codes computed in torch (embedc.int4), written as i4 constants
        from ...int4.openvino import int4_model

        if opts["group_size"] < 16 or opts["group_size"] & (opts["group_size"] - 1):
            raise CompileError(f"group_size={opts['group_size']} with algorithm={opts['algorithm']}",
                               "use a power-of-two group size >= 16 (e.g. 32)")
        return (*int4_model(ov, ctx, opts, Path(ctx.work_dir) / "openvino-int4"), False)
    if opts["zero_points"] == "float":
        return _int4_float_zero(nncf, model, ctx, opts)
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    mode = _enum(nncf.CompressWeightsMode, opts["mode"])
    ratio = opts["ratio"]
    kwargs = dict(mode=mode, group_size=opts["group_size"], ratio=ratio, all_layers=opts["all_layers"],
                  backup_mode=_enum(nncf.BackupMode, opts["backup_mode"]),
                  # a group size that does not divide a layer's width is shrunk (>= 32), not fatal
                  advanced_parameters=AdvancedCompressionParameters(
                      group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
    algos = {k: opts[k] for k in ("scale_estimation", "awq")}
    on = [k for k, v in algos.items() if v]
    untransposed = untransposed_weights(model) if on else []
    # NNCF 3.4 assumes transpose_b weights in its data-aware methods. On the others, measured
    # (benchmarks/openvino_weight_layout.py): scale estimation is silently wrong (e5 int4 0.99948 -> 0.79901,
    # SmolLM2 0.96680 -> -0.02014); AWQ gives a different model (SmolLM2 0.96008 -> 0.95824)
    if untransposed:
        raise CompileError(
            f"int4 {' and '.join(on)} need MatMul weights in the transpose_b layout, which {len(untransposed)} "
            f"MatMul(s) here lack (the low-memory path reads the ONNX as exported; NNCF 3.4 mishandles it, "
            f"openvinotoolkit/nncf#3494)",
            f"pass {' '.join(f'--option int4.{k}=false' for k in on)} for this target, "
            f"or set export.low_memory = \"off\" on a machine that holds the model twice")
    ignored, ignored_rec = _ignored_scope(nncf, model, ctx, opts["exclude"])
    if ignored is not None:  # NNCF leaves them as they are (FP32)
        kwargs["ignored_scope"] = ignored
    # the calibration set drives mixed precision (which layers stay 8-bit) and SE/AWQ; else unused
    data_aware = ratio < 1.0 or any(algos.values())
    if data_aware:
        rows = _calibration_rows(ctx, [p.get_any_name() for p in model.inputs])
        kwargs.update(dataset=nncf.Dataset(rows), subset_size=len(rows), **algos)
    compressed = nncf.compress_weights(model, **kwargs)
    recipe = {"call": "nncf.compress_weights", "mode": mode.value, "group_size": kwargs["group_size"],
              "ratio": ratio, "all_layers": kwargs["all_layers"], "backup_mode": kwargs["backup_mode"].value,
              "group_size_fallback": "adjust", **algos, "data_aware": data_aware, "ignored_scope": ignored_rec,
              # NNCF's default with a dataset: rank layers for the 8-bit backup by activation variance
              "sensitivity_metric": "max_activation_variance" if ratio < 1.0 else None,
              "calibration_rows": kwargs.get("subset_size", 0)}
    return compressed, recipe, False


# NNCF's int4 options that mean nothing when embedc writes the 4-bit groups itself
NNCF_ONLY = ("ratio", "all_layers", "backup_mode", "scale_estimation", "awq")


def _check_float_zero(resolved: Mapping, where: str) -> None:
    # compile resolves the resolved options again, so a changed value, not a given key, is the mistake
    wrong = [k for k in NNCF_ONLY if resolved[k] != INT4_DEFAULTS[k]]
    if resolved["group_size"] < 1:
        wrong.append("group_size=-1 (per channel)")
    if resolved["algorithm"] != "nncf" or resolved["mode"] != "int4_asym" or wrong:
        named = ", ".join(wrong) or f"algorithm={resolved['algorithm']} mode={resolved['mode']}"
        raise TargetError(f"option zero_points=float writes every Linear's 4-bit groups itself, so {named} "
                          f"does not apply ({where})", "drop those options, or drop zero_points")


def _int4_float_zero(nncf, model, ctx, opts):
    """Every Linear 4-bit with fp32 zero points (float_zero.py); the rest through NNCF INT8_ASYM."""
    from .float_zero import compress_float_zero

    ignored, ignored_rec = _ignored_scope(nncf, model, ctx, opts["exclude"])
    written, grid = compress_float_zero(model, opts["group_size"], ignored.names if ignored is not None else ())
    # the new MatMuls are out of NNCF's reach by name: it compresses the table and the excluded Linears
    compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                       ignored_scope=nncf.IgnoredScope(names=written, validate=False))
    recipe = {"call": "embedc.targets.openvino.float_zero.compress_float_zero, then nncf.compress_weights("
                      "mode=INT8_ASYM) on the rest", "mode": "int4_asym", "zero_points": "float",
              "scheme": FLOAT_ZERO_SCHEME, "group_size": opts["group_size"], "grid": grid,
              "linears_4bit": len(written), "ignored_scope": ignored_rec,
              "rest": "int8_asym per channel (the word-embedding table, excluded Linears)"}
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


def _low_memory(ctx: CompileContext) -> bool:
    return bool((ctx.reference_meta.get("low_memory") or {}).get("enabled"))


def _pad_token_id(reference_dir: Path) -> int:
    from ...errors import ModelSourceError
    from ...models import load_tokenizer

    try:
        pad = load_tokenizer(reference_dir, shared=True).pad_token_id
    except ModelSourceError as exc:
        raise CompileError(f"cannot read the tokenizer in {reference_dir} for the NPU pad id",
                           "re-export the reference (it carries the tokenizer files)") from exc
    return 0 if pad is None else int(pad)  # masked either way; 0 when the tokenizer has no pad token


# ---- backend ----------------------------------------------------------------
class OpenVINOBackend(Backend):
    name = "openvino"
    targets = TARGETS
    libraries = ("openvino", "nncf", "auto-round", "neural-compressor")
    capabilities = Capabilities(st_backend="openvino", engine=False, output_heads=True, report_marker="s")

    def resolve_options(self, target: Target, precision: str, options: Mapping) -> dict:
        check_precision(target, precision)
        resolved = opt.resolve(_schema(target, precision), options, f"{precision} on {target.name}")
        if precision == "int4" and resolved["zero_points"] == "float":
            _check_float_zero(resolved, f"{precision} on {target.name}")
        return resolved

    def cache_facts(self, target: Target, precision: str, options: Mapping) -> dict:
        """The build CPU's kernel family (parity runs the IR on its CPU plugin) and,
        for int8-static with ``overflow_fix=auto``, the fixes that CPU judges."""
        from ..host import cpu_kernel_facts

        facts = cpu_kernel_facts()
        if precision == "int8-static":
            resolved = self.resolve_options(target, precision, options)
            facts["overflow_fix"] = "|".join(overflow_fix_candidates(resolved["device"], resolved["overflow_fix"])[0])
        return facts

    def compile(self, target: Target, precision: str, ctx: CompileContext, out_dir: Path) -> CompileResult:
        options = self.resolve_options(target, precision, ctx.options)
        device = options["device"]
        opts = {k: v for k, v in options.items() if k not in ("device", "buckets")}
        buckets = None
        if target.settings.get("static_shapes"):  # validate before the slow steps
            max_len = int(ctx.reference_meta.get("max_length", 512))
            buckets = (shapes.parse_buckets(options["buckets"], max_len) if options.get("buckets") is not None
                       else shapes.default_buckets(ctx.length_stats, max_len))
        ov = _import_openvino()
        nncf = _import_nncf() if precision not in ("fp32", "fp16") else None
        try:
            return self._compile(ov, nncf, target, precision, ctx, Path(out_dir), device, opts, buckets)
        except EmbedcError:
            raise
        except Exception as exc:  # OpenVINO / NNCF raise plain exceptions with long messages
            raise CompileError(f"OpenVINO {precision} compile for {target.name} failed: {_first_line(exc)}",
                               "try other options for this precision (see 'embedc targets')") from exc

    def _compile(self, ov, nncf, target: Target, precision: str, ctx: CompileContext, out_dir: Path, device: str,
                 opts: dict, buckets) -> CompileResult:
        out_dir.mkdir(parents=True, exist_ok=True)
        input_names = ctx.input_names
        seconds = {}

        t0 = time.perf_counter()
        if precision == "int4" and is_torch_algorithm(opts):  # converts its own rewritten ONNX (embedc.int4)
            model, converter = None, "openvino.convert_model(reference ONNX with embedc.int4's DequantizeLinear codes)"
        else:
            try:
                model, converter = converted_reference(ov, ctx.reference_onnx, low_memory=_low_memory(ctx),
                                                       mapped_in=Path(ctx.work_dir) / "converted" if nncf else None)
            except Exception as exc:  # the ONNX frontend raises bare RuntimeErrors
                raise CompileError(f"openvino.convert_model failed on {ctx.reference_onnx}: {_first_line(exc)}",
                                   "check that the reference export is complete (model.onnx and its .data)") from exc
            _check_io(model, input_names, "the converted model")
        seconds["convert"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        try:
            with _nncf_output(nncf) if nncf else contextlib.nullcontext():
                held = [model]
                del model
                model, step, fp16 = _STEPS[precision](ov, nncf, held, ctx, opts, device)
        except EmbedcError:
            raise
        except Exception as exc:  # NNCF errors are plain exceptions with long messages
            raise CompileError(f"{precision} optimization failed: {_first_line(exc)}",
                               "try other options for this precision (see 'embedc targets')") from exc
        seconds["optimize"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        runtime = {"device": device, "config": self._config(target, precision), "weights": WEIGHTS}
        if step.get("overflow_fix") == "disable" and device.startswith("CPU"):
            runtime["cpu_requirement"] = ("int8 dot-product instructions (VNNI or AMX): built without the "
                                          "overflow fix and judged on them; for AVX2-only CPUs build there")
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
        recipe = {"converter": converter, "precision": precision,
                  "options": opt.jsonable(opts), "save_model": {"compress_to_fp16": fp16}, **step,
                  "ir": ir_summary(saved),
                  "ir_bytes": sum(p.stat().st_size for p in out_dir.iterdir() if p.suffix in (".xml", ".bin")),
                  "seconds": {k: round(v, 2) for k, v in seconds.items()},
                  "versions": {"openvino": ov.get_version(), **({"nncf": nncf.__version__} if nncf else {})}}
        return CompileResult(model_file=model_file, recipe=recipe, runtime=runtime,
                             unverified=self._unverified(device, precision, step.get("overflow_fix")))

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
    def _unverified(device: str, precision: str, overflow_fix: str | None = None) -> tuple[str, ...]:
        if device.startswith("CPU"):
            # the CPU plugin runs int8-static on the build CPU's best u8*s8 kernels: on a VNNI host,
            # parity never met the AVX2 VPMADDUBSW path (int16 pair sums) that AVX2-only CPUs will run
            if precision == "int8-static" and cpu_has_vnni()[0]:
                fix = "built without the overflow fix, so " if overflow_fix == "disable" else ""
                return (f"AVX2 int8 kernels (no VNNI) not exercised: parity ran this CPU's VNNI kernels; "
                        f"{fix}u8*s8 sums may saturate on AVX2-only CPUs (build there to judge them)",)
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
            try:
                return core.compile_model(core.read_model(str(path), str(weights)), "CPU", config)
            except Exception as exc:  # OpenVINO raises bare RuntimeErrors
                raise ArtifactError(f"OpenVINO cannot load {path}: {_first_line(exc)}",
                                    "rebuild the artifact; check the openvino version it was built with") from exc

        if runtime.get("static_shapes"):
            compiled = {shapes.Bucket(length=e["length"], batch=e["batch"]): compile_ir(e["model"])
                        for e in runtime["buckets"]}
            return _BucketRunner(compiled, int(runtime.get("pad_token_id", 0)))
        return _Runner(compile_ir(meta["model_file"]))

    def attach_output_heads(self, artifact_dir: Path, result: CompileResult, heads, ranges) -> dict:
        """Heads built on the IR with OpenVINO's graph API (embedc.outputs.openvino_heads)."""
        from ...outputs.openvino_heads import attach

        runtime = result.runtime or {}
        if runtime.get("static_shapes"):
            raise CompileError("compressed outputs on static-shape bucket IRs (NPU) are not supported yet",
                               "build the NPU target without [outputs] / --output")
        folder = Path(artifact_dir)
        return attach(folder / result.model_file, folder / runtime.get("weights", WEIGHTS), list(heads), ranges)

    def model_files(self, artifact_dir: Path, meta: dict) -> list[str]:
        """Every IR (one per NPU bucket) and the shared weights file."""
        folder = Path(artifact_dir)
        runtime = meta.get("runtime") or {}
        xmls = [e["model"] for e in runtime["buckets"]] if runtime.get("static_shapes") else [meta["model_file"]]
        return sorted({*xmls, runtime.get("weights", WEIGHTS)} & {p.name for p in folder.iterdir()})

    def st_model_kwargs(self, artifact_dir: Path, meta: dict) -> tuple[dict | None, str | None]:
        """optimum-intel's ``OVModelForFeatureExtraction`` loads dynamic-shape IRs named like
        ``openvino_model.xml`` and reads the token states by the name ``last_hidden_state``."""
        runtime = meta.get("runtime") or {}
        if runtime.get("static_shapes"):
            return None, ("static-shape bucket IRs (one per batch x length) need embedc's bucketing; "
                          "sentence-transformers feeds dynamic shapes")
        model_file = meta["model_file"]
        path = Path(artifact_dir) / model_file
        if not path.is_file():
            raise ArtifactError(f"model file {path} is missing", "rebuild the artifact")
        if not re.search(OV_FILE_PATTERN, model_file):
            return None, (f"optimum-intel ignores the IR {model_file!r} (it looks for names matching "
                          f"{OV_FILE_PATTERN}, e.g. openvino_model.xml) and would try to export PyTorch weights")
        ov = _import_openvino()
        weights = Path(artifact_dir) / runtime.get("weights", Path(model_file).stem + ".bin")
        outputs = {n for out in ov.Core().read_model(str(path), str(weights)).outputs for n in out.get_names()}
        if TOKEN_OUTPUT not in outputs:
            return None, (f"{model_file} has no {TOKEN_OUTPUT!r} output (outputs: {', '.join(sorted(outputs))}); "
                          f"optimum reads the token embeddings by that name")
        return {"file_name": model_file, "device": runtime.get("device", "CPU"),
                "ov_config": dict(runtime.get("config") or {})}, None


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

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        result = self._request.infer(_select_inputs(self._inputs, feeds))
        return {n: np.array(result[self.compiled.output(n)]) for n in outputs}

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.run(feeds, [OUTPUT])[OUTPUT], dtype=np.float32)


class _BucketRunner:
    """Static-shape IRs: each batch is split and padded into the smallest bucket that fits."""

    def __init__(self, compiled: dict, pad_token_id: int):
        self._runners = {b: _Runner(c) for b, c in compiled.items()}
        self._buckets = sorted(self._runners)
        self._inputs = self._runners[self._buckets[0]]._inputs
        self._pad = {"input_ids": pad_token_id}  # every other input pads with 0

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        feeds = _select_inputs(self._inputs, feeds)
        parts = [(rows, self._runners[b].run(padded, outputs))
                 for b, rows, padded in shapes.bucket_chunks(feeds, self._buckets, self._pad)]
        # token outputs come back at the bucket's length: cut to the batch's own
        length = next(iter(feeds.values())).shape[1]
        return {n: np.concatenate([r[n][:rows, :length] if r[n].ndim > 2 else r[n][:rows] for rows, r in parts])
                for n in outputs}

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.run(feeds, [OUTPUT])[OUTPUT], dtype=np.float32)


BACKEND = OpenVINOBackend()
