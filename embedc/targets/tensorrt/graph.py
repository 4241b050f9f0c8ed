"""ONNX graph helpers for the TensorRT backend: readable node names, an opset
upgrade that keeps node metadata, and the FP16 conversion with an FP32 keep-list.

TensorRT 10+ builds strongly typed networks: the precision of every layer is
the dtype of its tensors in the ONNX. So "FP16" means FP16 tensors in the
graph, with explicit Casts around the ops that must stay FP32 (LayerNorm,
Softmax and the pooling / L2-norm tail overflow or lose accuracy in FP16:
TensorRT#2564, #3101). onnx/onnxruntime are imported inside the functions.
"""
from __future__ import annotations

from collections.abc import Iterable

from ...onnxkit.graph import ancestors, producers

SENTENCE_OUTPUT = "sentence_embedding"
TOKEN_OUTPUT = "last_hidden_state"

# Op types kept in FP32 inside FP16 graphs (the checker enforces the same list).
KEEP_FP32_OPS: tuple[str, ...] = (
    "LayerNormalization", "Softmax", "Pow", "ReduceMean", "Sqrt",
    "ReduceSum", "ReduceL2", "ReduceSumSquare",
)


def pooling_tail_nodes(model, final_norm: str = "layernorm") -> set[str]:
    """Nodes between the network's last hidden state and ``sentence_embedding``:
    the pooling and L2 norm (and the mask's own Cast/Unsqueeze feeding them).

    They are every ancestor of ``sentence_embedding`` that is not an ancestor
    of the boundary: ``last_hidden_state`` where the graph has that output
    (every embedc export does), else the output of the model family's final
    norm (``final_norm`` from the adapter: the last LayerNormalization, or the
    last RMSNorm pattern, see :mod:`embedc.onnxkit.norms`).
    """
    from ...onnxkit.norms import final_norm_output

    g = model.graph
    outputs = {o.name for o in g.output}
    if SENTENCE_OUTPUT not in outputs:
        return set()
    hidden = TOKEN_OUTPUT if TOKEN_OUTPUT in outputs else final_norm_output(model, final_norm, SENTENCE_OUTPUT)
    if hidden is None:
        return set()
    return ancestors(g, [SENTENCE_OUTPUT]) - ancestors(g, [hidden])


def norm_nodes(model) -> set[str]:
    """Every node of every RMSNorm pattern: kept FP32 whole in FP16 graphs (x^2 overflows
    FP16 above 256; the Add/Reciprocal/Mul around it stay FP32 with it)."""
    from ...onnxkit.norms import rmsnorm_groups

    return {n for grp in rmsnorm_groups(model) for n in grp.nodes}


def sentence_output_only(model):
    """Drop every graph output but ``sentence_embedding``: an engine copies each
    output out on every call, and [batch, seq, hidden] hidden states are the
    largest tensor there. The artifact declares ``sentence_embedding`` only."""
    keep = [o for o in model.graph.output if o.name == SENTENCE_OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    return model


def to_fp16(model, *, tail: Iterable[str], keep_ops: Iterable[str] = KEEP_FP32_OPS, keep_nodes: Iterable[str] = ()):
    """FP16 weights and activations; ``keep_ops``, the pooling ``tail`` (node names,
    from :func:`pooling_tail_nodes` on the reference), RMSNorm patterns and
    ``keep_nodes`` stay FP32 behind explicit Casts (inserted by onnxruntime's
    converter). Graph inputs/outputs keep their types (int64 in, float32 out).
    Initializers are clipped to the FP16 range by the converter (the attention
    mask's ``finfo(float32).min`` becomes -65504, still a hard mask)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block_ops = set(DEFAULT_OP_BLOCK_LIST) | set(keep_ops)
    present = {n.name for n in model.graph.node}
    block_nodes = (set(tail) & present) | norm_nodes(model) | set(keep_nodes)
    out = convert_float_to_float16(model, keep_io_types=True, op_block_list=sorted(block_ops),
                                   node_block_list=sorted(block_nodes))
    return drop_fp16_roundtrips(out, block_ops, block_nodes)


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
