"""Calibration and evaluation text: a multilingual corpus, seeded
language-stratified splits, model prompts and tokenized feeds."""
from .corpus import (
    Sample,
    load_corpus,
    load_default_corpus,
    load_default_long_passages,
    load_long_passages,
)
from .feeds import encode_batch, length_distribution, tokenize_batches
from .prompts import PromptStyle, apply_instruct, apply_prompt
from .segment import Segments, long_passages, paragraphs, segment_text, split_sentences, text_units
from .splits import (
    DEFAULT_CALIB_PER_LANG,
    DEFAULT_EVAL_PER_LANG,
    DEFAULT_LONG_PER_LANG,
    DEFAULT_MIN_LANGUAGES,
    DEFAULT_SEED,
    Splits,
    make_splits,
    normalize_text,
)

__all__ = [
    "DEFAULT_CALIB_PER_LANG",
    "DEFAULT_EVAL_PER_LANG",
    "DEFAULT_LONG_PER_LANG",
    "DEFAULT_MIN_LANGUAGES",
    "DEFAULT_SEED",
    "PromptStyle",
    "Sample",
    "Segments",
    "Splits",
    "apply_instruct",
    "encode_batch",
    "apply_prompt",
    "length_distribution",
    "load_corpus",
    "load_default_corpus",
    "load_default_long_passages",
    "load_long_passages",
    "long_passages",
    "make_splits",
    "normalize_text",
    "paragraphs",
    "segment_text",
    "split_sentences",
    "text_units",
    "tokenize_batches",
]
