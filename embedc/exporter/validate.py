"""Validate an exported ONNX against PyTorch on pooled, normalized embeddings.
Raises on a miss (optimum only logs one)."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..calibration.feeds import encode_batch
from ..errors import ExportValidationError
from .probe_texts import probe_batches
from .wrapper import torch_embed

log = logging.getLogger("embedc")


@dataclass(frozen=True)
class ValidationGate:
    min_cosine: float = 0.99999
    max_abs_diff: float = 1e-4


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def torch_probes(embedder, tokenizer, *, input_names: list[str], query_prefix: str, passage_prefix: str,
                 max_length: int) -> list[tuple[str, dict, np.ndarray]]:
    """(label, feeds, torch embeddings) of every validation probe: computed
    first, so the torch model can be freed before the ONNX session is opened."""
    out = []
    for label, texts in probe_batches(tokenizer, query_prefix=query_prefix,
                                      passage_prefix=passage_prefix, max_length=max_length):
        feeds = encode_batch(tokenizer, texts, input_names=input_names, max_length=max_length)
        out.append((label, feeds, torch_embed(embedder, feeds)))
    return out


def validate_onnx(onnx_path: Path, embedder, tokenizer, *, input_names: list[str], query_prefix: str,
                  passage_prefix: str, max_length: int, gate: ValidationGate = ValidationGate()) -> dict:
    """Validate ``onnx_path`` against ``embedder`` on the probe batches."""
    probes = torch_probes(embedder, tokenizer, input_names=input_names, query_prefix=query_prefix,
                          passage_prefix=passage_prefix, max_length=max_length)
    return check_onnx(onnx_path, probes, gate)


def check_onnx(onnx_path: Path, probes: list[tuple[str, dict, np.ndarray]],
               gate: ValidationGate = ValidationGate(), *, low_memory: bool = False) -> dict:
    """Run ``probes`` (from :func:`torch_probes`) through ONNX Runtime and judge them against ``gate``.
    ``low_memory``: no pre-packed weight copies (MLAS would re-layout every MatMul weight)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if low_memory:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    cells = {}
    all_cos, worst_abs = [], 0.0
    for label, feeds, ref in probes:
        got = session.run(["sentence_embedding"], feeds)[0]
        if not np.isfinite(got).all():
            raise ExportValidationError(f"ONNX output has NaN/Inf on probe {label}",
                                        "re-export with a different opset or report the model")
        cos = _cosines(ref, got)
        abs_diff = float(np.abs(ref - got).max())
        cells[label] = {"batch": int(feeds["input_ids"].shape[0]), "seq": int(feeds["input_ids"].shape[1]),
                        "min_cosine": float(cos.min()), "max_abs_diff": abs_diff}
        all_cos.append(cos)
        worst_abs = max(worst_abs, abs_diff)
    cos = np.concatenate(all_cos)
    result = {
        "gate": asdict(gate),
        "texts": int(cos.size),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "max_abs_diff": worst_abs,
        "cells": cells,
        "passed": bool(cos.min() >= gate.min_cosine and worst_abs <= gate.max_abs_diff),
    }
    log.info("validation: %d texts, min cosine %.7f, max abs diff %.2e", cos.size, cos.min(), worst_abs)
    if not result["passed"]:
        worst = min(cells, key=lambda k: cells[k]["min_cosine"])
        raise ExportValidationError(
            f"exported ONNX disagrees with PyTorch: min cosine {cos.min():.7f} (gate {gate.min_cosine}), "
            f"max abs diff {worst_abs:.2e} (gate {gate.max_abs_diff:g}), worst probe {worst}",
            "try another --opset, or loosen the gate with --min-cosine/--max-abs-diff if this is expected")
    return result
