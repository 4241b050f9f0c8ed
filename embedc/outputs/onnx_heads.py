"""Append compressed-output heads to an ONNX model as extra graph outputs.

Works on any embedc ONNX artifact (FP32, FP16 with float32 I/O, QDQ INT8,
MatMulNBits INT4, TensorRT-ready Q/DQ): the heads read the float output
tensor and use only ops whose signatures are stable from opset 13 on
(Slice, Mul, ReduceSum, Sqrt, Max, Div, Sub, Tanh, Round, Clip,
GreaterOrEqual, Cast, Reshape). External data stays where it is: the model
is loaded without its tensors and only the graph proto is rewritten."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CompileError
from . import formulas
from .spec import Head

PREFIX = "embedc_head"
MIN_OPSET = 13


def _opset(model) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


class _Builder:
    def __init__(self, graph, head: Head):
        self.g = graph
        self.p = f"{PREFIX}/{head.name}"
        self.n = 0

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        t = numpy_helper.from_array(np.asarray(value), f"{self.p}/{name}")
        self.g.initializer.append(t)
        return t.name

    def node(self, op: str, inputs, out: str | None = None, **attrs) -> str:
        from onnx import helper

        self.n += 1
        out = out or f"{self.p}/{op.lower()}_{self.n}"
        self.g.node.append(helper.make_node(op, list(inputs), [out], name=f"{self.p}/{op}_{self.n}", **attrs))
        return out


def _head_nodes(graph, head: Head, src: str, ranges: dict | None) -> None:
    from onnx import TensorProto

    b = _Builder(graph, head)
    v = src
    if head.dims < head.width:
        v = b.node("Slice", [v, b.const("starts", np.array([0], np.int64)), b.const("ends", np.array([head.dims], np.int64)),
                             b.const("axes", np.array([1], np.int64))])
    if head.renormalize:
        ss = b.node("ReduceSum", [b.node("Mul", [v, v]), b.const("axis1", np.array([1], np.int64))], keepdims=1)
        norm = b.node("Max", [b.node("Sqrt", [ss]), b.const("eps", np.array(formulas.EPS, np.float32))])
        v = b.node("Div", [v, norm])
    if head.format == "float32":
        b.node("Identity", [v], out=head.name)
        return
    if head.format in ("binary", "ubinary"):
        if head.centered:
            v = b.node("Sub", [v, b.const("mean", np.asarray(ranges[head.name]["mean"], np.float32))])
        bits = b.node("Cast", [b.node("GreaterOrEqual", [v, b.const("zero", np.array(0.0, np.float32))])],
                      to=TensorProto.FLOAT)
        if head.format == "binary":
            pm = b.node("Sub", [b.node("Mul", [bits, b.const("two", np.array(2.0, np.float32))]),
                                b.const("one", np.array(1.0, np.float32))])
            b.node("Cast", [pm], out=head.name, to=TensorProto.INT8)
            return
        grouped = b.node("Reshape", [bits, b.const("shape", np.array([0, head.dims // 8, 8], np.int64))])
        weights = b.const("bitweights", (2.0 ** np.arange(7, -1, -1)).astype(np.float32))
        packed = b.node("ReduceSum", [b.node("Mul", [grouped, weights]), b.const("axis2", np.array([2], np.int64))],
                        keepdims=0)
        b.node("Cast", [packed], out=head.name, to=TensorProto.UINT8)
        return
    if head.scheme == "tanh":
        x = b.node("Mul", [b.node("Tanh", [v]), b.const("scale", np.array(127.0, np.float32))])
        r = b.node("Round", [x])
    else:
        lo = np.asarray(ranges[head.name]["lo"], np.float32)
        st = formulas.steps(lo, ranges[head.name]["hi"])
        r = b.node("Round", [b.node("Div", [b.node("Sub", [v, b.const("lo", lo)]), b.const("step", st)])])
        r = b.node("Sub", [r, b.const("offset", np.array(128.0, np.float32))])
    c = b.node("Clip", [r, b.const("min", np.array(-128.0, np.float32)), b.const("max", np.array(127.0, np.float32))])
    b.node("Cast", [c], out=head.name, to=TensorProto.INT8)


def attach(model_path: Path, heads: list[Head], ranges: dict | None = None) -> dict:
    """Rewrite ``model_path`` in place with one extra output per head. Returns
    what was added (for the recipe)."""
    import onnx
    from onnx import TensorProto, helper

    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    opset = _opset(model)
    if opset < MIN_OPSET:
        raise CompileError(f"{model_path.name} has opset {opset}; compressed-output heads need opset >= {MIN_OPSET}",
                           "export with a newer opset (embedc's default is 18)")
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    existing = set(outputs)
    casts: dict[str, str] = {}
    for h in heads:
        if h.name in existing:
            raise CompileError(f"{model_path.name} already has an output named {h.name}",
                               "rebuild from the reference export (heads are added once)")
        if h.source not in outputs:
            raise CompileError(f"{model_path.name} has no {h.source!r} output for head {h.name}",
                               f"its outputs: {', '.join(sorted(outputs))}")
        src_vi = outputs[h.source]
        src = h.source
        if src_vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            if src not in casts:
                casts[src] = f"{PREFIX}/{src}/float"
                graph.node.append(helper.make_node("Cast", [src], [casts[src]], name=f"{PREFIX}/{src}/Cast",
                                                   to=TensorProto.FLOAT))
            src = casts[src]
        _head_nodes(graph, h, src, ranges)
        batch = src_vi.type.tensor_type.shape.dim[0]
        batch_dim = batch.dim_param or (batch.dim_value if batch.HasField("dim_value") else "batch")
        elem = {"float32": TensorProto.FLOAT, "int8": TensorProto.INT8, "uint8": TensorProto.UINT8}[h.dtype]
        graph.output.append(helper.make_tensor_value_info(h.name, elem, [batch_dim, h.shape[1]]))
    onnx.save(model, str(model_path))
    return {"library": "onnx", "file": model_path.name, "outputs": [h.name for h in heads], "opset": opset,
            "ops": "Slice, Mul, ReduceSum, Sqrt, Max, Div, Sub, Tanh, Round, Clip, GreaterOrEqual, Cast, Reshape"}
