"""OpenVINO int8-static's recipe chosen on the calibration texts, among candidates of its
SmoothQuant alpha (``smooth_quant_alpha`` given as a list) and its overflow fix (a list, or
``auto`` on a CPU without VNNI: backend.overflow_fix_candidates).

NNCF takes one MatMul alpha per model, and the best one depends on the model: on SmolLM2-135M
run bidirectionally alpha 1.0 beat the default 0.85 (evaluation split, mean 0.995 vs 0.983), on
the same weights run causally it lost (0.991 vs 0.995; benchmarks/decoders.md). Whether u8*s8
saturation (AVX2 without VNNI) costs more than the overflow fix's 7-bit weights also depends on
the model, and shows only when run on such a CPU. So each candidate is quantized in full, run as
users run it (the CPU plugin in f32, on the build CPU) on every calibration text, and judged
against the FP32 reference's embeddings of those texts; the evaluation split never takes part.
The highest mean cosine wins, then the highest minimum, then the earlier candidate.

Each candidate is saved to a scratch IR and dropped before the next is quantized, so at most
one quantized model is held at a time (what a single candidate holds).
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


def choose_candidate(candidates: Sequence[dict], quantize: Callable[[int, dict], tuple[object, dict]],
                     judge: Callable[[object], np.ndarray], reference: np.ndarray, ov,
                     scratch: Path) -> tuple[object, dict]:
    """(the quantized model of the best candidate, read back from its scratch IR, and its recipe
    with the search record under ``calibration_search``).

    ``quantize(i, candidate)`` returns (the ``i``-th candidate's quantized model, its recipe);
    ``judge(model)`` its embeddings of the calibration rows, compared with ``reference``."""
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trials, recipes = [], []
    for i, candidate in enumerate(candidates):
        t0 = time.perf_counter()
        model, recipe = quantize(i, candidate)
        recipes.append(recipe)
        stats = cosine_stats(reference, judge(model))
        ov.save_model(model, str(scratch / f"candidate-{i}.xml"), compress_to_fp16=False)
        del model
        release_memory()
        trials.append({**candidate, "mean": stats["mean"], "p01": stats["p01"], "min": stats["min"],
                       "seconds": round(time.perf_counter() - t0, 1)})
    # NaN (a broken candidate) never wins: it sorts below every number; a tie keeps the earlier one
    best = max(range(len(trials)), key=lambda i: (_finite(trials[i]["mean"]), _finite(trials[i]["min"]), -i))
    for i in range(len(trials)):  # only the chosen IR stays (it is read back mapped from there)
        if i != best:
            for f in (scratch / f"candidate-{i}.xml", scratch / f"candidate-{i}.bin"):
                f.unlink(missing_ok=True)
    chosen = ov.Core().read_model(str(scratch / f"candidate-{best}.xml"))
    record = {"candidates": [dict(c) for c in candidates], "chosen": dict(candidates[best]),
              "judged_on": f"sentence-embedding cosine vs FP32 on the {len(reference)} calibration texts "
                           "on the build CPU (never the evaluation split); highest mean, then highest min",
              "trials": trials, "seconds": round(time.perf_counter() - started, 1)}
    return chosen, {**recipes[best], "calibration_search": record}


def _finite(x: float) -> float:
    return x if np.isfinite(x) else float("-inf")
