"""Embed a list of texts with any runner, batched by length, in input order.
The same tokenization feeds the torch reference and every artifact."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

EmbedFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def embed_texts(embed: EmbedFn, tokenizer, texts: Sequence[str], *, input_names: Sequence[str],
                max_length: int, batch_size: int = 16) -> np.ndarray:
    """Sort by token length (less padding), run in batches, restore input order."""
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length,
                                              verbose=False)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="np")
        feeds = {n: np.asarray(enc[n], dtype=np.int64) if n in enc else
                 np.zeros_like(enc["input_ids"], dtype=np.int64) for n in input_names}
        emb = np.asarray(embed(feeds), dtype=np.float32)
        if out is None:
            out = np.empty((len(texts), emb.shape[-1]), dtype=np.float32)
        out[idx] = emb
    if out is None:
        raise ValueError("no texts to embed")
    return out
