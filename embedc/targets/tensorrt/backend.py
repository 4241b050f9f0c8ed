"""TensorRT backend: TensorRT-ready ONNX plus the files to build the engine.

No machine here has an NVIDIA GPU, so embedc writes the ONNX graph that
TensorRT's strongly typed builder will execute (TensorRT 10+/11: precision
comes only from tensor dtypes and Q/DQ nodes) together with ``build.json`` and
``trtexec.sh``; the engine (``model.plan``) is built on the GPU host with
``embedc engine ARTIFACT`` or ``sh trtexec.sh``.

Parity here runs that same ONNX graph on ONNX Runtime's CPU provider with
graph optimizations off, i.e. exactly the FP16 casts and Q/DQ arithmetic
written in the graph. The engine's own kernels (fusions, FP16 accumulation,
INT8 GEMMs) are a separate, unverified step until someone runs
``embedc engine`` and compares outputs on a GPU.

Precision options (``ctx.options``):

- all: ``exclude`` (module-path substrings kept in higher precision, e.g.
  ``output.dense``), ``threads`` (ORT CPU threads while compiling);
- int8: ``method`` (minmax|entropy|percentile; ``percentile`` value),
  ``compute`` (fp16|fp32 for the non-quantized layers; default fp16);
- int4: ``block_size`` (default 32), ``algorithm`` (gptq|rtn; default gptq);
- int8/int4 search: ``search`` (default on), ``search_mean`` /
  ``search_p01`` / ``search_min`` (calibration-text targets), ``search_texts``
  (texts scored per trial, default 96), ``search_trials``, ``max_kept_fraction``;
- engine profile: see :mod:`embedc.targets.tensorrt.profiles`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..base import CompileContext, CompileResult, Target

log = logging.getLogger("embedc.targets.tensorrt.backend")

MODEL_FILE = "model.onnx"
PRECISIONS = ("fp16", "int8", "int4")
UNVERIFIED_ENGINE = "TensorRT engine build not run: needs an NVIDIA GPU with TensorRT"
_COMMON = ("exclude", "threads", "batch_min", "batch_opt", "batch_max", "seq_min", "seq_opt", "seq_max",
           "workspace_mb", "timing_cache")
_SEARCH = ("search", "search_mean", "search_p01", "search_min", "search_texts", "search_trials", "max_kept_fraction")
OPTIONS = {"fp16": _COMMON, "int8": _COMMON + _SEARCH + ("method", "percentile", "compute"),
           "int4": _COMMON + _SEARCH + ("block_size", "algorithm")}
_NOTES = ("artifact is TensorRT-ready ONNX + build.json/trtexec.sh; build the engine on the GPU host "
          "with 'embedc engine ARTIFACT'",
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


class OrtGraphRunner:
    """Runs the artifact's ONNX on ONNX Runtime CPU (parity of the graph TensorRT executes)."""

    def __init__(self, path: Path, threads: int | None):
        from .calib import session

        self.session = session(path, threads, exact=True)
        self._names = {i.name for i in self.session.get_inputs()}

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run(["sentence_embedding"], {k: v for k, v in feeds.items() if k in self._names})[0]
        return np.asarray(out, dtype=np.float32)


class TensorRTBackend:
    name = "tensorrt"

    def compile(self, target: Target, precision: str, ctx: CompileContext, out_dir: Path) -> CompileResult:
        import onnx

        from ...errors import UsageError
        from ..registry import check_precision
        from .check import RULES, assert_trt_ready
        from .graph import sentence_output_only
        from .profiles import BUILD_FILE, TRTEXEC_FILE, build_spec, derive_profile, write_build_files
        from .calib import save_model
        from .quantize import convert_fp16, quantize_int4, quantize_int8

        check_precision(target, precision)
        unknown = sorted(set(ctx.options) - set(OPTIONS[precision]))
        if unknown:
            raise UsageError(f"unknown TensorRT {precision} option {unknown[0]!r}",
                             f"valid options: {', '.join(OPTIONS[precision])}")
        out_dir = Path(out_dir)
        work = Path(ctx.work_dir) / f"tensorrt-{precision}"
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        model = sentence_output_only(onnx.load(str(ctx.reference_onnx)))
        recipe_fn = {"fp16": convert_fp16, "int8": quantize_int8, "int4": quantize_int4}[precision]
        log.info("TensorRT %s: preparing %s graph", target.name, precision)
        model, recipe = recipe_fn(model, ctx, work)
        save_model(model, out_dir / MODEL_FILE)
        assert_trt_ready(model, precision)
        del model
        profile = derive_profile(ctx.length_stats, int(ctx.reference_meta.get("max_length", 512)), ctx.options)
        build = build_spec(onnx_file=MODEL_FILE, precision=precision, target=target.name,
                           compute_capability=target.settings["compute_capability"],
                           input_names=ctx.input_names, profile=profile, options=ctx.options)
        write_build_files(out_dir, build)
        recipe = {"backend": "tensorrt", "target": target.name, "precision": precision,
                  "outputs": ["sentence_embedding"], **recipe,
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
            "engine_parity": "separate step on the GPU host (embedc.targets.trt_engine.run_engine); "
                             "unverified without an NVIDIA GPU",
        }
        unverified = (UNVERIFIED_ENGINE,
                      "engine parity (TensorRT kernels vs this ONNX graph) not measured: needs the engine",
                      "engine latency/throughput not measured: needs an NVIDIA GPU")
        return CompileResult(model_file=MODEL_FILE, recipe=recipe, runtime=runtime, unverified=unverified)

    def load(self, artifact_dir: Path, meta: dict, *, threads: int | None = None) -> OrtGraphRunner:
        from ...errors import ArtifactError

        path = Path(artifact_dir) / meta.get("model_file", MODEL_FILE)
        if not path.is_file():
            raise ArtifactError(f"TensorRT artifact {artifact_dir} has no {path.name}", "rebuild the artifact")
        return OrtGraphRunner(path, threads)


BACKEND = TensorRTBackend()
