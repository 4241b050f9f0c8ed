"""Float activation statistics over the calibration feeds, and the output SQNR
that the INT8 static and INT4 recipes rank MatMuls by."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graph import model_files, save_model
from .session import session


class ActivationStats:
    """One float pass over the calibration feeds: per-channel min/max of every
    MatMul input, a seeded sample of its rows (tokens) for local error
    estimates, and the float ``sentence_embedding`` of each feed."""

    def __init__(self, path: Path, tensors: Sequence[str], feeds, input_names, threads: int | None,
                 rows: int = 2048, seed: int = 0):
        model = onnx.load(str(path))
        have = {o.name for o in model.graph.output}
        model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                                  for t in tensors if t not in have)
        probe = path.with_name("stats-probe.onnx")
        save_model(model, probe)
        del model
        sess = session(probe, threads)
        total = sum(int(np.prod(f["input_ids"].shape)) for f in feeds)
        keep = min(1.0, rows / max(total, 1))
        rng = np.random.default_rng(seed)
        self.lo: dict[str, np.ndarray] = {}
        self.hi: dict[str, np.ndarray] = {}
        samples: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
        embeddings = []
        names = ["sentence_embedding", *tensors]
        for feed in feeds:
            out = sess.run(names, {n: feed[n] for n in input_names})
            embeddings.append(out[0])
            pick = None
            for t, x in zip(tensors, out[1:]):
                x = x.reshape(-1, x.shape[-1])
                if pick is None:
                    pick = rng.random(x.shape[0]) < keep
                self.lo[t] = np.minimum(self.lo[t], x.min(0)) if t in self.lo else x.min(0)
                self.hi[t] = np.maximum(self.hi[t], x.max(0)) if t in self.hi else x.max(0)
                samples[t].append(x[pick])
        del sess
        for p in model_files(probe):
            p.unlink()
        self.samples = {t: np.concatenate(v) for t, v in samples.items()}
        self.embeddings = np.concatenate(embeddings).astype(np.float32)


def _sqnr(y: np.ndarray, y_hat: np.ndarray) -> float:
    noise = float(np.square(y - y_hat, dtype=np.float64).sum())
    return 10 * math.log10(float(np.square(y, dtype=np.float64).sum()) / max(noise, 1e-30))
