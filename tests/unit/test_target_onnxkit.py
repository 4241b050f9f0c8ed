"""The shared ONNX toolkit: the exclusion grammar, the external-data policy,
the QDQ consumer fix on ONNX Runtime's own quantizer output, the sensitivity
search and activation capture, each with one meaning."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from embedc.errors import TargetError
from embedc.onnxkit import files, scopes
from embedc.onnxkit.search import schedule, search

PATHS = {f"n{i}": f"encoder.encoder.layer.{i}.{part}" for i, part in
         [(1, "output.dense"), (11, "output.dense"), (1, "attention.output.dense"), (2, "intermediate.dense")]}


# ---- the exclusion grammar ----------------------------------------------------------------
@pytest.mark.parametrize("pattern, hits", [
    ("layer.1", ["n1", "n1_attn"]),               # not layer.11
    ("layer.11", ["n11"]),
    ("output.dense", ["n1", "n11", "n1_attn"]),   # anywhere, on dot boundaries
    ("layer.*.output.dense", ["n1", "n11"]),      # * is exactly one part: not attention.output.dense
    ("encoder.encoder.layer.2.intermediate.dense", ["n2"]),
    (".layer.1.", ["n1", "n1_attn"]),             # surrounding dots are ignored
    ("dense.weight", []),
])
def test_patterns_match_whole_parts(pattern, hits):
    paths = {("n1_attn" if "attention" in p else n): p for n, p in PATHS.items()}
    assert scopes.select(paths, scopes.parse_patterns(pattern)) == [n for n in paths if n in hits]


@pytest.mark.parametrize("bad", ["", "layer..1", "layer.1 output", "layer/1", ["ok", 3], 7])
def test_bad_patterns_are_refused(bad):
    with pytest.raises(ValueError):
        scopes.parse_patterns(bad)


def test_a_pattern_that_matches_nothing_is_a_usage_error():
    with pytest.raises(TargetError, match="'layer.7' matches no Linear layer") as err:
        scopes.select_strict(PATHS, ("layer.1", "layer.7"))
    assert err.value.exit_code == 2 and "encoder.encoder.layer" in err.value.hint


def test_module_paths_come_from_dynamo_name_scopes(tiny_reference):
    model = onnx.load(str(tiny_reference / "model.onnx"), load_external_data=False)
    paths = scopes.module_paths(model)
    by_op = {}
    for n in model.graph.node:
        by_op.setdefault(n.op_type, []).append(paths[n.name])
    assert "encoder.encoder.layer.0.attention.self.query" in by_op["MatMul"]
    assert any(p.endswith("word_embeddings") for p in by_op["Gather"])
    assert all(p == "" for n in model.graph.node for p in [paths[n.name]] if n.op_type == "ReduceL2")  # root module


# ---- the external-data policy ----------------------------------------------------------------
def test_save_above_the_threshold_writes_external_data_and_keeps_the_model_usable(tiny_reference, tmp_path,
                                                                                  monkeypatch):
    model = onnx.load(str(tiny_reference / "model.onnx"))
    monkeypatch.setattr(files, "EXTERNAL_DATA_BYTES", 1_000_000)
    assert files.needs_external_data(model) and files.file_needs_external_data(tiny_reference / "model.onnx")
    path = tmp_path / "m.onnx"
    files.save_model(model, path)
    assert [p.name for p in files.model_files(path)] == ["m.onnx", "m.onnx.data"]
    # the proto still holds its tensors: a caller that keeps using it (the search does) reads real weights
    table = next(t for t in model.graph.initializer if t.name.endswith("word_embeddings.weight"))
    assert numpy_helper.to_array(table).shape == (250002, 32)
    np.testing.assert_array_equal(numpy_helper.to_array(table),
                                  numpy_helper.to_array(next(t for t in onnx.load(str(path)).graph.initializer
                                                             if t.name == table.name)))
    monkeypatch.setattr(files, "EXTERNAL_DATA_BYTES", 10**12)
    files.save_model(model, path)  # back under the threshold: one file, the stale .data removed
    assert [p.name for p in files.model_files(path)] == ["m.onnx"]
    files.save_model(model, path)  # keep=False: written in full, the caller's proto left without the data
    monkeypatch.setattr(files, "EXTERNAL_DATA_BYTES", 1_000_000)
    files.save_model(model, path, keep=False)
    assert not table.HasField("raw_data") and onnx.external_data_helper.uses_external_data(table)
    np.testing.assert_array_equal(numpy_helper.to_array(next(t for t in onnx.load(str(path)).graph.initializer
                                                             if t.name == table.name)),
                                  numpy_helper.to_array(table, base_dir=str(tmp_path)))


def test_row_cosines_in_chunks_equal_one_pass():
    from embedc.onnxkit.metrics import row_cosines

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1001, 24)).astype(np.float32), rng.normal(size=(1001, 24)).astype(np.float32)
    a[5] = b[5] = 0.0                                               # zero against zero counts as 1
    whole = row_cosines(a, b, chunk=10**6)
    np.testing.assert_allclose(row_cosines(a, b, chunk=64), whole, rtol=0, atol=0)
    x, y = a.astype(np.float64), b.astype(np.float64)
    ref = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)
    np.testing.assert_allclose(np.delete(whole, 5), np.delete(ref, 5), rtol=1e-12)
    assert whole[5] == 1.0


# ---- the QDQ consumer fix --------------------------------------------------------------------
def _residual_model():
    """h = Relu(x); y = MatMul(h, W) + h; h is also a graph output (the hidden state)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "W")
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "W"], ["mm"], name="linear"),
             helper.make_node("Add", ["mm", "h"], ["y"], name="residual")]
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8])  # noqa: E731
    graph = helper.make_graph(nodes, "g", [io("x")], [io("y"), io("h")], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_keep_float_consumers_on_ort_quantizer_output(tmp_path):
    import onnxruntime as ort

    from embedc.onnxkit.qdq import keep_float_consumers
    from embedc.onnxkit.session import import_quantization

    q = import_quantization()
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_residual_model(), str(src))
    rng = np.random.default_rng(1)

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": rng.normal(size=(1, 4, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ, nodes_to_quantize=["linear"],
                      op_types_to_quantize=["MatMul"], extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})
    model = onnx.load(str(dst))
    prod = {o: n for n in model.graph.node for o in n.output}
    assert prod["h"].op_type == "DequantizeLinear"  # ORT rewired the output and the residual to the INT8 copy
    fixed = keep_float_consumers(model, {"linear"})
    prod = {o: n for n in fixed.graph.node for o in n.output}
    node = {n.name: n for n in fixed.graph.node}
    assert prod["h"].op_type == "Relu"                                   # the graph output is float again
    assert prod[node["residual"].input[1]].op_type == "Relu"             # the residual reads float
    assert prod[node["linear"].input[0]].op_type == "DequantizeLinear"   # the GEMM reads the quantized copy
    onnx.checker.check_model(fixed)
    x = rng.normal(size=(1, 4, 8)).astype(np.float32)
    onnx.save(fixed, str(dst))
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(["h"], {"x": x})[0]
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(["h"], {"x": x})[0]
    np.testing.assert_array_equal(got, ref)


