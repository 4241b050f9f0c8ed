"""Model sources: offline catalog, local folders, hub ids, and safe loading."""
from .catalog import CATALOG, DEFAULT_MODEL
from .loading import check_architecture, load_tokenizer, load_torch_model, save_tokenizer
from .resolve import resolve_model
from .source import ModelSource

__all__ = ["CATALOG", "DEFAULT_MODEL", "ModelSource", "check_architecture",
           "load_tokenizer", "load_torch_model", "resolve_model", "save_tokenizer"]
