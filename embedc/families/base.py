"""The model-family seam: what differs between an encoder (BERT, XLM-R) and a
decoder embedder (Qwen3, Qwen2, Llama), as one data object per model
(``ModelAdapter``, recorded in every export and artifact) plus one behaviour
object per family (``ModelFamily``, found through a registry).

Everything downstream (exporter, torch reference, parity harness, bench
worker, runtime, sentence-transformers files, TensorRT's pooling-tail
detector) reads the adapter instead of assuming ``input_ids, attention_mask``,
mean pooling, 512 tokens and a LayerNorm at the end. Adding a family is one
module with a ``ModelFamily`` subclass plus one ``register_family`` call.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelSourceError

if TYPE_CHECKING:  # torch stays out of import time
    import torch

    from ..models.source import ModelSource

POOLING_MODES = ("mean", "cls", "last")
ATTENTION_MODES = ("bidirectional", "causal")
FINAL_NORMS = ("layernorm", "rmsnorm")
SENTENCE_OUTPUT = "sentence_embedding"   # pooled + L2-normalized: what parity judges
TOKEN_OUTPUT = "last_hidden_state"       # per-token states (the name optimum reads)
POOLED_OUTPUT = "pooler_output"          # pooled, before normalization (pplx's native int8/binary input)

# sentence-transformers' 1_Pooling/config.json keys -> embedc pooling modes
_ST_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}
_ST_UNSUPPORTED = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


@dataclass(frozen=True)
class Pooling:
    """How token states become one vector. ``last`` takes the last attended
    token, whatever the padding side; ``cls`` the first attended one."""

    mode: str = "mean"
    normalize: bool = True      # L2 normalization after pooling (sentence_embedding)
    include_prompt: bool = True

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ModelSourceError(f"pooling mode {self.mode!r} is not supported",
                                   f"supported pooling: {', '.join(POOLING_MODES)}")

    @classmethod
    def from_folder(cls, folder: Path, default: Pooling) -> Pooling:
        """The model's own pooling from its sentence-transformers files
        (``modules.json`` -> the Pooling module's ``config.json``), else ``default``."""
        folder = Path(folder)
        config = _pooling_config_path(folder)
        if config is None:
            return default
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{config} is not valid JSON", "repair or remove the pooling config") from exc
        if not isinstance(data, dict):
            raise ModelSourceError(f"{config} is not a JSON object", "repair or remove the pooling config")
        bad = [k for k in _ST_UNSUPPORTED if data.get(k)]
        if bad:
            raise ModelSourceError(f"the model's pooling ({bad[0]} in {config}) is not supported",
                                   f"embedc exports {', '.join(POOLING_MODES)} pooling")
        modes = [mode for key, mode in _ST_MODES.items() if data.get(key)]
        if len(modes) != 1:
            raise ModelSourceError(f"{config} selects {len(modes)} pooling modes ({', '.join(modes) or 'none'})",
                                   "select exactly one of mean, cls or last-token pooling")
        return cls(mode=modes[0], normalize=_has_normalize(folder),
                   include_prompt=bool(data.get("include_prompt", True)))

    def st_config(self, dim: int) -> dict:
        """sentence-transformers' ``1_Pooling/config.json`` for this pooling."""
        return {"word_embedding_dimension": dim,
                "pooling_mode_cls_token": self.mode == "cls",
                "pooling_mode_mean_tokens": self.mode == "mean",
                "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": self.mode == "last",
                "include_prompt": self.include_prompt}


def _modules(folder: Path) -> list[dict]:
    path = folder / "modules.json"
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path} is not valid JSON", "repair or remove modules.json") from exc
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def _pooling_config_path(folder: Path) -> Path | None:
    for m in _modules(folder):
        if str(m.get("type", "")).endswith(".Pooling"):
            path = folder / str(m.get("path", "")) / "config.json"
            return path if path.is_file() else None
    path = folder / "1_Pooling" / "config.json"
    return path if path.is_file() else None


def _has_normalize(folder: Path) -> bool:
    modules = _modules(folder)
    if not modules:
        return True  # no sentence-transformers layout: embedding models are compared by cosine anyway
    return any(str(m.get("type", "")).endswith(".Normalize") for m in modules)


@dataclass(frozen=True)
class ModelAdapter:
    """What one model is, as every stage needs to know it. Data only: it is
    written into the export's and every artifact's ``embedc.json``."""

    family: str                     # registry name of the ModelFamily
    model_type: str                 # config.json model_type
    attention: str                  # "bidirectional" | "causal"
    pooling: Pooling
    max_length: int                 # the model's own maximum tokens: artifacts serve at this length
    hidden_size: int
    final_norm: str                 # op that ends the network: "layernorm" | "rmsnorm"
    padding_side: str = "right"     # the tokenizer's; every graph is padding-side agnostic
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    outputs: tuple[str, ...] = (SENTENCE_OUTPUT, TOKEN_OUTPUT)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise ModelSourceError(f"attention mode {self.attention!r} is unknown", f"use {ATTENTION_MODES}")
        if self.final_norm not in FINAL_NORMS:
            raise ModelSourceError(f"final norm {self.final_norm!r} is unknown", f"use {FINAL_NORMS}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_names"] = list(self.input_names)
        d["outputs"] = list(self.outputs)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> ModelAdapter:
        data = dict(data)
        data["pooling"] = Pooling(**data["pooling"])
        for key in ("input_names", "outputs", "notes"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)

    def with_pooling(self, pooling: Pooling) -> ModelAdapter:
        return replace(self, pooling=pooling)


