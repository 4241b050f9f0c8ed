"""ONNX Runtime backend: CPU targets as data, compile (fp32 / fp16 / int8 / int4)
and load. Import-light: onnx / onnxruntime load inside functions.

Per target, the INT8 kernel question is the one that matters: x86 without
VNNI multiplies U8S8 with VPMADDUBSW, whose int16 pair sums can saturate
(255 * 127 * 2 > 32767), so weights there are quantized to 7 bits
(``reduce_range``) as ORT's quantization docs advise; VNNI has no such
limit; arm64 kernels prefer symmetric S8S8.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from ...errors import ArtifactError, CompileError, EmbedcError, MissingDependencyError, TargetError
from ..base import CompileContext, CompileResult, Target

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "int4")
MODEL_FILE = "model.onnx"
OUTPUT = "sentence_embedding"
PROVIDERS = ("CPUExecutionProvider",)

_U8S8_7BIT = {"activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": True,
              "activation_symmetric": False}
_COMMON = {"fp32_optimization": "ORT_ENABLE_EXTENDED", "int4_accuracy_level": 4}

TARGETS = (
    Target(name="ort-cpu", backend="ort", device="cpu",
           description="ONNX Runtime CPU, portable: runs on any x86-64 or arm64 CPU (INT8 U8S8 with 7-bit "
                       "weights, safe without VNNI); graphs saved at EXTENDED, never CPU-specific",
           precisions=PRECISIONS, settings={**_U8S8_7BIT, **_COMMON, "isa": "any"},
           notes=("the default ORT target", "fp16 artifacts are for GPU execution providers")),
    Target(name="ort-cpu-avx2", backend="ort", device="cpu",
           description="ONNX Runtime CPU, x86-64 with AVX2 and no VNNI: INT8 U8S8 with reduce_range "
                       "(7-bit weights) so VPMADDUBSW cannot saturate",
           precisions=PRECISIONS, settings={**_U8S8_7BIT, **_COMMON, "isa": "x86-64 AVX2 (no VNNI)",
                                            "reduce_range_reason": "U8S8 VPMADDUBSW int16 saturation "
                                                                   "without VNNI (onnxruntime#9599)"}),
    Target(name="ort-cpu-avx512-vnni", backend="ort", device="cpu",
           description="ONNX Runtime CPU, x86-64 with AVX-512 VNNI (or AVX-VNNI): INT8 U8S8 with full "
                       "8-bit weights (VPDPBUSD accumulates in int32, no saturation)",
           precisions=PRECISIONS, settings={"activation_type": "QUInt8", "weight_type": "QInt8",
                                            "reduce_range": False, "activation_symmetric": False, **_COMMON,
                                            "isa": "x86-64 AVX-512 VNNI / AVX-VNNI"}),
    Target(name="ort-cpu-arm64", backend="ort", device="cpu",
           description="ONNX Runtime CPU, arm64 (NEON / SDOT / I8MM): INT8 S8S8 symmetric QDQ, full 8-bit "
                       "weights",
           precisions=PRECISIONS, settings={"activation_type": "QInt8", "weight_type": "QInt8",
                                            "reduce_range": False, "activation_symmetric": True, **_COMMON,
                                            "isa": "arm64"},
           notes=("ORT's arm64 MLAS kernels take S8S8 and U8S8; symmetric S8S8 is their fast path",)),
)

# ---- options per precision: defaults (also the schema: type and allowed values)
FP16_BLOCK = ("LayerNormalization", "SkipLayerNormalization", "Softmax", "Pow", "ReduceMean", "ReduceSum",
              "ReduceL2", "Sqrt", "Erf")
CALIBRATE_METHODS = ("MinMax", "Entropy", "Percentile")
DEFAULT_AUTO_EXCLUDE = 12
DEFAULTS: dict[str, dict] = {
    "fp32": {"optimization": "extended"},
    "fp16": {"op_block_list": FP16_BLOCK},
    "int8-dynamic": {"exclude": (), "quantize_embedding": True, "per_channel": True, "embedding_block_size": 128},
    "int8-static": {"calibrate_method": "MinMax", "exclude": (), "auto_exclude": DEFAULT_AUTO_EXCLUDE,
                    "target_mean": 0.998, "target_min": 0.99, "excluded_as": "int8-weight-only",
                    "quantize_embedding": True, "embedding_block_size": 128, "percentile": 99.999,
                    "smooth_quant": True, "smooth_alpha": "auto"},
    "int4": {"algorithm": "default", "block_size": 32, "is_symmetric": True, "accuracy_level": 4,
             "quantize_embedding": True, "embedding_bits": 4, "embedding_block_size": 64, "exclude": (),
             "gptq_samples": 32, "auto_exclude": 0, "target_mean": 0.99, "target_min": 0.97},
}
CHOICES = {"optimization": ("extended", "basic", "disabled"), "calibrate_method": CALIBRATE_METHODS,
           "excluded_as": ("int8-weight-only", "fp32"), "algorithm": ("default", "rtn", "gptq", "hqq"),
           "embedding_bits": (4, 8), "accuracy_level": (0, 1, 2, 3, 4)}
BLOCK_SIZE_REASON = ("block 32 (ORT's default is 128): encoder weights are small (K = 384-1536) with outlier "
                     "rows; measured on all-MiniLM-L6-v2 (true FP32) mean cosine 0.941 at block 32 vs 0.924 at "
                     "64 and 0.911 at 128, for +0.125 byte/weight of scales. The embedding table uses block 64: "
                     "on multilingual-e5-small block 32 gives 15.8% of FP32, block 64 14.6% (mean 0.99979)")


def resolve_options(precision: str, given: dict, target: str = "") -> dict:
    """Defaults overlaid with the user's options; unknown keys and bad values raise TargetError."""
    defaults = DEFAULTS[precision]
    where = f"{precision} on {target}" if target else precision
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TargetError(f"unknown option {unknown[0]!r} for {where}",
                          f"valid options: {', '.join(sorted(defaults))}")
    out = dict(defaults)
    for key, value in given.items():
        out[key] = _coerce(key, value, defaults[key], where)
    if precision == "int4":
        out["block_size_reason"] = BLOCK_SIZE_REASON if "block_size" not in given else "set by the user"
    return out


