"""The min/max 4-bit grid with float zero points (embedc.int4.grid) and its ORT writer
(embedc.targets.ort.float_zero: the symmetric MatMulNBits kernel plus a per-block correction,
the same function as MatMulNBits with fp32 zero points): weights that lie
on GGUF Q4_1's grid (a scale and a minimum per block of 32) come back exactly through ONNX
Runtime, where ORT's own asymmetric quantizer (uint4 zero points) cannot place the minimum;
off the grid it is round-to-nearest within half a step."""
from __future__ import annotations

from functools import partial

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embedc.onnxkit.session import cpu_session
from embedc.int4.grid import ON_GRID, minmax_codes
from embedc.targets.ort.float_zero import dequantized_weights, quantize_float_zero, zero_point_nodes
from helpers import q4_1_weight

K, N, BLOCK = 96, 24, 32  # the grid's block: q4_1_weight's 32


def matmul_model(w: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", w.shape[1]])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray, tmp_path, name: str) -> np.ndarray:
    onnx.save(model, str(tmp_path / name))
    return cpu_session(tmp_path / name).run(None, {"x": x})[0]


def zero_point_model(w: np.ndarray) -> onnx.ModelProto:
    """The same weights as one MatMulNBits with fp32 zero points (the slower kernel's form)."""
    model = matmul_model(w)
    quantize_float_zero(model, ["mm"], BLOCK, write=partial(zero_point_nodes, accuracy_level=0))
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits"] and len(model.graph.node[0].input) == 4
    return model


def test_weights_on_the_q4_1_grid_come_back_exactly_through_ort(tmp_path):
    rng = np.random.default_rng(0)
    w = q4_1_weight(rng)
    x = rng.standard_normal((5, K)).astype(np.float32)
    model = matmul_model(w)
    record = quantize_float_zero(model, ["mm"], BLOCK)
    assert record["weights"] == record["already_on_the_grid"] == 1 and record["max_relative_error"] <= ON_GRID
    # the symmetric kernel (no zero-point input) plus the block-sum correction, fp32 activations
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits", "MatMul", "MatMul", "Add"]
    nbits = model.graph.node[0]
    assert len(nbits.input) == 3 and {a.name: a.i for a in nbits.attribute}["accuracy_level"] == 1
    assert {i.name for i in model.graph.initializer} == {"w_Q4", "w_scales", "w_offsets", f"block_sums_{K}_{BLOCK}"}
    got = run(model, x, tmp_path, "fz.onnx")
    np.testing.assert_allclose(got, x @ w, rtol=0, atol=1e-5 * np.abs(x @ w).max())
    np.testing.assert_allclose(dequantized_weights(model)["mm"], w, rtol=0, atol=1e-6)  # the reader agrees
    # the same function as MatMulNBits with fp32 zero points, which the reader also reads
    zp = zero_point_model(w)
    np.testing.assert_allclose(run(zp, x, tmp_path, "zp.onnx"), got, rtol=0, atol=1e-5 * np.abs(got).max())
    np.testing.assert_allclose(dequantized_weights(zp)["mm"], w, rtol=0, atol=1e-6)

    # ORT's own asymmetric 4-bit quantizer writes integer zero points: the same weights come back rounded
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    quant = mnq.MatMulNBitsQuantizer(matmul_model(w), bits=4, block_size=BLOCK, is_symmetric=False, accuracy_level=0)
    quant.process()
    theirs = run(quant.model.model, x, tmp_path, "uint4.onnx")
    assert np.abs(theirs - x @ w).max() > 100 * np.abs(got - x @ w).max()
    w4 = dequantized_weights(quant.model.model)["mm"]  # the reader gives what ORT computes with uint4 zero points
    np.testing.assert_allclose(x @ w4, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())


def test_block_sums_are_shared_by_equal_widths_and_cover_a_padded_last_block(tmp_path):
    """Two MatMuls of the same input width share one block-sum matrix; a width that is not a
    multiple of the block (its last block padded) computes what the zero-point form computes."""
    rng = np.random.default_rng(2)
    k = K + 8
    w1, w2 = (rng.standard_normal((k, N)).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("MatMul", ["x", "w2"], ["g"], name="mm2"),
             helper.make_node("Add", ["h", "g"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", N])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    quantize_float_zero(model, ["mm1", "mm2"], BLOCK)
    sums = [i for i in model.graph.initializer if i.name.startswith("block_sums_")]
    assert [(t.name, list(t.dims)) for t in sums] == [(f"block_sums_{k}_{BLOCK}", [k, 4])]
    x = rng.standard_normal((3, k)).astype(np.float32)
    deq = dequantized_weights(model)
    expected = x @ zero_point_weight(w1) + x @ zero_point_weight(w2)
    np.testing.assert_allclose(run(model, x, tmp_path, "two.onnx"), expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(x @ deq["mm1"] + x @ deq["mm2"], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def zero_point_weight(w: np.ndarray) -> np.ndarray:
    """``w`` on the min/max grid, dequantized ``(code - zero) * scale`` in numpy."""
    codes, scale, zero, _ = minmax_codes(w, BLOCK)
    return ((codes - zero[..., None]) * scale[..., None]).reshape(w.shape[1], -1).T[:w.shape[0]]


def test_off_the_grid_it_is_round_to_nearest_on_each_blocks_range():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((K + 8, N)).astype(np.float32)  # K not a multiple of the block: padded
    codes, scale, zero, err = minmax_codes(w, BLOCK)
    assert codes.shape == (N, 4, BLOCK) and scale.shape == zero.shape == (N, 4) and codes.max() == 15
    deq = ((codes - zero[..., None]) * scale[..., None]).reshape(N, -1).T[:K + 8]
    assert np.all(np.abs(deq - w) <= scale.T.repeat(BLOCK, 0)[:K + 8] / 2 + 1e-6)
    g = w.T.reshape(N, -1)
    assert np.allclose(deq.T.min(1), g.min(1)) and np.allclose(deq.T.max(1), g.max(1), atol=1e-6)
    assert err > ON_GRID


def test_a_constant_block_is_stored_exactly():
    w = np.full((BLOCK, 2), 0.25, np.float32)
    codes, scale, zero, err = minmax_codes(w, BLOCK)
    assert err == 0 and np.all(codes == 0) and np.allclose(-zero * scale, 0.25)
