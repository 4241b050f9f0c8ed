"""Torch-computed int4 codes as an OpenVINO IR with compressed int4 weights.

The reference ONNX is rewritten with the codes behind blockwise
``DequantizeLinear`` (:mod:`.dq`) and the word-embedding table as per-row
int8, then converted: OpenVINO's ONNX frontend keeps each weight as an
``i4`` (``i8``) Constant -> Convert -> Multiply(scale) decompression
subgraph, the form NNCF's ``compress_weights`` writes and the CPU plugin
fuses into its compressed-weight MatMul / Gather. The codes and scales are
stored exactly (checked: with dynamic activation quantization off the IR
reproduces the dequantized weights' MatMul bit for bit)."""
from __future__ import annotations

from pathlib import Path


def int4_model(ov, ctx, options: dict, work: Path) -> tuple[object, dict]:
    """(ov.Model, recipe part) for the torch-computed algorithms."""
    from ..onnxkit.files import load_model, save_model
    from ..onnxkit.graph import node_entries, strip_debug_metadata, upgrade_opset, weight_matmuls
    from ..onnxkit.scopes import module_paths
    from . import kept_nodes, weights_for
    from .dq import DQ_OPSET, apply_codes, table_int8, weights_int8
    from .layers import match_layers

    layers, info = weights_for(ctx, {**options, "block_size": options["group_size"]})
    group = options["group_size"]
    model = upgrade_opset(load_model(ctx.reference_onnx), DQ_OPSET)
    paths = module_paths(model)
    linears = weight_matmuls(model)
    kept = set(kept_nodes(model, options["exclude"]))
    matched = match_layers(model, layers, group, [n for n in linears if n.name not in kept])
    model = apply_codes(model, matched, group)
    kept_8bit = weights_int8(model, kept)
    embedding = table_int8(model)
    strip_debug_metadata(model)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "int4-dq.onnx"
    save_model(model, path)
    converted = ov.convert_model(str(path))
    recipe = {"call": f"{info['library']} on the calibration split (embedc.int4 stage) -> ONNX "
                      "DequantizeLinear(int4, axis=0, block_size) -> openvino.convert_model",
              "mode": "int4_sym", "group_size": group, "int4_weights": info,
              "quantized": node_entries(paths, list(matched)),
              "excluded": [{"node": n, "module": paths[n], "reason": "option exclude",
                            "as": "int8 symmetric, one float32 scale per output channel"} for n in kept_8bit],
              "left_float": node_entries(paths, [n.name for n in linears if n.name not in matched and n.name not in kept]),
              "embedding": embedding}
    return converted, recipe
