"""TensorRT backend: strongly typed TensorRT-ready ONNX, build files and the engine step."""
from ..registry import register_backend
from .backend import BACKEND, TARGETS

register_backend(BACKEND)

__all__ = ["BACKEND", "TARGETS"]
