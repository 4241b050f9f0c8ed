"""Parity per token-length bucket, on real token lengths and real embeddings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from embedc.calibration import PromptStyle, load_default_corpus, load_default_long_passages, make_splits
from embedc.calibration.feeds import token_lengths
from embedc.errors import UsageError
from embedc.parity.lengths import LengthParity, length_buckets, parity_by_length, render_length_table

LANGS = ("deu", "heb", "jpn", "tha")


@pytest.fixture(scope="module")
def eval_samples():
    """A real evaluation split with long passages: 4 languages, 4 short texts
    and 3 long passages each."""
    sp = make_splits(load_default_corpus(LANGS), calib_per_lang=2, eval_per_lang=4, seed=0,
                     long_passages=load_default_long_passages(LANGS), long_per_lang=3)
    return list(sp.evaluation)


@pytest.fixture(scope="module")
def truncation_cosines(tiny_source, tiny_tokenizer, eval_samples):
    """Per-text cosines between the torch embeddings of one model at 512 and at
    256 tokens (the 256-token cap of issue 10): 1.0 unless a text is longer than 256."""
    import torch

    from embedc.families import load_embedder
    from embedc.parity.reference import reference_embeddings

    texts = PromptStyle.e5().apply_all(eval_samples)
    model, _, _ = load_embedder(tiny_source)
    with torch.inference_mode():
        full = reference_embeddings(model, tiny_tokenizer, texts, max_length=512)
        capped = reference_embeddings(model, tiny_tokenizer, texts, max_length=256)
    cos = (full * capped).sum(1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(capped, axis=1))
    lengths = token_lengths(tiny_tokenizer, texts, 512)
    return {s.id: float(c) for s, c in zip(eval_samples, cos)}, lengths


def test_buckets_double_up_to_the_max_length():
    assert length_buckets([1, 64, 65, 512], 512) == ((1, 64), (65, 128), (129, 256), (257, 512))
    assert length_buckets([], 300) == ((1, 64), (65, 128), (129, 256), (257, 300))
    assert length_buckets([3], 514)[-2:] == ((257, 512), (513, 514))
    assert length_buckets([10], 32) == ((1, 32),)
    decoder = length_buckets([100], 8192)
    assert decoder[-1] == (4097, 8192) and len(decoder) == 8
    assert all(b[0] == a[1] + 1 for a, b in zip(decoder, decoder[1:]))
    with pytest.raises(UsageError, match="outside 1..512"):
        length_buckets([600], 512)  # not truncated
    with pytest.raises(UsageError, match="outside"):
        length_buckets([0, 5], 512)
    with pytest.raises(UsageError):
        length_buckets([1], 0)


def test_truncation_shows_only_in_the_long_bucket(truncation_cosines, eval_samples):
    cosines, lengths = truncation_cosines
    ids = [s.id for s in eval_samples]
    lp = parity_by_length(cosines, ids, lengths, 512)
    counts = {b.label: b.count for b in lp.buckets}
    assert counts == {"1-64": int((lengths <= 64).sum()),
                      "65-128": int(((lengths > 64) & (lengths <= 128)).sum()),
                      "129-256": int(((lengths > 128) & (lengths <= 256)).sum()),
                      "257-512": int((lengths > 256).sum())}
    assert sum(counts.values()) == len(ids)
    # the real split reaches every bucket, and the long passages reach the maximum
    assert all(n > 0 for n in counts.values()) and counts["257-512"] >= len(LANGS) * 2
    assert lp.at_max_length == int((lengths == 512).sum()) > 0
    *short, long = lp.buckets
    for b in short:  # texts that fit in 256 tokens embed the same under both caps
        assert b.min > 1 - 1e-5, b
    assert long.min < 0.999 and long.mean < 1 - 1e-4  # the cap changes every text over 256
    worst = min((i for i, n in zip(ids, lengths) if n > 256), key=cosines.get)
    assert long.worst == worst and long.min == pytest.approx(cosines[worst])
    assert long.mean == pytest.approx(np.mean([cosines[i] for i, n in zip(ids, lengths) if n > 256]))


def test_to_dict_round_trip_and_markdown(truncation_cosines, eval_samples):
    cosines, lengths = truncation_cosines
    ids = [s.id for s in eval_samples]
    lp = parity_by_length(cosines, ids, lengths, 512)
    d = json.loads(json.dumps(lp.to_dict()))
    assert [b["high"] for b in d["buckets"]] == [64, 128, 256, 512]
    again = LengthParity.from_dict(d)
    assert again.at_max_length == lp.at_max_length and [b.count for b in again.buckets] == [
        b.count for b in lp.buckets]
    assert again.buckets[-1].min == pytest.approx(lp.buckets[-1].min, abs=1e-6)
    table = render_length_table(lp).splitlines()
    assert table[:2] == ["| tokens | texts | mean | min |", "|---|---|---|---|"]
    assert table[-1].startswith(f"| 257-512 | {lp.buckets[-1].count} ({lp.at_max_length} at 512) | ")
    assert f"{lp.buckets[-1].min:.5f}" in table[-1]


def test_empty_buckets_are_kept(truncation_cosines, eval_samples):
    """A split without long texts leaves the top bucket empty, and says so."""
    cosines, lengths = truncation_cosines
    keep = [i for i, n in enumerate(lengths) if n <= 128]
    lp = parity_by_length(cosines, [eval_samples[i].id for i in keep], lengths[keep], 512)
    assert [b.count for b in lp.buckets[2:]] == [0, 0] and lp.at_max_length == 0
    assert lp.buckets[-1].mean is None and lp.buckets[-1].worst is None
    assert render_length_table(lp).splitlines()[-1] == "| 257-512 | 0 | - | - |"
    assert LengthParity.from_dict(lp.to_dict()).to_dict() == lp.to_dict()


def test_bad_inputs(truncation_cosines, eval_samples):
    cosines, lengths = truncation_cosines
    ids = [s.id for s in eval_samples]
    with pytest.raises(UsageError, match="token lengths"):
        parity_by_length(cosines, ids, lengths[:-1], 512)
    with pytest.raises(UsageError, match="no cosine"):
        parity_by_length(cosines, ids[:-1] + ["deu:query:nope"], lengths, 512)
    with pytest.raises(UsageError, match="outside"):
        parity_by_length(cosines, ids, lengths, 256)  # lengths measured at 512, not 256
