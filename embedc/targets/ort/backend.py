"""ONNX Runtime backend: CPU targets as data, options as a schema, compile
(fp32 / fp16 / int8 / int4) and load. Import-light: onnx / onnxruntime load
inside functions.

Per target, the INT8 kernel question is the one that matters: x86 without
VNNI multiplies U8S8 with VPMADDUBSW, whose int16 pair sums can saturate
(255 * 127 * 2 > 32767), so weights there are quantized to 7 bits
(``reduce_range``) as ORT's quantization docs advise; VNNI has no such
limit; arm64 kernels prefer symmetric S8S8.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import ArtifactError, CompileError, EmbedcError, MissingDependencyError, TargetError
from .. import options as opt
from ..base import Backend, Capabilities, CompileContext, CompileResult, Target
from ..registry import check_precision
from ...int4 import is_torch_algorithm, options_schema as int4_options

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "int4")
MODEL_FILE = "model.onnx"
OUTPUT = "sentence_embedding"
TOKEN_OUTPUT = "last_hidden_state"   # the name optimum (sentence-transformers' onnx backend) reads
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

# ---- options per precision (defaults and valid values)
FP16_BLOCK = ("LayerNormalization", "SkipLayerNormalization", "Softmax", "Pow", "ReduceMean", "ReduceSum",
              "ReduceL2", "Sqrt", "Erf")
CALIBRATE_METHODS = ("MinMax", "Entropy", "Percentile")
DEFAULT_AUTO_EXCLUDE = 12
DEFAULT_INT4_BLOCK = 32
BLOCK_SIZE_REASON = ("block 32 (ORT's default is 128): encoder weights are small (K = 384-1536) with outlier "
                     "rows; measured on all-MiniLM-L6-v2 (true FP32) mean cosine 0.941 at block 32 vs 0.924 at "
                     "64 and 0.911 at 128, for +0.125 byte/weight of scales. The embedding table uses block 64: "
                     "on multilingual-e5-small block 32 gives 15.8% of FP32, block 64 14.6% (mean 0.99979)")


def _op_names(default: tuple[str, ...]) -> opt.Option:
    def parse(v):
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) and i for i in items):
            raise opt.Invalid("use a list of ONNX op types, e.g. ['LayerNormalization', 'Softmax']")
        return tuple(items)
    return opt.Option(default, parse, "a list of ONNX op types")


def _auto_exclude(default: int) -> opt.Option:
    """true (the default cap), false (off) or a maximum count of MatMuls."""
    def parse(v):
        if isinstance(v, bool):
            return DEFAULT_AUTO_EXCLUDE if v else 0
        if isinstance(v, int) and v >= 0:
            return v
        raise opt.Invalid("pass true, false or a maximum count of MatMuls (>= 0)")
    return opt.Option(default, parse, "true, false or a count")


_TARGET_COSINE = dict(lo=0.0, hi=1.0, open_lo=True)
SCHEMA: dict[str, dict[str, opt.Option]] = {
    "fp32": {"optimization": opt.choice("extended", ("extended", "basic", "disabled"))},
    "fp16": {"op_block_list": _op_names(FP16_BLOCK)},
    "int8-dynamic": {"exclude": opt.patterns(), "quantize_embedding": opt.flag(True),
                     "per_channel": opt.flag(True), "embedding_block_size": opt.integer(128, power_of_two=True),
                     "activations": opt.choice("auto", ("auto", "per-tensor", "per-block")),
                     "block_size": opt.integer(None, power_of_two=True, none=True)},  # per-block: 32
    "int8-static": {"calibrate_method": opt.choice("MinMax", CALIBRATE_METHODS), "exclude": opt.patterns(),
                    "auto_exclude": _auto_exclude(DEFAULT_AUTO_EXCLUDE),
                    "target_mean": opt.number(0.998, **_TARGET_COSINE),
                    "target_min": opt.number(0.99, **_TARGET_COSINE),
                    "excluded_as": opt.choice("int8-weight-only", ("int8-weight-only", "fp32")),
                    "quantize_embedding": opt.flag(True), "embedding_block_size": opt.integer(128, power_of_two=True),
                    "percentile": opt.number(99.999, lo=90.0, hi=100.0), "smooth_quant": opt.flag(True),
                    "smooth_alpha": opt.number("auto", lo=0.0, hi=1.0, words=("auto",))},
    "int4": {"algorithm": opt.choice("default", ("default", "rtn", "gptq", "hqq", "autoround", "gptq-inc")),
             "block_size": opt.integer(DEFAULT_INT4_BLOCK, power_of_two=True), "is_symmetric": opt.flag(True),
             "zero_points": opt.choice("uint4", ("uint4", "float")),  # with is_symmetric=false
             "accuracy_level": opt.choice(4, (0, 1, 2, 3, 4)), "quantize_embedding": opt.flag(True),
             "embedding_bits": opt.choice(4, (4, 8)), "embedding_block_size": opt.integer(64, power_of_two=True),
             "embedding_scales": opt.choice("fp32", ("fp32", "fp16")),  # the table's
             "linear_scales": opt.choice("fp32", ("fp32", "fp16")),  # every MatMulNBits' (half_scales.py)
             "exact_template_rows": opt.flag(True),
             "exclude": opt.patterns(), "gptq_samples": opt.integer(32, lo=1), "auto_exclude": _auto_exclude(0),
             "target_mean": opt.number(0.99, **_TARGET_COSINE), "target_min": opt.number(0.97, **_TARGET_COSINE),
             **int4_options()},
}


def resolve_options(precision: str, given: Mapping, target: str = "") -> dict:
    """Defaults overlaid with the user's options; unknown keys and bad values raise TargetError."""
    resolved = opt.resolve(SCHEMA[precision], given, f"{precision} on {target}" if target else precision)
    if precision == "int4" and is_torch_algorithm(resolved) and resolved["auto_exclude"]:
        raise TargetError(f"option auto_exclude does not apply to algorithm={resolved['algorithm']} "
                          f"({precision} on {target})", "drop auto_exclude, or name layers with exclude")
    if precision == "int4" and resolved["zero_points"] == "float" and (
            resolved["is_symmetric"] or resolved["algorithm"] != "default"):
        raise TargetError(f"option zero_points=float needs is_symmetric=false and algorithm=default "
                          f"({precision} on {target})", "pass is_symmetric=false and algorithm=default, "
                                                        "or drop zero_points")
    if precision == "int4" and resolved["embedding_scales"] == "fp16" and not resolved["quantize_embedding"]:
        raise TargetError(f"option embedding_scales=fp16 applies to a quantized table only ({precision} on {target})",
                          "drop embedding_scales, or pass quantize_embedding=true")
    if precision == "int8-dynamic" and resolved["activations"] != "auto":  # auto: checked at compile
        check_dynamic_scheme(resolved, resolved["activations"], f"activations={resolved['activations']} "
                                                                f"({precision} on {target})")
    return resolved


