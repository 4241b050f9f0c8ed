"""Shared plumbing of the TensorRT precision recipes: saving models, ORT CPU
sessions with exact Q/DQ/FP16 semantics, calibration feeds, and the FP32
reference embeddings of the calibration texts that every search trial is
scored against."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CompileError
from .graph import SENTENCE_OUTPUT, const_matmuls, node_scope, upgrade_opset

QDQ_OPSET = 21           # fp16 Q/DQ scales need >= 19; int4 blockwise DQ needs 21
DEFAULT_SEARCH_TEXTS = 96
EXTERNAL_DATA_LIMIT = 1_900_000_000


def save_model(model, path: Path) -> None:
    """Save as one file, or with ``<name>.data`` external data over ~2 GB (protobuf limit)."""
    import onnx

    path = Path(path)
    if model.ByteSize() > EXTERNAL_DATA_LIMIT:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def session(path: Path, threads: int | None = None, *, exact: bool = True):
    """An ORT CPU session that runs Q/DQ and FP16 exactly as written (fake-quant
    semantics, what TensorRT computes), never ORT's fused integer kernels (which
    may saturate on AVX2). ``exact``: all graph optimizations off; otherwise
    the basic level (constant folding, no QDQ fusions; measured identical, faster)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if exact
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def embed_feeds(sess, feeds: Sequence[dict]) -> np.ndarray:
    """``sentence_embedding`` for each feed, rows concatenated, as float64."""
    names = {i.name for i in sess.get_inputs()}
    rows = [sess.run([SENTENCE_OUTPUT], {k: v for k, v in f.items() if k in names})[0] for f in feeds]
    return np.concatenate(rows).astype(np.float64)


def cosine_stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    c = cand / np.maximum(np.linalg.norm(cand, axis=1, keepdims=True), 1e-30)
    cos = np.einsum("ij,ij->i", r, c)
    if not np.all(np.isfinite(cos)):
        return {"mean": float("nan"), "p01": float("nan"), "min": float("nan"), "n": int(len(cos))}
    return {"mean": round(float(cos.mean()), 6), "p01": round(float(np.percentile(cos, 1)), 6),
            "min": round(float(cos.min()), 6), "n": int(len(cos))}


class FeedReader:
    """ORT CalibrationDataReader over ``ctx.calibration`` with ``set_range`` so
    ``quantize_static`` can collect one text at a time (histogram methods need
    equal shapes inside one collection; texts have different lengths)."""

    def __init__(self, feeds: Sequence[dict], names: set[str]):
        self.feeds = [{k: v for k, v in f.items() if k in names} for f in feeds]
        self.set_range(0, len(self.feeds))

    def get_next(self):
        if self._pos >= self._end:
            return None
        self._pos += 1
        return self.feeds[self._pos - 1]

    def __iter__(self):
        return iter(self.get_next, None)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pos, self._end = start_index, min(end_index, len(self.feeds))

    def rewind(self) -> None:
        self.set_range(0, len(self.feeds))


@dataclass
class Prepared:
    """The FP32 model at the Q/DQ opset, saved once, with the FP32 embeddings of
    the calibration texts (all of them, and the subset the search scores on)."""

    model: object
    path: Path
    feeds: tuple
    input_names: set[str]
    reference: np.ndarray
    threads: int | None
    candidates: list
    scopes: dict[str, str]
    search_idx: np.ndarray


def prepare(model, ctx, work: Path) -> Prepared:
    work.mkdir(parents=True, exist_ok=True)
    if not ctx.calibration:
        raise CompileError("no calibration batches for a quantized TensorRT build",
                           "provide calibration texts (see 'embedc build --help')")
    model = upgrade_opset(model, QDQ_OPSET)
    path = work / "fp32.onnx"
    save_model(model, path)
    threads = ctx.options.get("threads")
    sess = session(path, threads, exact=False)
    names = {i.name for i in sess.get_inputs()}
    ref = embed_feeds(sess, ctx.calibration)
    del sess
    cands = const_matmuls(model)
    # Search trials score an evenly spaced subset (compile time); the final model is scored on all.
    n = len(ctx.calibration)
    k = min(n, int(ctx.options.get("search_texts", DEFAULT_SEARCH_TEXTS)))
    idx = np.unique(np.linspace(0, n - 1, k).round().astype(int))
    return Prepared(model, path, tuple(ctx.calibration), names, ref, threads, cands,
                    {n.name: node_scope(n) for n in cands}, idx)