def _coerce(key: str, value, default, where: str):
    bad = TargetError(f"option {key}={value!r} is invalid for {where}", _hint(key, default))
    if key == "auto_exclude":  # bool (default cap / off) or a max count
        if isinstance(value, bool):
            return DEFAULT_AUTO_EXCLUDE if value else 0
        if isinstance(value, int) and value >= 0:
            return value
        raise bad
    if key == "smooth_alpha":  # "auto" (per group, by output SQNR) or a fixed alpha
        if isinstance(value, str) and value.lower() == "auto":
            return "auto"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
            return float(value)
        raise bad
    if key == "calibrate_method" and isinstance(value, str):
        match = {m.lower(): m for m in CALIBRATE_METHODS}.get(value.lower())
        if match is None:
            raise TargetError(f"unknown calibrate_method {value!r} for {where}", _hint(key, default))
        return match
    if key == "algorithm" and isinstance(value, str) and value.lower() not in CHOICES["algorithm"]:
        raise TargetError(f"unknown int4 algorithm {value!r} for {where}", _hint(key, default))
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(default, int) and (not isinstance(value, int) or isinstance(value, bool)):
        raise bad
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise bad
        value = value.lower()
    if key in CHOICES and value not in CHOICES[key]:
        raise bad
    if key in ("block_size", "embedding_block_size") and (value < 16 or value & (value - 1)):
        raise bad
    if key in ("target_mean", "target_min") and not 0.0 < value <= 1.0:
        raise bad
    if key == "percentile" and not 90.0 <= value <= 100.0:
        raise bad
    return value


def _hint(key: str, default) -> str:
    if key == "calibrate_method":
        return f"choose one of: {', '.join(CALIBRATE_METHODS)}"
    if key in CHOICES:
        return f"choose one of: {', '.join(map(str, CHOICES[key]))}"
    if key == "auto_exclude":
        return "pass true, false or a maximum count of MatMuls (>= 0)"
    if key == "smooth_alpha":
        return "pass 'auto' or a number in [0, 1]"
    if key in ("block_size", "embedding_block_size"):
        return "use a power of two >= 16 (e.g. 32, 64, 128)"
    return f"expected a value like {default!r}"


# ---- the backend
def _require_ort():
    try:
        import onnx  # noqa: F401, PLC0415
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependencyError(f"the ort backend needs onnx and onnxruntime ({exc.name} is missing)",
                                     "pip install 'embedc[ort]'") from exc
    return ort


class OrtRunner:
    """Runs ``sentence_embedding`` of an ORT artifact on the CPU execution provider."""

    def __init__(self, session):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run([OUTPUT], {n: feeds[n] for n in self.input_names})[0]
        return np.asarray(out, dtype=np.float32)


