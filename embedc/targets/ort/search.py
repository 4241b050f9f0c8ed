"""The ORT recipes' use of the shared sensitivity search
(:mod:`embedc.onnxkit.search`): candidates are judged as users run them (ORT
with every optimization, fused integer kernels) on every calibration text,
against the FP32 model's embeddings; MatMuls are ranked by output SQNR."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ...onnxkit.files import remove_model
from ...onnxkit.metrics import cosine_stats
from ...onnxkit.search import search
from ...onnxkit.session import cpu_session, embed_feeds


def auto_exclude(build: Callable[[Sequence[str], Path], None], rank: Callable[[Path], dict[str, float]],
                 candidates: Sequence[str], forced: Sequence[str], reference: np.ndarray, feeds, options: dict,
                 work: Path, threads: int | None) -> dict:
    """The fewest MatMuls (at most ``options["auto_exclude"]``) to keep out of the
    precision's main quantization so that the calibration cosine meets
    ``target_mean`` / ``target_min``. ``build(excluded, path)`` writes a candidate;
    ``rank(path)`` maps candidate MatMuls to an output SQNR in dB (lowest = most
    sensitive) given the first candidate."""
    cap = options["auto_exclude"]
    targets = {"mean": options["target_mean"], "min": options["target_min"]}
    out = {"enabled": cap > 0, "max": cap, "target": targets,
           "judged_on": f"sentence-embedding cosine vs FP32 on the {len(feeds)} calibration texts "
                        "(never the evaluation split)",
           "steps": [], "excluded": [], "sqnr": {}}
    if cap <= 0:
        return out
    started = time.perf_counter()
    cand = work / "candidate.onnx"

    def build_candidate(excluded: list[str]) -> Path:
        build(excluded, cand)
        return cand

    def score(path: Path) -> dict:
        return cosine_stats(reference, embed_feeds(cpu_session(path, threads, level="all"), feeds))

    def order(path: Path) -> list[str]:
        out["sqnr"] = rank(path)
        return sorted((n for n in candidates if n in out["sqnr"]), key=out["sqnr"].get)

    result = search(build_candidate, score, order, forced=forced, targets=targets, cap=cap)
    remove_model(cand)
    out.update(steps=result.trials, excluded=result.excluded[len(forced):], target_met=result.met,
               seconds=round(time.perf_counter() - started, 1))
    return out
