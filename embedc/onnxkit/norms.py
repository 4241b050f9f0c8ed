"""Where the network ends: the final normalization, as the model family's
adapter names it (``final_norm``: ``"layernorm"`` or ``"rmsnorm"``), and the
RMSNorm pattern itself (ONNX has no RMSNorm op at opset 18).

The dynamo exporter writes ``w * (x * rsqrt(mean(x^2) + eps))`` as
``Pow(x, 2) -> ReduceMean -> Add(eps) -> Sqrt -> Reciprocal -> Mul(x, .)``
then ``Mul(w, .)``; ``Div(1, .)`` or ``Div(x, .)`` in place of Reciprocal/Mul
and Casts between the steps are recognised too.
"""
from __future__ import annotations

from dataclasses import dataclass

from .graph import ancestors, initializer_map, producers

FINAL_NORMS = ("layernorm", "rmsnorm")


@dataclass(frozen=True)
class NormGroup:
    nodes: tuple[str, ...]     # every node of the pattern, in graph order
    output: str                # the normalized (and weighted) tensor


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _const_value(graph, name: str, inits: dict):
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    prod = producers(graph).get(name)
    if prod is not None and prod.op_type == "Constant":
        for a in prod.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def _is_const(name: str, inits: dict, prod: dict) -> bool:
    return name in inits or (name in prod and prod[name].op_type == "Constant")


def rmsnorm_groups(model) -> list[NormGroup]:
    """Every RMSNorm pattern of the graph (see the module docstring), in graph order."""
    g = model.graph
    inits = initializer_map(model)
    prod = producers(g)
    cons = _consumers(g)

    def only(tensor: str, *ops: str):
        """The single consumer of ``tensor`` if it is one of ``ops``, skipping Casts."""
        seen = []
        while True:
            users = cons.get(tensor, [])
            if len(users) != 1:
                return None, seen
            node = users[0]
            if node.op_type == "Cast":
                seen.append(node.name)
                tensor = node.output[0]
                continue
            return (node if node.op_type in ops else None), seen

    groups = []
    for pow_node in g.node:
        if pow_node.op_type != "Pow":
            continue
        exp = _const_value(g, pow_node.input[1], inits)
        if exp is None or exp.size != 1 or float(exp.reshape(-1)[0]) != 2.0:
            continue
        x = pow_node.input[0]
        names = [pow_node.name]
        mean, casts = only(pow_node.output[0], "ReduceMean")
        if mean is None:
            continue
        names += casts + [mean.name]
        add, casts = only(mean.output[0], "Add")
        if add is None or not any(_is_const(i, inits, prod) for i in add.input):
            continue
        names += casts + [add.name]
        sqrt, casts = only(add.output[0], "Sqrt")
        if sqrt is None:
            continue
        names += casts + [sqrt.name]
        step, casts = only(sqrt.output[0], "Reciprocal", "Div")
        if step is None:
            continue
        names += casts + [step.name]
        if step.op_type == "Div" and step.input[1] == sqrt.output[0] and not _is_const(step.input[0], inits, prod):
            normed = step          # x / sqrt(...)
        else:
            if step.op_type == "Div" and step.input[1] != sqrt.output[0]:
                continue
            normed, casts = only(step.output[0], "Mul")   # x * (1 / sqrt(...))
            if normed is None or x not in normed.input and not any(
                    prod.get(i) is not None and prod[i].op_type == "Cast" and prod[i].input[0] == x
                    for i in normed.input):
                continue
            names += casts + [normed.name]
        out = normed.output[0]
        weight, casts = only(out, "Mul")
        if weight is not None and any(i in inits for i in weight.input):
            names += casts + [weight.name]
            out = weight.output[0]
        order = {n.name: i for i, n in enumerate(g.node)}
        groups.append(NormGroup(tuple(sorted(set(names), key=order.get)), out))
    return groups


def final_norm_output(model, final_norm: str, sink: str) -> str | None:
    """The output tensor of the last ``final_norm`` that ``sink`` depends on (None if there is none)."""
    if final_norm not in FINAL_NORMS:
        raise ValueError(f"final norm {final_norm!r} is not one of {FINAL_NORMS}")
    g = model.graph
    upstream = ancestors(g, [sink])
    if final_norm == "layernorm":
        lns = [n for n in g.node if n.op_type == "LayerNormalization" and n.name in upstream]
        return lns[-1].output[0] if lns else None
    groups = [grp for grp in rmsnorm_groups(model) if grp.nodes[-1] in upstream]
    return groups[-1].output if groups else None
