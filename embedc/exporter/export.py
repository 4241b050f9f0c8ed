"""torch -> ONNX export of the reference FP32 embedding graph.

Dynamo exporter (torch >= 2.9 default), eager attention, dynamic batch and
sequence axes, the family's pooling + L2 norm inside the graph, external data
over 2 GB. What the model is (inputs, pooling, max length, outputs) comes from
its family adapter, which the export records for every later stage.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..artifact import file_inventory, write_meta
from ..bench.memory import peak_rss_bytes
from ..errors import ExportError, UsageError
from ..families import resolve_family
from ..fsutil import check_output_location, staged_dir
from ..models import load_tokenizer, save_tokenizer
from ..models.source import ModelSource
from ..onnxkit.files import tensor_bytes_need_external_data
from ..memory import release_memory
from ..versions import library_versions
from .leaks import release_rewriter_graphs
from .validate import ValidationGate, check_onnx, torch_probes
from .wrapper import SentenceEmbedder

log = logging.getLogger("embedc")

MODEL_FILE = "model.onnx"
SUPPORTED_OPSETS = range(17, 21)  # LayerNormalization stays one op; no opset-23 Attention
_OUTPUT_MEANING = {
    "sentence_embedding": "{pooling} pooling over attention_mask, then L2 normalization",
    "last_hidden_state": "the network's token states (after its final {final_norm})",
    "pooler_output": "{pooling} pooling over attention_mask, before normalization",
}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    meta: dict


def export_reference(source: ModelSource, out: Path, *, opset: int = 18, force: bool = False,
                     gate: ValidationGate = ValidationGate(), low_memory: bool = False) -> ExportResult:
    """Export, validate against torch, and write the self-describing folder atomically.

    ``low_memory`` (families that have it: decoders) traces the graph on the
    meta device and streams the weights to the external-data file one tensor
    at a time; the torch model exists only for the validation probes."""
    if opset not in SUPPORTED_OPSETS:
        raise UsageError(f"opset {opset} is not supported",
                         f"use {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}")
    from ..build.output_guard import check_output
    from ..models.validate import check_model_folder

    check_model_folder(source.path)
    check_output(Path(out), force=force, inputs=[("model folder", source.path)])
    check_output_location(Path(out), force=force)
    family, config = resolve_family(source)
    tokenizer = family.prepare_tokenizer(load_tokenizer(source))
    adapter = family.adapter(source, config, tokenizer)
    if low_memory:
        model, weights = family.weight_stream(source, adapter)
    else:
        model, weights = family.load_torch(source, adapter), None
    n_params = sum(p.numel() for p in model.parameters())
    external = low_memory or tensor_bytes_need_external_data(n_params * 4)  # the one policy every ONNX stage shares

    with staged_dir(Path(out), force=force) as tmp:
        t0 = time.perf_counter()
        if low_memory:
            from .streamed import streamed_export

            streamed = streamed_export(SentenceEmbedder(family, model, adapter).eval(), weights, tokenizer,
                                       tmp / MODEL_FILE, opset=opset)
            low_memory_record = {"enabled": True, "weights": weights.describe(), "streamed_tensors": streamed,
                                 "how": "graph traced on the meta device, weights written one tensor at a time"}
            del model, weights
        else:
            embedder = SentenceEmbedder(family, model, adapter).eval()
            del model
            family.export_onnx(embedder, tokenizer, tmp / MODEL_FILE, opset=opset, external_data=external)
            low_memory_record = {"enabled": False}
        release_rewriter_graphs()  # else onnxscript's rule sets keep the exported graph and the torch weights
        gc.collect()  # the exporter's graph holds cycles: free it before the probes run
        _check_dynamic(tmp / MODEL_FILE, adapter.input_names)
        export_s = time.perf_counter() - t0
        log.info("exported %s (%.0fM params) in %.1f s%s", source.name, n_params / 1e6, export_s,
                 " with external data" if external else "")
        t0 = time.perf_counter()
        if low_memory:  # the torch model exists only now, filled one tensor at a time
            release_memory()
            embedder = SentenceEmbedder(family, family.load_torch(source, adapter, low_memory=True), adapter).eval()
        probes = torch_probes(embedder, tokenizer, input_names=list(adapter.input_names),
                              query_prefix=source.query_prefix, passage_prefix=source.passage_prefix,
                              max_length=adapter.max_length)
        # the ONNX session must not sit next to the torch model: together they are 2x FP32 in memory
        del embedder
        release_memory()
        validation = check_onnx(tmp / MODEL_FILE, probes, gate, low_memory=low_memory)
        validation["seconds"] = round(time.perf_counter() - t0, 2)
        save_tokenizer(tokenizer, tmp)
        fmt = {"pooling": adapter.pooling.mode, "final_norm": adapter.final_norm}
        meta = {
            "stage": "reference-export",
            "target": None,
            "precision": "fp32",
            "model": source.to_dict(),
            "architecture": config.get("model_type"),
            "adapter": adapter.to_dict(),
            "parameters": n_params,
            "model_file": MODEL_FILE,
            "external_data": external,
            "exporter": "torch.onnx.export(dynamo=True)",
            "opset": opset,
            "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in adapter.input_names],
            "outputs": [_output_entry(name, adapter.hidden_size, fmt) for name in adapter.outputs],
            "max_length": adapter.max_length,
            "prefixes": {"query": source.query_prefix, "passage": source.passage_prefix},
            "versions": library_versions(),
            "export_seconds": round(export_s, 2),
            "low_memory": low_memory_record,
            "peak_rss_bytes": peak_rss_bytes(),
            "validation": validation,
        }
        meta["files"] = file_inventory(tmp)
        write_meta(tmp, meta)
    return ExportResult(Path(out), meta)


def _output_entry(name: str, hidden: int, fmt: dict) -> dict:
    shape = ["batch", "sequence", hidden] if name == "last_hidden_state" else ["batch", hidden]
    return {"name": name, "dtype": "float32", "shape": shape, "meaning": _OUTPUT_MEANING[name].format(**fmt)}


def dynamo_export(embedder, tokenizer, path: Path, *, opset: int, external_data: bool) -> None:
    """torch.onnx.export(dynamo=True) with dynamic batch and sequence axes."""
    with export_errors(path, "torch.onnx export", "check the model loads in transformers with "
                                                  "attn_implementation='eager'"):
        trace_program(embedder, tokenizer, opset=opset).save(str(path), external_data=external_data)


def trace_program(embedder, tokenizer, *, opset: int, on_meta: bool = False):
    """The ``ONNXProgram`` of ``embedder`` (dynamo, dynamic batch and sequence axes).
    ``on_meta``: the sample inputs on the meta device (the model's parameters are
    there too) and no optimization yet: the caller attaches the weights first."""
    import torch

    # Batch >= 2 and seq >= 2 so the exporter does not specialize those axes to constants.
    names = list(embedder.adapter.input_names)
    sample = tokenizer(["embedc export sample text", "a second, longer sample text for the trace"],
                       padding=True, return_tensors="pt")
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            embedder, tuple(sample[n].to("meta") if on_meta else sample[n] for n in names), dynamo=True,
            opset_version=opset, input_names=names, output_names=list(embedder.adapter.outputs),
            dynamic_shapes={n: axes for n in names}, optimize=not on_meta, verbose=False)


@contextlib.contextmanager
def export_errors(path: Path, what: str, hint: str):
    """A full disk as its own one-line error; any other exporter failure as ``ExportError``."""
    try:
        yield
    except ExportError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError):
            from ..fsutil import raise_if_disk_full

            raise_if_disk_full(exc, Path(path).parent)
        raise ExportError(f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", hint) from exc


def _check_dynamic(path: Path, input_names) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    got = [i.name for i in graph.input]
    if got != list(input_names):
        raise ExportError(f"exported inputs are {got}, expected {list(input_names)}", "report this model")
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != 2 or any(d.HasField("dim_value") for d in dims):
            raise ExportError(f"exported input {inp.name} has fixed shape {[d.dim_value for d in dims]}",
                              "the exporter specialized a dynamic axis; report this model")
