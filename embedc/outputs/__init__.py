"""Compressed output embeddings (int8, binary, ubinary, Matryoshka dims) as
extra outputs of an artifact's own graph, with their parity.

- ``spec``: the ``[outputs]`` table / ``--output`` / ``--dims`` and the head plan
- ``formulas``: the NumPy reference formulas (what every graph head must equal)
- ``onnx_heads`` / ``openvino_heads``: append the heads to an ONNX graph / OpenVINO IR
- ``calibrate``: per-dimension int8 ranges from the FP32 export on the calibration split
- ``parity``: dequantized cosine, Hamming / compressed retrieval, rescoring, per language
- ``record``: what the artifact JSON, manifest and report say about them
"""
from .spec import FORMATS, INT8_SCHEMES, Head, OutputsSpec, plan_heads

__all__ = ["FORMATS", "INT8_SCHEMES", "Head", "OutputsSpec", "plan_heads"]
