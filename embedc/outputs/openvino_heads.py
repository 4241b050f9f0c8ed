"""The same heads as ``onnx_heads``, built on an OpenVINO IR with OpenVINO's
Python graph API (opset13) and saved back (FP32 head constants; the model's
own weights keep their element types)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import CompileError
from . import formulas
from .spec import Head


def _head(ops, src, head: Head, ranges: dict | None):
    f32 = np.float32
    v = src
    if head.dims < head.width:
        v = ops.slice(v, np.array([0], np.int64), np.array([head.dims], np.int64), np.array([1], np.int64),
                      np.array([1], np.int64))
    if head.renormalize:
        ss = ops.reduce_sum(ops.multiply(v, v), np.array([1], np.int64), True)
        v = ops.divide(v, ops.maximum(ops.sqrt(ss), np.array(formulas.EPS, f32)))
    if head.format == "float32":
        return v
    if head.format in ("binary", "ubinary"):
        if head.centered:
            v = ops.subtract(v, np.asarray(ranges[head.name]["mean"], f32))
        bits = ops.convert(ops.greater_equal(v, np.array(0.0, f32)), "f32")
        if head.format == "binary":
            return ops.convert(ops.subtract(ops.multiply(bits, np.array(2.0, f32)), np.array(1.0, f32)), "i8")
        grouped = ops.reshape(bits, np.array([0, head.dims // 8, 8], np.int64), True)
        packed = ops.reduce_sum(ops.multiply(grouped, (2.0 ** np.arange(7, -1, -1)).astype(f32)),
                                np.array([2], np.int64), False)
        return ops.convert(packed, "u8")
    if head.scheme == "tanh":
        r = ops.round(ops.multiply(ops.tanh(v), np.array(127.0, f32)), "half_to_even")
    else:
        lo = np.asarray(ranges[head.name]["lo"], f32)
        st = formulas.steps(lo, ranges[head.name]["hi"])
        r = ops.subtract(ops.round(ops.divide(ops.subtract(v, lo), st), "half_to_even"), np.array(128.0, f32))
    return ops.convert(ops.clamp(r, -128.0, 127.0), "i8")


def attach(xml: Path, weights: Path, heads: list[Head], ranges: dict | None = None) -> dict:
    """Rewrite the IR ``xml`` (+ ``weights``) with one extra output per head."""
    from ..targets.openvino.telemetry import block_telemetry

    block_telemetry()
    import openvino as ov
    import openvino.opset13 as ops

    xml, weights = Path(xml), Path(weights)
    core = ov.Core()
    model = core.read_model(str(xml), str(weights))
    names = {n: out for out in model.outputs for n in out.get_names()}
    results = []
    for h in heads:
        if h.name in names:
            raise CompileError(f"{xml.name} already has an output named {h.name}", "rebuild from the reference export")
        if h.source not in names:
            raise CompileError(f"{xml.name} has no {h.source!r} output for head {h.name}",
                               f"its outputs: {', '.join(sorted(names))}")
        src = names[h.source].get_node().input_value(0)  # the Result's producer
        if src.get_element_type() != ov.Type.f32:
            src = ops.convert(src, "f32").output(0)
        out = _head(ops, src, h, ranges)
        out.output(0).get_tensor().set_names({h.name})
        res = ops.result(out)
        res.set_friendly_name(h.name)
        results.append(res)
    model.add_results(results)
    tmp = Path(tempfile.mkdtemp(prefix=".heads-", dir=xml.parent))
    try:
        ov.save_model(model, str(tmp / xml.name), compress_to_fp16=False)
        del model
        (tmp / xml.name).replace(xml)
        (tmp / xml.with_suffix(".bin").name).replace(weights)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"library": "openvino", "file": xml.name, "outputs": [h.name for h in heads],
            "ops": "opset13 Slice, Multiply, ReduceSum, Sqrt, Maximum, Divide, Subtract, Tanh, "
                   "Round(half_to_even), Clamp, GreaterEqual, Convert, Reshape"}