class OrtBackend:
    name = "ort"

    def compile(self, target: Target, precision: str, ctx: CompileContext, out_dir: Path) -> CompileResult:
        if precision not in target.precisions:
            raise TargetError(f"target {target.name} has no precision {precision!r}",
                              f"choose one of: {', '.join(target.precisions)}")
        options = resolve_options(precision, dict(ctx.options), target.name)
        ort = _require_ort()
        from . import graph as og  # noqa: PLC0415

        src = Path(ctx.reference_onnx)
        _check_reference(ctx)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        dst = out_dir / MODEL_FILE
        work = Path(ctx.work_dir) / f"ort-{target.name}-{precision}"
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            recipe = _dispatch(precision, src, dst, target.settings, options, ctx, work, og)
        except EmbedcError:
            raise
        except Exception as exc:  # onnx / onnxruntime raise their own types; name the step that failed
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CompileError(f"onnxruntime {precision} compile for {target.name} failed: {detail}",
                               "re-run with a fresh export; report it with the recipe options if it persists"
                               ) from exc
        seconds = time.perf_counter() - started
        _check_artifact(dst, src)
        size, ref_size = og.files_bytes(dst), og.files_bytes(src)
        recipe = {"backend": "ort", "target": target.name, "precision": precision,
                  "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                  **recipe, "seconds": round(seconds, 1), "bytes": size, "reference_bytes": ref_size,
                  "size_ratio": round(size / ref_size, 4), "onnxruntime": ort.__version__}
        return CompileResult(model_file=MODEL_FILE, recipe=recipe, runtime=_runtime(precision, target),
                             unverified=_unverified(target, precision))

    def load(self, artifact_dir: Path, meta: dict, *, threads: int | None = None) -> OrtRunner:
        ort = _require_ort()
        path = Path(artifact_dir) / meta.get("model_file", MODEL_FILE)
        if not path.is_file():
            raise ArtifactError(f"ORT model file {path} is missing", "rebuild the artifact")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(path), so, providers=list(PROVIDERS))
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ArtifactError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:200]}",
                                "rebuild the artifact; check the onnxruntime version it was built with") from exc
        if OUTPUT not in [o.name for o in sess.get_outputs()]:
            raise ArtifactError(f"{path} has no {OUTPUT!r} output", "rebuild the artifact from an embedc export")
        return OrtRunner(sess)


BACKEND = OrtBackend()


def _dispatch(precision: str, src: Path, dst: Path, settings: dict, options: dict, ctx: CompileContext,
              work: Path, og) -> dict:
    from . import int4 as ort_int4, int8 as ort_int8  # noqa: PLC0415

    if precision == "fp32":
        return _compile_fp32(src, dst, options, og)
    if precision == "fp16":
        return _compile_fp16(src, dst, options, og)
    if precision == "int8-dynamic":
        return ort_int8.quantize_int8_dynamic(src, dst, settings=settings, options=options, work=work)
    if precision == "int8-static":
        return ort_int8.quantize_int8_static(src, dst, feeds=_feeds(ctx), input_names=ctx.input_names,
                                             settings=settings, options=options, work=work, threads=None)
    return ort_int4.quantize_int4(src, dst, feeds=_feeds(ctx), input_names=ctx.input_names, options=options,
                                  work=work, threads=None)


# ---- fp32 / fp16
def _compile_fp32(src: Path, dst: Path, options: dict, og) -> dict:
    """ORT's own graph optimizer at a portable level, saved offline."""
    import onnxruntime as ort  # noqa: PLC0415

    level = options["optimization"]
    if level == "disabled":
        og.copy_model(src, dst)
        return {"library_call": "copy of the reference ONNX", "settings": {"graph_optimization_level": "none"}}
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if level == "extended"
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    external = og.files_bytes(src) > og.EXTERNAL_DATA_BYTES
    if external:
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), so, providers=list(PROVIDERS))
    return {"library_call": "onnxruntime.InferenceSession(SessionOptions.optimized_model_filepath=...)",
            "settings": {"graph_optimization_level": f"ORT_ENABLE_{level.upper()}", "external_data": external},
            "why": "EXTENDED fusions (SkipLayerNormalization, FusedMatMul, ...) are CPU-independent; "
                   "a model saved at ORT_ENABLE_ALL carries layout transforms tied to the CPU that saved it"}


