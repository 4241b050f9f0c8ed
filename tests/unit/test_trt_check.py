"""The TensorRT structural checker: one small hand-made bad graph per rule
(built with onnx.helper), plus a passing twin for each, and the CLI."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from embedc.errors import CompileError, TargetError
from embedc.targets.tensorrt.check import RULES, assert_trt_ready, check_trt_onnx
from embedc.targets.tensorrt.cli import check_trt, check_trt_command, engine

K, N, V = 32, 16, 50


def _model(nodes, inits, *, opset=21, out_type=TensorProto.FLOAT, extra_opsets=()):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("sentence_embedding", out_type, ["batch", N])],
        initializer=inits)
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def _table(dtype=np.float32):
    return numpy_helper.from_array(np.random.default_rng(0).normal(size=(V, K)).astype(dtype), "table")


def _tail(src: str) -> list:
    """[B, S, N] -> sum over the sequence -> sentence_embedding [B, N]."""
    return [helper.make_node("ReduceSum", [src, "axes1"], ["sentence_embedding"], keepdims=0, name="pool")]


def _axes():
    return numpy_helper.from_array(np.array([1], dtype=np.int64), "axes1")


def int8_model(*, zp=0, qtype=TensorProto.INT8, act_scale_shape=(), w_axis=1, opset=21, out_type=TensorProto.FLOAT):
    """Gather -> Q/DQ (activation) -> MatMul(DQ(int8 W)) -> sum pool."""
    w = np.random.default_rng(1).integers(-127, 127, size=(K, N)).astype(np.int8)
    w_scale = np.full((w.shape[w_axis],), 0.01, np.float32)
    a_scale = np.full(act_scale_shape, 0.05, np.float32)
    np_q = np.int8 if qtype == TensorProto.INT8 else np.uint8
    a_zp = np.full(act_scale_shape, zp, np_q)
    inits = [_table(), _axes(), numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
             numpy_helper.from_array(a_scale, "a_scale"), numpy_helper.from_array(a_zp, "a_zp"),
             numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "w_zp")]
    axis_kw = {"axis": 2} if act_scale_shape else {}
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["x"], name="embed"),
             helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zp"], ["x_q"], name="q_act", **axis_kw),
             helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zp"], ["x_dq"], name="dq_act", **axis_kw),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=w_axis),
             helper.make_node("MatMul", ["x_dq", "w"], ["y"], name="linear"),
             *_tail("y")]
    if out_type != TensorProto.FLOAT:
        nodes[-1].output[0] = "pooled"
        nodes.append(helper.make_node("Cast", ["pooled"], ["sentence_embedding"], to=out_type, name="cast_out"))
    return _model(nodes, inits, opset=opset, out_type=out_type)


def int4_model(*, block_size=16, opset=21, qtype=TensorProto.INT4, axis=0):
    """Gather -> MatMul(DQ(int4 W [K, N], blockwise along K)) -> sum pool."""
    vals = np.random.default_rng(2).integers(-8, 8, size=(K, N))
    blocks = -(-K // block_size) if block_size else 1
    scale = np.full((blocks, N), 0.02, np.float32) if block_size else np.full((N,), 0.02, np.float32)
    w = helper.make_tensor("w_q", qtype, [K, N], (vals if qtype == TensorProto.INT4 else vals + 8).flatten().tolist())
    attrs = {"axis": axis if block_size else 1, **({"block_size": block_size} if block_size else {})}
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["x"], name="embed"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"], name="dq_w4", **attrs),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="linear"),
             *_tail("y")]
    return _model(nodes, [_table(), _axes(), w, numpy_helper.from_array(scale, "w_scale")], opset=opset)


def fp16_model(*, cast_before_ln=True, out_type=TensorProto.FLOAT):
    """FP16 Gather -> (Cast to FP32) -> LayerNormalization -> MatMul -> sum pool."""
    ln_in = "x32" if cast_before_ln else "x"
    ln_dtype = np.float32 if cast_before_ln else np.float16
    inits = [_table(np.float16), _axes(),
             numpy_helper.from_array(np.ones(K, ln_dtype), "gamma"),
             numpy_helper.from_array(np.zeros(K, ln_dtype), "beta"),
             numpy_helper.from_array(np.random.default_rng(3).normal(size=(K, N)).astype(np.float16), "w")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["x"], name="embed")]
    if cast_before_ln:
        nodes.append(helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT, name="cast_ln"))
    nodes.append(helper.make_node("LayerNormalization", [ln_in, "gamma", "beta"], ["h"], axis=-1, name="ln"))
    h16 = "h"
    if cast_before_ln:
        nodes.append(helper.make_node("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16, name="cast_mm"))
        h16 = "h16"
    nodes += [helper.make_node("MatMul", [h16, "w"], ["y16"], name="linear"),
              helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT, name="cast_pool"), *_tail("y")]
    if out_type != TensorProto.FLOAT:
        nodes[-1].output[0] = "pooled"
        nodes.append(helper.make_node("Cast", ["pooled"], ["sentence_embedding"], to=out_type, name="cast_out"))
    return _model(nodes, inits, opset=17, out_type=out_type)


def rules_of(model, precision) -> set[str]:
    return {v.rule for v in check_trt_onnx(model, precision)}


# ---- the good twins pass, and they really run ------------------------------------------------

@pytest.mark.parametrize("make,precision", [(int8_model, "int8"), (int4_model, "int4"), (fp16_model, "fp16")])
def test_good_hand_made_graphs_pass_and_run(make, precision):
    import onnxruntime as ort

    model = make()
    onnx.checker.check_model(model)
    assert check_trt_onnx(model, precision) == []
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(["sentence_embedding"], {"input_ids": np.array([[1, 2, 3]], dtype=np.int64)})[0]
    assert out.shape == (1, N) and out.dtype == np.float32 and np.all(np.isfinite(out))


# ---- one bad graph per rule -------------------------------------------------------------------

def test_asymmetric_zero_point():
    assert "qdq-zero-point" in rules_of(int8_model(zp=3), "int8")


def test_uint8_quantize():
    found = rules_of(int8_model(qtype=TensorProto.UINT8, zp=0), "int8")
    assert "qdq-int8-type" in found


def test_per_channel_activation_scale():
    assert "activation-per-tensor" in rules_of(int8_model(act_scale_shape=(K,)), "int8")


def test_weight_axis_not_output_channel():
    found = check_trt_onnx(int8_model(w_axis=0), "int8")
    assert [v.node for v in found if v.rule == "weight-per-channel"] == ["dq_w"]


def test_int4_without_block_size():
    found = check_trt_onnx(int4_model(block_size=0), "int4")
    assert any(v.rule == "int4-blockwise" and "block_size" in v.message for v in found)


def test_int4_at_opset_20():
    found = check_trt_onnx(int4_model(opset=20), "int4")
    assert {"opset-range", "int4-blockwise"} <= {v.rule for v in found}


def test_int4_blocked_along_n_instead_of_k():
    assert "int4-blockwise" in rules_of(int4_model(axis=1), "int4")


def test_uint4_weights():
    assert "int4-blockwise" in rules_of(int4_model(qtype=TensorProto.UINT4), "int4")


def test_fp16_layernorm_without_cast():
    found = check_trt_onnx(fp16_model(cast_before_ln=False), "fp16")
    assert [(v.rule, v.node) for v in found] == [("fp32-keep", "ln")]


def test_float16_output():
    found = check_trt_onnx(fp16_model(out_type=TensorProto.FLOAT16), "fp16")
    assert [v.rule for v in found] == ["io-types"]


def test_matmulnbits_present():
    model = int4_model()
    nbits = helper.make_node("MatMulNBits", ["x", "w_q", "w_scale"], ["y2"], domain="com.microsoft",
                             K=K, N=N, bits=4, block_size=16, name="nbits")
    model.graph.node.insert(2, nbits)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    found = check_trt_onnx(model, "int4")
    assert [v.node for v in found if v.rule == "unsupported-op"] == ["nbits"]


def test_dynamic_quantize_linear_denied():
    model = int8_model()
    model.graph.node.insert(1, helper.make_node("DynamicQuantizeLinear", ["x"], ["a", "b", "c"], name="dyn"))
    assert "unsupported-op" in rules_of(model, "int8")


def test_non_positive_scale():
    model = int8_model()
    for t in model.graph.initializer:
        if t.name == "w_scale":
            t.CopyFrom(numpy_helper.from_array(np.zeros(N, np.float32), "w_scale"))
    assert "qdq-scale" in rules_of(model, "int8")


def test_precision_content_and_opset_of_fp32_graph_labelled_int8():
    model = fp16_model()
    assert "precision-content" in rules_of(model, "int8")


def test_float_graph_input():
    model = int8_model()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    assert "io-types" in rules_of(model, "int8")


def test_every_rule_has_a_test_here():
    tested = {"qdq-zero-point", "qdq-int8-type", "activation-per-tensor", "weight-per-channel", "int4-blockwise",
              "opset-range", "fp32-keep", "io-types", "unsupported-op", "qdq-scale", "precision-content"}
    assert tested == set(RULES)


def test_assert_raises_compile_error_and_unknown_precision():
    with pytest.raises(CompileError, match="qdq-zero-point"):
        assert_trt_ready(int8_model(zp=5), "int8")
    with pytest.raises(TargetError):
        check_trt_onnx(int8_model(), "fp8x")


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_exit_codes(tmp_path):
    bad, good = tmp_path / "bad.onnx", tmp_path / "good.onnx"
    onnx.save(int8_model(zp=2, w_axis=0), bad)
    onnx.save(int8_model(), good)
    r = CliRunner().invoke(check_trt, [str(bad), "--precision", "int8"])
    assert r.exit_code == 1
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[")]
    assert {ln.split("]")[0][1:] for ln in lines} == {"qdq-zero-point", "weight-per-channel"}
    r = CliRunner().invoke(check_trt, [str(good), "--precision", "int8"])
    assert r.exit_code == 0 and "TensorRT-ready" in r.stdout
    assert len(check_trt_command(bad, "int8")) == len(lines)


def test_cli_help():
    for cmd in (check_trt, engine):
        r = CliRunner().invoke(cmd, ["--help"])
        assert r.exit_code == 0 and "Usage" in r.output
