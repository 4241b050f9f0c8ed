"""Torch-computed int4 codes as ONNX Runtime ``com.microsoft.MatMulNBits``
(bits 4, symmetric: no zero-point input, ORT's default zero point 8), the
rest of the ORT int4 recipe unchanged (word-embedding table as
``GatherBlockQuantized``, excluded MatMuls as 8-bit ``MatMulNBits``).

MatMulNBits layout: B is uint8 [N, K/block, block/2], two codes per byte
(element 2i in the low nibble), each code ``q + 8`` in 0..15; scales are
float [N * K/block]; value = (code - 8) * scale."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..onnxkit.graph import MS_DOMAIN, ensure_opset, initializer_map, remove_unused_initializer


def pack_matmulnbits(q_kn: np.ndarray, scale_gn: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(B uint8 [N, nb, block/2], scales float32 [N * nb]) from codes [K, N] in -8..7 and scales [nb, N]."""
    k, n = q_kn.shape
    nb = -(-k // block)
    u = np.full((nb * block, n), 8, np.uint8)  # padding rows: code 8 = value 0
    u[:k] = (q_kn.astype(np.int16) + 8).astype(np.uint8)
    u = u.T.reshape(n, nb, block)
    packed = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)
    return packed, np.ascontiguousarray(scale_gn.T.astype(np.float32)).reshape(-1)


def write_matmulnbits(model, matched: dict[str, dict], block: int, accuracy_level: int) -> list[str]:
    """Replace each matched MatMul (node -> codes from :func:`embedc.int4.layers.match_layers`) in place."""
    from onnx import helper, numpy_helper

    inits = initializer_map(model)
    done = []
    for node in list(model.graph.node):
        if node.op_type != "MatMul" or node.name not in matched:
            continue
        d = matched[node.name]
        k, n = inits[node.input[1]].dims
        packed, scales = pack_matmulnbits(d["q"], d["scale"], block)
        base = node.input[1]
        b = numpy_helper.from_array(packed, f"{base}_Q4")
        s = numpy_helper.from_array(scales, f"{base}_scales")
        new = helper.make_node("MatMulNBits", [node.input[0], b.name, s.name], list(node.output),
                               name=node.name + "_Q4", domain=MS_DOMAIN, K=int(k), N=int(n), bits=4,
                               block_size=block, accuracy_level=accuracy_level)
        new.metadata_props.extend(node.metadata_props)
        pos = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(pos, new)
        model.graph.initializer.extend([b, s])
        remove_unused_initializer(model, base)
        done.append(node.name)
    ensure_opset(model, MS_DOMAIN, 1)
    return done


def quantize_int4_codes(src: Path, dst: Path, *, layers: dict, info: dict, options: dict,
                        exact_ids=()) -> dict:
    """The ORT int4 artifact from precomputed codes (see the module docstring); returns the recipe part."""
    from ..onnxkit.files import load_model, save_model
    from ..onnxkit.graph import node_entries, strip_debug_metadata, table_gathers, weight_matmuls, word_embedding_gather
    from ..onnxkit.scopes import module_paths
    from ..targets.ort.block_quant import _table_4bit, quantize_table_8bit, weight_only_8bit
    from ..targets.ort.half_scales import fp16_linear_scales
    from ..targets.ort.int8 import excluded_by_option
    from .layers import match_layers

    bs, acc = options["block_size"], options["accuracy_level"]
    model = load_model(src)
    paths = module_paths(model)
    names = [n.name for n in weight_matmuls(model)]
    excluded = excluded_by_option(paths, names, options["exclude"])
    gathers = [n.name for n in table_gathers(model)]
    matched = match_layers(model, layers, bs, [n for n in weight_matmuls(model) if n.name not in excluded])
    written = write_matmulnbits(model, matched, bs, acc)
    float_left = [n for n in names if n not in written and n not in excluded]
    if excluded:
        model = weight_only_8bit(model, excluded, block_size=bs, accuracy_level=acc)
    embedding = None
    table = word_embedding_gather(model)
    if options["quantize_embedding"] and table is not None:
        if options["embedding_bits"] == 8:
            embedding = quantize_table_8bit(model, table.name, options["embedding_block_size"],
                                            scales_dtype=options["embedding_scales"])
        else:
            model, embedding = _table_4bit(model, table, gathers, options, exact_ids)
    linear_scales = fp16_linear_scales(model) if options["linear_scales"] == "fp16" else "fp32"
    strip_debug_metadata(model)
    save_model(model, dst)
    return {
        "library_call": f"{info['library']} on the calibration split (embedc.int4 stage), written as "
                        "com.microsoft.MatMulNBits by embedc.int4.ort",
        "settings": {"algorithm": options["algorithm"], "block_size": bs, "is_symmetric": True,
                     "accuracy_level": acc, "op": "com.microsoft.MatMulNBits",
                     "scales": "negative allowed (full range)" if options.get("full_range") else "positive"},
        "int4_weights": info,
        "quantized": node_entries(paths, written),
        "excluded": [{"node": n, "module": paths[n], "reason": "option exclude",
                      "as": f"com.microsoft.MatMulNBits bits=8 block_size={bs} symmetric accuracy_level={acc}"}
                     for n in excluded],
        "left_float": node_entries(paths, float_left),
        "weight_match_cosine_min": round(min(d["cosine"] for d in matched.values()), 5),
        "embedding": embedding,
        "linear_scales": linear_scales,
    }
