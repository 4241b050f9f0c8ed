"""INT8 recipes of the ONNX Runtime backend: dynamic (``quantize_dynamic``) and
static QDQ (``quantize_static``) with calibration-driven outlier handling.

Imported lazily by :mod:`embedc.targets.ort.backend` (onnx / onnxruntime load here).
Every recipe returns a JSON-ready dict saying exactly what it did: library
calls, settings, and which nodes were quantized or kept out, by module path
(``encoder.encoder.layer.11.output.dense``) next to the opaque node name.

Recipe decisions (measured on multilingual-e5-small and all-MiniLM-L6-v2):

* INT8 static is QDQ via ``quantize_static`` on the Linear MatMuls only,
  per-channel weights, outputs left float. ORT 1.32's QDQ MatMul ignores
  ``MatMulConstBOnly`` and quantizes MatMul outputs, and its QDQ pair rewires
  every reader of a quantized tensor, so the post-LayerNorm residual would be
  INT8 too: hence ``nodes_to_quantize``, ``OpTypesToExcludeOutputQuantization``
  and the QDQ consumer fix (:func:`embedc.onnxkit.qdq.keep_float_consumers`).
  (That config alone took MiniLM from mean cosine 0.917 to 0.993.)
* Outlier channels: SmoothQuant-style per-channel scaling on each MatMul
  group's input (an explicit Mul: BERT is post-LN, so it cannot fold into
  LayerNorm), alpha picked per group by emulated output SQNR. Then MatMuls are
  ranked by the SQNR of their output with only that MatMul quantized (ORT's own
  scales on the float activations), and the worst are taken out of static
  quantization until the sentence-embedding cosine on the *calibration* texts
  meets a target. Taken-out MatMuls become 8-bit ``MatMulNBits`` (INT8 weights
  per block of 32, activations quantized per block at run time with
  ``accuracy_level`` 4), so the size stays INT8.
* The word-embedding table is 8-bit block-wise: see :mod:`embedc.targets.ort.block_quant`.
"""
from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import CompileError, TargetError
from ...memory import release_memory
from ...onnxkit.activations import Activations, capture
from ...onnxkit.calibration import feed_reader
from ...onnxkit.files import file_needs_external_data, load_model, model_files, needs_external_data, save_model
from ...onnxkit.graph import initializer_map, node_entries, strip_debug_metadata, weight_matmuls
from ...onnxkit.qdq import keep_float_consumers
from ...onnxkit.scopes import module_paths, select_strict
from ...onnxkit.session import import_quantization, quiet_ort_logs
from .block_quant import _table, weight_only_8bit
from .search import auto_exclude
from .smoothquant import SMOOTH_ALPHAS, SMOOTH_MIN_GAIN_DB, smooth_matmul_inputs
from .sqnr import sqnr


