"""Block-wise quantization shared by the INT8 and INT4 recipes: the word-embedding
table as ``GatherBlockQuantized`` (8-bit written here, 4-bit through ORT's
quantizer), and 8-bit ``MatMulNBits`` for MatMuls kept out of a recipe's main
quantization.

The word-embedding table (81% of multilingual-e5-small) is an 8-bit
symmetric ``GatherBlockQuantized``, one scale per block of the row: ORT's
QDQ/QOperator Gather quantization is per-tensor (row cosine 0.9993 mean,
0.991 min on MiniLM's table vs 0.99998 / 0.9999 per block), and ORT 1.32's
``MatMulNBitsQuantizer`` writes only 4-bit Gathers, so the 8-bit table is
written here; the op is ORT's.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from ...errors import CompileError
from ...onnxkit.graph import (MS_DOMAIN, ensure_opset, initializer_map, remove_unused_initializer, weight_matmuls,
                              word_embedding_gather)
from ...onnxkit.metrics import row_cosines
from ...onnxkit.scopes import module_path
from ...onnxkit.session import import_quantization, quiet_ort_logs
from .half_scales import fp16_or_refuse


def _block_for(width: int, block_size: int) -> int:
    """The largest power of two <= block_size (and >= 16) dividing ``width``."""
    b = block_size
    while b > 16 and width % b:
        b //= 2
    return b


def quantize_table_8bit(model: onnx.ModelProto, node_name: str, block_size: int = 128, *,
                        scales_dtype: str = "fp32") -> dict:
    """Replace a Gather over a float table by an 8-bit ``GatherBlockQuantized``:
    symmetric, one scale per row block (fp32; fp16 with ``scales_dtype="fp16"``,
    :func:`fp16_scales`), stored as uint8 around ORT's
    default zero point 128 (no zero-point tensor: -0.75 MB on e5-small's table
    for a row cosine of 0.99998 mean / 0.9998 min vs 0.99999 / 0.99993 asymmetric)."""
    inits = initializer_map(model)
    idx, node = next((i, n) for i, n in enumerate(model.graph.node) if n.name == node_name)
    table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    rows, width = table.shape
    block = _block_for(width, block_size)
    if width % block:
        raise CompileError(f"embedding width {width} has no power-of-two block >= 16",
                           "pass quantize_embedding=false for this model")
    blocks = table.reshape(rows, width // block, block)
    scale = np.abs(blocks).max(axis=2, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(blocks / scale), -127, 127)
    base = node.input[0]
    data = numpy_helper.from_array((q + 128).astype(np.uint8).reshape(rows, width), base + "_Q8")
    scales = numpy_helper.from_array(scale.reshape(rows, -1).astype(np.float32), base + "_scales")
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    new = helper.make_node("GatherBlockQuantized", [data.name, node.input[1], scales.name], list(node.output),
                           name=node.name + "_Q8", domain=MS_DOMAIN, gather_axis=axis, quantize_axis=1,
                           block_size=block, bits=8)
    new.metadata_props.extend(node.metadata_props)
    cast = fp16_scales(new, scales) if scales_dtype == "fp16" else None  # before insert(), which copies
    model.graph.node.remove(node)
    model.graph.node.insert(idx, new)
    if cast is not None:
        model.graph.node.insert(idx + 1, cast)
    model.graph.initializer.extend([data, scales])
    remove_unused_initializer(model, base)
    ensure_opset(model, MS_DOMAIN, 1)
    stored = numpy_helper.to_array(scales).astype(np.float32).reshape(scale.shape)  # fp16 rounding included
    cos = row_cosines(table, (q * stored).reshape(rows, width))
    return {"node": node_name, "module": module_path(node), "op": "com.microsoft.GatherBlockQuantized",
            "bits": 8, "block_size": block, "scheme": "symmetric int8 (uint8 + default zero point 128), "
                                                      "one scale per row block",
            "scales": FP16_SCALES if scales_dtype == "fp16" else "fp32",
            "rows": rows, "width": width, "row_cosine_mean": round(float(cos.mean()), 6),
            "row_cosine_min": round(float(cos.min()), 6)}


def _table(model: onnx.ModelProto, options: dict) -> dict | None:
    node = word_embedding_gather(model)
    if node is None:
        return None
    return quantize_table_8bit(model, node.name, options.get("embedding_block_size", 128),
                               scales_dtype=options.get("embedding_scales", "fp32"))


def _table_4bit(model: onnx.ModelProto, table: onnx.NodeProto, gathers: Sequence[str],
                options: dict, exact_ids: Sequence[int] = ()) -> tuple[onnx.ModelProto, dict]:
    """The table as a 4-bit ``GatherBlockQuantized`` (ORT's quantizer); the rows of ``exact_ids``
    (the tokens in every input) then stay FP32 beside it (:func:`keep_rows_exact`)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq  # noqa: PLC0415

    path = module_path(table)
    width = initializer_map(model)[table.input[0]].dims[1]
    rows = table_rows(initializer_map(model)[table.input[0]], exact_ids) if exact_ids else None
    output, indices = table.output[0], table.input[1]
    block = _block_for(width, options["embedding_block_size"])
    sym = options["is_symmetric"]
    cfg = mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=sym, op_types_to_quantize=("Gather",),
                                           quant_axes=(("Gather", 1),))
    with quiet_ort_logs():
        quant = mnq.MatMulNBitsQuantizer(model, nodes_to_exclude=[g for g in gathers if g != table.name],
                                         algo_config=cfg)
        with np.errstate(divide="ignore", invalid="ignore"):  # it divides by all-zero blocks, then masks them
            quant.process()
    model = quant.model.model
    record = {"node": table.name, "module": path, "op": "com.microsoft.GatherBlockQuantized", "bits": 4,
              "block_size": block, "scheme": "symmetric int4" if sym else "asymmetric uint4 + zero points",
              "scales": "fp32",
              "library_call": f"MatMulNBitsQuantizer(algo_config=DefaultWeightOnlyQuantConfig(block_size={block}, "
                              f"is_symmetric={sym}, op_types_to_quantize=('Gather',), quant_axes=(('Gather', 1),)))"}
    if options.get("embedding_scales") == "fp16":
        graph, inits = model.graph, initializer_map(model)
        gather = next(n for n in graph.node if output in n.output)
        cast = fp16_scales(gather, inits[gather.input[2]])
        graph.node.insert(list(graph.node).index(gather) + 1, cast)
        record["scales"] = FP16_SCALES
    if rows is not None:
        keep_rows_exact(model, output, indices, list(exact_ids), rows)
        record["exact_rows"] = exact_rows_record(exact_ids, rows)
    return model, record


