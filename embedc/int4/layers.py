"""Matching computed int4 layers (keyed by torch module path) to the ONNX
export's Linear MatMuls (the dynamo exporter records the module path in each
node's scopes, :mod:`embedc.onnxkit.scopes`), and checking that they are the
same weights."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import CompileError
from .compute import dequantize

# a computed layer whose dequantized weight is further than this from the export's (cosine) is
# not that layer's weight: another model, another export (quantization noise at 4 bits is ~0.99)
MATCH_COSINE = 0.9


def match_layers(model, layers: Mapping[str, Mapping[str, np.ndarray]], group: int,
                 candidates=None) -> dict[str, dict]:
    """ONNX MatMul node name -> {"q": int8 [K, N], "scale": [G, N], "path", "cosine"} for every Linear
    MatMul (``candidates``, default all) whose module path has computed codes; raises on a mismatch."""
    from onnx import numpy_helper

    from ..onnxkit.graph import initializer_map, weight_matmuls
    from ..onnxkit.scopes import module_path

    inits = initializer_map(model)
    out = {}
    for node in candidates if candidates is not None else weight_matmuls(model):
        path = module_path(node)
        if path not in layers:
            continue
        d = layers[path]
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)  # [K, N]
        q, scale = d["q"], d["scale"]
        if q.shape != (w.shape[1], w.shape[0]) or -(-w.shape[0] // group) != scale.shape[1]:
            raise CompileError(f"int4 weights of {path} are {q.shape} (group {group}) but the export's MatMul "
                               f"{node.name} has {w.shape[::-1]}", "rebuild: the cached weights are of another model")
        deq = dequantize(q, scale, group).T
        cos = float((deq * w).sum() / max(np.linalg.norm(deq) * np.linalg.norm(w), 1e-30))
        if cos < MATCH_COSINE:
            raise CompileError(f"int4 weights of {path} do not match the export's weights (cosine {cos:.3f})",
                               "rebuild: the cached weights are of another model or export")
        out[node.name] = {"q": np.ascontiguousarray(q.T), "scale": np.ascontiguousarray(scale.T), "path": path,
                          "cosine": cos}
    if not out:
        raise CompileError("none of the computed int4 layers matches a Linear MatMul of the export",
                           "check that the export records module paths (dynamo exporter)")
    return out
