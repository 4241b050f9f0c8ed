"""ONNX Runtime backend: CPU targets, fp32/fp16/int8/int4 recipes."""
from .backend import BACKEND, PRECISIONS, TARGETS, resolve_options

__all__ = ["BACKEND", "PRECISIONS", "TARGETS", "resolve_options"]
