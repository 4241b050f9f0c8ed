"""Load a resolved model safely: safetensors only and no remote code unless
the user opted in; eager attention so export traces cleanly. Which class and
pooling a model gets is its family's business (embedc.families)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MissingDependencyError, ModelSourceError
from .catalog import RANDOM_MARKER
from .source import ModelSource


def read_config(path: Path) -> dict:
    try:
        data = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except PermissionError as exc:
        raise ModelSourceError(f"cannot read {path}/config.json (permission denied)",
                               "fix the file permissions") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSourceError(f"{path}/config.json is not valid JSON",
                               "pass an intact Hugging Face model folder") from exc
    if not isinstance(data, dict):
        raise ModelSourceError(f"{path}/config.json is a JSON {type(data).__name__}, not an object",
                               "pass an intact Hugging Face model folder")
    return data


def check_architecture(source: ModelSource) -> dict:
    """Return the config, or raise naming the supported architectures (and
    refusing remote code the user did not allow)."""
    from ..families import resolve_family

    return resolve_family(source)[1]


def weights_format(path: Path) -> str:
    path = Path(path)
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
        return "safetensors"
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        return "pickle"
    return "none"


def loadable_weights_format(source: ModelSource) -> str:
    """``weights_format`` of a source, refusing a folder without weights, and
    pickle weights (which can run code on load) unless ``--allow-pickle``."""
    path = source.path
    fmt = weights_format(path)
    if fmt == "none":
        raise ModelSourceError(f"{path} has no model weights (no *.safetensors)",
                               "pass a folder with model.safetensors")
    if fmt == "pickle" and not source.allow_pickle:
        raise ModelSourceError(f"{path} has only pickle-format weights (*.bin), which can run code on load",
                               "convert them to safetensors, or pass --allow-pickle if you trust the source")
    return fmt


def max_sequence_length(config: dict, tokenizer, folder: Path | None = None) -> int:
    """The model's own maximum tokens: position table (minus RoBERTa's padding
    offset), the tokenizer's model_max_length and, in a sentence-transformers
    folder, ``sentence_bert_config.json``'s ``max_seq_length``, whichever is
    smallest. The last is what ``SentenceTransformer`` truncates at, i.e. what the
    torch model an artifact replaces embeds (all-MiniLM-L6-v2: 256 of 512 positions)."""
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in ("xlm-roberta", "roberta"):
        positions -= int(config.get("pad_token_id", 1)) + 1  # positions start after padding_idx
    limit = getattr(tokenizer, "model_max_length", positions) or positions
    out = min(positions, limit if limit < 10**6 else positions)
    served = _sentence_transformers_length(folder) if folder is not None else None
    return int(min(out, served) if served else out)


def _sentence_transformers_length(folder: Path) -> int | None:
    file = Path(folder) / "sentence_bert_config.json"
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_text(encoding="utf-8")).get("max_seq_length")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ModelSourceError(f"{file} is not valid JSON", "repair or remove sentence_bert_config.json") from exc
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelSourceError(f"{file} has max_seq_length {value!r}, not a positive integer",
                               "set it to the length the model serves at, or remove the key")
    return value


def load_hf_model(source: ModelSource, *, pooling_layer: bool | None = None, model_class=None):
    """The FP32 transformers model in eval mode with eager attention (random
    presets drawn from their seed). ``pooling_layer=False`` drops BERT's unused pooler."""
    import torch
    from transformers import AutoConfig, AutoModel

    cls = model_class or AutoModel
    path = source.path
    marker = path / RANDOM_MARKER
    if marker.is_file():
        seed = json.loads(marker.read_text())["seed"]
        config = AutoConfig.from_pretrained(str(path), attn_implementation="eager")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls.from_config(config, attn_implementation="eager")
        return model.float().eval()
    fmt = loadable_weights_format(source)
    kwargs = dict(attn_implementation="eager", dtype=torch.float32, use_safetensors=fmt == "safetensors",
                  trust_remote_code=source.trust_remote_code)
    try:
        if pooling_layer is False:
            try:
                model = cls.from_pretrained(str(path), add_pooling_layer=False, **kwargs)
            except TypeError:  # architectures without a pooling layer argument
                model = cls.from_pretrained(str(path), **kwargs)
        else:
            model = cls.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}",
                               "check that the folder is an intact Hugging Face model") from exc
    return model.float().eval()


