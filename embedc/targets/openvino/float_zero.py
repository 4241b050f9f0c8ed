"""OpenVINO int4 with fp32 zero points (the int4 option ``zero_points="float"``): each Linear's
weight rounded per group of ``group_size`` input channels on the group's own [min, max], GGUF
Q4_1's grid (:mod:`embedc.int4.grid`, shared with the ORT writer).

NNCF's ``int4_asym`` stores u4 zero points, which cannot place a group's minimum. This writes
the decompression subgraph NNCF writes, with fp32 zero point and scale constants:
``Constant(u4 [N, G, g]) -> Convert(f32) -> Subtract(zero [N, G, 1]) -> Multiply(scale [N, G, 1])
-> Reshape [N, K] -> MatMul(transpose_b)``. The CPU plugin fuses it into its compressed-weight
FullyConnected (runtime precision u4, checked on OpenVINO 2026.4); with f32 constants the
weights come back exactly (f16 ones would round the zero points). What is left (the
word-embedding table, the ``exclude``d Linears) goes through ``nncf.compress_weights``
``INT8_ASYM``, as NNCF's int4 backup mode does.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ...errors import CompileError
from ...int4.grid import grid_record, minmax_codes


def _constant_weight(matmul):
    """The f32 Constant (possibly behind a Convert) that is ``matmul``'s weight, or None."""
    node = matmul.input_value(1).get_node()
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant" or len(node.get_output_partial_shape(0)) != 2:
        return None
    return node


def linear_matmuls(model) -> list:
    """The MatMuls whose second input is a 2-D constant weight (the model's Linears)."""
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul" and _constant_weight(op) is not None]


def compress_float_zero(model, group: int, skip: Iterable[str] = ()) -> tuple[list[str], dict]:
    """Rewrite every Linear MatMul of ``model`` not named in ``skip`` in place; returns
    (the new MatMuls' friendly names, the grid record)."""
    import openvino as ov
    import openvino.opset13 as ops

    skip = set(skip)
    names, errors = [], {}
    for mm in linear_matmuls(model):
        name = mm.get_friendly_name()
        if name in skip:
            continue
        weight = _constant_weight(mm).get_data().astype(np.float32)
        transpose_b = bool(mm.get_attributes().get("transpose_b"))
        w_kn = weight.T if transpose_b else weight  # [K, N]
        k, n = w_kn.shape
        if k % group:
            raise CompileError(f"group_size={group} does not divide the input width {k} of {name}",
                               "pass an int4.group_size that divides every Linear's input width (e.g. 32)")
        codes, scale, zero, errors[name] = minmax_codes(w_kn, group)
        w = ops.convert(ops.constant(codes, dtype=ov.Type.u4), ov.Type.f32)
        w = ops.multiply(ops.subtract(w, ops.constant(zero[..., None])), ops.constant(scale[..., None]))
        w = ops.reshape(w, ops.constant(np.array([n, k], np.int64)), special_zero=False)
        new = ops.matmul(mm.input_value(0), w, bool(mm.get_attributes().get("transpose_a")), True)
        new.set_friendly_name(name)
        mm.output(0).replace(new.output(0))
        names.append(name)
    return names, grid_record(errors)
