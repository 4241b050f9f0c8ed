"""Structural check: is an ONNX graph what TensorRT's strongly typed builder
needs for a given precision?

TensorRT 10+/11 takes precision only from the graph (no calibrators, no
FP16/INT8 builder flags), so a graph that is wrong here builds into a wrong or
slow engine without an error. Each rule is a small function with a stable id:

- ``opset-range``: default-domain opset within what the TensorRT ONNX parser
  reads for the precision (INT4 blockwise DequantizeLinear needs opset 21).
- ``io-types``: graph inputs int64/int32; ``sentence_embedding`` is float32.
- ``unsupported-op``: ops TensorRT does not implement (ONNX Runtime contrib
  ops such as MatMulNBits, integer-arithmetic ops such as MatMulInteger).
- ``precision-content``: the graph holds what the precision promises
  (FP16 tensors / INT8 Q/DQ / INT4 DequantizeLinear).
- ``qdq-zero-point``: every Q/DQ zero-point is 0 (TensorRT is symmetric only).
- ``qdq-int8-type``: 8-bit Q/DQ use int8, not uint8.
- ``qdq-scale``: scales are constants and strictly positive.
- ``activation-per-tensor``: activation quantizers have a scalar scale.
- ``weight-per-channel``: 8-bit weight DequantizeLinear is per-channel on the
  output-channel axis (axis 1 of a MatMul B ``[K, N]``).
- ``int4-blockwise``: INT4 weights are signed int4 constants dequantized
  blockwise (``block_size``, scale of the weight's rank, blocked on K = axis 0
  of a MatMul B ``[K, N]``), opset >= 21.
- ``fp32-keep``: in graphs with FP16 tensors, LayerNorm/Softmax/Pow/Reduce*/
  Sqrt consume FP32 tensors (a Cast to FP32 precedes them).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ArtifactError, CompileError, TargetError
from ...onnxkit.graph import default_opset
from .graph import KEEP_FP32_OPS, SENTENCE_OUTPUT

PRECISIONS = ("fp32", "fp16", "int8", "int4")
# The TensorRT 10.x ONNX parser reads opsets 9-22; LayerNormalization needs 17,
# blockwise DequantizeLinear with int4 needs 21.
MAX_OPSET = 22
MIN_OPSET = {"fp32": 17, "fp16": 17, "int8": 17, "int4": 21}
DENIED_OPS = frozenset({
    "MatMulNBits", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul",
    "QLinearConv", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "GatherBlockQuantized", "QGemm",
})
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_INT4 = {"INT4", "UINT4"}


@dataclass(frozen=True)
class Violation:
    """One broken rule: stable ``rule`` id, the node/tensor it concerns, what is wrong."""

    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}" if self.node else f"[{self.rule}] {self.message}"


class _Graph:
    """Lookups the rules share: constants, producers, consumers, tensor dtypes."""

    def __init__(self, model):
        from onnx import TensorProto, numpy_helper

        self.model = model
        self.g = model.graph
        self.opset = default_opset(model)
        self._np = numpy_helper
        self.consts = {i.name: i for i in self.g.initializer}
        for n in self.g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = a.t
        self.prod = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.g.node:
            for i, name in enumerate(n.input):
                if name:
                    self.consumers[name].append((n, i))
        self.types = _infer_types(model)
        self.types.update({k: t.data_type for k, t in self.consts.items()})
        self.dtype_name = TensorProto.DataType.Name

    def array(self, name: str) -> np.ndarray | None:
        t = self.consts.get(name)
        return None if t is None else self._np.to_array(t)

    def dims(self, name: str) -> list[int] | None:
        t = self.consts.get(name)
        return None if t is None else list(t.dims)

    def type_name(self, name: str) -> str | None:
        t = self.types.get(name)
        return None if t is None else self.dtype_name(t)

    def nodes(self, *op_types: str):
        return [n for n in self.g.node if n.op_type in op_types and n.domain in ("", "ai.onnx")]

    def quantized_type(self, node) -> str | None:
        """The integer type of a Q output / DQ input."""
        if len(node.input) > 2 and node.input[2]:
            return self.type_name(node.input[2])
        if node.op_type == "DequantizeLinear":
            return self.type_name(node.input[0])
        out_dtype = _attr(node, "output_dtype", 0)
        return self.dtype_name(out_dtype) if out_dtype else "UINT8"  # ONNX default for Q

    def is_const(self, name: str) -> bool:
        return name in self.consts


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _infer_types(model) -> dict[str, int]:
    """Element types of every tensor onnx shape inference can type. Models the
    external-data policy puts over the protobuf limit are inferred on a
    skeleton (initializers turned into typed inputs)."""
    import onnx

    from ...onnxkit.files import needs_external_data

    m = model
    if needs_external_data(model):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        del m.graph.initializer[:]
        for t in model.graph.initializer:
            m.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception:  # noqa: BLE001 - typing is best effort; rules skip unknown types
        pass
    out: dict[str, int] = {}
    for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = vi.type.tensor_type.elem_type
    return out


# ---- rules ---------------------------------------------------------------------------------

def rule_opset_range(g: _Graph, precision: str) -> list[Violation]:
    lo = MIN_OPSET[precision]
    if lo <= g.opset <= MAX_OPSET:
        return []
    return [Violation("opset-range", "", f"opset {g.opset} is outside {lo}..{MAX_OPSET} "
                                         f"that TensorRT needs for {precision}")]


def rule_io_types(g: _Graph, precision: str) -> list[Violation]:
    out = []
    for i in g.g.input:
        if i.name in g.consts:
            continue
        t = i.type.tensor_type.elem_type
        if g.dtype_name(t) not in ("INT64", "INT32"):
            out.append(Violation("io-types", i.name,
                                 f"graph input is {g.dtype_name(t)}, expected int64/int32 token ids"))
    outs = {o.name: o for o in g.g.output}
    if SENTENCE_OUTPUT not in outs:
        out.append(Violation("io-types", SENTENCE_OUTPUT, "graph has no sentence_embedding output"))
    else:
        t = g.dtype_name(outs[SENTENCE_OUTPUT].type.tensor_type.elem_type)
        if t != "FLOAT":
            out.append(Violation("io-types", SENTENCE_OUTPUT, f"output is {t}, expected float32 "
                                                              "(keep the pooled output FP32)"))
    return out


def rule_unsupported_ops(g: _Graph, precision: str) -> list[Violation]:
    out = []
    for n in g.g.node:
        if n.domain not in ("", "ai.onnx"):
            out.append(Violation("unsupported-op", n.name, f"{n.domain}::{n.op_type} is an ONNX Runtime/custom "
                                                            "domain op TensorRT cannot parse"))
        elif n.op_type in DENIED_OPS:
            out.append(Violation("unsupported-op", n.name, f"{n.op_type} is not supported by TensorRT"))
    return out


def rule_precision_content(g: _Graph, precision: str) -> list[Violation]:
    types = {g.dtype_name(t) for t in g.types.values()}
    qdq = g.nodes(*_QDQ)
    if precision == "fp16" and "FLOAT16" not in types:
        return [Violation("precision-content", "", "fp16 graph has no float16 tensors")]
    if precision == "int8" and not any(g.quantized_type(n) in ("INT8", "UINT8") for n in qdq):
        return [Violation("precision-content", "", "int8 graph has no 8-bit Q/DQ nodes")]
    if precision == "int4" and not any(g.quantized_type(n) in _INT4 for n in qdq):
        return [Violation("precision-content", "", "int4 graph has no 4-bit DequantizeLinear")]
    return []


def rule_qdq_zero_point(g: _Graph, precision: str) -> list[Violation]:
    out = []
    for n in g.nodes(*_QDQ):
        if len(n.input) < 3 or not n.input[2]:
            continue
        zp = g.array(n.input[2])
        if zp is None:
            out.append(Violation("qdq-zero-point", n.name, "zero-point is not a constant"))
        elif np.any(zp.astype(np.int32) != 0):
            out.append(Violation("qdq-zero-point", n.name, "non-zero zero-point (asymmetric); TensorRT is "
                                                           "symmetric only: quantize with zero-point 0"))
    return out


def rule_qdq_int8_type(g: _Graph, precision: str) -> list[Violation]:
    out = []
    for n in g.nodes(*_QDQ):
        t = g.quantized_type(n)
        if t == "UINT8":
            out.append(Violation("qdq-int8-type", n.name, "quantized type is uint8; TensorRT needs int8"))
    return out


def rule_qdq_scale(g: _Graph, precision: str) -> list[Violation]:
    out = []
    for n in g.nodes(*_QDQ):
        s = g.array(n.input[1])
        if s is None:
            out.append(Violation("qdq-scale", n.name, "scale is not a build-time constant"))
        elif not np.all(s.astype(np.float32) > 0):
            out.append(Violation("qdq-scale", n.name, "scale has zero/negative values; TensorRT needs > 0"))
    return out


def rule_activation_per_tensor(g: _Graph, precision: str) -> list[Violation]:
    out = []
    for n in g.nodes(*_QDQ):
        if g.is_const(n.input[0]) or (n.op_type == "DequantizeLinear" and _from_const_q(g, n)):
            continue  # weights
        dims = g.dims(n.input[1])
        if dims is not None and int(np.prod(dims)) != 1:
            out.append(Violation("activation-per-tensor", n.name,
                                 f"activation scale has shape {dims}; TensorRT wants one scalar per tensor"))
    return out


def _from_const_q(g: _Graph, dq) -> bool:
    q = g.prod.get(dq.input[0])
    return q is not None and q.op_type == "QuantizeLinear" and g.is_const(q.input[0])


def _weight_consumer(g: _Graph, dq) -> tuple[object, int] | None:
    cons = g.consumers.get(dq.output[0], [])
    return cons[0] if len(cons) == 1 else None


def _weight_dqs(g: _Graph, bits: set[str]):
    for n in g.nodes("DequantizeLinear"):
        if (g.is_const(n.input[0]) or _from_const_q(g, n)) and g.quantized_type(n) in bits:
            yield n


def _weight_dims(g: _Graph, dq) -> list[int] | None:
    src = dq.input[0]
    if not g.is_const(src):
        src = g.prod[src].input[0]
    return g.dims(src)


def rule_weight_per_channel(g: _Graph, precision: str) -> list[Violation]:
    out = []
    for n in _weight_dqs(g, {"INT8", "UINT8"}):
        wdims, sdims = _weight_dims(g, n), g.dims(n.input[1])
        if wdims is None or sdims is None:
            continue
        if len(sdims) != 1 or int(np.prod(sdims)) == 1:
            out.append(Violation("weight-per-channel", n.name,
                                 f"weight scale has shape {sdims}; quantize weights per output channel"))
            continue
        axis = _attr(n, "axis", 1) % len(wdims)
        want = _output_channel_axis(_weight_consumer(g, n), len(wdims))
        if want is not None and axis != want:
            out.append(Violation("weight-per-channel", n.name,
                                 f"per-channel axis {axis} of weight {wdims} is not the output-channel axis {want}"))
        elif sdims[0] != wdims[axis]:
            out.append(Violation("weight-per-channel", n.name, f"scale length {sdims[0]} != weight dim {wdims[axis]}"))
    return out


def _output_channel_axis(consumer, rank: int) -> int | None:
    if consumer is None:
        return None
    node, idx = consumer
    if node.op_type == "MatMul" and idx == 1 and rank == 2:
        return 1                                   # B is [K, N]
    if node.op_type == "Gemm" and idx == 1:
        return 0 if _attr(node, "transB", 0) else 1
    if node.op_type in ("Conv", "ConvTranspose") and idx == 1:
        return 0 if node.op_type == "Conv" else 1
    return None


def rule_int4_blockwise(g: _Graph, precision: str) -> list[Violation]:
    out = []
    for n in g.nodes(*_QDQ):
        t = g.quantized_type(n)
        if t not in _INT4:
            continue
        v = lambda msg: Violation("int4-blockwise", n.name, msg)  # noqa: E731
        if t == "UINT4":
            out.append(v("4-bit type is uint4; TensorRT needs signed int4"))
        if g.opset < 21:
            out.append(v(f"int4 DequantizeLinear needs opset >= 21, graph has {g.opset}"))
        if n.op_type == "QuantizeLinear" or not g.is_const(n.input[0]):
            out.append(v("int4 is weight-only in TensorRT: dequantize a constant int4 initializer"))
            continue
        block = _attr(n, "block_size", 0)
        wdims, sdims = g.dims(n.input[0]), g.dims(n.input[1]) or []
        if not block:
            out.append(v("int4 DequantizeLinear has no block_size (per-tensor/channel INT4 is not what "
                         "TensorRT's weight-only GEMM expects)"))
            continue
        if len(sdims) != len(wdims):
            out.append(v(f"blockwise scale rank {len(sdims)} != weight rank {len(wdims)}"))
            continue
        axis = _attr(n, "axis", 1) % len(wdims)
        cons = _weight_consumer(g, n)
        if cons is not None and cons[0].op_type == "MatMul" and cons[1] == 1 and len(wdims) == 2 and axis != 0:
            out.append(v(f"blocks run along axis {axis}; MatMul weights [K, N] are blocked along K (axis 0)"))
        elif sdims[axis] != -(-wdims[axis] // block):
            out.append(v(f"scale dim {sdims[axis]} does not match ceil({wdims[axis]}/{block})"))
    return out


def rule_fp32_keep(g: _Graph, precision: str) -> list[Violation]:
    if not any(g.dtype_name(t) == "FLOAT16" for t in g.types.values()):
        return []
    out = []
    for n in g.nodes(*KEEP_FP32_OPS):
        for name in n.input:
            if name and g.type_name(name) == "FLOAT16":
                out.append(Violation("fp32-keep", n.name,
                                     f"{n.op_type} consumes float16 tensor {name!r}; keep it FP32 "
                                     "(Cast to float before it)"))
                break
    return out


RULES: dict[str, Callable[[_Graph, str], list[Violation]]] = {
    "opset-range": rule_opset_range,
    "io-types": rule_io_types,
    "unsupported-op": rule_unsupported_ops,
    "precision-content": rule_precision_content,
    "qdq-zero-point": rule_qdq_zero_point,
    "qdq-int8-type": rule_qdq_int8_type,
    "qdq-scale": rule_qdq_scale,
    "activation-per-tensor": rule_activation_per_tensor,
    "weight-per-channel": rule_weight_per_channel,
    "int4-blockwise": rule_int4_blockwise,
    "fp32-keep": rule_fp32_keep,
}


def _load(model):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path} does not exist", "pass the artifact's model.onnx")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf/IO errors have many types
        raise ArtifactError(f"{path} is not a readable ONNX model ({exc.__class__.__name__})",
                            "rebuild the artifact") from exc


def check_trt_onnx(model, precision: str) -> list[Violation]:
    """All rule violations of ``model`` (ModelProto or path) for ``precision``."""
    if precision not in PRECISIONS:
        raise TargetError(f"unknown TensorRT precision {precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
    g = _Graph(_load(model))
    return [v for rule in RULES.values() for v in rule(g, precision)]


def assert_trt_ready(model, precision: str) -> None:
    """Raise ``CompileError`` naming the first violations, if any."""
    found = check_trt_onnx(model, precision)
    if found:
        shown = "; ".join(str(v) for v in found[:3])
        more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
        raise CompileError(f"ONNX graph is not TensorRT-ready for {precision}: {shown}{more}",
                           f"run 'embedc check-trt MODEL.onnx --precision {precision}' for the full list")
