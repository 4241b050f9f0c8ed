"""torch -> ONNX export of the reference FP32 embedding graph.

Dynamo exporter (torch >= 2.9 default), eager attention, dynamic batch and
sequence axes, pooling + L2 norm inside the graph, external data over 2 GB.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..artifact import file_inventory, write_meta
from ..errors import ExportError, UsageError
from ..fsutil import check_output_location, staged_dir
from ..models import check_architecture, load_tokenizer, load_torch_model, save_tokenizer
from ..models.source import ModelSource
from ..versions import library_versions
from ..bench.memory import peak_rss_bytes
from .validate import ValidationGate, validate_onnx
from .wrapper import SentenceEmbedder

log = logging.getLogger("embedc")

MODEL_FILE = "model.onnx"
INPUT_NAMES = ["input_ids", "attention_mask"]
# The second name follows transformers/optimum, so sentence-transformers can load ORT artifacts.
OUTPUT_NAMES = ["sentence_embedding", "last_hidden_state"]
SUPPORTED_OPSETS = range(17, 21)  # LayerNormalization stays one op; no opset-23 Attention
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # keep a margin under protobuf's 2 GiB


@dataclass(frozen=True)
class ExportResult:
    path: Path
    meta: dict


def max_sequence_length(config: dict, tokenizer) -> int:
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in ("xlm-roberta", "roberta"):
        positions -= int(config.get("pad_token_id", 1)) + 1  # positions start after padding_idx
    limit = getattr(tokenizer, "model_max_length", positions) or positions
    return int(min(positions, limit if limit < 10**6 else positions))


def export_reference(source: ModelSource, out: Path, *, opset: int = 18, force: bool = False,
                     gate: ValidationGate = ValidationGate()) -> ExportResult:
    """Export, validate against torch, and write the self-describing folder atomically."""
    if opset not in SUPPORTED_OPSETS:
        raise UsageError(f"opset {opset} is not supported",
                         f"use {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}")
    check_output_location(Path(out), force=force)
    config = check_architecture(source)
    tokenizer = load_tokenizer(source)
    model = load_torch_model(source)
    max_len = max_sequence_length(config, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    external = n_params * 4 > PROTOBUF_LIMIT

    with staged_dir(Path(out), force=force) as tmp:
        t0 = time.perf_counter()
        _export_onnx(model, tokenizer, tmp / MODEL_FILE, opset=opset, external_data=external)
        export_s = time.perf_counter() - t0
        log.info("exported %s (%.0fM params) in %.1f s%s", source.name, n_params / 1e6, export_s,
                 " with external data" if external else "")
        t0 = time.perf_counter()
        validation = validate_onnx(tmp / MODEL_FILE, model, tokenizer, input_names=INPUT_NAMES,
                                   query_prefix=source.query_prefix, passage_prefix=source.passage_prefix,
                                   max_length=max_len, gate=gate)
        validation["seconds"] = round(time.perf_counter() - t0, 2)
        save_tokenizer(tokenizer, tmp)
        hidden = int(config.get("hidden_size", 0))
        meta = {
            "stage": "reference-export",
            "target": None,
            "precision": "fp32",
            "model": source.to_dict(),
            "architecture": config.get("model_type"),
            "parameters": n_params,
            "model_file": MODEL_FILE,
            "external_data": external,
            "exporter": "torch.onnx.export(dynamo=True)",
            "opset": opset,
            "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUT_NAMES],
            "outputs": [{"name": "sentence_embedding", "dtype": "float32", "shape": ["batch", hidden],
                         "meaning": "mean pooling over attention_mask, then L2 normalization"},
                        {"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "sequence", hidden],
                         "meaning": "last_hidden_state"}],
            "max_length": max_len,
            "prefixes": {"query": source.query_prefix, "passage": source.passage_prefix},
            "versions": library_versions(),
            "export_seconds": round(export_s, 2),
            "peak_rss_bytes": peak_rss_bytes(),
            "validation": validation,
        }
        meta["files"] = file_inventory(tmp)
        write_meta(tmp, meta)
    return ExportResult(Path(out), meta)


def _export_onnx(model, tokenizer, path: Path, *, opset: int, external_data: bool) -> None:
    import torch

    # Batch >= 2 and seq >= 2 so the exporter does not specialize those axes to constants.
    sample = tokenizer(["embedc export sample text", "a second, longer sample text for the trace"],
                       padding=True, return_tensors="pt")
    wrapper = SentenceEmbedder(model).eval()
    axes = {0: "batch", 1: "sequence"}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (sample["input_ids"], sample["attention_mask"]), dynamo=True,
                opset_version=opset, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                dynamic_shapes={"input_ids": axes, "attention_mask": axes}, verbose=False)
        program.save(str(path), external_data=external_data)
    except Exception as exc:
        raise ExportError(f"torch.onnx export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                          "check the model loads in transformers with attn_implementation='eager'") from exc
    _check_dynamic(path)


def _check_dynamic(path: Path) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != 2 or any(d.HasField("dim_value") for d in dims):
            raise ExportError(f"exported input {inp.name} has fixed shape {[d.dim_value for d in dims]}",
                              "the exporter specialized a dynamic axis; report this model")
