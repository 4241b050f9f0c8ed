"""The sensitivity search shared by the INT8 static and INT4 recipes: the fewest
most sensitive MatMuls to keep out of the main quantization so that the
sentence-embedding cosine on the *calibration* texts meets a target."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .graph import model_files
from .session import cosine_stats, embed_feeds


def _meets(stats: dict, options: dict) -> bool:
    return stats["mean"] >= options["target_mean"] and stats["min"] >= options["target_min"]


def auto_exclude(build, rank, candidates: Sequence[str], forced: Sequence[str], reference: np.ndarray,
                 feeds, input_names, options: dict, work: Path, threads: int | None) -> dict:
    """Smallest k such that keeping the k most sensitive MatMuls out of the
    precision's main quantization meets the calibration-cosine target
    (k = 0, 1, 2, 4, ... then bisection), at most ``options["auto_exclude"]``.

    ``build(excluded, path)`` writes a candidate model; ``rank(path)`` maps
    candidate MatMul names to an output SQNR in dB (lowest = most sensitive),
    given the all-quantized candidate at ``path``."""
    cap = options["auto_exclude"]
    out = {"enabled": cap > 0, "max": cap, "target": {"mean": options["target_mean"], "min": options["target_min"]},
           "judged_on": f"sentence-embedding cosine vs FP32 on the {len(feeds)} calibration texts "
                        "(never the evaluation split)",
           "steps": [], "excluded": [], "sqnr": {}}
    if cap <= 0:
        return out
    started = time.perf_counter()
    cand = work / "candidate.onnx"

    def evaluate(k: int, order: Sequence[str]) -> bool:
        build(list(forced) + list(order[:k]), cand)
        result = cosine_stats(reference, embed_feeds(cand, feeds, input_names, threads))
        ok = _meets(result, options)
        out["steps"].append({"excluded": k, **result, "meets_target": ok})
        return ok

    hi = 0
    out["target_met"] = evaluate(0, [])
    order: list[str] = []
    if not out["target_met"]:
        out["sqnr"] = rank(cand)
        order = sorted((n for n in candidates if n in out["sqnr"]), key=out["sqnr"].get)[:cap]
        lo, hi, k = 0, None, min(1, len(order))
        while 0 < k <= len(order):
            if evaluate(k, order):
                hi = k
                break
            lo = k
            if k == len(order):
                break
            k = min(k * 2, len(order))
        out["target_met"] = hi is not None
        if hi is None:
            hi = len(order)
        while hi - lo > 1 and out["target_met"]:
            mid = (lo + hi) // 2
            if evaluate(mid, order):
                hi = mid
            else:
                lo = mid
    for p in model_files(cand):
        p.unlink(missing_ok=True)
    out["excluded"] = list(order[:hi])
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out