def check_dynamic_scheme(options: Mapping, scheme: str, where: str) -> None:
    """An int8-dynamic option of the other activation scheme is a usage error (checked on
    resolved values: compile resolves them again)."""
    if scheme == "per-tensor" and options["block_size"] is not None:
        name, does, other = "block_size", "its activations per tensor", "per-block"
    elif scheme == "per-block" and not options["per_channel"]:
        name, does, other = "per_channel", "its weights per block", "per-tensor"
    else:
        return
    raise TargetError(f"option {name} does not apply to {where}: int8-dynamic quantizes {does}",
                      f"drop {name}, or pass activations={other}")


# ---- the backend
def _require_ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError(f"the ort backend needs onnx and onnxruntime ({exc.name} is missing)",
                                     "pip install onnx onnxruntime (embedc dependencies)") from exc
    return ort


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


class OrtRunner:
    """Runs an ORT artifact on the CPU execution provider."""

    def __init__(self, session):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ArtifactError(f"the ORT model needs input(s) {', '.join(missing)}",
                                "tokenize with the artifact's input names")
        got = self.session.run(list(outputs), {n: feeds[n] for n in self.input_names})
        return dict(zip(outputs, got))

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.run(feeds, [OUTPUT])[OUTPUT], dtype=np.float32)


