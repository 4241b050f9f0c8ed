"""Graph queries and small edits the ONNX recipes share: initializers, the
Linear MatMuls, embedding tables, producers and ancestors, opsets, metadata."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

MS_DOMAIN = "com.microsoft"
# The exporter's per-node debug strings (stack traces with local paths, FX nodes: ~1 MB on
# e5-small); the module-path name scopes are kept.
DEBUG_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy",
                  "namespace")


def initializer_map(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


def producers(graph) -> dict:
    """Tensor name -> the node that writes it."""
    return {o: n for n in graph.node for o in n.output}


def ancestors(graph, tensors: Iterable[str]) -> set[str]:
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


def weight_matmuls(model) -> list:
    """MatMuls whose B input is a 2-D float initializer: the Linear layers (not QK^T or attn x V)."""
    from onnx import TensorProto

    inits = initializer_map(model)
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or len(n.input) < 2:
            continue
        b = inits.get(n.input[1])
        if b is not None and len(b.dims) == 2 and b.data_type == TensorProto.FLOAT:
            out.append(n)
    return out


def table_gathers(model) -> list:
    """Gathers over a 2-D initializer table (word, position, token-type embeddings)."""
    inits = initializer_map(model)
    return [n for n in model.graph.node
            if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2]


def word_embedding_gather(model):
    """The Gather over the largest table: the word embeddings (None if there is none)."""
    inits = initializer_map(model)
    gathers = table_gathers(model)
    return max(gathers, key=lambda n: inits[n.input[0]].dims[0]) if gathers else None


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def ensure_opset(model, domain: str, version: int) -> None:
    from onnx import helper

    for op in model.opset_import:
        if op.domain == domain:
            op.version = max(op.version, version)
            return
    model.opset_import.append(helper.make_opsetid(domain, version))


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


def remove_unused_initializer(model, name: str) -> None:
    if any(name in n.input for n in model.graph.node):
        return
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            del model.graph.initializer[i]
            return


def strip_debug_metadata(model) -> None:
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key not in DEBUG_METADATA]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)


def copy_value_info_shape(model, src: str, dst: str) -> None:
    """Give tensor ``dst`` the recorded type/shape of ``src`` (calibrators need it)."""
    infos = {v.name: v for v in model.graph.value_info}
    if src in infos and dst in infos:
        infos[dst].CopyFrom(infos[src])
        infos[dst].name = dst


def node_entries(paths: dict[str, str], names: Sequence[str]) -> list[dict]:
    """``[{"node": name, "module": module path}]`` for recipes (the node name where there is no module)."""
    return [{"node": n, "module": paths.get(n) or n} for n in names]