def excluded_by_option(paths: dict[str, str], names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The Linear MatMuls the ``exclude`` patterns name; a pattern that names none is an error."""
    return select_strict({n: paths[n] for n in names}, patterns)


# Why decoders default to per-block activations (benchmarks/int8_activation_schemes.py on
# smollm2-135m-bidir, 684 held-out texts at 256 tokens, against its FP32 ONNX): decoder activations
# carry a few huge values on a few tokens (LLMs' "massive activations"), so one scale per tensor
# rounds the other tokens' values away: per tensor (quantize_dynamic) mean 0.956 / min 0.136, per
# block of 32 of each token 0.99871 / 0.92321; the same INT8 weights with FP32 activations give
# 0.99947 / 0.95627 (the weights alone bound the minimum). Encoders keep per tensor (their
# artifacts and gates were measured that way).
PER_BLOCK_FAMILIES = ("decoder",)
# block 32 over 64 on smollm2-135m-last: mean 0.99860 vs 0.99797, top-10 overlap 0.839 vs 0.785, for
# 27.9% vs 26.7% of FP32 (one fp32 scale per block)
PER_BLOCK_SIZE = 32


def dynamic_activations(options: dict, family: str) -> str:
    """The activation scheme ``int8-dynamic`` uses: the option, or ``auto`` by model family."""
    if options["activations"] != "auto":
        return options["activations"]
    return "per-block" if family in PER_BLOCK_FAMILIES else "per-tensor"


def quantize_int8_dynamic(src: Path, dst: Path, *, settings: dict, options: dict, work: Path,
                          family: str = "") -> dict:
    """INT8 weights, activations quantized at run time: per tensor through
    ``quantize_dynamic``, or per block of each token's row through 8-bit
    ``MatMulNBits`` (+ the 8-bit block table either way)."""
    if dynamic_activations(options, family) == "per-block":  # options checked by the backend
        return _int8_dynamic_per_block(src, dst, options, family)
    q = import_quantization()
    model = load_model(src)
    paths = module_paths(model)
    matmuls = weight_matmuls(model)
    excluded = excluded_by_option(paths, [n.name for n in matmuls], options["exclude"])
    recipe: dict = {"embedding": None}
    prep = work / "dynamic-input.onnx"
    if options["quantize_embedding"]:
        recipe["embedding"] = _table(model, options)
    strip_debug_metadata(model)
    save_model(model, prep)
    kwargs = dict(op_types_to_quantize=["MatMul"], per_channel=options["per_channel"],
                  reduce_range=settings["reduce_range"], weight_type=q.QuantType[settings["weight_type"]],
                  nodes_to_exclude=excluded, use_external_data_format=needs_external_data(model),
                  extra_options={"MatMulConstBOnly": True})
    with quiet_ort_logs():
        q.quantize_dynamic(str(prep), str(dst), **kwargs)
    for p in model_files(prep):
        p.unlink()
    quantized = [n.name for n in matmuls if n.name not in excluded]
    recipe.update({
        "library_call": "onnxruntime.quantization.quantize_dynamic",
        "settings": {**{k: v for k, v in kwargs.items() if k not in ("weight_type", "nodes_to_exclude")},
                     "weight_type": settings["weight_type"], "activations": "uint8, per tensor, at run time"},
        "kernels": "DynamicQuantizeLinear + MatMulInteger (fused to DynamicQuantizeMatMul at load)",
        "quantized": node_entries(paths, quantized),
        "excluded": [{**e, "reason": "option exclude", "as": "fp32"} for e in node_entries(paths, excluded)],
        "activations": "per-tensor" + (" (auto: encoder family)" if options["activations"] == "auto" else ""),
    })
    return recipe


def _int8_dynamic_per_block(src: Path, dst: Path, options: dict, family: str) -> dict:
    """8-bit ``MatMulNBits`` on every Linear MatMul: symmetric INT8 weights per block
    of K, and with ``accuracy_level`` 4 the kernel quantizes each token's activations
    per block of K at run time, so one token's outliers cost only its own blocks."""
    model = load_model(src)
    paths = module_paths(model)
    names = [n.name for n in weight_matmuls(model)]
    excluded = excluded_by_option(paths, names, options["exclude"])
    quantized = [n for n in names if n not in excluded]
    if not quantized:
        raise TargetError("the exclude option leaves no MatMul to quantize", "narrow the exclude patterns, or build fp32")
    recipe: dict = {"embedding": _table(model, options) if options["quantize_embedding"] else None}
    strip_debug_metadata(model)
    block = options["block_size"] or PER_BLOCK_SIZE
    model = weight_only_8bit(model, quantized, block_size=block, accuracy_level=4)
    save_model(model, dst)
    why = f"auto: {family} family" if options["activations"] == "auto" else "option activations=per-block"
    recipe.update({
        "library_call": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
        "settings": {"bits": 8, "block_size": block, "is_symmetric": True, "accuracy_level": 4,
                     "op_types_to_quantize": ["MatMul"],
                     "activations": f"int8, per block of {block} along K for each token, at run time"},
        "kernels": "com.microsoft.MatMulNBits (bits=8): INT8 weights and INT8 activations per block "
                   "(accuracy_level 4)",
        "activations": f"per-block ({why})",
        "quantized": node_entries(paths, quantized),
        "excluded": [{**e, "reason": "option exclude", "as": "fp32"} for e in node_entries(paths, excluded)],
    })
    return recipe


def minmax_ranges(graph: onnx.ModelProto, stats: Activations,
                  base_dir: str = "") -> dict[str, tuple[np.float32, np.float32]]:
    """ORT's MinMax ranges of every Linear MatMul input of ``graph`` (the
    smoothed model), from the activation capture: the same calibration feeds
    (batch 1, so no padding enters either), the per-channel min/max reduced
    over channels. A smoothed input is ``x * inv_s`` with ``inv_s > 0`` per
    channel, so its range is exactly ``min(lo * inv_s), max(hi * inv_s)``
    (rounding is monotonic). Equal to ``MinMaxCalibrater``'s ranges (tested),
    without a second pass of the FP32 model through an augmented copy of it:
    on a 0.6B decoder that pass held 4-5 GB and took two minutes."""
    inits = initializer_map(graph)
    producer = {o: n for n in graph.graph.node for o in n.output}
    out: dict[str, tuple[np.float32, np.float32]] = {}
    for node in weight_matmuls(graph):
        x = node.input[0]
        mul = producer.get(x)
        if mul is not None and mul.op_type == "Mul" and mul.input[0] in stats.lo and mul.input[1] in inits:
            # the graph's own factor (read from base_dir when the graph was loaded without its external data)
            inv = numpy_helper.to_array(inits[mul.input[1]], base_dir=base_dir).astype(np.float32)
            lo, hi = stats.lo[mul.input[0]] * inv, stats.hi[mul.input[0]] * inv
        elif x in stats.lo:
            lo, hi = stats.lo[x], stats.hi[x]
        else:
            continue  # not captured: quantize_static leaves a tensor without a range unquantized
        out[x] = (np.float32(lo.min()), np.float32(hi.max()))
    return out


def calibrate(model_path: Path, feeds: Sequence[dict[str, np.ndarray]], input_names: Sequence[str],
              method: str, cache: Path, work: Path, options: dict, stats: Activations) -> dict:
    """Activation ranges of the MatMul inputs over the calibration feeds, saved
    as ORT's calibration cache (reused by every quantize pass).

    MinMax: from ``stats``, the capture of the same feeds (:func:`minmax_ranges`).
    ORT's own MinMax pass over all feeds at once keeps every feed's outputs,
    and its ``max_intermediate_outputs`` bound drops the collected feeds
    instead of merging them (microsoft/onnxruntime#18893, still so in 1.32).
    Histogram methods (Entropy/Percentile) run ORT's calibrator. They stack
    a batch's outputs, so they need equal shapes; here each feed is collected
    on its own (batch 1, its own length) and the histograms merge across
    calls, so no padding is needed and memory stays at one feed's activations."""
    q = import_quantization()
    started = time.perf_counter()
    if method == "MinMax":
        graph = onnx.load(str(model_path), load_external_data=False)  # the scales are read from their file
        ranges = q.TensorsData(q.CalibrationMethod.MinMax, minmax_ranges(graph, stats, str(Path(model_path).parent)))
        q.save_tensors_data(ranges, cache)
        return {"method": method, "count": len(feeds), "seconds": round(time.perf_counter() - started, 1),
                "tensors": len(ranges.data),
                "how": "per-tensor min/max of each Linear MatMul input over every calibration feed, from the "
                       "activation capture (what MinMaxCalibrater computes, without a second FP32 pass), saved "
                       "with save_tensors_data and reused via quantize_static(calibration_cache_path=...)"}
    extra: dict = {"per_channel": False}
    if method == "Percentile":
        extra["percentile"] = options["percentile"]
    with quiet_ort_logs(), contextlib.redirect_stdout(io.StringIO()):  # the histogram collector prints per call
        calibrator = q.create_calibrator(Path(model_path), ["MatMul"], augmented_model_path=str(work / "augmented.onnx"),
                                         calibrate_method=q.CalibrationMethod[method],
                                         use_external_data_format=file_needs_external_data(model_path),
                                         extra_options=extra)
        reader = feed_reader(feeds, input_names)
        for i in range(len(reader)):
            reader.set_range(i, i + 1)
            calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        q.save_tensors_data(ranges, cache)
    del calibrator
    for p in work.glob("augmented.onnx*"):
        p.unlink()
    out = {"method": method, "count": len(feeds), "seconds": round(time.perf_counter() - started, 1),
           "tensors": len(ranges.data),
           "how": "create_calibrator over the MatMul tensors, one batch-1 feed per collect_data call "
                  "(no padding), ranges saved with save_tensors_data and reused via "
                  "quantize_static(calibration_cache_path=...)"}
    if method == "Percentile":
        out["percentile"] = options["percentile"]
    return out


def _qdq_specs(qdq: onnx.ModelProto, names: Sequence[str]) -> Iterator[tuple[str, dict]]:
    """For each statically quantized MatMul, one at a time: its float input
    tensor, the activation scale/zero point ORT chose, and the dequantized
    weights (one MatMul's at a time: all of them at once are a full FP32
    copy of the model, 2.4 GB on a 0.6B decoder)."""
    qinit = initializer_map(qdq)
    producer = {o: n for n in qdq.graph.node for o in n.output}
    wanted = set(names)
    for node in qdq.graph.node:
        if node.name not in wanted:
            continue
        dq_a, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if not (dq_a and dq_w and dq_a.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        q_a = producer.get(dq_a.input[0])
        if q_a is None or q_a.op_type != "QuantizeLinear":
            continue
        zp_a = numpy_helper.to_array(qinit[dq_a.input[2]])
        w_q = numpy_helper.to_array(qinit[dq_w.input[0]]).astype(np.float32)
        s_w = numpy_helper.to_array(qinit[dq_w.input[1]]).astype(np.float32)
        zp_w = numpy_helper.to_array(qinit[dq_w.input[2]]).astype(np.float32) if len(dq_w.input) > 2 else 0.0
        info = np.iinfo(zp_a.dtype)
        yield node.name, {"x": q_a.input[0], "scale": float(numpy_helper.to_array(qinit[dq_a.input[1]])),
                          "zero": float(zp_a), "qmin": info.min, "qmax": info.max,
                          "w_deq": (w_q - zp_w) * s_w}  # per output channel: broadcasts over the last axis


def local_sqnr(qdq_path: Path, float_path: Path, names: Sequence[str], stats: Activations) -> dict[str, float]:
    """SQNR (dB) of each MatMul's output with only that MatMul quantized: the
    float activations sampled on the calibration feeds, quantized with the
    scale/zero point and weights ORT wrote into the QDQ model, against X @ W.

    The float weights are read from ``float_path`` one tensor at a time (its
    graph is loaded without external data), so this holds the QDQ model and
    one MatMul's weights, never a second copy of the FP32 model."""
    float_model = onnx.load(str(float_path), load_external_data=False)
    inits = initializer_map(float_model)
    weights = {n.name: n.input[1] for n in float_model.graph.node if n.name in set(names)}
    out = {}
    for name, s in _qdq_specs(onnx.load(str(qdq_path)), names):
        if s["x"] not in stats.samples:
            continue
        x = stats.samples[s["x"]]
        xq = (np.clip(np.round(x / s["scale"]) + s["zero"], s["qmin"], s["qmax"]) - s["zero"]) * s["scale"]
        # onnx 1.23 reads external data without writing it into the proto (which would accumulate)
        w = numpy_helper.to_array(inits[weights[name]], base_dir=str(Path(float_path).parent)).astype(np.float32)
        out[name] = sqnr(x @ w, xq @ s["w_deq"])
    return out


def quantize_int8_static(src: Path, dst: Path, *, feeds, input_names: Sequence[str], settings: dict,
                         options: dict, work: Path, threads: int | None) -> dict:
    """QDQ INT8 with calibration-driven outlier handling (see the module doc)."""
    q = import_quantization()
    work.mkdir(parents=True, exist_ok=True)
    graph = load_model(src, external_data=False)  # names and shapes; the weights come after the capture
    paths = module_paths(graph)
    names = [n.name for n in weight_matmuls(graph)]
    forced = excluded_by_option(paths, names, options["exclude"])
    matmul_inputs = sorted({n.input[0] for n in weight_matmuls(graph)})
    del graph
    started = time.perf_counter()
    # before the FP32 weights are loaded here: the capture session holds its own copy of them
    stats = capture(src, matmul_inputs, feeds, threads=threads, level="all", scratch=work)
    recipe: dict = {"activation_stats": {"feeds": len(feeds), "sampled_rows": stats.sampled_rows,
                                         "seconds": round(time.perf_counter() - started, 1)}}
    model = load_model(src)
    recipe["embedding"] = _table(model, options) if options["quantize_embedding"] else None
    recipe["smooth_quant"] = None
    if options["smooth_quant"]:
        alpha = None if options["smooth_alpha"] == "auto" else float(options["smooth_alpha"])
        groups = smooth_matmul_inputs(model, stats, settings, alpha)
        recipe["smooth_quant"] = {"alpha": options["smooth_alpha"], "alphas_tried": list(SMOOTH_ALPHAS),
                                  "min_gain_db": SMOOTH_MIN_GAIN_DB, "groups": groups,
                                  "smoothed": sum(g["alpha"] is not None for g in groups)}
    prep = work / "static-input.onnx"
    strip_debug_metadata(model)
    external = needs_external_data(model)
    save_model(model, prep, keep=False)
    # From here on the smoothed model lives in ``prep``: the float graph held in memory through
    # calibration, every search candidate and its session would be a second FP32 copy of the model.
    del model
    release_memory()
    method = options["calibrate_method"]
    cache = work / "calibration-cache.json"
    recipe["calibration"] = calibrate(prep, feeds, input_names, method, cache, work, options, stats)
    if recipe["calibration"]["tensors"] == 0:
        raise CompileError("calibration found no MatMul tensors to calibrate (no shape information)",
                           "re-run 'embedc export'; the reference must carry value_info")
    # ORT 1.32's QDQMatMul ignores MatMulConstBOnly (only the QOperator path reads it) and quantizes
    # MatMul outputs too: name the Linear MatMuls, and keep their outputs float, so Q.K^T, attn.V and
    # the residual stream stay FP32 (ORT then fuses DQ->MatMul into MatMulIntegerToFloat).
    extra = {"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul"],
             "ActivationSymmetric": settings["activation_symmetric"],
             "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}
    qkw = dict(quant_format=q.QuantFormat.QDQ, op_types_to_quantize=["MatMul"], per_channel=True,
               reduce_range=settings["reduce_range"], activation_type=q.QuantType[settings["activation_type"]],
               weight_type=q.QuantType[settings["weight_type"]], calibrate_method=q.CalibrationMethod[method],
               calibration_cache_path=str(cache), use_external_data_format=external, extra_options=extra)

    def build(excluded: Sequence[str], out: Path) -> None:
        with quiet_ort_logs():
            q.quantize_static(str(prep), str(out), None, nodes_to_quantize=[n for n in names if n not in excluded],
                              nodes_to_exclude=list(excluded), **qkw)
        # Only Linear MatMuls read a dequantized activation. An excluded one that shares its input with a
        # quantized one keeps reading the dequantized copy (the recipe's numerics before the shared fix).
        qm = keep_float_consumers(onnx.load(str(out)), set(names))
        if excluded and options["excluded_as"] == "int8-weight-only":
            qm = weight_only_8bit(qm, excluded)
        save_model(qm, out)

    def rank(cand: Path) -> dict[str, float]:
        return local_sqnr(cand, prep, names, stats)

    search = auto_exclude(build, rank, [n for n in names if n not in forced], forced, stats.embeddings, feeds,
                          options, work, threads)
    del rank
    excluded = forced + search["excluded"]
    build(excluded, dst)
    for p in [*model_files(prep), cache]:
        p.unlink(missing_ok=True)

    by_reason = {n: "option exclude" for n in forced}
    by_reason.update({n: f"auto: output SQNR {search['sqnr'][n]:.1f} dB" for n in search["excluded"]})
    excluded_as = ("com.microsoft.MatMulNBits bits=8 block_size=32 symmetric accuracy_level=4 "
                   "(INT8 weights, activations quantized per block at run time)"
                   if options["excluded_as"] == "int8-weight-only" else "fp32")
    recipe.update({
        "library_call": "onnxruntime.quantization.quantize_static",
        "settings": {"quant_format": "QDQ", "op_types_to_quantize": ["MatMul"], "per_channel": True,
                     "reduce_range": settings["reduce_range"], "activation_type": settings["activation_type"],
                     "weight_type": settings["weight_type"], "calibrate_method": method,
                     "extra_options": extra, "use_external_data_format": external},
        "quantized": node_entries(paths, [n for n in names if n not in excluded]),
        "excluded": [{"node": n, "module": paths[n], "reason": by_reason[n], "as": excluded_as} for n in excluded],
        "kept_fp32": [] if options["excluded_as"] == "int8-weight-only" else [paths[n] for n in excluded],
        "auto_exclude": {k: v for k, v in search.items() if k not in ("excluded", "sqnr")},
        "sensitivity_db": [{"module": paths[n], "node": n, "sqnr_db": round(v, 2)}
                           for n, v in sorted(search["sqnr"].items(), key=lambda kv: kv[1])],
    })
    return recipe
