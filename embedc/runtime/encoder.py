"""embedc.load(ARTIFACT_DIR).encode(texts, kind=...) -> normalized float32 numpy.

Applies the artifact's recorded prompt (prefix or instruct template), tokenizes
with its tokenizer, batches by length and runs it with its backend."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..artifact import read_meta, verify_files
from ..errors import UsageError


class Encoder:
    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None, verify: bool = True):
        from ..models import load_tokenizer

        self.path = Path(artifact_dir)
        self.meta = read_meta(self.path)
        if verify:
            verify_files(self.path, self.meta)
        self.tokenizer = load_tokenizer(self.path)
        self._runner = _backend_for(self.meta).load(self.path, self.meta, threads=threads)
        self.input_names = [i["name"] for i in self.meta["inputs"]]
        self.max_length = int(self.meta.get("parity_max_length") or self.meta["max_length"])
        style = self.meta.get("prompt_style") or {"query_prefix": self.meta["prefixes"]["query"],
                                                   "passage_prefix": self.meta["prefixes"]["passage"],
                                                   "instruct_task": None}
        from ..calibration import PromptStyle

        self.style = PromptStyle(**style)

    def format(self, texts: Sequence[str], kind: str) -> list[str]:
        from ..calibration.corpus import make_sample

        if kind not in ("query", "passage"):
            raise UsageError(f"kind must be 'query' or 'passage', got {kind!r}", "pass kind='query' or kind='passage'")
        return [self.style.apply(make_sample("und", kind, t)) for t in texts]

    def encode(self, texts: str | Sequence[str], kind: str = "query", *, batch_size: int = 32,
               max_length: int | None = None) -> np.ndarray:
        from ..parity.harness import embed_texts

        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            return np.zeros((0, 0), dtype=np.float32)
        emb = embed_texts(self._runner.embed, self.tokenizer, self.format(items, kind),
                          input_names=self.input_names, max_length=max_length or self.max_length,
                          batch_size=batch_size)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
        return emb[0] if single else emb


def _backend_for(meta: dict):
    from ..targets.registry import get_backend, get_target
    from ..targets import ort

    if meta.get("stage") == "reference-export":
        return ort.BACKEND  # the FP32 reference runs as-is in ONNX Runtime
    return get_backend(get_target(meta["target"]))


def load(artifact_dir: str | Path, *, threads: int | None = None) -> Encoder:
    """Load an artifact (or the reference export) folder for inference."""
    return Encoder(artifact_dir, threads=threads)
