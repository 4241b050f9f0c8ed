"""4-bit ``MatMulNBits`` with float zero points (the ORT int4 option ``zero_points="float"``):
the min/max grid of :mod:`embedc.int4.grid` (GGUF Q4_1's), written as ``MatMulNBits(A, B, scales,
zero_points)`` with fp32 zero points, which ORT dequantizes as ``(code - zero) * scale``. ORT's
``MatMulNBitsQuantizer`` writes only integer (uint4) zero points: measured on SmolLM2-135M (Q4_1
GGUF weights), 0.853 mean cosine with them, 0.997 with these (benchmarks/int4_recipes.md).

Cost: one fp32 zero point per block beside the scale, 6 bits per weight at block 32 (5 with no
zero points, 5.125 with uint4 ones).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...int4.grid import grid_record, minmax_codes
from ...onnxkit.graph import MS_DOMAIN, ensure_opset, initializer_map, remove_unused_initializer


def matmulnbits(node: onnx.NodeProto, w_kn: np.ndarray, block: int,
                accuracy_level: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto], float]:
    """(the MatMulNBits node, its initializers, the weight's relative error) for the MatMul ``node``."""
    k, n = w_kn.shape
    codes, scale, zero, err = minmax_codes(w_kn, block)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # element 2i in the low nibble
    base = node.input[1]
    tensors = [numpy_helper.from_array(packed, f"{base}_Q4"),
               numpy_helper.from_array(scale.reshape(-1), f"{base}_scales"),
               numpy_helper.from_array(zero.reshape(-1), f"{base}_zero_points")]
    new = helper.make_node("MatMulNBits", [node.input[0]] + [t.name for t in tensors], list(node.output),
                           name=node.name + "_Q4", domain=MS_DOMAIN, K=int(k), N=int(n), bits=4,
                           block_size=block, accuracy_level=accuracy_level)
    new.metadata_props.extend(node.metadata_props)
    return new, tensors, err


def quantize_float_zero(model: onnx.ModelProto, names: Sequence[str], block: int, accuracy_level: int) -> dict:
    """The MatMuls ``names`` as 4-bit ``MatMulNBits`` with float zero points, in place; returns how
    many weights were already on the grid (the source was a Q4_1-style 4-bit model)."""
    inits = initializer_map(model)
    wanted = set(names)
    errors = {}
    for node in [n for n in model.graph.node if n.op_type == "MatMul" and n.name in wanted]:
        new, tensors, errors[node.name] = matmulnbits(node, numpy_helper.to_array(inits[node.input[1]]), block,
                                                      accuracy_level)
        pos = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(pos, new)
        model.graph.initializer.extend(tensors)
        remove_unused_initializer(model, node.input[1])
    ensure_opset(model, MS_DOMAIN, 1)
    return grid_record(errors)


def zero_point_kind(options: dict) -> str:
    """What the recipe records as its zero points (HQQ's are fp32 by construction)."""
    if options["zero_points"] == "float" or options.get("algorithm") == "hqq":
        return "float"
    return "none (symmetric)" if options["is_symmetric"] else "uint4"


def dequantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """MatMul name -> the [K, N] weight each 4-bit ``MatMulNBits`` of ``model`` dequantizes to, by
    ORT's formula ``(code - zero point) * scale`` (zero point 8 when absent, packed uint4 or float
    when given): to compare a written artifact with the weights it came from."""
    inits, out = initializer_map(model), {}
    for n in (n for n in model.graph.node if n.op_type == "MatMulNBits"):
        a = {x.name: x.i for x in n.attribute}
        if a["bits"] != 4:
            continue
        k, cols, bs = a["K"], a["N"], a["block_size"]
        packed = numpy_helper.to_array(inits[n.input[1]])
        codes = np.stack([packed & 15, packed >> 4], -1).reshape(cols, -1, bs).astype(np.float32)
        scale = numpy_helper.to_array(inits[n.input[2]]).astype(np.float32).reshape(cols, -1)
        zero = np.full(scale.shape, 8.0, np.float32)
        if len(n.input) > 3 and n.input[3]:
            z = numpy_helper.to_array(inits[n.input[3]])
            zero = (z.astype(np.float32).reshape(cols, -1) if z.dtype != np.uint8 else
                    np.stack([z & 15, z >> 4], -1).reshape(cols, -1)[:, :codes.shape[1]].astype(np.float32))
        out[n.name.removesuffix("_Q4")] = ((codes - zero[..., None]) * scale[..., None]).reshape(cols, -1)[:, :k].T
    return out

