"""Float activations of named tensors over the calibration feeds: one pass of
the FP32 model with those tensors added as outputs.

What is kept, per tensor: the per-channel min and max over every attended
token, and a seeded sample of attended-token rows (every token equally
likely, about ``rows`` in all; within one feed the same tokens for every
tensor, so samples of different layers describe the same inputs). Padding
never enters: rows whose attention-mask entry is 0 are dropped. The model's
``sentence_embedding`` of each feed comes from the same pass.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..memory import release_memory
from .files import remove_model, save_model
from .session import SENTENCE_OUTPUT, cpu_session, session_inputs

DEFAULT_ROWS = 2048


@dataclass
class Activations:
    samples: dict[str, np.ndarray]   # tensor -> sampled rows [n, channels]
    lo: dict[str, np.ndarray]        # tensor -> per-channel minimum
    hi: dict[str, np.ndarray]        # tensor -> per-channel maximum
    embeddings: np.ndarray           # the model's sentence_embedding, one row per text

    def alias(self, name: str, same_as: str) -> None:
        """Record that tensor ``name`` holds the same values as ``same_as``."""
        self.samples[name], self.lo[name], self.hi[name] = self.samples[same_as], self.lo[same_as], self.hi[same_as]

    @property
    def sampled_rows(self) -> int:
        return int(next(iter(self.samples.values())).shape[0]) if self.samples else 0


def _attended(feed: dict[str, np.ndarray]) -> np.ndarray | None:
    mask = feed.get("attention_mask")
    return None if mask is None else mask.reshape(-1) > 0


def capture(path: Path, tensors: Sequence[str], feeds: Sequence[dict[str, np.ndarray]], *,
            threads: int | None = None, level: str = "all", rows: int = DEFAULT_ROWS, seed: int = 0,
            output: str = SENTENCE_OUTPUT, scratch: Path | None = None) -> Activations:
    """Run the model at ``path`` over ``feeds`` (session ``level``, see :mod:`.session`).

    The probe model (``path`` plus the extra outputs) is written into a fresh
    folder under ``scratch`` (the caller's work folder; the system temp folder
    if None), never beside ``path``: ``path`` may be a shared, read-only cache
    entry that other builds are reading."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="capture-", dir=scratch))
    try:
        return _capture(path, tensors, feeds, threads=threads, level=level, rows=rows, seed=seed, output=output,
                        probe=folder / "capture-probe.onnx")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _capture(path, tensors, feeds, *, threads, level, rows, seed, output, probe: Path) -> Activations:
    import onnx
    from onnx import TensorProto, helper

    tensors = list(tensors)
    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                              for t in tensors if t not in have)
    save_model(model, probe, keep=False)
    del model
    release_memory()  # the loaded graph's weights, before the session maps its own copy
    sess = cpu_session(probe, threads, level=level)
    total = 0
    for f in feeds:
        att = _attended(f)
        total += int(att.sum()) if att is not None else int(np.prod(f["input_ids"].shape))
    keep = min(1.0, rows / max(total, 1))
    rng = np.random.default_rng(seed)
    lo: dict[str, np.ndarray] = {}
    hi: dict[str, np.ndarray] = {}
    picked: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    embeddings = []
    for feed in feeds:
        out = sess.run([output, *tensors], session_inputs(sess, feed))
        embeddings.append(out[0])
        att = _attended(feed)
        picks: dict[int, np.ndarray] = {}  # one token choice per row count: the same tokens for every tensor
        for t, x in zip(tensors, out[1:]):
            x = x.reshape(-1, x.shape[-1])
            if att is not None and att.size == x.shape[0]:
                x = x[att]
            if not x.shape[0]:
                continue
            if x.shape[0] not in picks:
                picks[x.shape[0]] = rng.random(x.shape[0]) < keep
            lo[t] = np.minimum(lo[t], x.min(0)) if t in lo else x.min(0)
            hi[t] = np.maximum(hi[t], x.max(0)) if t in hi else x.max(0)
            picked[t].append(x[picks[x.shape[0]]])
    del sess
    remove_model(probe)
    return Activations(samples={t: np.concatenate(v) for t, v in picked.items()}, lo=lo, hi=hi,
                       embeddings=np.concatenate(embeddings).astype(np.float32))
