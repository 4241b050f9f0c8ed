"""OpenVINO int8-static's SmoothQuant alpha chosen on the calibration texts (the option
``smooth_quant_alpha`` given as a list of candidates).

NNCF takes one MatMul alpha per model, and the best one depends on the model: on SmolLM2-135M
run bidirectionally alpha 1.0 beat the default 0.85 (evaluation split, mean 0.995 vs 0.983), on
the same weights run causally it lost (0.991 vs 0.995; benchmarks/decoders.md). So each
candidate is quantized in full, run as users run it (the CPU plugin in f32) on every
calibration text, and judged against the FP32 reference's embeddings of those texts; the
evaluation split never takes part. The highest mean cosine wins, then the highest minimum.

Each candidate is saved to a scratch IR and dropped before the next is quantized, so at most
one quantized model is held at a time (what a single alpha holds).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ...memory import release_memory
from ...onnxkit.metrics import cosine_stats


def reference_embeddings(reference_onnx: Path, rows: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """The FP32 reference's sentence embeddings of ``rows`` (ONNX Runtime, as the export was validated)."""
    from ...onnxkit.session import cpu_session, embed_feeds

    sess = cpu_session(reference_onnx, level="all")
    try:
        return embed_feeds(sess, rows)
    finally:
        del sess
        release_memory()


def choose_alpha(alphas: Sequence[float], quantize: Callable[[int, float], tuple[object, dict]],
                 judge: Callable[[object], np.ndarray], reference: np.ndarray, ov, scratch: Path) -> tuple[object, dict]:
    """(the quantized model of the best alpha, read back from its scratch IR, and the search record).

    ``quantize(i, alpha)`` returns (the ``i``-th candidate's quantized model, its recipe);
    ``judge(model)`` its embeddings of the calibration rows, compared with ``reference``."""
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trials, recipes = [], {}
    for i, alpha in enumerate(alphas):
        t0 = time.perf_counter()
        model, recipes[alpha] = quantize(i, alpha)
        stats = cosine_stats(reference, judge(model))
        ov.save_model(model, str(scratch / f"alpha-{i}.xml"), compress_to_fp16=False)
        del model
        release_memory()
        trials.append({"alpha": alpha, "mean": stats["mean"], "p01": stats["p01"], "min": stats["min"],
                       "seconds": round(time.perf_counter() - t0, 1), "xml": f"alpha-{i}.xml"})
    # NaN (a broken candidate) never wins: it sorts below every number
    best = max(trials, key=lambda t: (_finite(t["mean"]), _finite(t["min"])))
    for t in trials:  # only the chosen IR stays (it is read back mapped from there)
        if t is not best:
            for f in (scratch / t["xml"], (scratch / t["xml"]).with_suffix(".bin")):
                f.unlink(missing_ok=True)
    chosen = ov.Core().read_model(str(scratch / best["xml"]))
    record = {"candidates": list(alphas), "chosen": best["alpha"],
              "judged_on": f"sentence-embedding cosine vs FP32 on the {len(reference)} calibration texts "
                           "(never the evaluation split); highest mean, then highest min",
              "trials": [{k: v for k, v in t.items() if k != "xml"} for t in trials],
              "seconds": round(time.perf_counter() - started, 1)}
    return chosen, {**recipes[best["alpha"]], "alpha_search": record}


def _finite(x: float) -> float:
    return x if np.isfinite(x) else float("-inf")
