"""The low-memory export: the ONNX graph traced on the meta device, the
weights written to the external-data file one tensor at a time.

``torch.onnx.export`` needs real tensors only to store them: traced with
every parameter (and input) on the meta device it produces the same graph
with placeholder initializers. Each initializer then gets a lazy tensor that
draws its FP32 values from the model's ``WeightSource`` when the file is
written, so a 16 GB model is exported with one tensor in memory at a time
instead of the torch model plus the exporter's copies.

Two steps of the normal path are done here by hand, because on meta tensors
the exporter cannot: the ``Transpose`` of each Linear weight is folded into a
pre-transposed initializer under the name the optimizer gives it (else the
optimizer's constant folding would hold every transposed weight in memory),
and real buffers (rotary frequencies) are restored by name. Then the
exporter's own optimizer and saver run as in :func:`dynamo_export`; a test
checks that both paths give the same graph and outputs.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ExportError

BODY_PREFIX = "encoder."  # SentenceEmbedder's attribute for the body (every initializer name starts with it)


def streamed_export(embedder, weights, tokenizer, path: Path, *, opset: int) -> int:
    """Export ``embedder`` (a SentenceEmbedder whose body has meta parameters
    and real buffers) to ``path`` with external data; return how many weight
    tensors were streamed."""
    from .export import export_errors, trace_program

    buffers = {name: b.detach().clone() for name, b in embedder.named_buffers()}
    embedder = embedder.to("meta")
    with export_errors(path, "low-memory export", "build with --low-memory off on a machine with room for the "
                                                  "FP32 model"):
        program = trace_program(embedder, tokenizer, opset=opset, on_meta=True)
        streamed = attach_weights(program.model, weights, buffers)
        program.optimize()
        program.save(str(path), external_data=True)
    return streamed


def attach_weights(model, weights, buffers: dict) -> int:
    """Give every initializer of the meta-traced ``model`` (an ``onnx_ir.Model``)
    a lazy FP32 tensor: Linear weights pre-transposed where the graph
    transposes them, buffers from ``buffers``."""
    import onnx_ir as ir

    graph = model.graph
    for node in list(graph):
        if node.op_type != "Transpose" or not node.inputs or node.inputs[0] is None:
            continue
        weight = node.inputs[0]
        perm = list(node.attributes.get_ints("perm", []))
        if not (weight.is_initializer() and perm == [1, 0] and len(weight.uses()) == 1
                and weight.name in graph.initializers and weight.name not in buffers):
            continue
        out = node.outputs[0]
        name = out.name
        shape = list(weight.shape)[::-1]
        folded = ir.Value(name=f"{name}__folded", shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT),
                          const_value=_lazy(weights, buffers, weight.name, shape, transpose=True))
        graph.register_initializer(folded)
        ir.convenience.replace_all_uses_with(out, folded)
        graph.remove(node, safe=True)
        del graph.initializers[weight.name]
        folded.name = name  # the name the optimizer gives a folded transpose: the same graph as the normal path
    count = 0
    for name, value in graph.initializers.items():
        if isinstance(value.const_value, ir.LazyTensor):
            count += 1
            continue
        if not name.startswith(BODY_PREFIX) and name not in buffers:
            raise ExportError(f"the meta-traced graph has an initializer {name!r} that is neither a weight nor a "
                              "buffer of the model", "build with --low-memory off")
        value.const_value = _lazy(weights, buffers, name, list(value.shape))
        count += name not in buffers
    return count


def _lazy(weights, buffers: dict, name: str, shape: list[int], *, transpose: bool = False):
    import onnx_ir as ir

    def load():
        if name in buffers:
            t = buffers[name].float()
        else:
            t = weights.tensor(name[len(BODY_PREFIX):])
        if transpose:
            t = t.t()
        if list(t.shape) != list(shape):
            raise ExportError(f"weight {name} has shape {list(t.shape)}, the graph expects {list(shape)}",
                              "the checkpoint does not match its config.json")
        return ir.tensor(t.contiguous().numpy())

    return ir.LazyTensor(load, dtype=ir.DataType.FLOAT, shape=ir.Shape(shape), name=name)
