"""Multilingual probe batches for export validation: several batch sizes and
lengths, with padding inside every multi-text batch (shapes unlike the example
the exporter traced with, where a bad trace shows up)."""
from __future__ import annotations

from ..calibration.sources import read_language

# Scripts chosen to stress the tokenizer: Latin, Cyrillic, CJK, Arabic, Devanagari, Thai, Hangul, Greek.
PROBE_LANGUAGES = ("eng", "rus", "zho", "ara", "hin", "tha", "kor", "ell", "deu", "jpn", "swa", "heb")
BATCH_SIZES = (1, 3, 8)
LENGTHS = {"short": 12, "medium": 128, "long": 512}
# Long-context models (decoders: 8K-32K positions) are also probed far past 512 tokens,
# at batch 2 so one text is padded: rotary positions and masks must hold there too.
LONG_CONTEXT_PROBE = 2048


def _cut_to_tokens(tokenizer, text: str, n_tokens: int) -> str:
    enc = tokenizer(text[: n_tokens * 12], add_special_tokens=False, return_offsets_mapping=True,
                    verbose=False)
    offsets = enc["offset_mapping"]
    if not offsets:
        return text[:50]
    end = offsets[min(n_tokens, len(offsets)) - 1][1]
    return text[:end]


def _body(lang: str) -> str:
    lines = [ln.strip(" #*-") for ln in read_language(lang).splitlines()]
    return " ".join(ln for ln in lines if len(ln) > 40)


def probe_batches(tokenizer, *, query_prefix: str, passage_prefix: str, max_length: int):
    """Yield (label, texts) for every (length, batch size) cell of the probe grid."""
    bodies = {lang: _body(lang) for lang in PROBE_LANGUAGES}
    for length_name, length in LENGTHS.items():
        length = min(length, max_length)
        for bs in BATCH_SIZES:
            texts = []
            for i in range(bs):
                lang = PROBE_LANGUAGES[(i + bs + length) % len(PROBE_LANGUAGES)]
                # Vary lengths inside a batch so padding is exercised; the first stays full length.
                n = max(2, int(length * (1.0 - 0.6 * i / max(bs - 1, 1))) - 2)
                prefix = query_prefix if i % 2 == 0 else passage_prefix
                start = (i * 997) % max(1, len(bodies[lang]) // 2)
                texts.append(prefix + _cut_to_tokens(tokenizer, bodies[lang][start:], n))
            yield f"{length_name}/b{bs}", texts
    if max_length > LENGTHS["long"]:
        length = min(LONG_CONTEXT_PROBE, max_length)
        texts = [query_prefix + _cut_to_tokens(tokenizer, bodies["eng"], length - 2),
                 passage_prefix + _cut_to_tokens(tokenizer, bodies["zho"], length // 2)]
        yield f"xlong/b{len(texts)}", texts
