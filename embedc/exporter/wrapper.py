"""The module that gets exported and that computes the torch reference: a
model family's body + pooling + L2 norm, so the ONNX graph emits the final
sentence embedding itself. One module for both, so export and reference can
never pool differently."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..families.base import POOLED_OUTPUT, SENTENCE_OUTPUT, TOKEN_OUTPUT


class SentenceEmbedder(nn.Module):
    """(input_ids, attention_mask) -> the adapter's outputs, in its order."""

    def __init__(self, family, model: nn.Module, adapter):
        super().__init__()
        # The attribute name is part of every exported node's module path
        # (``encoder.encoder.layer.11.output.dense``); recipes and recorded
        # exclusions match on those paths, so it stays "encoder" for every family.
        self.encoder = model
        self.family = family
        self.adapter = adapter

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.family.hidden_states(self.encoder, input_ids, attention_mask, self.adapter)
        pooled = pool(hidden, attention_mask, self.adapter.pooling.mode)
        outputs = {SENTENCE_OUTPUT: nn.functional.normalize(pooled, p=2.0, dim=-1), TOKEN_OUTPUT: hidden,
                   POOLED_OUTPUT: pooled}
        return tuple(outputs[name] for name in self.adapter.outputs)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Masked mean, or the first (``cls``) / last (``last``) attended token.
    Token positions come from the mask, so either padding side works."""
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return summed / counts
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    if mode == "last":
        index = (positions * attention_mask).argmax(dim=1)      # the highest attended position
    elif mode == "cls":
        index = attention_mask.argmax(dim=1)                    # first maximum: the first attended position
    else:
        raise ValueError(f"unknown pooling mode {mode!r}")
    index = index.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)


def mean_pool_normalize(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(pool(hidden, attention_mask, "mean"), p=2.0, dim=-1)


@torch.inference_mode()
def torch_embed(embedder: SentenceEmbedder, batch: dict) -> np.ndarray:
    """Reference ``sentence_embedding`` of the torch FP32 model for one tokenized batch."""
    ids = torch.as_tensor(batch["input_ids"])
    mask = torch.as_tensor(batch["attention_mask"])
    outputs = embedder(ids, mask)
    return outputs[embedder.adapter.outputs.index(SENTENCE_OUTPUT)].float().numpy()
