"""The sensitivity search: the fewest, most sensitive layers to keep out of a
quantization so that the sentence embeddings of the *calibration* texts (never
the evaluation split) meet per-metric targets.

One algorithm for every recipe. A trial builds a candidate model with some
layers excluded and scores it. The first trial excludes only the forced
layers (the user's ``exclude``); if it misses, the recipe ranks the layers
(most sensitive first) on that candidate, and trials keep the top k out for
k on :data:`STEPS` (capped), then bisect between the last miss and the first
hit. If no trial meets the targets, the best one (highest min, then mean)
is the result. What every trial scored is returned for the recipe.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("embedc.onnxkit.search")

STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def schedule(limit: int) -> list[int]:
    """How many layers each growing trial keeps out, up to ``limit``."""
    return sorted({k for k in STEPS if k < limit} | ({limit} if limit > 0 else set()))


def meets(stats: Mapping[str, float], targets: Mapping[str, float]) -> bool:
    return all(stats[k] >= v for k, v in targets.items())


def _rank_key(stats: Mapping[str, float]) -> tuple[float, float]:
    return (stats["min"], stats["mean"]) if math.isfinite(stats["mean"]) else (-1.0, -1.0)


@dataclass
class SearchResult:
    excluded: list[str]              # forced + chosen, in exclusion order
    path: Path                       # the chosen trial's model
    met: bool                        # the chosen trial meets the targets
    order: list[str]                 # ranked candidates (most sensitive first), empty if never ranked
    trials: list[dict] = field(default_factory=list)

    def report(self) -> dict:
        return {"targets_met": self.met, "trials": self.trials}


def search(build: Callable[[list[str]], Path], score: Callable[[Path], dict],
           rank: Callable[[Path], Sequence[str]], *, forced: Sequence[str], targets: Mapping[str, float],
           cap: int, enabled: bool = True, max_trials: int | None = None) -> SearchResult:
    """``build(excluded)`` writes a candidate and returns its path; ``score(path)`` gives
    cosine stats (``mean``, ``p01``, ``min``); ``rank(path)`` orders the candidates
    (most sensitive first) given the first candidate. ``cap`` bounds how many
    layers the search adds to ``forced``; ``max_trials`` bounds the trials."""
    trials: list[dict] = []

    def trial(excluded: list[str]) -> tuple[Path, dict]:
        t0 = time.perf_counter()
        path = build(excluded)
        stats = score(path)
        ok = meets(stats, targets)
        trials.append({"excluded": len(excluded), **stats, "meets_target": ok,
                       "seconds": round(time.perf_counter() - t0, 1)})
        log.info("  %d layers excluded: calibration cosine mean %.5f p01 %.5f min %.5f",
                 len(excluded), stats["mean"], stats["p01"], stats["min"])
        return path, stats

    forced = list(forced)
    path, stats = trial(forced)
    if meets(stats, targets) or not enabled or cap <= 0:
        return SearchResult(forced, path, meets(stats, targets), [], trials)
    order = [n for n in rank(path) if n not in forced][:cap]
    best = (stats, forced, path)
    lo = 0
    for k in schedule(len(order)):
        if max_trials is not None and len(trials) >= max_trials:
            break
        excluded = forced + order[:k]
        path, stats = trial(excluded)
        if _rank_key(stats) > _rank_key(best[0]):
            best = (stats, excluded, path)
        if meets(stats, targets):
            hit = (excluded, path)
            hi = k
            while hi - lo > 1 and (max_trials is None or len(trials) < max_trials):
                mid = (lo + hi) // 2
                p2, s2 = trial(forced + order[:mid])
                if meets(s2, targets):
                    hi, hit = mid, (forced + order[:mid], p2)
                else:
                    lo = mid
            return SearchResult(hit[0], hit[1], True, order, trials)
        lo = k
    return SearchResult(best[1], best[2], False, order, trials)
