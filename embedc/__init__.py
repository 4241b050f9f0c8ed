"""embedc: compile text-embedding models into parity-checked deployment artifacts."""
from __future__ import annotations

from .errors import EmbedcError, ParityGateError

__version__ = "0.1.0"
__all__ = ["BuildSpec", "EmbedcError", "Encoder", "ParityGateError", "build", "load", "load_spec_file"]


def __getattr__(name: str):
    # Lazy: `import embedc` must stay cheap (no torch) for the CLI and for users who only load artifacts.
    if name in ("load", "Encoder"):
        from . import runtime

        return getattr(runtime, name)
    if name == "build":
        from .build.pipeline import build

        return build
    if name in ("BuildSpec", "load_spec_file"):
        from . import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'embedc' has no attribute {name!r}")
