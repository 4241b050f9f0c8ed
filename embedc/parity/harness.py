"""Embed a list of texts with any runner, batched by length, in input order.
The same tokenization feeds the torch reference and every artifact."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..calibration.feeds import encode_batch, token_lengths

EmbedFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def embed_texts(embed: EmbedFn, tokenizer, texts: Sequence[str], *, input_names: Sequence[str],
                max_length: int, batch_size: int = 16) -> np.ndarray:
    """Sort by token length (less padding), run in batches, restore input order."""
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    order = np.argsort(token_lengths(tokenizer, texts, max_length), kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        feeds = encode_batch(tokenizer, [texts[i] for i in idx], input_names=input_names, max_length=max_length)
        emb = np.asarray(embed(feeds), dtype=np.float32)
        if out is None:
            out = np.empty((len(texts), emb.shape[-1]), dtype=np.float32)
        out[idx] = emb
    return out
