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

from ...onnxkit.casts import drop_fp16_roundtrips, norm_nodes
from ...onnxkit.graph import ancestors

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
