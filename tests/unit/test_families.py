"""The model-family seam on real (tiny) models: the model's own pooling is
read and exported, artifacts serve at the model's own maximum length."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from embedc.errors import ModelSourceError
from embedc.families import Pooling, adapter_for, load_embedder
from embedc.models import load_tokenizer, resolve_model
from helpers import cosines


def _with_pooling(src_dir, dst, **modes):
    shutil.copytree(src_dir, dst)
    (dst / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return dst


def test_cls_pooled_model_is_exported_and_judged_with_cls_pooling(tiny_source, tmp_path):
    """A BGE-style model (1_Pooling: CLS) must not be shipped with mean pooling."""
    from embedc.exporter import export_reference
    from embedc.runtime import load

    folder = _with_pooling(tiny_source.path, tmp_path / "cls-model", pooling_mode_cls_token=True)
    source = resolve_model(str(folder))
    adapter = adapter_for(source, load_tokenizer(source))
    assert adapter.pooling == Pooling("cls", normalize=False)
    export_reference(source, tmp_path / "export")  # validates ONNX vs torch on CLS pooling
    meta = json.loads((tmp_path / "export" / "embedc.json").read_text())
    assert meta["adapter"]["pooling"]["mode"] == "cls"

    embedder, tok, _ = load_embedder(source)
    texts = ["query: a short one", "query: a much longer text with many more tokens in it than the first"]
    enc = tok(texts, padding=True, return_tensors="pt")
    import torch

    with torch.inference_mode():
        hidden = embedder.encoder(**enc).last_hidden_state
    cls = torch.nn.functional.normalize(hidden[:, 0], dim=-1).numpy()
    mean = torch.nn.functional.normalize((hidden * enc["attention_mask"][..., None]).sum(1)
                                         / enc["attention_mask"].sum(1, keepdim=True), dim=-1).numpy()
    got = load(tmp_path / "export").encode(["a short one", texts[1][len("query: "):]], kind="query")
    assert cosines(got, cls).min() > 0.9999  # ONNX vs torch float noise on one token of a 32-wide random model
    assert cosines(got, mean).min() < 0.999  # it is not mean pooling


def test_unsupported_pooling_is_refused_in_one_line(tiny_source, tmp_path):
    folder = _with_pooling(tiny_source.path, tmp_path / "max-model", pooling_mode_max_tokens=True)
    source = resolve_model(str(folder))
    with pytest.raises(ModelSourceError, match="pooling_mode_max_tokens") as err:
        adapter_for(source, load_tokenizer(source))
    assert "\n" not in str(err.value)


def test_artifact_serves_at_the_models_own_max_length(tiny_source, tiny_reference):
    """A 400-token text is embedded like the torch model does it (512 tokens), not cut at a parity length."""
    from embedc.exporter.wrapper import torch_embed
    from embedc.runtime import load

    embedder, tok, adapter = load_embedder(tiny_source)
    assert adapter.max_length == 512
    text = " ".join(["Ein langer Absatz über Sprachmodelle und ihre Einbettungen."] * 30)
    n_tokens = len(tok("query: " + text)["input_ids"])
    assert 300 < n_tokens <= 512
    enc = load(tiny_reference)
    assert enc.max_length == 512
    got = enc.encode([text], kind="query")
    full = torch_embed(embedder, tok(["query: " + text], return_tensors="np"))
    cut = torch_embed(embedder, tok(["query: " + text], truncation=True, max_length=256, return_tensors="np"))
    assert cosines(got, full)[0] > 0.99999
    assert cosines(full, cut)[0] < 0.9999  # so the check above would catch a 256-token artifact
    assert np.isclose(np.linalg.norm(got), 1.0, atol=1e-5)


def test_sentence_transformers_serving_length_is_the_models_own(tiny_source, tmp_path):
    """A sentence-transformers folder serves at its ``max_seq_length`` (all-MiniLM-L6-v2: 256 of 512
    positions): that is where the torch model an artifact replaces truncates. A bad value is one line."""
    folder = _with_pooling(tiny_source.path, tmp_path / "st-model", pooling_mode_mean_tokens=True)
    source = resolve_model(str(folder))
    assert adapter_for(source, load_tokenizer(source)).max_length == 512  # no sentence_bert_config.json
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    assert adapter_for(source, load_tokenizer(source)).max_length == 128
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 4096}))
    assert adapter_for(source, load_tokenizer(source)).max_length == 512  # never past the position table
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": "long"}))
    with pytest.raises(ModelSourceError, match="max_seq_length") as err:
        adapter_for(source, load_tokenizer(source))
    assert "\n" not in str(err.value)


def test_all_minilm_serves_at_256_like_sentence_transformers():
    source = resolve_model("all-minilm-l6-v2")
    assert adapter_for(source, load_tokenizer(source)).max_length == 256
