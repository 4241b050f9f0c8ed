"""TensorRT backend: TensorRT-ready ONNX plus the files to build the engine.

No machine here has an NVIDIA GPU, so embedc writes the ONNX graph that
TensorRT's strongly typed builder will execute (TensorRT 10+/11: precision
comes only from tensor dtypes and Q/DQ nodes) together with ``build.json`` and
``trtexec.sh``; the engine (``model.plan``) is built, and its parity on the
evaluation split recorded, on the GPU host with ``embedc engine ARTIFACT``
(:mod:`.engine`).

Parity here runs that same ONNX graph on ONNX Runtime's CPU provider with
graph optimizations off, i.e. exactly the FP16 casts and Q/DQ arithmetic
written in the graph. The engine's own kernels (fusions, FP16 accumulation,
INT8 GEMMs) stay unverified until ``embedc engine`` has run on a GPU.

Options (``SCHEMA``): ``exclude`` (module-path patterns kept in higher
precision), ``threads`` (ORT CPU threads while compiling), the engine
profile (:mod:`.profiles`); int8: ``method``, ``percentile``, ``compute``;
int4: ``block_size``, ``algorithm``; int8/int4 search: ``search``,
``search_mean`` / ``search_p01`` / ``search_min`` (calibration-text targets,
default: stricter than the precision's default gate), ``search_texts``,
``search_trials``, ``max_kept_fraction``.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import ArtifactError, CompileError, EmbedcError, TargetError
from .. import options as opt
from ..base import Backend, Capabilities, CompileContext, CompileResult, Target
from ..registry import check_precision
from ...int4 import options_schema as int4_options

log = logging.getLogger("embedc.targets.tensorrt.backend")

MODEL_FILE = "model.onnx"
OUTPUT = "sentence_embedding"
PRECISIONS = ("fp16", "int8", "int4")
UNVERIFIED_ENGINE = ("TensorRT engine: unverified (its build, parity and speed need an NVIDIA GPU with TensorRT: "
                     "run 'embedc engine ARTIFACT' there)")
_NOTES = ("artifact is TensorRT-ready ONNX + build.json/trtexec.sh; build the engine and record its parity on the "
          "GPU host with 'embedc engine ARTIFACT'",
          "parity here runs the same ONNX graph on ONNX Runtime CPU (exact FP16/Q/DQ semantics)")


def _target(name: str, arch: str, cc: str, gpus: str, fp8: bool) -> Target:
    return Target(name=name, backend="tensorrt", device="cuda",
                  description=f"NVIDIA {arch} (sm{cc.replace('.', '')}: {gpus}) via TensorRT, strongly typed ONNX",
                  precisions=PRECISIONS,
                  settings={"compute_capability": cc, "architecture": arch, "fp8_capable": fp8,
                            "strongly_typed": True},
                  runs_here=False, notes=_NOTES)


TARGETS: tuple[Target, ...] = (
    _target("tensorrt-sm80", "Ampere", "8.0", "A100, A30, A10, RTX 30xx", False),
    _target("tensorrt-sm89", "Ada", "8.9", "L4, L40S, RTX 40xx", True),
    _target("tensorrt-sm90", "Hopper", "9.0", "H100, H200", True),
)


# ---- options ------------------------------------------------------------------------------------
def _positive(default=None) -> opt.Option:
    return opt.integer(default, lo=1, none=default is None)


@functools.cache
def _schema(precision: str) -> dict[str, opt.Option]:
    from .profiles import DEFAULT_TIMING_CACHE, DEFAULT_WORKSPACE_MB, PROFILE_OPTIONS
    from .search import SearchTargets

    common = {"exclude": opt.patterns(), "threads": _positive(), "workspace_mb": _positive(DEFAULT_WORKSPACE_MB),
              "timing_cache": opt.text(DEFAULT_TIMING_CACHE), **{k: _positive() for k in PROFILE_OPTIONS}}
    if precision == "fp16":
        return common
    cosine = dict(lo=0.0, hi=1.0, open_lo=True)
    t = SearchTargets.defaults(precision)
    searching = {"search": opt.flag(True), "search_mean": opt.number(t.mean, **cosine),
                 "search_p01": opt.number(t.p01, **cosine), "search_min": opt.number(t.min, **cosine),
                 "search_texts": _positive(96), "search_trials": _positive(9),
                 "max_kept_fraction": opt.number(0.34, lo=0.0, hi=1.0)}
    if precision == "int8":
        return {**common, **searching, "method": opt.choice("minmax", ("minmax", "entropy", "percentile")),
                "percentile": opt.number(99.999, lo=90.0, hi=100.0), "compute": opt.choice("fp16", ("fp16", "fp32"))}
    return {**common, **searching, "block_size": opt.integer(32, power_of_two=True),
            "algorithm": opt.choice("gptq", ("gptq", "rtn", "autoround", "gptq-inc")), **int4_options()}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


# ---- runner ---------------------------------------------------------------------------------------
class OrtGraphRunner:
    """Runs the artifact's ONNX on ONNX Runtime CPU, graph optimizations off
    (parity of the graph TensorRT executes)."""

    def __init__(self, session):
        self.session = session
        self._names = [i.name for i in session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        missing = [n for n in self._names if n not in feeds]
        if missing:
            raise ArtifactError(f"the TensorRT-ready ONNX needs input(s) {', '.join(missing)}",
                                "tokenize with the artifact's input names")
        return dict(zip(outputs, self.session.run(list(outputs), {n: feeds[n] for n in self._names})))

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.run(feeds, [OUTPUT])[OUTPUT], dtype=np.float32)


# ---- backend --------------------------------------------------------------------------------------
class TensorRTBackend(Backend):
    name = "tensorrt"
    targets = TARGETS
    libraries = ("onnx", "onnxruntime", "tensorrt", "auto-round", "neural-compressor")
    capabilities = Capabilities(st_backend=None, engine=True, output_heads=True, report_marker="^")

    def resolve_options(self, target: Target, precision: str, options: Mapping) -> dict:
        check_precision(target, precision)
        resolved = opt.resolve(_schema(precision), options, f"{precision} on {target.name}")
        if precision == "int4" and resolved["full_range"]:
            raise TargetError(f"option full_range=true is invalid for {precision} on {target.name}",
                              "TensorRT's blockwise DequantizeLinear needs positive scales: use full_range=false")
        from ...errors import UsageError
        from .profiles import derive_profile

        try:  # min <= opt <= max where given (the model's max length is checked at compile)
            derive_profile({}, 1 << 30, resolved)
        except UsageError as exc:
            raise TargetError(exc.message, exc.hint) from None
        return resolved

    def compile(self, target: Target, precision: str, ctx: CompileContext, out_dir: Path) -> CompileResult:
        options = self.resolve_options(target, precision, ctx.options)
        try:
            return self._compile(target, precision, ctx, Path(out_dir), options)
        except EmbedcError:
            raise
        except Exception as exc:  # onnx / onnxruntime / numpy: one line naming the step, never a raw traceback
            raise CompileError(f"TensorRT {precision} compile for {target.name} failed: {_first_line(exc)}",
                               "re-run with a fresh export; report it with the recipe options if it persists"
                               ) from exc

    def _compile(self, target: Target, precision: str, ctx: CompileContext, out_dir: Path,
                 options: dict) -> CompileResult:
        from ...onnxkit.files import load_model, save_model
        from .check import RULES, assert_trt_ready
        from .graph import pooling_tail_nodes, sentence_output_only
        from .profiles import BUILD_FILE, TRTEXEC_FILE, build_spec, derive_profile, write_build_files
        from .quantize import convert_fp16, quantize_int4, quantize_int8

        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(ctx.work_dir) / f"tensorrt-{precision}"
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        reference = load_model(ctx.reference_onnx)
        final_norm = (ctx.reference_meta.get("adapter") or {}).get("final_norm", "layernorm")
        tail = sorted(pooling_tail_nodes(reference, final_norm))  # while last_hidden_state is still an output
        model = sentence_output_only(reference)
        recipe_fn = {"fp16": convert_fp16, "int8": quantize_int8, "int4": quantize_int4}[precision]
        log.info("TensorRT %s: preparing %s graph", target.name, precision)
        model, recipe = recipe_fn(model, ctx, work, options, tail)
        save_model(model, out_dir / MODEL_FILE)
        assert_trt_ready(model, precision)
        del model
        profile = derive_profile(ctx.length_stats, int(ctx.reference_meta.get("max_length", 512)), options)
        build = build_spec(onnx_file=MODEL_FILE, precision=precision, target=target.name,
                           compute_capability=target.settings["compute_capability"],
                           input_names=ctx.input_names, profile=profile, options=options)
        write_build_files(out_dir, build)
        recipe = {"backend": "tensorrt", "target": target.name, "precision": precision,
                  "options": opt.jsonable(options), "outputs": [OUTPUT], "final_norm": final_norm,
                  "pooling_tail_nodes": len(tail), **recipe,
                  "trt_check": {"passed": True, "rules": list(RULES)},
                  "profile": {"batch": list(profile.batch), "seq": list(profile.seq),
                              "length_stats": dict(ctx.length_stats)},
                  "compile_seconds": round(time.perf_counter() - t0, 1)}
        runtime = {
            "engine": f"build on the GPU host: 'embedc engine ARTIFACT' (reads {BUILD_FILE}) or 'sh {TRTEXEC_FILE}'",
            "engine_file": build["engine"], "build_file": BUILD_FILE, "trtexec": build["trtexec"],
            "strongly_typed": True, "compute_capability": target.settings["compute_capability"],
            "parity_runtime": "onnxruntime CPUExecutionProvider, graph optimizations off "
                              "(exact FP16/Q/DQ semantics of the ONNX TensorRT will build)",
            "engine_parity": "unverified",
        }
        return CompileResult(model_file=MODEL_FILE, recipe=recipe, runtime=runtime, unverified=(UNVERIFIED_ENGINE,))

    def load(self, artifact_dir: Path, meta: dict, *, threads: int | None = None) -> OrtGraphRunner:
        from ...onnxkit.session import cpu_session

        path = Path(artifact_dir) / meta.get("model_file", MODEL_FILE)
        if not path.is_file():
            raise ArtifactError(f"TensorRT artifact {artifact_dir} has no {path.name}", "rebuild the artifact")
        try:
            return OrtGraphRunner(cpu_session(path, threads, level="exact"))
        except Exception as exc:  # ORT's own Fail/InvalidGraph types
            raise ArtifactError(f"onnxruntime cannot load {path}: {_first_line(exc)}",
                                "rebuild the artifact; check the onnxruntime version it was built with") from exc

    def attach_output_heads(self, artifact_dir: Path, result: CompileResult, heads, ranges) -> dict:
        """The same ONNX heads as ORT (float math, then Cast to INT8/UINT8 outputs); the
        TensorRT engine build with these outputs is not verified here."""
        from ...outputs.onnx_heads import attach

        record = attach(Path(artifact_dir) / result.model_file, list(heads), ranges)
        record["unverified"] = ("TensorRT engine with the compressed outputs (Round, Cast to INT8/UINT8 network "
                                "outputs) not built here: no GPU; the ONNX heads ran through ONNX Runtime")
        return record

    def model_files(self, artifact_dir: Path, meta: dict) -> list[str]:
        """The ONNX and its external data; an engine built later (``model.plan``) is not the artifact's model."""
        from ...onnxkit.files import model_files

        folder = Path(artifact_dir)
        return [p.relative_to(folder).as_posix() for p in model_files(folder / meta.get("model_file", MODEL_FILE))]


BACKEND = TensorRTBackend()
