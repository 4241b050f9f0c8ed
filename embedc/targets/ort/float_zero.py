"""4-bit ``MatMulNBits`` with float zero points (the ORT int4 option ``zero_points="float"``):
the min/max grid of :mod:`embedc.int4.grid` (GGUF Q4_1's). ORT's ``MatMulNBitsQuantizer``
writes only integer (uint4) zero points: measured on SmolLM2-135M (Q4_1 GGUF weights), 0.853
mean cosine with them, 0.997 with these (benchmarks/int4_recipes.md).

``MatMulNBits`` takes fp32 zero points, dequantizing ``(code - zero) * scale``, but ORT 1.32's
CPU kernel then takes a slower path (on SmolLM2 the form below ran 1.23x faster at batch 1 on an
AVX2 CPU, benchmarks/int4_zero_points.py). Since ``(code - zero) * scale = (code - 8) * scale + (8 - zero)
* scale``, each Linear is written as the same function in the fast form: the symmetric kernel
(implicit zero point 8) plus a per-block correction,

    y = MatMulNBits(x, codes, scales) + (x @ S) @ C,

S [K, blocks] summing each block of 32 inputs (0/1, one per K, shared) and C [blocks, N] holding
``(8 - zero) * scale``. The kernel's activations stay fp32 (accuracy_level 1), as they were
with fp32 zero points, so the embeddings are those of the zero-point form to float rounding.

Cost: C beside the scale, 6 bits per weight at block 32 (5 with no zero points, 5.125 with
uint4 ones), plus S (0.3 MB on SmolLM2).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...int4.grid import SCHEME, grid_record, minmax_codes
from ...onnxkit.graph import MS_DOMAIN, ensure_opset, initializer_map, remove_unused_initializer
from .half_scales import folded_initializers

FP32_ACTIVATIONS = 1  # MatMulNBits accuracy_level: fp32 activations, as with fp32 zero points
FORM = "MatMulNBits(x, codes, scales) + (x @ block_sums) @ offsets, offsets = (8 - zero point) * scale"


def _packed(codes: np.ndarray) -> np.ndarray:
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # element 2i in the low nibble


def _block_sums(k: int, block: int) -> np.ndarray:
    s = np.zeros((k, -(-k // block)), np.float32)
    s[np.arange(k), np.arange(k) // block] = 1
    return s


def _grid_tensors(w_kn: np.ndarray, block: int, base: str):
    """(zero points, scales, relative error, [packed codes, scales] initializers) of ``w_kn`` on the grid."""
    codes, scale, zero, err = minmax_codes(w_kn, block)
    return zero, scale, err, [numpy_helper.from_array(_packed(codes), f"{base}_Q4"),
                              numpy_helper.from_array(scale.reshape(-1), f"{base}_scales")]


def matmulnbits(node: onnx.NodeProto, w_kn: np.ndarray, block: int,
                shared: dict[int, str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], float]:
    """(the nodes, their new initializers, the weight's relative error) that compute the MatMul
    ``node`` with its weight on the min/max grid, in the block-sum form above. ``shared`` maps K
    to the name of the block-sum matrix already written (one is added when K is new)."""
    k, n = w_kn.shape
    base, x, y = node.input[1], node.input[0], node.output[0]
    zero, scale, err, tensors = _grid_tensors(w_kn, block, base)
    tensors.append(numpy_helper.from_array(((8 - zero) * scale).T.astype(np.float32), f"{base}_offsets"))
    if k not in shared:
        shared[k] = f"block_sums_{k}_{block}"
        tensors.append(numpy_helper.from_array(_block_sums(k, block), shared[k]))
    nodes = [helper.make_node("MatMulNBits", [x, tensors[0].name, tensors[1].name], [y + "_sym"],
                              name=node.name + "_Q4", domain=MS_DOMAIN, K=int(k), N=int(n), bits=4,
                              block_size=block, accuracy_level=FP32_ACTIVATIONS),
             helper.make_node("MatMul", [x, shared[k]], [y + "_bsum"], name=node.name + "_bsum"),
             helper.make_node("MatMul", [y + "_bsum", tensors[2].name], [y + "_offset"], name=node.name + "_offset"),
             helper.make_node("Add", [y + "_sym", y + "_offset"], [y], name=node.name + "_add")]
    for new in nodes:
        new.metadata_props.extend(node.metadata_props)  # the module path, for reports
    return nodes, tensors, err


def zero_point_nodes(node: onnx.NodeProto, w_kn: np.ndarray, block: int, shared: dict[int, str], *,
                     accuracy_level: int = 4) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], float]:
    """The same weights as one ``MatMulNBits`` with fp32 zero points (the slower kernel; kept for
    benchmarks/int4_zero_points.py and to test the block-sum form against it). ``shared`` is unused:
    the signature is :func:`matmulnbits`'s, so :func:`quantize_float_zero` writes either form."""
    k, n = w_kn.shape
    zero, _, err, tensors = _grid_tensors(w_kn, block, node.input[1])
    tensors.append(numpy_helper.from_array(zero.reshape(-1), f"{node.input[1]}_zero_points"))
    new = helper.make_node("MatMulNBits", [node.input[0]] + [t.name for t in tensors], list(node.output),
                           name=node.name + "_Q4", domain=MS_DOMAIN, K=int(k), N=int(n), bits=4,
                           block_size=block, accuracy_level=accuracy_level)
    new.metadata_props.extend(node.metadata_props)
    return [new], tensors, err


def quantize_float_zero(model: onnx.ModelProto, names: Sequence[str], block: int, *, write=matmulnbits) -> dict:
    """The MatMuls ``names`` on the 4-bit min/max grid, in place, each written by ``write`` (the
    block-sum form; :func:`zero_point_nodes` for the one-node form); returns how many weights were
    already on the grid (the source was a Q4_1-style 4-bit model)."""
    inits = initializer_map(model)
    wanted, shared = set(names), {}
    errors = {}
    for node in [n for n in model.graph.node if n.op_type == "MatMul" and n.name in wanted]:
        nodes, tensors, errors[node.name] = write(node, numpy_helper.to_array(inits[node.input[1]]), block, shared)
        pos = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for i, new in enumerate(nodes):
            model.graph.node.insert(pos + i, new)
        model.graph.initializer.extend(tensors)
        remove_unused_initializer(model, node.input[1])
    ensure_opset(model, MS_DOMAIN, 1)
    return grid_record(errors)


def recipe_settings() -> dict:
    """What a float-zero-point recipe records beside its other settings (both ORT int4 paths)."""
    return {"scheme": SCHEME, "form": FORM,
            "linears_accuracy_level": FP32_ACTIVATIONS}  # accuracy_level then applies to 8-bit exclusions only


def zero_point_kind(options: dict) -> str:
    """What the recipe records as its zero points (HQQ's are fp32 by construction)."""
    if options["zero_points"] == "float" or options.get("algorithm") == "hqq":
        return "float"
    return "none (symmetric)" if options["is_symmetric"] else "uint4"


def dequantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """MatMul name -> the [K, N] weight each 4- or 8-bit ``MatMulNBits`` of ``model`` computes with,
    by ORT's formula ``(code - zero point) * scale`` (zero point 8 or 128 when absent, packed codes
    or float when given), plus the block-sum form's offsets, scales and offsets stored fp16
    included: to compare a written artifact with the weights it came from."""
    inits, out = folded_initializers(model), {}
    offsets = {n.name.removesuffix("_offset"): numpy_helper.to_array(inits[n.input[1]])
               for n in model.graph.node if n.op_type == "MatMul" and n.name.endswith("_offset")
               and n.input[1] in inits}
    for n in (n for n in model.graph.node if n.op_type == "MatMulNBits"):
        a = {x.name: x.i for x in n.attribute}
        bits = a["bits"]
        if bits not in (4, 8):
            continue
        k, cols, bs = a["K"], a["N"], a["block_size"]
        name = n.name.removesuffix(f"_Q{bits}")

        def unpacked(u: np.ndarray) -> np.ndarray:  # 4 bits: two codes a byte, the low nibble first
            return np.stack([u & 15, u >> 4], -1) if bits == 4 else u

        codes = unpacked(numpy_helper.to_array(inits[n.input[1]])).reshape(cols, -1, bs).astype(np.float32)
        scale = numpy_helper.to_array(inits[n.input[2]]).astype(np.float32).reshape(cols, -1)
        zero = np.full(scale.shape, 2.0 ** (bits - 1), np.float32)
        if len(n.input) > 3 and n.input[3]:
            z = numpy_helper.to_array(inits[n.input[3]])
            zero = (z.astype(np.float32).reshape(cols, -1) if z.dtype != np.uint8 else
                    unpacked(z).reshape(cols, -1)[:, :codes.shape[1]].astype(np.float32))
        w = (codes - zero[..., None]) * scale[..., None]
        if name in offsets:  # the block-sum form: each block's weights shifted by its offset
            w = w + offsets[name].T[..., None]
        out[name] = w.reshape(cols, -1)[:, :k].T
    return out
