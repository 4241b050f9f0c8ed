"""Decoders through embedc's exporter (dynamo, family.hidden_states + pooling
in the graph): in the exported ONNX a bidirectional decoder's first token sees
the last one and a causal one's does not; padding on either side gives the
same embeddings; the export's validation covers a 2,048-token batch."""
from __future__ import annotations

import numpy as np
import pytest

from decoder_folders import tiny

TEXTS = ["Der schnelle braune Fuchs springt über den faulen Hund.", "猫が好きです",
         "a much longer English sentence that needs several more tokens than the others do", "ok"]


class Exported:
    def __init__(self, name: str, out):
        import onnxruntime as ort

        from embedc.artifact import read_meta

        self.meta = read_meta(out)
        self.tokenizer, self.adapter = tiny(name).tokenizer, tiny(name).adapter
        self.session = ort.InferenceSession(str(out / self.meta["model_file"]), providers=["CPUExecutionProvider"])

    def run(self, ids, mask, output: str):
        feeds = {"input_ids": np.asarray(ids, dtype=np.int64), "attention_mask": np.asarray(mask, dtype=np.int64)}
        return self.session.run([output], feeds)[0]

    def embed(self, texts, side):
        batch = self.tokenizer(texts, padding=True, padding_side=side, return_tensors="np")
        return self.run(batch["input_ids"], batch["attention_mask"], "sentence_embedding")


@pytest.fixture(scope="module")
def exported(cached_export):
    """embedc's export of each tiny decoder (the export stage a build runs)."""
    return {"bidirectional": Exported("random-tiny-pplx", cached_export("random-tiny-pplx")),
            "causal": Exported("random-tiny-qwen3-embedding", cached_export("random-tiny-qwen3-embedding"))}


def test_export_records_the_decoder_adapter_and_outputs(exported):
    pplx, qwen = exported["bidirectional"].meta, exported["causal"].meta
    assert pplx["adapter"]["attention"] == "bidirectional" and pplx["adapter"]["pooling"]["mode"] == "mean"
    assert qwen["adapter"]["attention"] == "causal" and qwen["adapter"]["pooling"]["mode"] == "last"
    assert [o["name"] for o in pplx["outputs"]] == ["sentence_embedding", "last_hidden_state", "pooler_output"]
    assert [o.name for o in exported["bidirectional"].session.get_outputs()][-1] == "pooler_output"


@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_validation_covered_2048_tokens(exported, mode):
    cells = exported[mode].meta["validation"]["cells"]
    assert cells["xlong/b2"]["seq"] >= 2040 and cells["xlong/b2"]["min_cosine"] > 0.99999
    assert exported[mode].meta["validation"]["passed"]


@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_attention_mode_in_the_exported_graph(exported, mode):
    graph = exported[mode]
    assert graph.adapter.attention == mode
    ids = np.array([[1000, 2000, 3000, 4000, 5000, 6000]])
    changed = ids.copy()
    changed[0, -1] = 7000
    mask = np.ones_like(ids)
    first = graph.run(ids, mask, "last_hidden_state")[0, 0]
    first_changed = graph.run(changed, mask, "last_hidden_state")[0, 0]
    if mode == "bidirectional":
        assert np.abs(first - first_changed).max() > 1e-3
    else:
        np.testing.assert_allclose(first, first_changed, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_exported_graph_is_padding_side_agnostic(exported, mode):
    graph = exported[mode]
    left, right = graph.embed(TEXTS, "left"), graph.embed(TEXTS, "right")
    alone = np.concatenate([graph.embed([t], "right") for t in TEXTS])
    np.testing.assert_allclose(left, right, atol=1e-5, rtol=0)
    np.testing.assert_allclose(left, alone, atol=1e-5, rtol=0)
    assert np.abs(left[0] - left[1]).max() > 1e-2