class ModelFamily(ABC):
    """Behaviour shared by the models of one family. Stateless; one instance
    is registered per family."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    default_pooling: Pooling = Pooling()
    low_memory_path: bool = False   # implements weight_stream() and load_torch(..., low_memory=True)

    def handles(self, config: dict) -> bool:
        return config.get("model_type") in self.model_types

    def replaces_remote_code(self, config: dict) -> bool:
        """True when this family's own code is the model that the config's
        ``auto_map`` remote code implements (as text-embeddings-inference
        serves pplx-embed natively), so no remote code needs to run. A family
        that merely shares the model_type must say False: loading a custom
        architecture as the stock one would be a silently different model."""
        return False

    @abstractmethod
    def adapter(self, source: ModelSource, config: dict, tokenizer: Any) -> ModelAdapter:
        """The adapter for this model (pooling from the folder, max length,
        attention mode, ...). Raise ``ModelSourceError`` for a config the
        family would otherwise run differently from the original (never a
        silently different model)."""

    @abstractmethod
    def load_torch(self, source: ModelSource, adapter: ModelAdapter) -> torch.nn.Module:
        """The FP32 body in eval mode with eager attention; safetensors only
        unless ``source.allow_pickle``; remote code only with
        ``source.trust_remote_code``. A family with a low-memory path also
        takes ``low_memory=True`` (fill the body one tensor at a time)."""

    def weight_stream(self, source: ModelSource, adapter: ModelAdapter | None = None) -> tuple[Any, Any]:
        """The low-memory path: (body with parameters on the meta device and
        real buffers, ``embedc.models.weights.WeightSource`` of its FP32
        tensors). Families without one raise."""
        from ..errors import UsageError

        raise UsageError(f"the {self.name} model family has no low-memory path",
                         "use --low-memory auto or off, or [export] low_memory in the spec")

    @abstractmethod
    def hidden_states(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      adapter: ModelAdapter) -> torch.Tensor:
        """Token states [batch, seq, hidden] for a padded batch (either padding
        side). Decoders derive position ids from the mask here, inside the
        exported graph, so every family takes the same two inputs."""

    def model_inputs(self, model: torch.nn.Module, attention_mask: torch.Tensor, adapter: ModelAdapter) -> dict:
        """Keyword inputs besides ``input_ids`` that make ``model`` run in the family's attention
        mode for a 2-D padding mask (``hidden_states`` and torch calibration both use them)."""
        return {"attention_mask": attention_mask}

    def export_onnx(self, embedder: Any, tokenizer: Any, path: Path, *, opset: int, external_data: bool) -> None:
        """Write the ONNX graph of ``embedder`` (a ``SentenceEmbedder``) to
        ``path``. The default is the dynamo exporter; a family overrides this
        only for a graph the exporter cannot produce."""
        from ..exporter.export import dynamo_export

        dynamo_export(embedder, tokenizer, path, opset=opset, external_data=external_data)

    def prepare_tokenizer(self, tokenizer: Any, adapter: ModelAdapter | None = None) -> Any:
        """Make a loaded tokenizer batchable (e.g. a pad token for decoders).
        Whatever this changes is saved with the export and every artifact."""
        return tokenizer

    def recipe_defaults(self, backend: str, precision: str) -> dict:
        """Backend options this family's models need by default (measured, not guessed); the
        spec's and the command line's options for the pair override them name by name."""
        return {}


_FAMILIES: dict[str, ModelFamily] = {}
_BUILTIN = ("embedc.families.encoder", "embedc.families.decoder")


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family (tests register fakes); a later registration of the same name replaces it."""
    _FAMILIES[family.name] = family
    return family


def _load_builtins() -> None:
    import importlib

    for mod in _BUILTIN:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def families() -> dict[str, ModelFamily]:
    _load_builtins()
    return dict(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    fams = families()
    if name not in fams:
        raise ModelSourceError(f"model family {name!r} is not registered", f"known: {', '.join(fams)}")
    return fams[name]


def family_for_config(config: dict, where: str) -> ModelFamily:
    for fam in families().values():
        if fam.handles(config):
            return fam
    known = sorted({t for f in families().values() for t in f.model_types})
    from ..errors import UnsupportedArchitectureError

    raise UnsupportedArchitectureError(f"architecture {config.get('model_type')!r} of {where} is not supported",
                                       f"supported model types: {', '.join(known)}")
