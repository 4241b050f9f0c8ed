"""A decoder folder's own remote code (``auto_map`` -> its modeling.py), run
only with ``--trust-remote-code``, and the parity of that path against
embedc's own implementation of the same model (pplx-embed: bidirectional Qwen3)."""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import ModelSourceError
from .decoder import REMOTE_ATTR


def load_remote_torch(source):
    """The folder's own model class through transformers' remote-code loader (FP32, eager)."""
    import torch
    from transformers import AutoModel

    if not source.trust_remote_code:
        raise ModelSourceError(f"model {source.name} needs its own remote code (auto_map in config.json)",
                               "review that code, then pass --trust-remote-code")
    try:
        model = AutoModel.from_pretrained(str(source.path), trust_remote_code=True, dtype=torch.float32,
                                          attn_implementation="eager", use_safetensors=not source.allow_pickle)
    except Exception as exc:  # foreign code can raise anything: report it as the model's failure
        raise ModelSourceError(f"the remote code of {source.name} failed to load: {str(exc).splitlines()[0][:200]}",
                               "check the folder's modeling files") from exc
    setattr(model, REMOTE_ATTR, True)
    return model.float().eval()


def remote_code_parity(source, texts: Sequence[str], *, tokenizer=None, adapter=None, batch_size: int = 8) -> dict:
    """Embeddings of the folder's remote code vs embedc's own path on ``texts``
    (same tokenizer, pooling per the adapter, L2-normalized): per-text cosine
    summary and max abs difference, for the build's report. Needs
    ``source.trust_remote_code``. Batches are right-padded, as the pplx
    tokenizer does and as their code expects."""
    import numpy as np
    import torch

    from ..exporter.wrapper import pool
    from ..models.loading import load_tokenizer
    from . import adapter_for
    from .base import get_family

    if not source.trust_remote_code:
        raise ModelSourceError(f"comparing against {source.name}'s remote code needs --trust-remote-code",
                               "pass --trust-remote-code after reviewing the folder's code")
    family = get_family("decoder")
    tokenizer = tokenizer or family.prepare_tokenizer(load_tokenizer(source))
    adapter = adapter or adapter_for(source, tokenizer)
    own = family.load_torch(source, adapter)  # embedc's own path: this family replaces the remote code
    theirs = load_remote_torch(source)
    got = {"own": [], "remote": []}
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            # right padding: remote code usually numbers positions 0..n-1 itself, as sentence-transformers runs it
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=adapter.max_length, padding_side="right", return_tensors="pt")
            for key, model in (("own", own), ("remote", theirs)):
                hidden = family.hidden_states(model, batch["input_ids"], batch["attention_mask"], adapter)
                vec = torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], adapter.pooling.mode), dim=-1)
                got[key].append(vec.numpy().astype(np.float64))
    a, b = np.concatenate(got["own"]), np.concatenate(got["remote"])
    cos = (a * b).sum(1)
    return {"texts": int(len(cos)), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(a - b).max()),
            "remote_class": f"{type(theirs).__module__}.{type(theirs).__name__}",
            "compared": "folder's remote code vs embedc's own implementation, torch FP32"}
