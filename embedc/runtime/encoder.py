"""embedc.load(ARTIFACT_DIR).encode(texts, kind=...) -> normalized float32 numpy.

Applies the artifact's recorded prompt (prefix or instruct template), tokenizes
with its tokenizer at the model's own maximum length, batches by length and
runs it with its backend."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..artifact import read_meta, verify_files
from ..errors import ArtifactError, UsageError


class Encoder:
    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None, verify: bool = True):
        from ..calibration import PromptStyle
        from ..models import load_tokenizer
        from ..models.source import ModelSource

        self.path = Path(artifact_dir)
        self.meta = read_meta(self.path)
        if verify:
            verify_files(self.path, self.meta)
        try:
            self.input_names = [i["name"] for i in self.meta["inputs"]]
            self.max_length = int(self.meta["max_length"])  # the model's own: what the torch model would see
            style = self.meta.get("prompt_style") or {"query_prefix": self.meta["prefixes"]["query"],
                                                       "passage_prefix": self.meta["prefixes"]["passage"],
                                                       "instruct_task": None}
            self.style = PromptStyle(**style)
            self.dim = int(self.meta["outputs"][0]["shape"][-1])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ArtifactError(f"{self.path}/embedc.json is incomplete or malformed ({type(exc).__name__}: {exc})",
                                "rebuild the artifact with 'embedc build'") from exc
        self.tokenizer = load_tokenizer(ModelSource(name=self.path.name, path=self.path, kind="local"))
        self._runner = _backend_for(self.meta).load(self.path, self.meta, threads=threads)

    def format(self, texts: Sequence[str], kind: str) -> list[str]:
        if kind not in ("query", "passage"):
            raise UsageError(f"kind must be 'query' or 'passage', got {kind!r}", "pass kind='query' or kind='passage'")
        return [self.style.format(t, kind) for t in texts]

    def encode(self, texts: str | Sequence[str], kind: str = "query", *, batch_size: int = 32,
               max_length: int | None = None, output: str = "float32", dims: int | None = None) -> np.ndarray:
        """Embeddings of ``texts`` (one text: shape (dim,); a list: (n, dim)), L2-normalized float32.

        ``output`` / ``dims`` pick a compressed output the artifact's graph carries
        (``int8``, ``int8-tanh``, ``binary``: NumPy int8; ``ubinary``: uint8, dims/8 bytes;
        ``float32`` with ``dims``: truncated and re-normalized); see ``self.outputs``."""
        from ..parity.harness import embed_texts

        single = isinstance(texts, str)
        if texts is None or not (single or isinstance(texts, Sequence)):
            raise UsageError(f"texts must be a string or a list of strings, got {type(texts).__name__}",
                             "pass encode(['a text', ...])")
        items = [texts] if single else list(texts)
        bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
        if bad is not None:
            raise UsageError(f"text {bad} is a {type(items[bad]).__name__}, not a string", "pass strings only")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}", "e.g. batch_size=32")
        length = self.max_length if max_length is None else max_length
        if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= self.max_length:
            raise UsageError(f"max_length must be between 2 and the model's {self.max_length}, got {max_length!r}",
                             "leave it unset to use the model's own maximum")
        if output != "float32" or dims is not None:
            return self._encode_output(items, kind, single, output, dims, length, batch_size)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = embed_texts(self._runner.embed, self.tokenizer, self.format(items, kind),
                          input_names=self.input_names, max_length=length, batch_size=batch_size)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
        return emb[0] if single else emb


    @property
    def outputs(self) -> list[dict]:
        """The compressed outputs this artifact's graph carries (name, format, scheme, dims, dtype)."""
        return list((self.meta.get("compressed_outputs") or {}).get("outputs", []))

    def _encode_output(self, items, kind, single, output, dims, length, batch_size):
        from ..outputs.build import run_texts
        from ..outputs.runtime import pick_output

        head = pick_output(self.outputs, output, dims, width=self.dim, where=str(self.path))
        if not items:
            width = head["shape"][-1] if head else dims
            return np.zeros((0, width), dtype=np.dtype(head["dtype"] if head else "float32"))
        name = head["name"] if head else "sentence_embedding"
        got = run_texts(self._runner.run, self.tokenizer, self.format(items, kind), input_names=self.input_names,
                        max_length=length, names=[name], batch_size=batch_size)[name]
        if head is None:  # float32 at dims the graph does not carry: truncate + re-normalize here (exact)
            got = got[:, :dims].astype(np.float32)
            got = got / np.linalg.norm(got, axis=1, keepdims=True).clip(min=1e-12)
        return got[0] if single else got


def _backend_for(meta: dict):
    from ..targets.registry import get_backend, get_target

    if meta.get("stage") == "reference-export":
        return get_backend("ort")  # the FP32 reference runs as-is in ONNX Runtime
    return get_backend(get_target(meta["target"]))


def load(artifact_dir: str | Path, *, threads: int | None = None) -> Encoder:
    """Load an artifact (or the reference export) folder for inference."""
    return Encoder(artifact_dir, threads=threads)