def load_torch_model(source: ModelSource):
    """The FP32 body of ``source`` as its family loads it."""
    from ..families import resolve_family

    family, _ = resolve_family(source)
    return family.load_torch(source)


# tokenizer_config.json / special_tokens_map.json keys that are settings of the wrapper, not of the
# tokenizers pipeline; everything else there (the class, added-token tables, auto_map) is ignored
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_WRAPPER_SETTINGS = ("model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces")


_TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_tokenizer(source: ModelSource | str | Path, *, shared: bool = False, prepare=None):
    """The tokenizer of a model or artifact folder, running exactly the pipeline
    its ``tokenizer.json`` saved.

    ``shared=True`` returns this thread's one instance for the folder's current
    files (parsed once, not per artifact) and the caller must not change it;
    ``prepare`` (a family's ``prepare_tokenizer``) is applied before it is kept.
    The default is a new, private object.

    transformers 5's model-specific classes (XLM-R's among them) rebuild their
    own normalizer and pre-tokenizer instead of the saved ones, so the same
    folder tokenizes differently across transformers versions (trailing
    whitespace, for one). ``PreTrainedTokenizerFast`` runs the saved pipeline
    as is on 4.x and 5.x; only the wrapper's settings (special tokens, maximum
    length, padding side) come from ``tokenizer_config.json``. A folder without
    ``tokenizer.json`` gets transformers' conversion of its slow tokenizer."""
    path = Path(getattr(source, "path", source))
    if shared:
        from ..filememo import memoized

        def fresh():
            tok = load_tokenizer(source)
            return prepare(tok) if prepare else tok

        # by content: the same tokenizer files in the model folder, the export and every artifact are parsed
        # once (0.4 s each for a 250k vocabulary); a folder without tokenizer.json is converted from other
        # files, so it is keyed by its own
        return memoized("tokenizer", [path / f for f in _TOKENIZER_FILE_NAMES], fresh,
                        by_content=(path / "tokenizer.json").is_file(),
                        extra=(getattr(prepare, "__qualname__", None), getattr(source, "trust_remote_code", False)))
    if prepare is not None:
        return prepare(load_tokenizer(source))
    name = getattr(source, "name", str(path))
    if not (path / "tokenizer.json").is_file():
        return _converted_tokenizer(path, name, bool(getattr(source, "trust_remote_code", False)))
    from transformers import PreTrainedTokenizerFast

    settings = {**_tokenizer_settings(path / "special_tokens_map.json"),
                **_tokenizer_settings(path / "tokenizer_config.json")}
    try:
        # no name_or_path: with one, transformers 5 asks the hub whether the folder is a Mistral model
        return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **settings)
    except Exception as exc:  # tokenizers raises plain Exceptions on a malformed file
        raise ModelSourceError(f"cannot load {path}/tokenizer.json: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                               "pass a folder with an intact tokenizer.json") from exc


def _tokenizer_settings(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSourceError(f"{file} is not valid JSON", "pass an intact Hugging Face model folder") from exc
    out = {}
    for key in _SPECIAL_TOKENS:
        value = data.get(key)
        if isinstance(value, dict):  # a serialized AddedToken: tokenizer.json holds its flags already
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    for key in _WRAPPER_SETTINGS:
        if data.get(key) is not None:
            out[key] = data[key]
    return out


def _converted_tokenizer(path: Path, name: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), use_fast=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load the tokenizer from {path}",
                               "the folder needs tokenizer.json (or sentencepiece files)") from exc
    if not getattr(tok, "is_fast", False):
        raise MissingDependencyError(f"no fast tokenizer for {name}",
                                     "add tokenizer.json to the model folder")
    return tok


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Save ``tokenizer`` into ``folder`` so that any loader runs its exact pipeline:
    ``tokenizer_class`` names ``PreTrainedTokenizerFast`` (transformers 5 would
    write ``TokenizersBackend``, unknown to 4.x), which ``AutoTokenizer`` (in
    sentence-transformers too) loads from ``tokenizer.json`` as saved."""
    from ..fsutil import write_json_atomic

    backend = tokenizer.backend_tokenizer
    # the wrapper leaves its last call's padding/truncation on the backend; they are per call, not pipeline
    backend.no_padding()
    backend.no_truncation()
    tokenizer.save_pretrained(str(folder))
    config_file = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("auto_map", None)  # no custom tokenizer code runs on the saved pipeline
    write_json_atomic(config_file, config)