class OrtBackend(Backend):
    name = "ort"
    targets = TARGETS
    libraries = ("onnx", "onnxruntime", "onnx-ir", "auto-round", "neural-compressor")
    capabilities = Capabilities(st_backend="onnx", engine=False, output_heads=True, report_marker="o")

    def resolve_options(self, target: Target, precision: str, options: Mapping) -> dict:
        check_precision(target, precision)
        return resolve_options(precision, options, target.name)

    def cache_facts(self, target: Target, precision: str, options: Mapping) -> dict:
        """The build CPU's kernel family: parity is measured on it, and the
        artifact's ``unverified`` list names the kernels it did not exercise."""
        from ..host import cpu_kernel_facts

        return cpu_kernel_facts()

    def compile(self, target: Target, precision: str, ctx: CompileContext, out_dir: Path) -> CompileResult:
        options = self.resolve_options(target, precision, ctx.options)
        ort = _require_ort()
        from ...onnxkit.files import files_bytes

        src = Path(ctx.reference_onnx)
        _check_reference(ctx)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        dst = out_dir / MODEL_FILE
        work = Path(ctx.work_dir) / f"ort-{target.name}-{precision}"
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            recipe = _dispatch(precision, src, dst, target.settings, options, ctx, work)
        except EmbedcError:
            raise
        except Exception as exc:  # onnx / onnxruntime raise their own types; name the step that failed
            raise CompileError(f"onnxruntime {precision} compile for {target.name} failed: {_first_line(exc)}",
                               "re-run with a fresh export; report it with the recipe options if it persists"
                               ) from exc
        seconds = time.perf_counter() - started
        _check_artifact(dst, src)
        size, ref_size = files_bytes(dst), files_bytes(src)
        recipe = {"backend": "ort", "target": target.name, "precision": precision,
                  "options": opt.jsonable(options), **recipe, "seconds": round(seconds, 1), "bytes": size,
                  "reference_bytes": ref_size, "size_ratio": round(size / ref_size, 4),
                  "onnxruntime": ort.__version__}
        facts = self.cache_facts(target, precision, options)
        return CompileResult(model_file=MODEL_FILE, recipe=recipe, runtime=_runtime(precision, target),
                             unverified=_unverified(target, precision, facts))

    def load(self, artifact_dir: Path, meta: dict, *, threads: int | None = None) -> OrtRunner:
        _require_ort()
        from ...onnxkit.session import cpu_session

        path = Path(artifact_dir) / meta.get("model_file", MODEL_FILE)
        if not path.is_file():
            raise ArtifactError(f"ORT model file {path} is missing", "rebuild the artifact")
        try:
            sess = cpu_session(path, threads, level="all")
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ArtifactError(f"onnxruntime cannot load {path}: {_first_line(exc)}",
                                "rebuild the artifact; check the onnxruntime version it was built with") from exc
        if OUTPUT not in [o.name for o in sess.get_outputs()]:
            raise ArtifactError(f"{path} has no {OUTPUT!r} output", "rebuild the artifact from an embedc export")
        return OrtRunner(sess)

    def attach_output_heads(self, artifact_dir: Path, result: CompileResult, heads, ranges) -> dict:
        from ...outputs.onnx_heads import attach

        return attach(Path(artifact_dir) / result.model_file, list(heads), ranges)

    def st_model_kwargs(self, artifact_dir: Path, meta: dict) -> tuple[dict | None, str | None]:
        """optimum's ``ORTModelForFeatureExtraction`` reads the token states by the name
        ``last_hidden_state`` and runs on the artifact's first provider."""
        import onnx

        model_file = meta.get("model_file", MODEL_FILE)
        path = Path(artifact_dir) / model_file
        if not path.is_file():
            raise ArtifactError(f"model file {path} is missing", "rebuild the artifact")
        outputs = {o.name for o in onnx.load(str(path), load_external_data=False).graph.output}
        if TOKEN_OUTPUT not in outputs:
            return None, (f"{model_file} has no {TOKEN_OUTPUT!r} output (outputs: {', '.join(sorted(outputs))}); "
                          f"optimum reads the token embeddings by that name")
        providers = (meta.get("runtime") or {}).get("providers") or list(PROVIDERS)
        return {"file_name": model_file, "provider": providers[0]}, None


