"""The min/max 4-bit grid with float zero points, shared by the ORT and OpenVINO writers
(``zero_points="float"``; :mod:`embedc.targets.ort.float_zero`, :mod:`embedc.targets.openvino.float_zero`).

Each block of ``block`` weights along K is rounded to nearest on its own [min, max]:
``code = round((w - min) / scale)`` in 0..15 with ``scale = (max - min) / 15``, stored with
``zero = -min / scale`` so that ``(code - zero) * scale = min + code * scale``. That is GGUF's
Q4_1 grid (block 32, a scale and a minimum per block): weights that came from a Q4_1 file lie on
it exactly and come back exactly. Integer (uint4) zero points, which ORT's quantizer and NNCF's
``int4_asym`` write, put the minimum on a multiple of the scale and cannot.
"""
from __future__ import annotations

import numpy as np

# a weight within this relative error (of its largest magnitude) of the grid was already on it
ON_GRID = 1e-6


def minmax_codes(w_kn: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(codes uint8 [N, nb, block], scales fp32 [N, nb], zero points fp32 [N, nb], relative max
    error) of a [K, N] weight, blocks along K; K's padding repeats the last row (same min/max)."""
    k, n = w_kn.shape
    pad = (-k) % block
    w = np.pad(w_kn.astype(np.float32), ((0, pad), (0, 0)), mode="edge") if pad else w_kn.astype(np.float32)
    g = w.T.reshape(n, -1, block)  # [N, nb, block]
    lo, hi = g.min(-1), g.max(-1)
    scale = (hi - lo) / 15.0
    scale[scale == 0] = 1.0  # a constant block: code 0 is its value
    codes = np.clip(np.rint((g - lo[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
    zero = (-lo / scale).astype(np.float32)
    deq = (codes - zero[..., None]) * scale[..., None]
    err = float(np.abs(deq - g).max() / max(float(np.abs(g).max()), 1e-30))
    return codes, scale.astype(np.float32), zero, err


def grid_record(errors: dict[str, float]) -> dict:
    on = sum(e <= ON_GRID for e in errors.values())
    return {"weights": len(errors), "already_on_the_grid": on,
            "max_relative_error": float(f"{max(errors.values(), default=0.0):.3g}"),
            "meaning": "weights already on the grid (a Q4_1-style source) are stored exactly" if on else
                       "none of the weights was on a 4-bit grid before: this is round-to-nearest"}


SCHEME = "asymmetric uint4 codes, fp32 scale and fp32 zero point per block (min/max: GGUF Q4_1's grid)"
