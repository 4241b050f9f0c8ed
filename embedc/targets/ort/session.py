"""ONNX Runtime plumbing for the recipes: quiet quantizer logs, the quantization
import, a calibration data reader, CPU sessions and embedding cosines.
onnxruntime loads inside the functions."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ...errors import MissingDependencyError


@contextlib.contextmanager
def quiet_ort_logs() -> Iterator[None]:
    """ORT's quantizers log at INFO/WARNING on the root logger (and
    matmul_nbits_quantizer calls logging.basicConfig(INFO) at import);
    keep the user's logging as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


def import_quantization():
    try:
        with quiet_ort_logs():
            import onnxruntime.quantization as q  # noqa: PLC0415
            from onnxruntime.quantization import matmul_nbits_quantizer  # noqa: F401, PLC0415
    except ImportError as exc:
        raise MissingDependencyError(f"onnxruntime quantization tools are unavailable ({exc})",
                                     "pip install 'embedc[ort]' (onnxruntime and onnx-ir)") from exc
    return q


def feed_reader(feeds: Sequence[dict[str, np.ndarray]], input_names: Sequence[str]):
    """A CalibrationDataReader over the shared tokenized batches (deep-copyable for GPTQ)."""
    q = import_quantization()

    class FeedReader(q.CalibrationDataReader):
        def __init__(self, items):
            self.items = [{n: np.ascontiguousarray(f[n], dtype=np.int64) for n in input_names} for f in items]
            self.start, self.end, self.pos = 0, len(self.items), 0

        def get_next(self):
            if self.start + self.pos >= self.end:
                return None
            self.pos += 1
            return self.items[self.start + self.pos - 1]

        def rewind(self):
            self.pos = 0

        def set_range(self, start_index: int, end_index: int):
            self.start, self.end, self.pos = start_index, min(end_index, len(self.items)), 0

        def __len__(self):
            return len(self.items)

    return FeedReader(feeds)


def session(path: Path, threads: int | None):
    import onnxruntime as ort  # noqa: PLC0415

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def embed_feeds(path: Path, feeds: Sequence[dict[str, np.ndarray]], input_names: Sequence[str],
                threads: int | None) -> np.ndarray:
    sess = session(path, threads)
    out = [sess.run(["sentence_embedding"], {n: f[n] for n in input_names})[0] for f in feeds]
    return np.concatenate(out, axis=0).astype(np.float32)


def cosine_stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    cos = _row_cosines(ref.astype(np.float64), cand.astype(np.float64))
    return {"mean": round(float(cos.mean()), 6), "p01": round(float(np.percentile(cos, 1)), 6),
            "min": round(float(cos.min()), 6)}


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = np.einsum("ij,ij->i", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
