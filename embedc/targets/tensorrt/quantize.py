"""Precision recipes for TensorRT-ready ONNX: FP16, INT8 (explicit Q/DQ) and
INT4 (weight-only blockwise DequantizeLinear).

Why not NVIDIA ModelOpt: ``nvidia-modelopt[onnx]`` pins onnx~=1.21 and
onnxruntime-gpu, which conflict with this project's onnx 1.23 / onnxruntime
1.32 (NOTES.md). INT8 uses onnxruntime's ``quantize_static`` with
TensorRT-shaped settings (symmetric int8, zero-point 0, per-tensor
activations, per-channel weights on the output axis, Q/DQ on GEMM inputs
only); INT4 uses a small blockwise rewrite (:mod:`.trt_int4`, why there).
``trt_check`` verifies the result either way.

Outliers: a plain per-tensor INT8 (or RTN INT4) encoder loses accuracy on a
few Linear layers (FFN output: NOTES.md measured mean cosine 0.95-0.97 on
e5-small). :mod:`.trt_search` keeps the worst ones in higher precision,
chosen by measuring on the calibration texts only, and records which.

Non-quantized layers run in FP16 (``compute: fp16``, default; what TensorRT
INT8 engines normally do) or FP32 (``compute: fp32``); LayerNorm/Softmax/
pooling stay FP32 either way (:func:`trt_graph.to_fp16`).
"""
from __future__ import annotations

import time
from pathlib import Path

from ...errors import MissingDependencyError, UsageError
from .calib import (EXTERNAL_DATA_LIMIT, QDQ_OPSET, FeedReader, Prepared, cosine_stats, embed_feeds, prepare,
                        save_model, session)
from .graph import node_scope, to_fp16
from .search import (Ranker, Search, SearchTargets, capture_inputs, exclude_patterns, forced_nodes, kept_report,
                         scorer)

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
DEFAULT_INT4_BLOCK = 32


def _require_ort_quantization():
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"onnxruntime quantization is unavailable ({exc.name} missing)",
                                     "pip install onnxruntime") from exc


def _finish(prep: Prepared, qpath: Path, compute: str, out_path: Path) -> tuple[object, dict]:
    """The chosen model, FP16 if asked, scored on every calibration text."""
    import onnx

    qm = onnx.load(str(qpath))
    if compute == "fp16":
        qm = to_fp16(qm)
    save_model(qm, out_path)
    return qm, cosine_stats(prep.reference, embed_feeds(session(out_path, prep.threads), prep.feeds))


def _compute(options: dict, default: str = "fp16") -> str:
    c = str(options.get("compute", default)).lower()
    if c not in ("fp16", "fp32"):
        raise UsageError(f"TensorRT option compute={c!r} is invalid", "use compute: fp16 or fp32")
    return c


def quantize_int8(model, ctx, work: Path) -> tuple[object, dict]:
    """Static INT8 with TensorRT-shaped Q/DQ (see the module docstring)."""
    _require_ort_quantization()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    opts = ctx.options
    method = str(opts.get("method", "minmax")).lower()
    if method not in METHODS:
        raise UsageError(f"INT8 calibration method {method!r} is unknown", f"use one of: {', '.join(METHODS)}")
    compute = _compute(opts)
    prep = prepare(model, ctx, work)
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
        extra["CalibPercentile"] = float(opts.get("percentile", 99.999))
    reader = FeedReader(prep.feeds, prep.input_names)
    cache = work / f"ranges-{method}.json"
    nbytes = prep.model.ByteSize()

    linears = [n.name for n in prep.candidates]   # const-B MatMuls only: not QK^T / attn*V

    def build(excluded: list[str]) -> Path:
        out = work / f"int8-{len(excluded)}.onnx"
        chosen = [n for n in linears if n not in set(excluded)]
        if not chosen:  # an empty list means "all nodes" to quantize_static
            return prep.path
        reader.rewind()
        quantize_static(str(prep.path), str(out), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], nodes_to_quantize=chosen, per_channel=True,
                        reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, METHODS[method]),
                        use_external_data_format=nbytes > EXTERNAL_DATA_LIMIT, extra_options=extra,
                        calibration_cache_path=str(cache))
        save_model(keep_float_consumers(onnx.load(str(out)), set(chosen)), out)
        return out

    t0 = time.perf_counter()
    forced = forced_nodes(prep, exclude_patterns(opts))
    targets = SearchTargets.for_family("int8", opts)
    ranked = Ranker(prep)
    search = Search(build, scorer(prep), targets, max_kept=_max_kept(opts, len(prep.candidates)),
                    max_trials=int(opts.get("search_trials", 9)))
    kept, qpath, met = search.run(forced, ranked, bool(opts.get("search", True)))
    qm, final = _finish(prep, qpath, compute, work / "final.onnx")
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
        "compute": compute, "quantized_layers": len(prep.candidates) - len(kept),
        "kept_high_precision": kept_report(prep, kept, ranked.errors),
        "kept_reason": "highest local quantization error on calibration activations, kept until the "
                       "calibration texts met the search targets",
        "forced_exclude": exclude_patterns(opts),
        "search": {"targets": targets.__dict__, "targets_met": met, "trials": search.trials},
        "calibration_parity": final, "seconds": round(time.perf_counter() - t0, 1),
    }
    return qm, recipe


