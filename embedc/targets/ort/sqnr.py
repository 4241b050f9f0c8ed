"""Output SQNR, the local sensitivity the INT8 static and INT4 recipes rank MatMuls by."""
from __future__ import annotations

import math

import numpy as np


def sqnr(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``y_hat`` against ``y``, in dB."""
    noise = float(np.square(y - y_hat, dtype=np.float64).sum())
    return 10 * math.log10(float(np.square(y, dtype=np.float64).sum()) / max(noise, 1e-30))
