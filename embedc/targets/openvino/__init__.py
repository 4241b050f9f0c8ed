"""OpenVINO backend: IR from the reference ONNX, NNCF quantization, NPU buckets."""
from ..registry import register_backend
from .backend import BACKEND, TARGETS

register_backend(BACKEND)

__all__ = ["BACKEND", "TARGETS"]
