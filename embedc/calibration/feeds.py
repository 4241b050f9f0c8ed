"""Texts -> the int64 numpy feeds that quantizers and runtimes consume, and
the token-length statistics that size static shapes.

The tokenizer is a Hugging Face tokenizer (``transformers.AutoTokenizer``);
prompts must already be applied (see :mod:`.prompts`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import CorpusError, UsageError

SUPPORTED_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def _check(texts: Sequence[str], max_length: int, batch_size: int = 1) -> None:
    if batch_size < 1:
        raise UsageError(f"batch size {batch_size} is invalid", "use a batch size of 1 or more")
    if max_length < 2:
        raise UsageError(f"max length {max_length} is invalid",
                         "use a max length of 2 tokens or more (special tokens take 2)")
    if not texts:
        raise CorpusError("no texts to tokenize", "check that the corpus split is not empty")


def _encode(tokenizer, texts: Sequence[str], max_length: int, *, pad: bool) -> dict:
    return tokenizer(list(texts), padding="longest" if pad else False, truncation=True,
                     max_length=max_length, return_tensors="np" if pad else None)


def token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Tokens per text, special tokens included, after truncation."""
    _check(texts, max_length)
    enc = _encode(tokenizer, texts, max_length, pad=False)
    return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)


def encode_batch(tokenizer, texts: Sequence[str], *, input_names: Sequence[str], max_length: int
                 ) -> dict[str, np.ndarray]:
    """One padded batch as ``{name: int64 array (batch, seq)}``: the one feed
    builder behind calibration, the torch reference, parity, benchmarks and
    ``embedc.load``, so every consumer sees the same tokens.

    Padding follows the tokenizer's own side (decoder graphs take positions
    from the mask). ``token_type_ids`` are zeros when the tokenizer does not
    produce them; ``position_ids`` count the attended tokens (0, 1, ...)."""
    enc = _encode(tokenizer, texts, max_length, pad=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc.get("attention_mask", np.ones_like(ids)), dtype=np.int64)
    feed: dict[str, np.ndarray] = {}
    for name in input_names:
        if name == "input_ids":
            feed[name] = ids
        elif name == "attention_mask":
            feed[name] = mask
        elif name == "token_type_ids":
            tt = enc.get("token_type_ids")
            feed[name] = np.zeros_like(ids) if tt is None else np.asarray(tt, dtype=np.int64)
        else:  # position_ids
            feed[name] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
    return feed


def tokenize_batches(tokenizer, texts: list[str], *, batch_size: int, max_length: int,
                     input_names: list[str], sort_by_length: bool = False
                     ) -> list[dict[str, np.ndarray]]:
    """Batches of :func:`encode_batch` feeds, each padded to its longest text
    and truncated to ``max_length``. With ``sort_by_length`` the texts are
    batched shortest first (less padding; the order of texts changes, so use
    it for calibration, not where outputs must line up with inputs)."""
    _check(texts, max_length, batch_size)
    unknown = [n for n in input_names if n not in SUPPORTED_INPUTS]
    if unknown or not input_names:
        raise UsageError(f"cannot feed model input(s) {unknown or input_names}",
                         f"supported inputs: {', '.join(SUPPORTED_INPUTS)}")
    if getattr(tokenizer, "pad_token", None) is None:
        raise UsageError("the tokenizer has no padding token",
                         "set tokenizer.pad_token (e.g. to its eos token) before batching")
    order = list(range(len(texts)))
    if sort_by_length:
        lengths = token_lengths(tokenizer, texts, max_length)
        order.sort(key=lambda i: (int(lengths[i]), i))
    return [encode_batch(tokenizer, [texts[i] for i in order[start:start + batch_size]],
                         input_names=input_names, max_length=max_length)
            for start in range(0, len(order), batch_size)]


def length_distribution(tokenizer, texts: list[str], max_length: int) -> dict:
    """Token-length statistics (after truncation to ``max_length``):
    ``min``, ``p50``, ``p90``, ``p99``, ``max`` (observed lengths, rounded up
    to one that occurs), plus ``n``, ``mean``, ``max_length`` and
    ``at_max_length`` (texts that reach it: truncated, or exactly that long). Sizes TensorRT optimization profiles
    (min/opt/max) and static-shape buckets for NPUs."""
    lengths = token_lengths(tokenizer, texts, max_length)
    pct = {f"p{q}": int(np.percentile(lengths, q, method="higher")) for q in (50, 90, 99)}
    return {
        "n": int(lengths.size),
        "min": int(lengths.min()),
        **pct,
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 2),
        "max_length": int(max_length),
        "at_max_length": int((lengths >= max_length).sum()),
    }