BACKEND = OrtBackend()


def _dispatch(precision: str, src: Path, dst: Path, settings: dict, options: dict, ctx: CompileContext,
              work: Path) -> dict:
    from . import int4 as ort_int4, int8 as ort_int8

    exact_ids = _exact_table_ids(ctx, options) if precision == "int4" else ()
    if (ctx.reference_meta.get("low_memory") or {}).get("enabled"):
        if precision != "int4":
            raise CompileError(f"ORT {precision} loads the whole FP32 model, which the low-memory path avoids",
                               "build int4 for ORT (or OpenVINO targets), or build with --low-memory off")
        from .int4_streamed import quantize_int4_streamed

        return quantize_int4_streamed(src, dst, options=options, exact_ids=exact_ids)
    if precision == "fp32":
        return _compile_fp32(src, dst, options)
    if precision == "fp16":
        return _compile_fp16(src, dst, options)
    if precision == "int8-dynamic":
        family = ctx.adapter.get("family", "")
        check_dynamic_scheme(options, ort_int8.dynamic_activations(options, family),
                             f"this {family or 'encoder'} model")
        return ort_int8.quantize_int8_dynamic(src, dst, settings=settings, options=options, work=work,
                                              family=family)
    if precision == "int8-static":
        return ort_int8.quantize_int8_static(src, dst, feeds=_feeds(ctx), input_names=ctx.input_names,
                                             settings=settings, options=options, work=work, threads=None)
    if is_torch_algorithm(options):
        from ...int4 import weights_for
        from ...int4.ort import quantize_int4_codes

        layers, info = weights_for(ctx, options)
        return quantize_int4_codes(src, dst, layers=layers, info=info, options=options,
                                   exact_ids=exact_ids)
    return ort_int4.quantize_int4(src, dst, feeds=_feeds(ctx), input_names=ctx.input_names, options=options,
                                  work=work, threads=None, exact_ids=exact_ids)


def _exact_table_ids(ctx: CompileContext, options: dict) -> tuple[int, ...]:
    """Token ids whose table rows stay FP32 beside a 4-bit table: the ones the tokenizer adds to
    every text (its template: BOS/CLS, EOS/SEP), read from the reference export's tokenizer."""
    if not (options["exact_template_rows"] and options["quantize_embedding"] and options["embedding_bits"] == 4):
        return ()
    from ...models.loading import load_tokenizer

    return tuple(dict.fromkeys(int(i) for i in load_tokenizer(ctx.reference_dir, shared=True)("")["input_ids"]))


# ---- fp32 / fp16
def _compile_fp32(src: Path, dst: Path, options: dict) -> dict:
    """ORT's own graph optimizer at a portable level, saved offline."""
    import onnxruntime as ort

    from ...onnxkit.files import copy_model, file_needs_external_data

    level = options["optimization"]
    if level == "disabled":
        copy_model(src, dst)
        return {"library_call": "copy of the reference ONNX", "settings": {"graph_optimization_level": "none"}}
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if level == "extended"
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    external = file_needs_external_data(src)
    if external:
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), so, providers=list(PROVIDERS))
    return {"library_call": "onnxruntime.InferenceSession(SessionOptions.optimized_model_filepath=...)",
            "settings": {"graph_optimization_level": f"ORT_ENABLE_{level.upper()}", "external_data": external},
            "why": "EXTENDED fusions (SkipLayerNormalization, FusedMatMul, ...) are CPU-independent; "
                   "a model saved at ORT_ENABLE_ALL carries layout transforms tied to the CPU that saved it"}


