"""Load a resolved model into torch, safely: safetensors only and no remote
code unless the user opted in; eager attention so export traces cleanly."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MissingDependencyError, ModelSourceError, UnsupportedArchitectureError
from .catalog import RANDOM_MARKER
from .source import ModelSource

# Bidirectional encoders embedc has adapters for (model_type -> family).
SUPPORTED_MODEL_TYPES = {"bert": "encoder", "xlm-roberta": "encoder", "roberta": "encoder"}


def read_config(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except PermissionError as exc:
        raise ModelSourceError(f"cannot read {path}/config.json (permission denied)",
                               "fix the file permissions") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{path}/config.json is not valid JSON",
                               "pass an intact Hugging Face model folder") from exc


def check_architecture(source: ModelSource) -> dict:
    """Return the config, or raise naming the supported architectures."""
    config = read_config(source.path)
    model_type = config.get("model_type")
    if "auto_map" in config and not source.trust_remote_code:
        raise ModelSourceError(f"model {source.name} needs its own remote code (auto_map in config.json)",
                               "review that code, then pass --trust-remote-code")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} of {source.name} is not supported",
            f"supported model types: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}")
    return config


def _weights_format(path: Path) -> str:
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
        return "safetensors"
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        return "pickle"
    return "none"


def load_torch_model(source: ModelSource):
    """The FP32 torch model in eval mode (random presets drawn from their seed)."""
    import torch
    from transformers import AutoConfig, AutoModel

    check_architecture(source)
    path = source.path
    marker = path / RANDOM_MARKER
    if marker.is_file():
        seed = json.loads(marker.read_text())["seed"]
        config = AutoConfig.from_pretrained(str(path), attn_implementation="eager")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModel.from_config(config, attn_implementation="eager")
        return model.float().eval()
    fmt = _weights_format(path)
    if fmt == "none":
        raise ModelSourceError(f"{path} has no model weights (no *.safetensors)",
                               "pass a folder with model.safetensors")
    if fmt == "pickle" and not source.allow_pickle:
        raise ModelSourceError(f"{path} has only pickle-format weights (*.bin), which can run code on load",
                               "convert them to safetensors, or pass --allow-pickle if you trust the source")
    try:
        model = AutoModel.from_pretrained(
            str(path), attn_implementation="eager", dtype=torch.float32,
            use_safetensors=fmt == "safetensors", trust_remote_code=source.trust_remote_code,
            add_pooling_layer=False,
        )
    except TypeError:  # architectures without a pooling layer argument
        model = AutoModel.from_pretrained(
            str(path), attn_implementation="eager", dtype=torch.float32,
            use_safetensors=fmt == "safetensors", trust_remote_code=source.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load weights from {path}: {str(exc).splitlines()[0]}",
                               "check that the folder is an intact Hugging Face model") from exc
    return model.float().eval()


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(source.path), use_fast=True,
                                            trust_remote_code=source.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load the tokenizer from {source.path}",
                               "the folder needs tokenizer.json (or sentencepiece files)") from exc
    if not getattr(tok, "is_fast", False):
        raise MissingDependencyError(f"no fast tokenizer for {source.name}",
                                     "add tokenizer.json to the model folder")
    return tok
