"""Cosine statistics of candidate embeddings against reference embeddings
(what the sensitivity search judges a trial by)."""
from __future__ import annotations

import numpy as np


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine in float64; a zero row against a zero row counts as 1."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)


def cosine_stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    """mean / 1st percentile / min of the per-row cosines (6 digits), and the row count;
    NaN everywhere when a candidate row is not finite (a broken quantization)."""
    cos = row_cosines(ref, cand)
    n = int(len(cos))
    if not np.all(np.isfinite(cos)):
        return {"mean": float("nan"), "p01": float("nan"), "min": float("nan"), "n": n}
    return {"mean": round(float(cos.mean()), 6), "p01": round(float(np.percentile(cos, 1)), 6),
            "min": round(float(cos.min()), 6), "n": n}