# ---- the sensitivity search ------------------------------------------------------------------
def _model_of(kept_needed: int, noisy_at: int | None = None):
    """Trials on a synthetic problem: the score reaches the target once the ``kept_needed`` most
    sensitive layers are out (``noisy_at``: one trial count that scores worse than its neighbours)."""
    built = []

    def build(excluded):
        built.append(list(excluded))
        return len([e for e in excluded if e != "f"])  # the "model": how many ranked layers are out

    def score(k):
        base = 0.99 + 0.001 * min(k, kept_needed)
        if k == noisy_at:
            base -= 0.005
        return {"mean": base, "p01": base, "min": base}
    return build, score, built


def test_search_finds_the_fewest_layers_by_steps_then_bisection():
    build, score, built = _model_of(kept_needed=5)
    order = [f"l{i}" for i in range(20)]
    r = search(build, score, lambda _: order, forced=["f"], targets={"mean": 0.995, "min": 0.995}, cap=12)
    assert r.met and r.excluded == ["f", "l0", "l1", "l2", "l3", "l4"]
    assert [t["excluded"] for t in r.trials] == [1, 2, 3, 5, 9, 7, 6]  # forced + 0, 1, 2, 4, 8, then 6, 5, ...
    assert all(b[0] == "f" for b in built)


def test_search_without_a_hit_keeps_the_best_trial_and_respects_limits():
    build, score, _ = _model_of(kept_needed=30, noisy_at=12)
    order = [f"l{i}" for i in range(40)]
    r = search(build, score, lambda _: order, forced=[], targets={"min": 1.0}, cap=12)
    assert not r.met and [t["excluded"] for t in r.trials] == [0, 1, 2, 4, 8, 12]
    assert len(r.excluded) == 8  # the best trial, not the last (k = 12 scored worse)
    r = search(build, score, lambda _: order, forced=[], targets={"min": 1.0}, cap=12, max_trials=3)
    assert len(r.trials) == 3
    r = search(build, score, lambda _: order, forced=[], targets={"min": 1.0}, cap=12, enabled=False)
    assert len(r.trials) == 1 and r.excluded == [] and r.order == []
    assert schedule(12) == [1, 2, 4, 8, 12] and schedule(18) == [1, 2, 4, 8, 12, 16, 18] and schedule(0) == []


# ---- activation capture ----------------------------------------------------------------------
def test_capture_ignores_padding_and_samples_the_same_tokens_for_every_tensor(tiny_reference, tiny_tokenizer):
    from embedc.onnxkit.activations import capture
    from embedc.onnxkit.graph import weight_matmuls

    model = onnx.load(str(tiny_reference / "model.onnx"), load_external_data=False)
    ln_out = sorted({n.input[0] for n in weight_matmuls(model)})[:2]
    texts = ["a short text", "a much longer text with many more tokens than the first one has"]
    enc = tiny_tokenizer(texts, padding=True, return_tensors="np")
    padded = [{k: np.asarray(enc[k], np.int64) for k in ("input_ids", "attention_mask")}]
    one_by_one = [{k: np.asarray(v, np.int64)[None] for k, v in tiny_tokenizer(t).items()
                   if k in ("input_ids", "attention_mask")} for t in texts]
    a = capture(tiny_reference / "model.onnx", ln_out, padded, threads=1, rows=10**6)
    b = capture(tiny_reference / "model.onnx", ln_out, one_by_one, threads=1, rows=10**6)
    attended = int(enc["attention_mask"].sum())
    for t in ln_out:
        assert a.samples[t].shape[0] == b.samples[t].shape[0] == attended  # every attended token, no padding
        np.testing.assert_allclose(a.lo[t], b.lo[t], atol=1e-5)
        np.testing.assert_allclose(a.hi[t], b.hi[t], atol=1e-5)
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    c = capture(tiny_reference / "model.onnx", ln_out, one_by_one, threads=1, rows=8, seed=3)
    rows = {t: c.samples[t].shape[0] for t in ln_out}
    assert len(set(rows.values())) == 1 and 0 < rows[ln_out[0]] < attended  # one token choice for all tensors