def keep_float_consumers(model, quantized: set[str]):
    """Route every consumer that is not a quantized GEMM back to the float tensor.

    When a tensor has one quantized consumer, ORT's QDQ quantizer points *all*
    its consumers at the DequantizeLinear output, so the residual Add after a
    LayerNorm would read INT8-rounded values. TensorRT only needs the Q/DQ on
    the GEMM input; the residual stream stays in float.
    """
    prod = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dq = prod.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    return model


def _max_kept(opts: dict, n: int) -> int:
    frac = float(opts.get("max_kept_fraction", 0.34))
    return max(0, min(n, int(round(frac * n))))


def quantize_int4(model, ctx, work: Path) -> tuple[object, dict]:
    """Weight-only INT4 (see :mod:`.trt_int4`): int4 weights + blockwise
    DequantizeLinear on every Linear not kept by the search, the rest of the
    graph in FP16 with the FP32 keep-list. The embedding table stays FP16:
    TensorRT's INT4 weight-only path is for GEMMs only."""
    from onnx import numpy_helper

    from .int4 import CLIP_RATIOS, apply_int4, quantize_layer

    opts = ctx.options
    block = int(opts.get("block_size", DEFAULT_INT4_BLOCK))
    if block < 16 or block & (block - 1):
        raise UsageError(f"INT4 block_size {block} is invalid", "use a power of two >= 16 (32, 64, 128)")
    algorithm = str(opts.get("algorithm", "gptq")).lower()
    if algorithm not in ("gptq", "rtn"):
        raise UsageError(f"INT4 algorithm {algorithm!r} is unknown", "use algorithm: gptq or rtn")
    t0 = time.perf_counter()
    prep = prepare(model, ctx, work)
    # GEMM inputs on every calibration text (a row sample): the GPTQ Hessian and clip-search weights
    acts = capture_inputs(prep.path, sorted({n.input[0] for n in prep.candidates}), prep.feeds,
                          threads=prep.threads)
    inits = {i.name: i for i in prep.model.graph.initializer}
    layers: dict[str, tuple] = {}  # each layer is quantized once, whatever the search keeps

    def build(excluded: list[str]) -> Path:
        for n in prep.candidates:
            if n.name not in excluded and n.name not in layers:
                w = numpy_helper.to_array(inits[n.input[1]])
                layers[n.name] = quantize_layer(w, block, acts.get(n.input[0]), algorithm)
        out = work / f"int4-{len(excluded)}.onnx"
        save_model(apply_int4(prep.model, {k: v for k, v in layers.items() if k not in excluded}, block), out)
        return out

    forced = forced_nodes(prep, exclude_patterns(opts))
    targets = SearchTargets.for_family("int4", opts)
    ranked = Ranker(prep, acts)
    search = Search(build, scorer(prep), targets, max_kept=_max_kept(opts, len(prep.candidates)),
                    max_trials=int(opts.get("search_trials", 9)))
    kept, qpath, met = search.run(forced, ranked, bool(opts.get("search", True)))
    qm, final = _finish(prep, qpath, "fp16", work / "final.onnx")
    recipe = {
        "library": "embedc.targets.tensorrt.int4 (onnx.helper rewrite)",
        "why_not_ort": "onnxruntime's MatMulNBitsQuantizer(QDQ) emits negative scales for about half the "
                       "blocks; TensorRT requires scale > 0",
        "why_not_modelopt": "nvidia-modelopt[onnx] pins onnx~=1.21 and onnxruntime-gpu, conflicting with "
                            "embedc's onnx/onnxruntime pins",
        "algorithm": algorithm + (" (GPTQ error feedback over K, blockwise scales)" if algorithm == "gptq"
                                  else " (round to nearest)") + ", activation-weighted clip search for scales",
        "clip_ratios": [float(r) for r in CLIP_RATIOS] + ["amax/8"], "bits": 4, "symmetric": True,
        "block_size": block, "block_axis": "0 (K of MatMul B [K, N])", "opset": QDQ_OPSET,
        "weights": "int4 initializers + DequantizeLinear(axis=0, block_size) with FP16 scales",
        "activations": "fp16 (weight-only)", "embedding_table": "fp16 (TensorRT INT4 is for GEMMs only)",
        "quantized_layers": len(prep.candidates) - len(kept),
        "kept_high_precision": kept_report(prep, kept, ranked.errors),
        "kept_reason": "highest local quantization error on calibration activations, kept (FP16) until the "
                       "calibration texts met the search targets",
        "search": {"targets": targets.__dict__, "targets_met": met, "trials": search.trials},
        "calibration_texts": len(prep.feeds), "calibration_parity": final,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return qm, recipe


def convert_fp16(model, ctx, work: Path) -> tuple[object, dict]:
    """FP16 weights/activations, FP32 keep-list behind Casts, int64 in / float32 out."""
    from .graph import KEEP_FP32_OPS, pooling_tail_nodes

    t0 = time.perf_counter()
    tail = sorted(pooling_tail_nodes(model))
    pats = exclude_patterns(ctx.options)
    keep_nodes = [n.name for n in model.graph.node if any(p in node_scope(n) for p in pats)]
    out = to_fp16(model, keep_nodes=keep_nodes)
    recipe = {
        "library": "onnxruntime.transformers.float16.convert_float_to_float16",
        "keep_io_types": True, "fp32_ops": list(KEEP_FP32_OPS), "fp32_tail_nodes": len(tail),
        "fp32_nodes_by_option": keep_nodes,
        "why": "strongly typed TensorRT runs each layer in its tensors' dtype; LayerNorm/Softmax/pooling "
               "overflow or lose accuracy in FP16 (TensorRT#2564, #3101)",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return out, recipe