def _compile_fp16(src: Path, dst: Path, options: dict, og) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415
    from onnxruntime.transformers.onnx_model import OnnxModel  # noqa: PLC0415

    from .session import quiet_ort_logs  # noqa: PLC0415

    model = og.load_model(src)
    external = og.needs_external_data(model)
    block = list(options["op_block_list"])
    og.strip_debug_metadata(model)
    with quiet_ort_logs():
        model16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                           disable_shape_infer=external)  # onnx shape inference stops at 2 GB
    # the converter appends the Casts around blocked nodes at the end (restore topological order), and
    # can leave an initializer's redundant value_info at fp16 while the tensor stays fp32 (drop those)
    OnnxModel(model16).topological_sort()
    names = {t.name for t in model16.graph.initializer}
    stale = [v for v in model16.graph.value_info if v.name in names]
    for v in stale:
        model16.graph.value_info.remove(v)
    og.save_model(model16, dst)
    return {"library_call": "onnxruntime.transformers.float16.convert_float_to_float16",
            "settings": {"keep_io_types": True, "op_block_list": block, "disable_shape_infer": external},
            "why": "normalization, softmax, pow/reductions and the pooling tail stay FP32 (FP16 overflow and "
                   "accumulation error); inputs/outputs stay int64/float32",
            "intended_for": "GPU execution providers (CUDA, DirectML, TensorRT EP); the CPU EP runs it for "
                            "parity only, slowly"}


# ---- checks and reports
def _feeds(ctx: CompileContext) -> tuple:
    if not ctx.calibration:
        raise CompileError("no calibration batches for a calibrated precision",
                           "give the build a calibration corpus (or use int8-dynamic)")
    return ctx.calibration


def _check_reference(ctx: CompileContext) -> None:
    """The reference must be the file the export validated: hash, protobuf, I/O names."""
    from ...artifact import verify_files  # noqa: PLC0415

    src = Path(ctx.reference_onnx)
    if not src.is_file():
        raise CompileError(f"reference ONNX {src} is missing", "re-run 'embedc export'")
    recorded = [f for f in ctx.reference_meta.get("files", []) if f["path"].startswith(src.name)]
    try:
        verify_files(ctx.reference_dir, {"files": recorded})
    except ArtifactError as exc:
        raise CompileError(f"reference ONNX {src} is missing data or does not match the sha256 recorded at "
                           "export (truncated or corrupted?)", "re-run 'embedc export' to rebuild the reference") from exc
    import onnx  # noqa: PLC0415

    try:
        proto = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise CompileError(f"reference ONNX {src} is unreadable (truncated or corrupted?): {type(exc).__name__}",
                           "re-run 'embedc export' to rebuild the reference model") from exc
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != list(ctx.input_names) or OUTPUT not in outputs:
        raise CompileError(f"reference ONNX {src} has inputs {inputs} / outputs {outputs}, expected "
                           f"{list(ctx.input_names)} and {OUTPUT!r}", "re-run 'embedc export'")


def _check_artifact(dst: Path, src: Path) -> None:
    import onnx  # noqa: PLC0415

    if not dst.is_file():
        raise CompileError(f"no model was written to {dst}", "report this as an embedc bug")
    got, want = (onnx.load(str(p), load_external_data=False).graph for p in (dst, src))
    if [i.name for i in got.input] != [i.name for i in want.input] or \
            [o.name for o in got.output] != [o.name for o in want.output]:
        raise CompileError(f"compiled model {dst} changed the graph inputs/outputs", "report this as an embedc bug")


def _runtime(precision: str, target: Target) -> dict:
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if precision == "fp16"
                 else list(PROVIDERS))
    return {"library": "onnxruntime", "providers": providers,
            "session_options": {"graph_optimization_level": "ORT_ENABLE_ALL",
                                "intra_op_num_threads": "number of physical cores",
                                "inter_op_num_threads": 1},
            "output": OUTPUT, "isa": target.settings.get("isa"),
            "note": ("FP16 weights for GPU execution providers; the CPU EP runs it slowly" if precision == "fp16"
                     else "ORT_ENABLE_ALL at load time is fine: it is applied on the user's own CPU")}


def _unverified(target: Target, precision: str) -> tuple[str, ...]:
    machine = platform.machine().lower()
    from ...machine import cpu_flags  # noqa: PLC0415

    flags = cpu_flags() or set()
    out = []
    int8 = precision.startswith("int8") or precision == "int4"
    if target.name == "ort-cpu-avx512-vnni" and int8 and not flags & {"avx512_vnni", "avx_vnni"}:
        out.append("avx512-vnni kernels not exercised on this CPU (no VNNI): parity here ran the AVX2 U8S8 "
                   "path, which can saturate without reduce_range, so it is pessimistic for VNNI")
    if target.name == "ort-cpu-arm64" and machine not in ("aarch64", "arm64"):
        out.append(f"arm64 kernels not exercised: parity ran on this {machine} CPU's kernels")
    if target.name == "ort-cpu-avx2" and "avx2" not in flags and machine in ("x86_64", "amd64"):
        out.append("AVX2 kernels not exercised on this CPU")
    if precision == "fp16":
        out.append("FP16 on GPU execution providers not exercised here (parity ran on the CPU EP)")
    return tuple(out)
