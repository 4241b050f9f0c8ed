"""SmoothQuant for the INT8 static recipe: per-channel scaling of each MatMul
group's input, alpha picked per group by emulated output SQNR."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...onnxkit.activations import Activations
from ...onnxkit.graph import copy_value_info_shape, initializer_map, remove_unused_initializer, weight_matmuls
from ...onnxkit.scopes import module_path
from .sqnr import sqnr


def _fake_quant_act(x: np.ndarray, lo: float, hi: float, signed: bool) -> np.ndarray:
    """Per-tensor MinMax activation quantization as ORT computes it (uint8
    asymmetric, or int8 symmetric), applied and undone."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if signed:
        a = max(-lo, hi)
        scale = a / 127.0 if a > 0 else 1.0
        return np.clip(np.round(x / scale), -127, 127) * scale
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray, reduce_range: bool) -> np.ndarray:
    """Per-output-channel symmetric INT8 weights (7 bits with reduce_range)."""
    qmax = 63.0 if reduce_range else 127.0
    scale = np.abs(w).max(0, keepdims=True) / qmax
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -qmax - 1, qmax) * scale


SMOOTH_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SMOOTH_MIN_GAIN_DB = 0.5


def smooth_matmul_inputs(model: onnx.ModelProto, stats: Activations, settings: dict,
                         alpha: float | None) -> list[dict]:
    """SmoothQuant (arXiv 2211.10438) for per-tensor activation scales: per
    input channel j, s_j = max|X_j|^a / max|W_j,:|^(1-a); X is divided by s
    (one Mul per group of MatMuls sharing the input), W's rows multiplied by s.
    BERT is post-LayerNorm: the LayerNorm output is also the residual, so 1/s
    cannot fold into LayerNorm; the Mul is an element-wise pass.

    ``alpha=None`` picks a per group from SMOOTH_ALPHAS by the lowest output
    SQNR over the group (emulated INT8 on the sampled calibration rows), and
    leaves a group alone unless smoothing gains SMOOTH_MIN_GAIN_DB."""
    inits = initializer_map(model)
    signed = settings["activation_type"] == "QInt8"
    reduce_range = settings["reduce_range"]
    groups: dict[str, list[onnx.NodeProto]] = {}
    for n in weight_matmuls(model):
        if n.input[0] in stats.samples:
            groups.setdefault(n.input[0], []).append(n)
    report = []
    for x_name, nodes in groups.items():
        x = stats.samples[x_name]
        lo, hi = stats.lo[x_name], stats.hi[x_name]
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]
        refs = [x @ w for w in weights]

        def score(s: np.ndarray | None) -> float:
            if s is None:
                xq = _fake_quant_act(x, float(lo.min()), float(hi.max()), signed)
                return min(sqnr(r, xq @ _fake_quant_weight(w, reduce_range)) for r, w in zip(refs, weights))
            xq = _fake_quant_act(x / s, float((lo / s).min()), float((hi / s).max()), signed)
            return min(sqnr(r, xq @ _fake_quant_weight(w * s[:, None], reduce_range))
                       for r, w in zip(refs, weights))

        amax = np.maximum(np.maximum(-lo, hi), 1e-5)
        wmax = np.maximum(np.max([np.abs(w).max(1) for w in weights], axis=0), 1e-5)
        scales = {a: np.clip(amax ** a / wmax ** (1 - a), 1e-4, 1e4).astype(np.float32)
                  for a in ((alpha,) if alpha is not None else SMOOTH_ALPHAS)}
        before = score(None)
        scored = {a: score(s) for a, s in scales.items()}
        best = max(scored, key=scored.get)
        entry = {"modules": [module_path(n) for n in nodes], "sqnr_db_before": round(before, 2)}
        if alpha is None and scored[best] < before + SMOOTH_MIN_GAIN_DB:
            report.append({**entry, "alpha": None, "sqnr_db_after": round(before, 2)})
            continue
        out = _insert_smoothing(model, x_name, nodes, scales[best], inits)
        report.append({**entry, "alpha": best, "sqnr_db_after": round(scored[best], 2)})
        stats.samples[out] = x / scales[best]  # what the smoothed MatMuls now see
        stats.lo[out], stats.hi[out] = lo / scales[best], hi / scales[best]
    return report


def _insert_smoothing(model, x_name: str, nodes, s: np.ndarray, inits) -> str:
    scale = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{x_name}_smooth_inv_scale")
    out = f"{x_name}_smoothed"
    mul = helper.make_node("Mul", [x_name, scale.name], [out], name=f"{nodes[0].name}_smooth")
    mul.metadata_props.extend(nodes[0].metadata_props)
    model.graph.initializer.append(scale)
    first = min(i for i, n in enumerate(model.graph.node) if n.name in {m.name for m in nodes})
    model.graph.node.insert(first, mul)
    model.graph.value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    for node in nodes:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        smoothed = numpy_helper.from_array(w * s[:, None], f"{node.input[1]}_smoothed")
        model.graph.initializer.append(smoothed)
        old = node.input[1]
        node.input[0], node.input[1] = out, smoothed.name
        remove_unused_initializer(model, old)
    copy_value_info_shape(model, x_name, out)
    return out
