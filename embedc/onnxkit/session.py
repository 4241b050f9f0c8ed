"""ONNX Runtime CPU sessions at a named optimization level, quiet quantizer
logs and the quantization import.

Levels, by what a session must reproduce:

- ``"all"``: what a user of an ORT artifact runs (fused integer kernels);
- ``"basic"``: constant folding only, no QDQ fusions: the Q/DQ and FP16
  arithmetic as written, computed faster (measured identical to ``"exact"``);
- ``"exact"``: every graph optimization off: the graph exactly as written
  (fake-quant semantics; what TensorRT computes, up to its kernels' rounding).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError

LEVELS = ("all", "basic", "exact")
SENTENCE_OUTPUT = "sentence_embedding"


def cpu_session(path: Path, threads: int | None = None, *, level: str = "all"):
    """An InferenceSession on the CPU provider; ``threads`` intra-op threads (default: ORT's)."""
    import onnxruntime as ort

    if level not in LEVELS:
        raise ValueError(f"session level {level!r} is not one of {LEVELS}")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if level != "all":
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if level == "basic"
                                       else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def session_inputs(sess, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds the session takes (extra keys, e.g. token_type_ids, dropped)."""
    names = [i.name for i in sess.get_inputs()]
    return {n: feeds[n] for n in names}


def embed_feeds(sess, feeds: Sequence[dict[str, np.ndarray]], output: str = SENTENCE_OUTPUT) -> np.ndarray:
    """``output`` of every feed, rows concatenated, as float32."""
    rows = [sess.run([output], session_inputs(sess, f))[0] for f in feeds]
    return np.concatenate(rows, axis=0).astype(np.float32)


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
    """``onnxruntime.quantization`` (with the MatMulNBits quantizer's onnx-ir), or a one-line install hint."""
    try:
        with quiet_ort_logs():
            import onnxruntime.quantization as q
            from onnxruntime.quantization import matmul_nbits_quantizer  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"onnxruntime quantization tools are unavailable ({exc})",
                                     "pip install onnxruntime onnx-ir (both are embedc dependencies)") from exc
    return q
