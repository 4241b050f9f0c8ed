"""The module that gets exported: encoder + masked mean pooling + L2 norm,
so the ONNX graph emits the final sentence embedding itself."""
from __future__ import annotations

import torch
from torch import nn


class SentenceEmbedder(nn.Module):
    """(input_ids, attention_mask) -> (sentence_embedding, last_hidden_state)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool_normalize(hidden, attention_mask), hidden


def mean_pool_normalize(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return nn.functional.normalize(summed / counts, p=2.0, dim=-1)


@torch.inference_mode()
def torch_embed(model: nn.Module, batch: dict) -> "np.ndarray":  # noqa: F821
    """Reference embeddings from the torch FP32 model for one tokenized batch."""
    ids = torch.as_tensor(batch["input_ids"])
    mask = torch.as_tensor(batch["attention_mask"])
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return mean_pool_normalize(hidden, mask).numpy()
