"""torch -> ONNX export of the FP32 reference, validated against PyTorch."""
from .export import MODEL_FILE, ExportResult, dynamo_export, export_reference
from .validate import ValidationGate, validate_onnx
from .wrapper import SentenceEmbedder, mean_pool_normalize, pool, torch_embed

__all__ = ["MODEL_FILE", "ExportResult", "SentenceEmbedder", "ValidationGate", "dynamo_export", "export_reference",
           "mean_pool_normalize", "pool", "torch_embed", "validate_onnx"]