def _compile_fp16(src: Path, dst: Path, options: dict) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    from ...onnxkit.casts import drop_fp16_roundtrips, norm_nodes
    from ...onnxkit.files import load_model, needs_external_data, save_model
    from ...onnxkit.graph import strip_debug_metadata
    from ...onnxkit.session import quiet_ort_logs

    model = load_model(src)
    external = needs_external_data(model)
    block = list(options["op_block_list"])
    # Every node of every RMSNorm stays FP32, the Add(eps) between ReduceMean and Sqrt included, with no
    # FP16 round trip between them: a decoder's residual stream reaches ~25,000 (SmolLM2's massive
    # activations), so mean(x^2) ~ 1e6 overflows FP16 (413 of 684 SmolLM2 embeddings came out zero).
    rms = sorted(norm_nodes(model))
    strip_debug_metadata(model)
    with quiet_ort_logs():
        model16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                           node_block_list=rms,
                                           disable_shape_infer=external)  # onnx shape inference stops at 2 GB
    casts = sum(n.op_type == "Cast" for n in model16.graph.node)
    model16 = drop_fp16_roundtrips(model16, set(block), set(rms))  # kept -> kept stays FP32 (onnxkit/casts.py)
    round_trips = casts - sum(n.op_type == "Cast" for n in model16.graph.node)
    # the converter appends the Casts around blocked nodes at the end (restore topological order), and
    # can leave an initializer's redundant value_info at fp16 while the tensor stays fp32 (drop those)
    OnnxModel(model16).topological_sort()
    names = {t.name for t in model16.graph.initializer}
    stale = [v for v in model16.graph.value_info if v.name in names]
    for v in stale:
        model16.graph.value_info.remove(v)
    save_model(model16, dst)
    return {"library_call": "onnxruntime.transformers.float16.convert_float_to_float16",
            "settings": {"keep_io_types": True, "op_block_list": block, "disable_shape_infer": external,
                         "node_block_list": f"{len(rms)} RMSNorm nodes",
                         "fp16_casts_removed": round_trips},
            "why": "normalization (each RMSNorm whole), softmax, pow/reductions and the pooling tail stay FP32 "
                   "(FP16 overflow and accumulation error); inputs/outputs stay int64/float32",
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
    import onnx

    from ...artifact import verify_files

    src = Path(ctx.reference_onnx)
    if not src.is_file():
        raise CompileError(f"reference ONNX {src} is missing", "re-run 'embedc export'")
    recorded = [f for f in ctx.reference_meta.get("files", []) if f["path"].startswith(src.name)]
    try:
        verify_files(ctx.reference_dir, {"files": recorded})
    except ArtifactError as exc:
        raise CompileError(f"reference ONNX {src} is missing data or does not match the sha256 recorded at "
                           "export (truncated or corrupted?)", "re-run 'embedc export' to rebuild the reference") from exc
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
    import onnx

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


def _unverified(target: Target, precision: str, facts: dict) -> tuple[str, ...]:
    """What parity on the build CPU (``facts``, from ``cache_facts``) did not exercise."""
    machine = facts["machine"]
    out = []
    quantized = precision.startswith("int8") or precision == "int4"
    if target.settings.get("isa", "").startswith("x86-64 AVX-512 VNNI") and quantized and not facts["vnni"]:
        out.append("avx512-vnni kernels not exercised on this CPU (no VNNI): parity here ran the AVX2 U8S8 "
                   "path, which can saturate without reduce_range, so it is pessimistic for VNNI")
    if target.settings.get("isa") == "arm64" and machine not in ("aarch64", "arm64"):
        out.append(f"arm64 kernels not exercised: parity ran on this {machine} CPU's kernels")
    if target.settings.get("isa", "").startswith("x86-64 AVX2") and not facts["avx2"] and \
            machine in ("x86_64", "amd64"):
        out.append("AVX2 kernels not exercised on this CPU")
    # MLAS picks the best integer kernels of the CPU it runs on: on a VNNI host, parity of an artifact
    # meant for (or also for) AVX2-only CPUs ran the VNNI kernels, not the ones those CPUs will run
    if quantized and facts["vnni"] and machine in ("x86_64", "amd64") and \
            (target.settings.get("isa") == "any" or target.settings.get("isa", "").startswith("x86-64 AVX2")):
        out.append("AVX2 integer kernels (no VNNI) not exercised: parity ran this CPU's VNNI kernels")
    if precision == "fp16":
        out.append("FP16 on GPU execution providers not exercised here (parity ran on the CPU EP)")
    return tuple(out)
