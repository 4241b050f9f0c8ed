"""ONNX graph helpers for the TensorRT backend: readable node names, an opset
upgrade that keeps node metadata, and the FP16 conversion with an FP32 keep-list.

TensorRT 10+ builds strongly typed networks: the precision of every layer is
the dtype of its tensors in the ONNX. So "FP16" means FP16 tensors in the
graph, with explicit Casts around the ops that must stay FP32 (LayerNorm,
Softmax and the pooling / L2-norm tail overflow or lose accuracy in FP16:
TensorRT#2564, #3101). onnx/onnxruntime are imported inside the functions.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable

SCOPE_KEY = "pkg.torch.onnx.name_scopes"
SENTENCE_OUTPUT = "sentence_embedding"
TOKEN_OUTPUT = "last_hidden_state"

# Op types kept in FP32 inside FP16 graphs (the checker enforces the same list).
KEEP_FP32_OPS: tuple[str, ...] = (
    "LayerNormalization", "Softmax", "Pow", "ReduceMean", "Sqrt",
    "ReduceSum", "ReduceL2", "ReduceSumSquare",
)


def node_scope(node) -> str:
    """The torch module path of a node (``encoder.layer.11.output.dense``), else its name.

    The dynamo exporter stores the scope stack as a Python list literal; the
    deepest entry with a dot is the module path (the last entry is the op's own name).
    """
    raw = next((p.value for p in node.metadata_props if p.key == SCOPE_KEY), None)
    if not raw:
        return node.name
    try:
        stack = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    if not isinstance(stack, list):
        return str(stack)
    dotted = [s for s in stack if isinstance(s, str) and "." in s]
    return dotted[-1] if dotted else (stack[-1] if stack and stack[-1] else node.name)


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model, version: int):
    """``onnx.version_converter`` to ``version``, then restore node metadata
    (the converter drops ``metadata_props``, which carry the module paths)."""
    from onnx import version_converter

    if default_opset(model) >= version:
        return model
    meta = {n.name: list(n.metadata_props) for n in model.graph.node if n.name}
    out = version_converter.convert_version(model, version)
    for n in out.graph.node:
        if n.name in meta and not n.metadata_props:
            n.metadata_props.extend(meta[n.name])
    return out


def producers(graph) -> dict[str, object]:
    return {o: n for n in graph.node for o in n.output}


def _ancestors(graph, tensors: Iterable[str]) -> set[str]:
    """Names of the nodes that (transitively) produce ``tensors``."""
    prod = producers(graph)
    seen: set[str] = set()
    stack = [t for t in tensors if t in prod]
    visited: set[str] = set()
    while stack:
        t = stack.pop()
        if t in visited:
            continue
        visited.add(t)
        node = prod[t]
        seen.add(node.name)
        stack.extend(i for i in node.input if i in prod)
    return seen


def pooling_tail_nodes(model) -> set[str]:
    """Nodes between the encoder output and ``sentence_embedding``: the masked
    mean pool and L2 norm (and the mask's own Cast/Unsqueeze feeding them).

    They are every ancestor of ``sentence_embedding`` that is not an ancestor
    of ``last_hidden_state`` (the last hidden state). Without a
    ``last_hidden_state`` output, the boundary is the last LayerNormalization.
    """
    g = model.graph
    outputs = {o.name for o in g.output}
    if SENTENCE_OUTPUT not in outputs:
        return set()
    if TOKEN_OUTPUT in outputs:
        hidden = TOKEN_OUTPUT
    else:
        lns = [n for n in g.node if n.op_type == "LayerNormalization"]
        if not lns:
            return set()
        hidden = lns[-1].output[0]
    return _ancestors(g, [SENTENCE_OUTPUT]) - _ancestors(g, [hidden])


def sentence_output_only(model):
    """Drop every graph output but ``sentence_embedding``: an engine copies each
    output out on every call, and [batch, seq, hidden] hidden states are the
    largest tensor there. The artifact declares ``sentence_embedding`` only."""
    keep = [o for o in model.graph.output if o.name == SENTENCE_OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    return model


def to_fp16(model, *, keep_ops: Iterable[str] = KEEP_FP32_OPS, keep_nodes: Iterable[str] = ()):
    """FP16 weights and activations; ``keep_ops``, the pooling tail and
    ``keep_nodes`` stay FP32 behind explicit Casts (inserted by onnxruntime's
    converter). Graph inputs/outputs keep their types (int64 in, float32 out).
    Initializers are clipped to the FP16 range by the converter (the attention
    mask's ``finfo(float32).min`` becomes -65504, still a hard mask)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block_ops = set(DEFAULT_OP_BLOCK_LIST) | set(keep_ops)
    block_nodes = pooling_tail_nodes(model) | set(keep_nodes)
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


def const_matmuls(model) -> list:
    """MatMul nodes whose B input is a 2-D float initializer (the Linear layers)."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or len(n.input) < 2:
            continue
        b = inits.get(n.input[1])
        if b is not None and len(b.dims) == 2 and b.data_type == TensorProto.FLOAT:
            out.append(n)
    return out
