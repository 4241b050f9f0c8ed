"""TensorRT backend: strongly typed TensorRT-ready ONNX, build files and the engine step."""
from .backend import BACKEND, TARGETS

__all__ = ["BACKEND", "TARGETS"]
