"""FP32 kept inside FP16 graphs: ORT's ``convert_float_to_float16`` casts every blocked
node's float inputs and outputs separately, so two blocked nodes in a row still pass their
tensor through FP16 (FP32 -> Cast(FP16) -> Cast(FP32) -> FP32). In an RMSNorm that round trip
overflows (a decoder's residual stream reaches ~25,000, ``mean(x^2)`` ~ 1e6), in a pooling tail
it rounds. Shared by the ORT and TensorRT fp16 recipes.
"""
from __future__ import annotations

from .graph import producers
from .norms import rmsnorm_groups


def norm_nodes(model) -> set[str]:
    """Every node of every RMSNorm pattern: kept FP32 whole in FP16 graphs (x^2 overflows
    FP16 above 256; the Add/Reciprocal/Mul around it stay FP32 with it)."""
    return {n for grp in rmsnorm_groups(model) for n in grp.nodes}


def _cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def drop_fp16_roundtrips(model, block_ops: set[str], block_nodes: set[str]):
    """Remove FP32 -> FP16 -> FP32 Cast pairs between two FP32-kept nodes.

    The converter types every float tensor FP16, so an edge between two kept
    nodes (inside the pooling / L2-norm tail, or a kept node feeding a graph
    output) becomes Cast(fp16) + Cast(fp32): the tail would round to FP16
    after all. Consumers are rewired to the FP32 tensor; a Cast that names a
    graph output stays as an FP32->FP32 no-op so the output keeps its name.
    """
    from onnx import TensorProto

    g = model.graph
    prod = producers(g)
    outputs = {o.name for o in g.output}

    def fp32_source(node) -> str | None:
        """The FP32 tensor behind ``Cast(to=float)(Cast(to=float16)(x))``, if x is a kept node's output."""
        if _cast_to(node) != TensorProto.FLOAT:
            return None
        c16 = prod.get(node.input[0])
        if c16 is None or _cast_to(c16) != TensorProto.FLOAT16:
            return None
        src = prod.get(c16.input[0])
        if src is not None and (src.op_type in block_ops or src.name in block_nodes):
            return c16.input[0]
        return None

    rename = {}
    for node in g.node:
        src = fp32_source(node)
        if src is None:
            continue
        if node.output[0] in outputs:
            node.input[0] = src
        else:
            rename[node.output[0]] = src
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    _remove_dead(g)
    return model


def _remove_dead(g) -> None:
    """Drop nodes whose outputs nothing reads (repeat until stable)."""
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            return
        keep = [n for n in g.node if any(o in used for o in n.output)]
        del g.node[:]
        g.node.extend(keep)
