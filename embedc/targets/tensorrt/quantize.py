"""Precision recipes for TensorRT-ready ONNX: FP16, INT8 (explicit Q/DQ) and
INT4 (weight-only blockwise DequantizeLinear).

Why not NVIDIA ModelOpt: ``nvidia-modelopt[onnx]`` pins onnx~=1.21 and
onnxruntime-gpu, which conflict with this project's onnx 1.23 / onnxruntime
1.32 (NOTES.md). INT8 uses onnxruntime's ``quantize_static`` with
TensorRT-shaped settings (symmetric int8, zero-point 0, per-tensor
activations, per-channel weights on the output axis, Q/DQ on GEMM inputs
only); INT4 uses a small blockwise rewrite (:mod:`.int4`, why there).
:mod:`.check` verifies the result either way.

Outliers: a plain per-tensor INT8 (or RTN INT4) encoder loses accuracy on a
few Linear layers (FFN output: NOTES.md measured mean cosine 0.95-0.97 on
e5-small). The shared sensitivity search (:mod:`.search`) keeps the worst
ones in higher precision, chosen by measuring on the calibration texts only,
and records which.

Non-quantized layers run in FP16 (``compute: fp16``, default; what TensorRT
INT8 engines normally do) or FP32 (``compute: fp32``); LayerNorm/Softmax/
RMSNorm and the pooling tail stay FP32 either way (:func:`.graph.to_fp16`).

Every recipe takes ``(model, ctx, work, options, tail)``: the FP32 graph with
``sentence_embedding`` as its only output, the compile context, scratch
space, the resolved options and the pooling-tail node names.
"""
from __future__ import annotations

import time
from pathlib import Path

from ...errors import CompileError
from ...onnxkit.files import needs_external_data, save_model
from ...onnxkit.metrics import cosine_stats
from ...onnxkit.qdq import keep_float_consumers
from ...onnxkit.scopes import module_paths, select, select_strict
from ...onnxkit.search import search
from ...onnxkit.session import cpu_session, embed_feeds, import_quantization, quiet_ort_logs
from .graph import to_fp16
from .prepared import QDQ_OPSET, SEARCH_LEVEL, Prepared, prepare
from .search import Ranker, SearchTargets, capture_inputs, kept_report, scorer

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _finish(prep: Prepared, qpath: Path, compute: str, tail, out_path: Path) -> tuple[object, dict]:
    """The chosen model, FP16 if asked, scored on every calibration text."""
    import onnx

    qm = onnx.load(str(qpath))
    if compute == "fp16":
        qm = to_fp16(qm, tail=tail)
    save_model(qm, out_path)
    return qm, cosine_stats(prep.reference, embed_feeds(cpu_session(out_path, prep.threads, level=SEARCH_LEVEL),
                                                        prep.feeds))


def _forced(prep: Prepared, options: dict) -> list[str]:
    return select_strict(prep.scopes, options["exclude"])


def _max_kept(options: dict, n: int) -> int:
    return max(0, min(n, int(round(options["max_kept_fraction"] * n))))


def _search(prep: Prepared, build, ranker: Ranker, options: dict, forced: list[str]):
    return search(build, scorer(prep), ranker, forced=forced, targets=SearchTargets.from_options(options).as_dict(),
                  cap=_max_kept(options, len(prep.candidates)), enabled=options["search"],
                  max_trials=options["search_trials"])


