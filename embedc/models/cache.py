"""embedc's own cache folder (rebuilt offline models, stage outputs)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$EMBEDC_CACHE``, else ``$XDG_CACHE_HOME/embedc``, else ``~/.cache/embedc``."""
    env = os.environ.get("EMBEDC_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "embedc"
