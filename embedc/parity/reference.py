"""The torch FP32 reference embeddings of the evaluation split (computed once
per build, cached by content key), from the same module the export traced."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .harness import embed_texts


def reference_embeddings(embedder, tokenizer, texts: Sequence[str], *, max_length: int,
                         batch_size: int = 16) -> np.ndarray:
    from ..exporter.wrapper import torch_embed

    return embed_texts(lambda feeds: torch_embed(embedder, feeds), tokenizer, texts,
                       input_names=list(embedder.adapter.input_names), max_length=max_length,
                       batch_size=batch_size)
