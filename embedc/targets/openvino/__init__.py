"""OpenVINO backend: IR from the reference ONNX, NNCF quantization, NPU buckets."""
from .backend import BACKEND, TARGETS

__all__ = ["BACKEND", "TARGETS"]