FP16_SCALES = "fp16 (the gather gives fp16, cast to fp32 after it)"


def fp16_scales(gather: onnx.NodeProto, scales: onnx.TensorProto) -> onnx.NodeProto:
    """A ``GatherBlockQuantized``'s scales stored as fp16, in place: the op then gives fp16
    rows, so its output is renamed and the returned Cast (insert it after ``gather``) gives the
    old output name fp32 rows. Half the scales' bytes, so a 4-bit table in blocks of 32 costs what
    blocks of 64 cost with fp32 scales (4.5 bits per weight either way; 4.625 against 4.5625 with
    uint4 zero points), an 8-bit one in blocks of 32 8.5 bits (GGUF Q8_0's layout); fp16 rounds
    each scale by at most 2**-11 of itself. Scales outside fp16's normal range are refused, not
    rounded away."""
    full = numpy_helper.to_array(scales).astype(np.float32)
    half = fp16_or_refuse(full, 2.0 ** -10 * np.abs(full), "the table's scales do not fit fp16 (embedding_scales=fp16)",
                          "pass --option int4.embedding_scales=fp32")
    scales.CopyFrom(numpy_helper.from_array(half, scales.name))
    output = gather.output[0]
    gather.output[0] = output + "_fp16"
    return helper.make_node("Cast", [gather.output[0]], [output], to=onnx.TensorProto.FLOAT,
                            name=gather.name + "_to_fp32")


