"""ONNX Runtime backend: CPU targets, fp32/fp16/int8/int4 recipes."""
from ..registry import register_backend
from .backend import BACKEND, PRECISIONS, TARGETS

register_backend(BACKEND)

__all__ = ["BACKEND", "PRECISIONS", "TARGETS"]
