"""Plain helpers shared by the backend tests: ``from helpers import cosines, embed``
(``tests/`` is on sys.path through the ``pythonpath`` setting in pyproject.toml;
conftest.py is for fixtures and is not meant to be imported)."""
from __future__ import annotations

import numpy as np


def embed(runner, batches) -> np.ndarray:
    """A runner's ``sentence_embedding`` over tokenized batches, stacked."""
    return np.concatenate([runner.embed(b) for b in batches])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity of two (texts, dim) embedding arrays."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
