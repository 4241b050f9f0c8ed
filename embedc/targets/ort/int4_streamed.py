"""The INT4 recipe on the low-memory path: the same ``MatMulNBits`` weights as
:mod:`embedc.targets.ort.int4` with ``algorithm=default``, computed one
weight at a time.

``MatMulNBitsQuantizer`` works on a whole in-memory ``ModelProto``: for a 4B
decoder that is the 16 GB FP32 model, twice (loaded, then copied while
quantizing). Here the graph is read without its external data, and each
Linear weight (and the word-embedding table) is read alone from the
external-data file, quantized by ORT's own per-node quantizer
(``DefaultWeightOnlyQuantizer``, the C++ block quantizer) on a one-tensor
graph, and dropped: the peak is the quantized model plus one FP32 weight.
With ``zero_points="float"`` each weight goes through
:func:`embedc.targets.ort.float_zero.matmulnbits` the same way.
What the streamed path leaves out: the calibration-cosine search
(``auto_exclude``) and the calibrated algorithms, which need the FP32
model's activations in memory.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from ...errors import CompileError
from ...int4.grid import grid_record
from ...onnxkit.files import save_model
from ...onnxkit.graph import (MS_DOMAIN, ensure_opset, initializer_map, node_entries, strip_debug_metadata,
                              weight_matmuls, word_embedding_gather)
from ...onnxkit.scopes import module_paths
from ...onnxkit.session import import_quantization, quiet_ort_logs
from .backend import BLOCK_SIZE_REASON, DEFAULT_INT4_BLOCK
from .block_quant import (FP16_SCALES, _block_for, exact_rows_record, fp16_scales, keep_rows_exact,
                          quantize_table_8bit, table_rows)
from .float_zero import matmulnbits as float_zero_node, recipe_settings as float_zero_settings, zero_point_kind
from .half_scales import fp16_linear_scales
from .int8 import excluded_by_option

STREAMED_OPTIONS = {"algorithm": "default", "auto_exclude": 0}  # what the streamed path supports


def check_streamed_options(options: dict) -> None:
    for key, allowed in STREAMED_OPTIONS.items():
        if options[key] != allowed:
            raise CompileError(f"int4 option {key}={options[key]!r} needs the whole FP32 model in memory, which "
                               "the low-memory path avoids", f"use {key}={allowed!r}, or build with --low-memory off")


def quantize_int4_streamed(src: Path, dst: Path, *, options: dict, exact_ids=()) -> dict:
    check_streamed_options(options)
    import_quantization()
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq  # noqa: PLC0415

    src = Path(src)
    model = onnx.load(str(src), load_external_data=False)
    paths = module_paths(model)
    names = [n.name for n in weight_matmuls(model)]
    excluded = excluded_by_option(paths, names, options["exclude"])
    bs, sym, acc = options["block_size"], options["is_symmetric"], options["accuracy_level"]
    float_zero, grid_errors, block_sums = options["zero_points"] == "float", {}, {}
    int4 = mnq.DefaultWeightOnlyQuantizer(mnq.DefaultWeightOnlyQuantConfig(
        block_size=bs, is_symmetric=sym, accuracy_level=acc, op_types_to_quantize=("MatMul",)))
    int8 = mnq.DefaultWeightOnlyQuantizer(mnq.DefaultWeightOnlyQuantConfig(
        block_size=bs, is_symmetric=True, accuracy_level=acc, op_types_to_quantize=("MatMul",), bits=8))
    table = word_embedding_gather(model) if options["quantize_embedding"] else None
    table_block = None
    if table is not None and options["embedding_bits"] == 4:
        table_block = _block_for(initializer_map(model)[table.input[0]].dims[1], options["embedding_block_size"])
        gather4 = mnq.DefaultWeightOnlyQuantizer(mnq.DefaultWeightOnlyQuantConfig(
            block_size=table_block, is_symmetric=sym, op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),)))

    inits = initializer_map(model)
    wanted = set(names)
    new_nodes, new_inits, replaced = [], [], set()
    embedding, exact_rows = None, None
    with quiet_ort_logs(), np.errstate(divide="ignore", invalid="ignore"):  # ORT divides by all-zero blocks, then masks
        for node in model.graph.node:
            if node.name in wanted and float_zero and node.name not in excluded:
                weight = numpy_helper.to_array(_loaded(inits[node.input[1]], src.parent))  # the proto stays lean
                nodes, tensors, grid_errors[node.name] = float_zero_node(node, weight, bs, block_sums)
                del weight
            elif node.name in wanted:
                quantizer = int8 if node.name in excluded else int4
                nodes, tensors = _one_node(quantizer, node, inits[node.input[1]], src.parent)
            elif table is not None and node.name == table.name:
                if options["embedding_bits"] == 4:
                    nodes, tensors = _one_node(gather4, node, inits[node.input[0]], src.parent)
                    embedding = {"node": node.name, "module": paths.get(node.name), "bits": 4,
                                 "op": "com.microsoft.GatherBlockQuantized", "block_size": table_block,
                                 "scheme": "symmetric int4" if sym else "asymmetric uint4 + zero points",
                                 "scales": "fp32"}
                    if options["embedding_scales"] == "fp16":
                        (gather,) = nodes
                        nodes.append(fp16_scales(gather, next(t for t in tensors if t.name == gather.input[2])))
                        embedding["scales"] = FP16_SCALES
                    if exact_ids:
                        exact_rows = table_rows(inits[node.input[0]], exact_ids, src.parent)
                else:
                    nodes, tensors, embedding = _table_8bit(node, inits[node.input[0]], src.parent,
                                                            options["embedding_block_size"], options["embedding_scales"])
            else:
                new_nodes.append(node)
                continue
            for n in nodes:
                if not n.metadata_props:
                    n.metadata_props.extend(node.metadata_props)  # keep the module path for reports
            replaced.update(i for i in node.input if i in inits)
            new_nodes.extend(nodes)
            new_inits.extend(tensors)
    kept = [t for t in model.graph.initializer if t.name not in replaced]
    for t in kept:  # the norm weights, rotary table and shape constants: small, read in full
        if external_data_helper.uses_external_data(t):
            external_data_helper.load_external_data_for_tensor(t, str(src.parent))
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + new_inits)
    ensure_opset(model, MS_DOMAIN, 1)
    if exact_rows is not None:
        keep_rows_exact(model, table.output[0], table.input[1], list(exact_ids), exact_rows)
        embedding["exact_rows"] = exact_rows_record(exact_ids, exact_rows)
    if embedding is not None and embedding["bits"] == 4:
        # as MatMulNBitsQuantizer.process does for a 4-bit Gather: INT4 tensors need opset 21 / IR 10
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx") and opset.version < 21:
                opset.version = 21
        model.ir_version = max(model.ir_version, 10)
    linear_scales = fp16_linear_scales(model) if options["linear_scales"] == "fp16" else "fp32"
    strip_debug_metadata(model)
    save_model(model, dst, keep=False)
    return {
        "library_call": "onnxruntime.quantization.matmul_nbits_quantizer.DefaultWeightOnlyQuantizer(...)"
                        ".quantize(node) on each weight alone (low-memory path)",
        "settings": {"algorithm": "default", "block_size": bs, "is_symmetric": sym,
                     "zero_points": zero_point_kind(options),
                     "accuracy_level": acc, "op": "com.microsoft.MatMulNBits",
                     **(float_zero_settings() if float_zero else {})},
        "grid": grid_record(grid_errors) if float_zero else None,
        "block_size_reason": BLOCK_SIZE_REASON if bs == DEFAULT_INT4_BLOCK else "set by the user",
        "low_memory": {"enabled": True, "how": "graph read without external data; one FP32 weight in memory "
                                               "at a time", "not_available": ["auto_exclude", "calibrated algorithms"]},
        "quantized": node_entries(paths, [n for n in names if n not in excluded]),
        "excluded": [{"node": n, "module": paths[n], "reason": "option exclude",
                      "as": f"com.microsoft.MatMulNBits bits=8 block_size={bs} symmetric accuracy_level={acc}"}
                     for n in excluded],
        "auto_exclude": {"enabled": False},
        "sensitivity_db": [],
        "embedding": embedding,
        "linear_scales": linear_scales,
    }


def _loaded(tensor: onnx.TensorProto, base: Path) -> onnx.TensorProto:
    """A copy of ``tensor`` with its external data read in (the model's proto stays a reference)."""
    t = copy.deepcopy(tensor)
    if external_data_helper.uses_external_data(t):
        external_data_helper.load_external_data_for_tensor(t, str(base))
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
    return t


def _one_node(quantizer, node: onnx.NodeProto, weight: onnx.TensorProto, base: Path):
    """ORT's quantizer on a graph that holds only this node's weight: (new nodes, new initializers)."""
    graph = helper.make_graph([], "one_weight", [], [], initializer=[_loaded(weight, base)])
    nodes = quantizer.quantize(node, [graph])
    if len(nodes) == 1 and nodes[0] is node:
        raise CompileError(f"onnxruntime did not quantize {node.name} ({node.op_type})", "report this model")
    return [_detached(n) for n in nodes], [_detached(t) for t in graph.initializer if t.name != weight.name]


def _detached(message):
    """A standalone copy: an element of a repeated field keeps its whole parent message
    alive (protobuf's arenas), which here is the one-weight graph with the FP32 weight."""
    copy_ = type(message)()
    copy_.CopyFrom(message)
    return copy_


def _table_8bit(node: onnx.NodeProto, table: onnx.TensorProto, base: Path, block_size: int, scales_dtype: str):
    """The 8-bit GatherBlockQuantized table (block_quant's recipe) on a one-node model."""
    graph = helper.make_graph([copy.deepcopy(node)], "table", [], [], initializer=[_loaded(table, base)])
    mini = helper.make_model(graph)
    record = quantize_table_8bit(mini, node.name, block_size, scales_dtype=scales_dtype)
    return [_detached(n) for n in mini.graph.node], [_detached(t) for t in mini.graph.initializer], record
