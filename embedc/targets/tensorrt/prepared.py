"""The FP32 starting point of the TensorRT INT8/INT4 recipes: the reference
graph at the Q/DQ opset, saved once, with the FP32 embeddings of the
calibration texts that every search trial is scored against.

TensorRT computes what the graph says (fake-quant Q/DQ and FP16 casts), so
every embedding here comes from ONNX Runtime at the ``basic`` level:
constant folding, no QDQ fusions (:mod:`embedc.onnxkit.session`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CompileError
from ...onnxkit.files import save_model
from ...onnxkit.graph import upgrade_opset, weight_matmuls
from ...onnxkit.scopes import module_path
from ...onnxkit.session import cpu_session, embed_feeds

QDQ_OPSET = 21           # fp16 Q/DQ scales need >= 19; int4 blockwise DQ needs 21
SEARCH_LEVEL = "basic"   # how candidates are run while searching (see the module docstring)


@dataclass
class Prepared:
    model: object                 # FP32 model at QDQ_OPSET
    path: Path                    # ... saved here
    feeds: tuple                  # every calibration batch
    reference: np.ndarray         # its FP32 sentence embeddings, one row per feed
    threads: int | None
    candidates: list              # the Linear MatMul nodes
    scopes: dict[str, str]        # candidate node -> module path
    search_idx: np.ndarray        # the feeds search trials are scored on


def prepare(model, feeds, options: dict, work: Path) -> Prepared:
    work.mkdir(parents=True, exist_ok=True)
    if not feeds:
        raise CompileError("no calibration batches for a quantized TensorRT build",
                           "provide calibration texts (see 'embedc build --help')")
    model = upgrade_opset(model, QDQ_OPSET)
    path = work / "fp32.onnx"
    save_model(model, path)
    threads = options["threads"]
    ref = embed_feeds(cpu_session(path, threads, level=SEARCH_LEVEL), feeds)
    cands = weight_matmuls(model)
    # Search trials score an evenly spaced subset (compile time); the final model is scored on all.
    n = len(feeds)
    k = min(n, options["search_texts"])
    idx = np.unique(np.linspace(0, n - 1, k).round().astype(int))
    return Prepared(model, path, tuple(feeds), ref, threads, cands, {c.name: module_path(c) for c in cands}, idx)