def quantize_int8(model, ctx, work: Path, options: dict, tail) -> tuple[object, dict]:
    """Static INT8 with TensorRT-shaped Q/DQ (see the module docstring)."""
    import onnx

    q = import_quantization()
    method = options["method"]
    prep = prepare(model, ctx.calibration, options, work)
    extra = {
        "ActivationSymmetric": True, "WeightSymmetric": True,        # zero-point 0 everywhere
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},           # B is [K, N]: N = output channels
        "OpTypesToExcludeOutputQuantization": ["MatMul"],            # Q/DQ on GEMM inputs only, as TensorRT fuses them
        "DedicatedQDQPair": True,                                    # q/k/v get one Q/DQ each (per-module)
        "QDQKeepRemovableActivations": True,                         # keep graph semantics for TensorRT's own fusions
        "QuantizeBias": False,                                       # TensorRT takes float bias
        "CalibStridedMinMax": 1,                                     # one text per collection (any method)
    }
    if method == "percentile":
        extra["CalibPercentile"] = options["percentile"]
    from ...onnxkit.calibration import feed_reader

    reader = feed_reader(prep.feeds, ctx.input_names)
    cache = work / f"ranges-{method}.json"
    external = needs_external_data(prep.model)
    linears = [n.name for n in prep.candidates]   # const-B MatMuls only: not QK^T / attn*V

    def build(excluded: list[str]) -> Path:
        out = work / f"int8-{len(excluded)}.onnx"
        chosen = [n for n in linears if n not in set(excluded)]
        if not chosen:  # an empty list means "all nodes" to quantize_static
            return prep.path
        reader.rewind()
        with quiet_ort_logs():
            q.quantize_static(str(prep.path), str(out), reader, quant_format=q.QuantFormat.QDQ,
                              op_types_to_quantize=["MatMul"], nodes_to_quantize=chosen, per_channel=True,
                              reduce_range=False, activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                              calibrate_method=getattr(q.CalibrationMethod, METHODS[method]),
                              use_external_data_format=external, extra_options=extra,
                              calibration_cache_path=str(cache))
        save_model(keep_float_consumers(onnx.load(str(out)), set(chosen)), out)
        return out

    t0 = time.perf_counter()
    forced = _forced(prep, options)
    ranker = Ranker(prep)
    result = _search(prep, build, ranker, options, forced)
    qm, final = _finish(prep, result.path, options["compute"], tail, work / "final.onnx")
    kept = result.excluded
    recipe = {
        "library": "onnxruntime.quantization.quantize_static",
        "why_not_modelopt": "nvidia-modelopt[onnx] pins onnx~=1.21 and onnxruntime-gpu, conflicting with "
                            "embedc's onnx/onnxruntime pins; ORT emits the same standard Q/DQ",
        "quant_format": "QDQ", "activation_type": "int8", "weight_type": "int8",
        "activations": "per-tensor, symmetric (zero-point 0)",
        "weights": "per-channel on axis 1 (output channels of MatMul B [K, N]), symmetric",
        "op_types": ["MatMul"], "calibration_method": METHODS[method],
        **({"percentile": extra["CalibPercentile"]} if method == "percentile" else {}),
        "calibration_texts": len(prep.feeds), "extra_options": extra, "opset": QDQ_OPSET,
        "compute": options["compute"], "quantized_layers": len(prep.candidates) - len(kept),
        "kept_high_precision": kept_report(prep, kept, ranker.errors),
        "kept_reason": "highest local quantization error on calibration activations, kept until the "
                       "calibration texts met the search targets",
        "forced_exclude": list(options["exclude"]),
        "search": {"targets": SearchTargets.from_options(options).as_dict(), **result.report()},
        "calibration_parity": final, "seconds": round(time.perf_counter() - t0, 1),
    }
    return qm, recipe


