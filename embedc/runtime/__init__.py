"""Running artifacts: ``embedc.load(folder).encode(texts)`` and the sentence-transformers files."""
from .encoder import Encoder, load

__all__ = ["Encoder", "load"]
