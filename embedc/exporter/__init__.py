"""torch -> ONNX export of the FP32 reference, validated against PyTorch."""
from .export import INPUT_NAMES, MODEL_FILE, OUTPUT_NAMES, ExportResult, export_reference
from .validate import ValidationGate, validate_onnx
from .wrapper import SentenceEmbedder, mean_pool_normalize, torch_embed

__all__ = ["INPUT_NAMES", "MODEL_FILE", "OUTPUT_NAMES", "ExportResult", "SentenceEmbedder",
           "ValidationGate", "export_reference", "mean_pool_normalize", "torch_embed", "validate_onnx"]
