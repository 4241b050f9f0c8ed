"""The benchmark's plain-ONNX subject (sentence-transformers' or optimum-cli's export):
pooling and normalization outside the graph, on either padding side."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from embedc.bench.worker import _onnx_file_subject, last_token_index


@pytest.fixture()
def id_model(tmp_path):
    """last_hidden_state[b, s] = (input_id, 1): pooling is readable from the output."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])
    pos = helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 2])
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["f", "axis"], ["u"]),
             helper.make_node("Cast", ["position_ids"], ["pf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["pf", "zero"], ["pz"]),          # position_ids must be fed, not read
             helper.make_node("Unsqueeze", ["pz", "axis"], ["pu"]),
             helper.make_node("Add", ["pu", "one"], ["ones"]),
             helper.make_node("Concat", ["u", "ones"], ["last_hidden_state"], axis=2)]
    inits = [helper.make_tensor("axis", TensorProto.INT64, [1], [2]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    model = helper.make_model(helper.make_graph(nodes, "ids", [ids, mask, pos], [out], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_last_token_index_either_side():
    right = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(right[:, ::-1]).tolist() == [3, 3, 3]   # left padding: always the last column


@pytest.mark.parametrize("pooling, want", [("last", [7.0, 9.0]), ("mean", [5.0, 6.0])])
@pytest.mark.parametrize("side", ["right", "left"])
def test_onnx_file_subject_pools_the_real_tokens(id_model, tiny_source, pooling, want, side):
    embed, _, names = _onnx_file_subject(str(id_model), 1, str(tiny_source.path), pooling)
    assert names == ["input_ids", "attention_mask", "position_ids"]
    ids = np.array([[3, 5, 7, 0], [3, 6, 9, 0]]) if side == "right" else np.array([[0, 3, 5, 7], [0, 3, 6, 9]])
    mask = (ids > 0).astype(np.int64)
    got = embed({"input_ids": ids, "attention_mask": mask, "position_ids": np.zeros_like(ids)})
    expect = np.array([[w, 1.0] for w in want])
    np.testing.assert_allclose(got, expect / np.linalg.norm(expect, axis=1, keepdims=True), rtol=1e-6)