def exact_rows_record(ids: Sequence[int], rows: np.ndarray) -> dict:
    return {"token_ids": [int(i) for i in ids], "dtype": str(rows.dtype),
            "why": "the tokens the tokenizer adds to every text: each one's 4-bit rounding would move every "
                   "embedding the same way"}


def table_rows(table: onnx.TensorProto, ids: Sequence[int], base: Path | None = None) -> np.ndarray:
    """Rows ``ids`` of a 2-D table. External data (relative to ``base``) is read through a memory
    map: the 4B model's table is 1.6 GB, and these are a few rows of it."""
    if not external_data_helper.uses_external_data(table):
        return numpy_helper.to_array(table)[list(ids)]
    info = {e.key: e.value for e in table.external_data}
    mapped = np.memmap(Path(base) / info["location"], dtype=helper.tensor_dtype_to_np_dtype(table.data_type),
                       mode="r", offset=int(info.get("offset", 0)), shape=tuple(table.dims))
    return np.array(mapped[list(ids)])


def keep_rows_exact(model: onnx.ModelProto, output: str, indices: str, ids: Sequence[int], rows: np.ndarray) -> None:
    """Positions whose token is one of ``ids`` take that id's exact row instead of the quantized
    table's: ``Where(any(indices == ids), onehot(indices == ids) @ rows, quantized)``, inserted
    after the node that writes ``output``, which keeps its name for the consumers.

    Why: a token in every input (BOS/CLS, EOS/SEP) shares its row's rounding error with every
    text. With last-token pooling the pooled token *is* the appended EOS: on SmolLM2-135M
    (causal, last token), the 4-bit table alone costs 0.137 of mean cosine and the EOS row's share
    of it is 0.134 (torch, calibration split; benchmarks/int4_recipes.md)."""
    graph = model.graph
    pos, producer = next((i, n) for i, n in enumerate(graph.node) if output in n.output)
    quantized = output + "_table_q"
    producer.output[list(producer.output).index(output)] = quantized
    p = output + "_exact"
    inits = [numpy_helper.from_array(np.asarray(ids, np.int64), p + "_ids"),
             numpy_helper.from_array(np.ascontiguousarray(rows), p + "_rows"),
             numpy_helper.from_array(np.array([-1], np.int64), p + "_last_axis")]
    n = helper.make_node
    nodes = [n("Cast", [indices], [p + "_i64"], to=onnx.TensorProto.INT64, name=p + "_cast_ids"),
             n("Unsqueeze", [p + "_i64", p + "_last_axis"], [p + "_col"], name=p + "_unsqueeze"),
             n("Equal", [p + "_col", p + "_ids"], [p + "_hit"], name=p + "_equal"),
             n("Cast", [p + "_hit"], [p + "_onehot"], to=onnx.helper.np_dtype_to_tensor_dtype(rows.dtype),
               name=p + "_cast_hit"),
             n("MatMul", [p + "_onehot", p + "_rows"], [p + "_row"], name=p + "_select"),
             n("ReduceMax", [p + "_onehot", p + "_last_axis"], [p + "_any_f"], keepdims=1,
               name=p + "_any"),
             n("Cast", [p + "_any_f"], [p + "_any"], to=onnx.TensorProto.BOOL, name=p + "_cast_any"),
             n("Where", [p + "_any", p + "_row", quantized], [output], name=p + "_where")]
    for k, node in enumerate(nodes, start=pos + 1):
        graph.node.insert(k, node)
    graph.initializer.extend(inits)


def weight_only_8bit(model: onnx.ModelProto, names: Sequence[str], *, block_size: int = 32,
                     accuracy_level: int = 4) -> onnx.ModelProto:
    """Turn the given float MatMuls into 8-bit ``MatMulNBits``: weights INT8 per
    block of ``block_size`` along K; with accuracy_level 4 the activations are
    quantized per block at run time, which is what outlier-heavy inputs need."""
    import_quantization()
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # noqa: PLC0415

    wanted = set(names)
    others = [n.name for n in weight_matmuls(model) if n.name not in wanted]
    with quiet_ort_logs():
        quant = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level, nodes_to_exclude=others,
                                     op_types_to_quantize=("MatMul",))
        quant.process()
    return quant.model.model
