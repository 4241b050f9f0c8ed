"""fp16 storage for the int4 artifact's Linear scales (the ORT int4 option ``linear_scales="fp16"``).

``MatMulNBits`` takes its scales in the activations' type, fp32 here. Each node's scales, the
4-bit Linears' and the 8-bit ones kept out of 4 bits (``exclude``), and in the block-sum form of
:mod:`.float_zero` the offsets, are stored as fp16 and cast back
by a ``Cast`` on the initializer, which ORT's constant folding evaluates once when the session is
created: the file holds half the bytes, the kernel gets an fp32 input as before. Measured on
SmolLM2-135M int4 (block-sum form, AVX2 CPU): 97.16 -> 83.93 MB, the embeddings equal to 2.7e-6,
the same batch-32 throughput (benchmarks/int4_recipes.md). With ORT's graph optimizations off the
Casts run on every call instead, with the same outputs (checked).

fp16 rounds a scale by at most 2**-11 of itself, so a weight ``(code - zero) * scale`` moves by at
most 15 * 2**-11 of a 4-bit step (127 * 2**-11 = 0.06 of an 8-bit step, against the 0.5 step of
the 8-bit rounding itself); an offset (``8 * scale + minimum``) moves by at most 2**-11 of
itself, which on SmolLM2's Q4_1 weights was 0 for all but 2 of 3.3 million blocks (0.003 of a step
for those). A scale moved by more than 2**-10 of itself or an offset by more than 2**-7 of its
block's step (outside fp16's normal range) is refused, not rounded away.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import CompileError
from ...onnxkit.graph import initializer_map

SCALE_TOLERANCE = 2.0 ** -10  # of the scale itself
OFFSET_TOLERANCE = 2.0 ** -7  # of the block's scale (one 4-bit step)
HINT = "pass --option int4.linear_scales=fp32"


def fp16_or_refuse(values: np.ndarray, limit: np.ndarray, message: str, hint: str) -> np.ndarray:
    """``values`` as fp16, or CompileError(message, hint) if one overflows or moves by more than ``limit``."""
    with np.errstate(over="ignore"):  # an overflow is refused below, not warned about
        half = values.astype(np.float16)
    moved = np.abs(half.astype(np.float32) - values)
    if not np.isfinite(half).all() or (moved > limit).any():
        raise CompileError(message, hint)
    return half


def _half(values: np.ndarray, limit: np.ndarray, what: str) -> np.ndarray:
    return fp16_or_refuse(values, limit, f"{what} does not fit fp16 (linear_scales=fp16)", HINT)


def _store_half(graph: onnx.GraphProto, consumer: onnx.NodeProto, tensor: onnx.TensorProto,
                half: np.ndarray) -> None:
    """``tensor`` (an input of ``consumer``) replaced by its fp16 values and a Cast to fp32 under
    its old name, inserted just before the consumer."""
    name = tensor.name
    tensor.CopyFrom(numpy_helper.from_array(half, name + "_fp16"))
    cast = helper.make_node("Cast", [name + "_fp16"], [name], to=onnx.TensorProto.FLOAT, name=name + "_to_fp32")
    graph.node.insert(list(graph.node).index(consumer), cast)


def fp16_linear_scales(model: onnx.ModelProto) -> dict:
    """Every 4- and 8-bit ``MatMulNBits``'s scales, and the block-sum offsets beside them, stored as
    fp16, in place (see the module docstring); returns what the recipe records."""
    graph, inits = model.graph, initializer_map(model)
    offsets = {n.name.removesuffix("_offset"): n for n in graph.node
               if n.op_type == "MatMul" and n.name.endswith("_offset") and n.input[1] in inits}
    count, saved = {4: 0, 8: 0}, 0
    for node in [n for n in graph.node if n.op_type == "MatMulNBits"]:
        attrs = {a.name: a.i for a in node.attribute}
        scales = inits.get(node.input[2])
        if attrs["bits"] not in count or scales is None or scales.data_type != onnx.TensorProto.FLOAT:
            continue
        full = numpy_helper.to_array(scales)
        _store_half(graph, node, scales, _half(full, SCALE_TOLERANCE * np.abs(full), f"{node.name}'s scales"))
        count[attrs["bits"]] += 1
        saved += 2 * full.size
        offset_node = offsets.get(node.name.removesuffix("_Q4"))
        if offset_node is not None:  # offsets [blocks, N]; the scales are [N * blocks]
            off = inits[offset_node.input[1]]
            values = numpy_helper.to_array(off)
            step = full.reshape(attrs["N"], -1).T
            _store_half(graph, offset_node, off,
                        _half(values, OFFSET_TOLERANCE * np.abs(step), f"{offset_node.name}'s offsets"))
            saved += 2 * values.size
    return {"dtype": "fp16", "nodes": count[4] + count[8], "nodes_8bit": count[8], "bytes_saved": saved,
            "how": "stored fp16, a Cast to fp32 on each (ORT folds it when the session is created)",
            "tolerance": "a scale within 2**-10 of itself, an offset within 2**-7 of its block's scale, else refused"}


def folded_initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Name -> initializer, also under the output name of a Cast to fp32 on an initializer (the
    fp16-stored scales above), for readers of a written artifact's weights."""
    inits = initializer_map(model)
    out = dict(inits)
    for n in model.graph.node:
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        if n.op_type == "Cast" and n.input[0] in inits and to == onnx.TensorProto.FLOAT:
            out[n.output[0]] = numpy_helper.from_array(
                numpy_helper.to_array(inits[n.input[0]]).astype(np.float32), n.output[0])
    return out
