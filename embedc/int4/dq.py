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


def table_int8(model) -> dict | None:
    """The word-embedding table as int8 [V, H] + one float32 scale per row (symmetric), in place."""
    from onnx import helper, numpy_helper

    from ..onnxkit.graph import initializer_map, remove_unused_initializer, word_embedding_gather
    from ..onnxkit.metrics import row_cosines

    node = word_embedding_gather(model)
    if node is None:
        return None
    name = node.input[0]
    table = numpy_helper.to_array(initializer_map(model)[name]).astype(np.float32)
    scale = np.abs(table).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
    model.graph.initializer.extend([numpy_helper.from_array(q, name + "_i8"),
                                    numpy_helper.from_array(scale.astype(np.float32), name + "_i8_scale")])
    dq = helper.make_node("DequantizeLinear", [name + "_i8", name + "_i8_scale"], [name + "_dq"],
                          name=node.name + "_dq_int8", axis=0)
    nodes = list(model.graph.node)
    pos = nodes.index(node)
    node.input[0] = name + "_dq"
    model.graph.node.insert(pos, dq)
    remove_unused_initializer(model, name)
    cos = row_cosines(table, q.astype(np.float32) * scale[:, None])
    return {"node": node.name, "bits": 8, "scheme": "symmetric int8, one float32 scale per row",
            "rows": int(table.shape[0]), "width": int(table.shape[1]),
            "row_cosine_mean": round(float(cos.mean()), 6), "row_cosine_min": round(float(cos.min()), 6)}


def weights_int8(model, names) -> list[str]:
    """The named MatMuls' weights [K, N] as int8 + one float32 scale per output channel
    (symmetric, ``DequantizeLinear(axis=1)``), in place: OpenVINO's 8-bit compressed weights
    for the Linears a torch int4 recipe kept out of 4 bits."""
    from onnx import helper, numpy_helper

    from ..onnxkit.graph import initializer_map, remove_unused_initializer

    inits = initializer_map(model)
    wanted = set(names)
    done = []
    for node in list(model.graph.node):
        if node.op_type != "MatMul" or node.name not in wanted:
            continue
        name = node.input[1]
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        scale = np.abs(w).max(axis=0) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        model.graph.initializer.extend([numpy_helper.from_array(q, name + "_i8"),
                                        numpy_helper.from_array(scale.astype(np.float32), name + "_i8_scale")])
        model.graph.node.insert(list(model.graph.node).index(node), helper.make_node(
            "DequantizeLinear", [name + "_i8", name + "_i8_scale"], [name + "_dq"], name=node.name + "_dq_int8", axis=1))
        node.input[1] = name + "_dq"
        remove_unused_initializer(model, name)
        done.append(node.name)
    return done
