"""INT4 recipe of the ONNX Runtime backend: 4-bit ``MatMulNBits`` weights through
ORT's ``MatMulNBitsQuantizer``, or with ``zero_points="float"`` through embedc's
writer of fp32 zero points (:mod:`.float_zero`), + the word-embedding table;
MatMuls that the calibration-cosine search finds too sensitive stay 8-bit.

Imported lazily by :mod:`embedc.targets.ort.backend` (onnx / onnxruntime load here).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ...int4.grid import minmax_codes
from ...onnxkit.activations import Activations, capture
from ...onnxkit.calibration import feed_reader
from ...onnxkit.files import load_model, save_model
from ...onnxkit.graph import (initializer_map, node_entries, strip_debug_metadata, table_gathers, weight_matmuls,
                              word_embedding_gather)
from ...onnxkit.scopes import module_paths
from ...onnxkit.session import import_quantization, quiet_ort_logs
from .backend import BLOCK_SIZE_REASON, DEFAULT_INT4_BLOCK
from .block_quant import _table_4bit, quantize_table_8bit, weight_only_8bit
from .float_zero import quantize_float_zero, recipe_settings as float_zero_settings, zero_point_kind
from .half_scales import fp16_linear_scales
from .int8 import excluded_by_option
from .search import auto_exclude
from .sqnr import sqnr


def _int4_config(mnq, options: dict, feeds, input_names):
    algo, bs, sym, acc = options["algorithm"], options["block_size"], options["is_symmetric"], options["accuracy_level"]
    matmul_only = ("MatMul",)
    if algo == "default":
        return (mnq.DefaultWeightOnlyQuantConfig(block_size=bs, is_symmetric=sym, accuracy_level=acc,
                                                 op_types_to_quantize=matmul_only),
                f"DefaultWeightOnlyQuantConfig(block_size={bs}, is_symmetric={sym}, accuracy_level={acc})")
    if algo == "rtn":
        return mnq.RTNWeightOnlyQuantConfig(op_types_to_quantize=matmul_only), "RTNWeightOnlyQuantConfig()"
    if algo == "gptq":
        # ORT's (INC's) GPTQ re-runs the whole model over every sample once per distinct MatMul input
        # (24 x 304 forward passes on MiniLM took > 20 min here): use an evenly spaced subset.
        subset = list(feeds)[:: max(1, math.ceil(len(feeds) / options["gptq_samples"]))]
        return (mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=feed_reader(subset, input_names),
                                              op_types_to_quantize=matmul_only),
                f"GPTQWeightOnlyQuantConfig(calibration_data_reader=<{len(subset)} of {len(feeds)} calibration feeds>)")
    # hqq: asymmetric with float zero points by construction
    return (mnq.HQQWeightOnlyQuantConfig(block_size=bs, bits=4, op_types_to_quantize=matmul_only),
            f"HQQWeightOnlyQuantConfig(block_size={bs}, bits=4)")


def int4_sqnr(model: onnx.ModelProto, names: Sequence[str], stats: Activations, block: int,
              symmetric: bool, float_zero: bool = False) -> dict[str, float]:
    """Output SQNR (dB) of each MatMul with only its weights at 4 bits (block-wise
    round-to-nearest along K, emulated) on the sampled calibration activations."""
    inits = initializer_map(model)
    out = {}
    for node in model.graph.node:
        if node.name not in names or node.input[0] not in stats.samples:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        k = w.shape[0]
        pad = (-k) % block
        blocks = np.pad(w, ((0, pad), (0, 0))).reshape(-1, block, w.shape[1])
        if float_zero:
            codes, scale, zero, _ = minmax_codes(w, block)
            wq = ((codes - zero[..., None]) * scale[..., None]).reshape(w.shape[1], -1).T
        elif symmetric:
            scale = np.abs(blocks).max(1, keepdims=True) / 7.0
            scale[scale == 0] = 1.0
            wq = np.clip(np.round(blocks / scale), -8, 7) * scale
        else:
            lo, hi = np.minimum(blocks.min(1, keepdims=True), 0), np.maximum(blocks.max(1, keepdims=True), 0)
            scale = (hi - lo) / 15.0
            scale[scale == 0] = 1.0
            zero = np.round(-lo / scale)
            wq = (np.clip(np.round(blocks / scale) + zero, 0, 15) - zero) * scale
        x = stats.samples[node.input[0]]
        out[node.name] = sqnr(x @ w, x @ wq.reshape(-1, w.shape[1])[:k])
    return out


def quantize_int4(src: Path, dst: Path, *, feeds, input_names: Sequence[str], options: dict, work: Path,
                  threads: int | None, exact_ids: Sequence[int] = ()) -> dict:
    """MatMulNBits 4-bit weights (+ the word-embedding table as GatherBlockQuantized, the rows of
    ``exact_ids`` kept FP32); MatMuls that the calibration-cosine search finds too sensitive stay 8-bit."""
    import_quantization()
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq  # noqa: PLC0415

    work.mkdir(parents=True, exist_ok=True)
    model = load_model(src)
    paths = module_paths(model)
    names = [n.name for n in weight_matmuls(model)]
    forced = excluded_by_option(paths, names, options["exclude"])
    gathers = [n.name for n in table_gathers(model)]
    bs, sym, acc = options["block_size"], options["is_symmetric"], options["accuracy_level"]
    float_zero = options["zero_points"] == "float"
    recipe: dict = {}

    def build(excluded: Sequence[str], out: Path) -> None:
        m = onnx.load(str(src))
        if float_zero:
            recipe["grid"] = quantize_float_zero(m, [n for n in names if n not in excluded], bs)
        else:
            cfg, recipe["algo_config"] = _int4_config(mnq, options, feeds, input_names)
            with quiet_ort_logs():
                quant = mnq.MatMulNBitsQuantizer(m, bits=4, block_size=bs, is_symmetric=sym, accuracy_level=acc,
                                                 nodes_to_exclude=list(excluded) + gathers, algo_config=cfg)
                quant.process()
            m = quant.model.model
        if excluded:
            m = weight_only_8bit(m, excluded, block_size=bs, accuracy_level=acc)
        table = word_embedding_gather(m)
        if options["quantize_embedding"] and table is not None:
            if options["embedding_bits"] == 8:
                recipe["embedding"] = quantize_table_8bit(m, table.name, options["embedding_block_size"],
                                                          scales_dtype=options["embedding_scales"])
            else:
                m, recipe["embedding"] = _table_4bit(m, table, gathers, options, exact_ids)
        if options["linear_scales"] == "fp16":
            recipe["linear_scales"] = fp16_linear_scales(m)
        strip_debug_metadata(m)
        save_model(m, out)

    search = {"enabled": False, "excluded": [], "sqnr": {}}
    if options["auto_exclude"] > 0:
        stats = capture(src, sorted({n.input[0] for n in weight_matmuls(model)}), feeds, threads=threads,
                        level="all", scratch=work)
        candidates = [n for n in names if n not in forced]
        search = auto_exclude(build, lambda _: int4_sqnr(model, candidates, stats, bs, sym, float_zero), candidates,
                              forced, stats.embeddings, feeds, options, work, threads)
        del stats
    excluded = forced + search["excluded"]
    build(excluded, dst)
    by_reason = {n: "option exclude" for n in forced}
    by_reason.update({n: f"auto: 4-bit output SQNR {search['sqnr'][n]:.1f} dB" for n in search["excluded"]})
    settings = {"algorithm": options["algorithm"], "block_size": bs,
                "is_symmetric": sym if options["algorithm"] != "hqq" else False,
                "zero_points": zero_point_kind(options),
                "accuracy_level": acc, "op": "com.microsoft.MatMulNBits"}
    if float_zero:
        settings.update(float_zero_settings())
    return {
        "library_call": ("embedc.targets.ort.float_zero.quantize_float_zero (min/max per block, fp32 zero points "
                         "as a block-sum correction; ORT's quantizer writes only uint4 zero points)" if float_zero else
                         f"onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer(bits=4, "
                         f"algo_config={recipe['algo_config']})"),
        "settings": settings,
        "grid": recipe.get("grid"),
        "block_size_reason": BLOCK_SIZE_REASON if bs == DEFAULT_INT4_BLOCK else "set by the user",
        "quantized": node_entries(paths, [n for n in names if n not in excluded]),
        "excluded": [{"node": n, "module": paths[n], "reason": by_reason[n],
                      "as": f"com.microsoft.MatMulNBits bits=8 block_size={bs} symmetric accuracy_level={acc}"}
                     for n in excluded],
        "auto_exclude": {k: v for k, v in search.items() if k not in ("excluded", "sqnr")},
        "sensitivity_db": [{"module": paths[n], "node": n, "sqnr_db": round(v, 2)}
                           for n, v in sorted(search["sqnr"].items(), key=lambda kv: kv[1])],
        "embedding": recipe.get("embedding"),
        "linear_scales": recipe.get("linear_scales", "fp32"),
    }
