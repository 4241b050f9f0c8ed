"""Torch-computed int4 codes as standard ONNX: each Linear's weight an int4
initializer behind ``DequantizeLinear(axis=0, block_size)`` (opset 21),
scales [K/block, N] (the layout TensorRT and OpenVINO's ONNX frontend read),
and, for OpenVINO, the word-embedding table as int8 behind a per-row
``DequantizeLinear`` and the Linears kept out of 4 bits as int8 behind a
per-output-channel one."""
from __future__ import annotations

import numpy as np

DQ_OPSET = 21  # blockwise int4 DequantizeLinear


def apply_codes(model, matched: dict[str, dict], block: int):
    """A copy of ``model`` (already at opset >= 21) with the matched MatMuls reading int4 weights."""
    from ..targets.tensorrt.int4 import apply_int4

    return apply_int4(model, {n: (d["q"], d["scale"].astype(np.float32)) for n, d in matched.items()}, block)


def _int8_behind_dq(model, node, index: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Input ``index`` of ``node`` (a 2-D float initializer) as int8 + one float32 scale per slice
    along ``axis`` (symmetric), read through a ``DequantizeLinear(axis)`` inserted before ``node``,
    in place. Returns (the float weights, what the DequantizeLinear gives back)."""
    from onnx import helper, numpy_helper

    from ..onnxkit.graph import initializer_map, remove_unused_initializer

    name = node.input[index]
    w = numpy_helper.to_array(initializer_map(model)[name]).astype(np.float32)
    scale = np.abs(w).max(axis=1 - axis) / 127.0
    scale[scale == 0] = 1.0
    shaped = np.expand_dims(scale, 1 - axis)
    q = np.clip(np.rint(w / shaped), -127, 127).astype(np.int8)
    model.graph.initializer.extend([numpy_helper.from_array(q, name + "_i8"),
                                    numpy_helper.from_array(scale.astype(np.float32), name + "_i8_scale")])
    model.graph.node.insert(list(model.graph.node).index(node), helper.make_node(
        "DequantizeLinear", [name + "_i8", name + "_i8_scale"], [name + "_dq"], name=node.name + "_dq_int8", axis=axis))
    node.input[index] = name + "_dq"
    remove_unused_initializer(model, name)
    return w, q.astype(np.float32) * shaped


def table_int8(model) -> dict | None:
    """The word-embedding table as int8 [V, H] + one float32 scale per row (symmetric), in place."""
    from ..onnxkit.graph import word_embedding_gather
    from ..onnxkit.metrics import row_cosines

    node = word_embedding_gather(model)
    if node is None:
        return None
    table, deq = _int8_behind_dq(model, node, 0, axis=0)
    cos = row_cosines(table, deq)
    return {"node": node.name, "bits": 8, "scheme": "symmetric int8, one float32 scale per row",
            "rows": int(table.shape[0]), "width": int(table.shape[1]),
            "row_cosine_mean": round(float(cos.mean()), 6), "row_cosine_min": round(float(cos.min()), 6)}


def weights_int8(model, names) -> list[str]:
    """The named MatMuls' weights [K, N] as int8 + one float32 scale per output channel
    (symmetric, ``DequantizeLinear(axis=1)``), in place: OpenVINO's 8-bit compressed weights
    for the Linears a torch int4 recipe kept out of 4 bits."""
    wanted = set(names)
    done = []
    for node in list(model.graph.node):
        if node.op_type == "MatMul" and node.name in wanted:
            _int8_behind_dq(model, node, 1, axis=1)
            done.append(node.name)
    return done
