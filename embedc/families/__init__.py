"""Model families: one adapter per model (data, recorded in every artifact)
and one behaviour object per family (encoder, decoder), found by model type."""
from __future__ import annotations

from .base import (ATTENTION_MODES, FINAL_NORMS, POOLED_OUTPUT, POOLING_MODES, SENTENCE_OUTPUT, TOKEN_OUTPUT,
                   ModelAdapter, ModelFamily, Pooling, families, family_for_config, get_family, register_family)

__all__ = ["ATTENTION_MODES", "FINAL_NORMS", "POOLED_OUTPUT", "POOLING_MODES", "SENTENCE_OUTPUT", "TOKEN_OUTPUT",
           "ModelAdapter", "ModelFamily", "Pooling", "adapter_for", "families", "family_for_config", "get_family",
           "load_embedder", "load_model_tokenizer", "register_family", "resolve_family"]


def resolve_family(source, config: dict | None = None) -> tuple[ModelFamily, dict]:
    """The family that serves ``source`` and its config. Remote code
    (``auto_map``) is refused unless the user opted in or the family's own
    code is that model."""
    from ..errors import ModelSourceError
    from ..models.loading import read_config

    config = read_config(source.path) if config is None else config
    family = family_for_config(config, source.name)
    if "auto_map" in config and not source.trust_remote_code and not family.replaces_remote_code(config):
        raise ModelSourceError(f"model {source.name} needs its own remote code (auto_map in config.json)",
                               "review that code, then pass --trust-remote-code")
    return family, config


def adapter_for(source, tokenizer) -> ModelAdapter:
    """The adapter of a resolved model source (its tokenizer gives padding side and limits)."""
    family, config = resolve_family(source)
    return family.adapter(source, config, tokenizer)


def load_model_tokenizer(source, *, shared: bool = False):
    """(family, tokenizer, adapter) of a source: the tokenizer as its family prepares it
    (``shared``: this thread's one read-only instance, see ``load_tokenizer``)."""
    from ..models import load_tokenizer

    family, config = resolve_family(source)
    tokenizer = load_tokenizer(source, shared=shared, prepare=family.prepare_tokenizer)
    return family, tokenizer, family.adapter(source, config, tokenizer)


def load_embedder(source):
    """(SentenceEmbedder, tokenizer, adapter): the torch FP32 model as export and reference see it."""
    from ..exporter.wrapper import SentenceEmbedder

    family, tokenizer, adapter = load_model_tokenizer(source)
    return SentenceEmbedder(family, family.load_torch(source, adapter), adapter).eval(), tokenizer, adapter
