"""Cosine statistics of candidate embeddings against reference embeddings
(what the sensitivity search judges a trial by)."""
from __future__ import annotations

import numpy as np


def row_cosines(a: np.ndarray, b: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Per-row cosine in float64; a zero row against a zero row counts as 1.
    In row chunks: float64 copies of a 151k x 1024 embedding table at once are 5 GB."""
    out = np.empty(len(a), dtype=np.float64)
    for i in range(0, len(a), chunk):
        x, y = a[i:i + chunk].astype(np.float64), b[i:i + chunk].astype(np.float64)
        num = np.einsum("ij,ij->i", x, y)
        den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        out[i:i + chunk] = np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    return out


def cosine_stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    """mean / 1st percentile / min of the per-row cosines (6 digits), and the row count;
    NaN everywhere when a candidate row is not finite (a broken quantization)."""
    cos = row_cosines(ref, cand)
    n = int(len(cos))
    if not np.all(np.isfinite(cos)):
        return {"mean": float("nan"), "p01": float("nan"), "min": float("nan"), "n": n}
    return {"mean": round(float(cos.mean()), 6), "p01": round(float(np.percentile(cos, 1)), 6),
            "min": round(float(cos.min()), 6), "n": n}
