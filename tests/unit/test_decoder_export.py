"""The attention mode survives the dynamo export: in the ONNX graph a
bidirectional decoder's first token sees the last one and a causal one's does
not; padding on either side gives the same embeddings; a 2,048-token input
runs and matches torch. (A minimal export of family.hidden_states + pooling,
the same module shape the shared exporter wraps.)"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from decoder_folders import tiny
from embedc.families.decoder import pool

TEXTS = ["Der schnelle braune Fuchs springt über den faulen Hund.", "猫が好きです",
         "a much longer English sentence that needs several more tokens than the others do", "ok"]


class Embedder(torch.nn.Module):
    def __init__(self, family, model, adapter):
        super().__init__()
        self.family, self.model, self.adapter = family, model, adapter

    def forward(self, input_ids, attention_mask):
        hidden = self.family.hidden_states(self.model, input_ids, attention_mask, self.adapter)
        pooled = pool(hidden, attention_mask, self.adapter.pooling.mode)
        return torch.nn.functional.normalize(pooled, dim=-1), hidden


class Exported:
    def __init__(self, name: str, path):
        import onnxruntime as ort

        loaded = tiny(name)
        self.tokenizer, self.adapter = loaded.tokenizer, loaded.adapter
        self.module = Embedder(loaded.family, loaded.model, loaded.adapter).eval()
        sample = self.tokenizer(["a first sample", "and a second, longer sample text"], padding=True,
                                return_tensors="pt")
        axes = {0: "batch", 1: "sequence"}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(self.module, (sample["input_ids"], sample["attention_mask"]), dynamo=True,
                                        opset_version=18, input_names=["input_ids", "attention_mask"],
                                        output_names=["sentence_embedding", "last_hidden_state"],
                                        dynamic_shapes={"input_ids": axes, "attention_mask": axes}, verbose=False)
        program.save(str(path))
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(self, ids, mask):
        feeds = {"input_ids": np.asarray(ids, dtype=np.int64), "attention_mask": np.asarray(mask, dtype=np.int64)}
        return self.session.run(None, feeds)

    def embed(self, texts, side):
        batch = self.tokenizer(texts, padding=True, padding_side=side, return_tensors="np")
        return self.run(batch["input_ids"], batch["attention_mask"])[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoder-onnx")
    return {"bidirectional": Exported("random-tiny-pplx", folder / "pplx.onnx"),
            "causal": Exported("random-tiny-qwen3-embedding", folder / "qwen3.onnx")}


@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_attention_mode_in_the_exported_graph(exported, mode):
    graph = exported[mode]
    assert graph.adapter.attention == mode
    ids = np.array([[1000, 2000, 3000, 4000, 5000, 6000]])
    changed = ids.copy()
    changed[0, -1] = 7000
    mask = np.ones_like(ids)
    first = graph.run(ids, mask)[1][0, 0]
    first_changed = graph.run(changed, mask)[1][0, 0]
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


@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_exported_graph_runs_2048_tokens_like_torch(exported, mode):
    graph = exported[mode]
    rng = np.random.default_rng(0)
    ids = rng.integers(100, 150000, size=(2, 2048))
    mask = np.ones_like(ids)
    mask[1, 1500:] = 0  # the second row is a padded 1,500-token text
    got = graph.run(ids, mask)[0]
    with torch.inference_mode():
        want = graph.module(torch.as_tensor(ids), torch.as_tensor(mask))[0].numpy()
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() > 0.99999 and np.abs(got - want).max() < 1e-4
