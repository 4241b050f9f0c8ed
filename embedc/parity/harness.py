"""Embed a list of texts with any runner, batched by length, in input order.
The same tokenization feeds the torch reference and every artifact."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..calibration.feeds import encode_batch, token_lengths

EmbedFn = Callable[[dict[str, np.ndarray]], np.ndarray]


# Long inputs run in smaller batches: attention holds batch x heads x length^2 scores per layer
# (16 x 9 x 2048^2 x 4 B = 2.4 GB for SmolLM2 at 2,048 tokens). Up to 512 tokens the batches are
# the plain batch_size ones (16 x 512 = 8,192 tokens).
TOKEN_BUDGET = 8192


def length_batches(lengths: Sequence[int], batch_size: int, token_budget: int = TOKEN_BUDGET) -> list[np.ndarray]:
    """Indices sorted by token length, cut into batches of at most ``batch_size``
    texts and at most ``token_budget`` padded tokens (a longer text runs alone)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, cur = [], []
    for i in order:
        longest = int(lengths[i])  # ascending: the newcomer is the longest of the batch
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * longest > token_budget):
            batches.append(np.asarray(cur))
            cur = []
        cur.append(int(i))
    if cur:
        batches.append(np.asarray(cur))
    return batches


def embed_texts(embed: EmbedFn, tokenizer, texts: Sequence[str], *, input_names: Sequence[str],
                max_length: int, batch_size: int = 16) -> np.ndarray:
    """Sort by token length (less padding), run in batches, restore input order."""
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    out: np.ndarray | None = None
    for idx in length_batches(token_lengths(tokenizer, texts, max_length), batch_size):
        feeds = encode_batch(tokenizer, [texts[i] for i in idx], input_names=input_names, max_length=max_length)
        emb = np.asarray(embed(feeds), dtype=np.float32)
        if out is None:
            out = np.empty((len(texts), emb.shape[-1]), dtype=np.float32)
        out[idx] = emb
    return out