def quantize_int4(model, ctx, work: Path, options: dict, tail) -> tuple[object, dict]:
    """Weight-only INT4 (see :mod:`.int4`): int4 weights + blockwise
    DequantizeLinear on every Linear not kept by the search, the rest of the
    graph in FP16 with the FP32 keep-list. The embedding table stays FP16:
    TensorRT's INT4 weight-only path is for GEMMs only."""
    from onnx import numpy_helper

    from .int4 import CLIP_RATIOS, apply_int4, quantize_layer

    from ...int4 import is_torch_algorithm

    block, algorithm = options["block_size"], options["algorithm"]
    t0 = time.perf_counter()
    prep = prepare(model, ctx.calibration, options, work)
    # GEMM inputs on every calibration text (a row sample): the GPTQ Hessian and clip-search weights
    acts = capture_inputs(prep, prep.feeds)
    inits = {i.name: i for i in prep.model.graph.initializer}
    layers: dict[str, tuple] = {}  # each layer is quantized once, whatever the search keeps
    torch_info = None
    forced = _forced(prep, options)  # the exclude option's layers: FP16, and no torch codes for them
    if is_torch_algorithm(options):  # codes computed in torch once for every backend (embedc.int4)
        from ...int4 import weights_for
        from ...int4.layers import match_layers

        computed, torch_info = weights_for(ctx, options)
        kept_out = set(forced)
        matched = match_layers(prep.model, computed, block, [n for n in prep.candidates if n.name not in kept_out])
        missing = [prep.scopes[n.name] for n in prep.candidates if n.name not in matched and n.name not in kept_out]
        if missing:
            raise CompileError(f"{algorithm} computed no int4 weights for {missing[0]}",
                               "report this with the model name; exclude that layer meanwhile")
        layers.update({k: (d["q"], d["scale"]) for k, d in matched.items()})

    def build(excluded: list[str]) -> Path:
        for n in prep.candidates:
            if n.name not in excluded and n.name not in layers:
                w = numpy_helper.to_array(inits[n.input[1]])
                layers[n.name] = quantize_layer(w, block, acts.get(n.input[0]), algorithm)
        out = work / f"int4-{len(excluded)}.onnx"
        save_model(apply_int4(prep.model, {k: v for k, v in layers.items() if k not in excluded}, block), out)
        return out

    ranker = Ranker(prep, acts)
    result = _search(prep, build, ranker, options, forced)
    qm, final = _finish(prep, result.path, "fp16", tail, work / "final.onnx")
    kept = result.excluded
    recipe = {
        "library": "embedc.targets.tensorrt.int4 (onnx.helper rewrite)",
        "why_not_ort": "onnxruntime's MatMulNBitsQuantizer(QDQ) emits negative scales for about half the "
                       "blocks; TensorRT requires scale > 0",
        "why_not_modelopt": "nvidia-modelopt[onnx] pins onnx~=1.21 and onnxruntime-gpu, conflicting with "
                            "embedc's onnx/onnxruntime pins",
        "algorithm": (f"{algorithm} (computed in torch on the calibration split, shared with the other backends)"
                      if torch_info else
                      algorithm + (" (GPTQ error feedback over K, blockwise scales)" if algorithm == "gptq"
                                   else " (round to nearest)") + ", activation-weighted clip search for scales"),
        **({"int4_weights": torch_info} if torch_info else {}),
        "clip_ratios": [float(r) for r in CLIP_RATIOS] + ["amax/8"], "bits": 4, "symmetric": True,
        "block_size": block, "block_axis": "0 (K of MatMul B [K, N])", "opset": QDQ_OPSET,
        "weights": "int4 initializers + DequantizeLinear(axis=0, block_size) with FP16 scales",
        "activations": "fp16 (weight-only)", "embedding_table": "fp16 (TensorRT INT4 is for GEMMs only)",
        "quantized_layers": len(prep.candidates) - len(kept),
        "kept_high_precision": kept_report(prep, kept, ranker.errors),
        "kept_reason": "highest local quantization error on calibration activations, kept (FP16) until the "
                       "calibration texts met the search targets",
        "forced_exclude": list(options["exclude"]),
        "search": {"targets": SearchTargets.from_options(options).as_dict(), **result.report()},
        "calibration_texts": len(prep.feeds), "calibration_parity": final,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return qm, recipe


def convert_fp16(model, ctx, work: Path, options: dict, tail) -> tuple[object, dict]:
    """FP16 weights/activations, FP32 keep-list behind Casts, int64 in / float32 out."""
    from ...onnxkit.casts import norm_nodes
    from .graph import KEEP_FP32_OPS

    t0 = time.perf_counter()
    paths = module_paths(model)
    if options["exclude"]:
        select_strict(paths, options["exclude"], what="node")
    keep_nodes = select(paths, options["exclude"])
    rms = sorted(norm_nodes(model))
    out = to_fp16(model, tail=tail, keep_nodes=keep_nodes)
    recipe = {
        "library": "onnxruntime.transformers.float16.convert_float_to_float16",
        "keep_io_types": True, "fp32_ops": list(KEEP_FP32_OPS), "fp32_tail_nodes": len(tail),
        "fp32_rmsnorm_nodes": len(rms), "fp32_nodes_by_option": keep_nodes,
        "why": "strongly typed TensorRT runs each layer in its tensors' dtype; LayerNorm/RMSNorm/Softmax/pooling "
               "overflow or lose accuracy in FP16 (TensorRT#2564, #3101)",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return out, recipe
