"""The shared stages of a build, each a function of the one before:
``prepare`` (everything checkable before work: model, output location,
corpus, splits, family adapter), ``export`` (cached), ``data`` (prompts,
calibration feeds, evaluation texts) and ``reference`` (cached torch FP32
embeddings). Their results feed every artifact job."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import read_meta
from ..errors import CorpusError, OutputLocationError
from ..spec import EVAL_LENGTH_CAP, BuildSpec
from ..versions import library_versions
from . import faults
from .cache import StageCache, code_digest, content_key, hash_model_folder

log = logging.getLogger("embedc")

EXPORT_LIBS = ("torch", "transformers", "tokenizers", "onnx", "onnxscript", "onnxruntime")
REFERENCE_LIBS = ("torch", "transformers", "tokenizers")
# embedc source that shapes each stage's output; its digest is part of the stage's cache key
EXPORT_CODE = ("exporter/*.py", "families/*.py", "models/loading.py", "models/weights.py")
REFERENCE_CODE = ("parity/reference.py", "parity/harness.py", "calibration/feeds.py", "exporter/wrapper.py",
                  "families/*.py", "models/loading.py", "models/weights.py")


def versions_of(names) -> dict:
    v = library_versions()
    return {k: v[k] for k in names if k in v}


def pair_options(p: "Prepared", target, precision: str) -> dict:
    """A pair's backend options before the backend's own defaults: the model family's recipe
    defaults, then the spec's (and the command line's) options for the pair, name by name."""
    return {**p.family.recipe_defaults(target.backend, precision), **p.spec.options_for(target.name, precision)}


def resolve_source(spec: BuildSpec):
    from ..models import resolve_model

    m = spec.model
    src = resolve_model(m.name, trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle)
    if m.instruct_task is not None:
        return dataclasses.replace(src, query_prefix="", passage_prefix="")
    changes = {}
    if m.query_prefix is not None:
        changes["query_prefix"] = m.query_prefix
    if m.passage_prefix is not None:
        changes["passage_prefix"] = m.passage_prefix
    return dataclasses.replace(src, **changes) if changes else src


def default_out(source) -> Path:
    return Path("artifacts") / source.name.replace("/", "--").replace("@", "-")


@dataclass
class Prepared:
    """What the build knows before any expensive work."""

    spec: BuildSpec
    source: Any                 # models.ModelSource
    family: Any                 # families.ModelFamily
    adapter: Any                # families.ModelAdapter
    tokenizer: Any
    splits: Any                 # calibration.Splits
    style: Any                  # calibration.PromptStyle
    model_hash: str
    out: Path
    low_memory: dict | None = None   # build.low_memory.resolve_low_memory's answer (resolved on first use)
    _embedder: Any = field(default=None, repr=False)

    @property
    def calib_max_length(self) -> int:
        return min(self.spec.calibration.max_length, self.adapter.max_length)

    @property
    def eval_max_length(self) -> int:
        wanted = self.spec.calibration.eval_max_length
        return min(wanted if wanted is not None else EVAL_LENGTH_CAP, self.adapter.max_length)

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.source.name, self.spec.model.name)

    @property
    def low_memory_enabled(self) -> bool:
        if self.low_memory is None:
            from .low_memory import resolve_low_memory

            self.low_memory = resolve_low_memory(self.spec.export.low_memory, self.family, self.source, self.adapter)
        return bool(self.low_memory["enabled"])

    def embedder(self):
        """The torch FP32 SentenceEmbedder, loaded once, only if a stage needs it
        (filled one tensor at a time on the low-memory path)."""
        if self._embedder is None:
            from ..exporter.wrapper import SentenceEmbedder

            kwargs = {"low_memory": True} if self.low_memory_enabled else {}
            self._embedder = SentenceEmbedder(self.family, self.family.load_torch(self.source, self.adapter, **kwargs),
                                              self.adapter).eval()
        return self._embedder

    def release_torch(self) -> None:
        """Drop the torch FP32 model once the stages that need it are done: held
        through the compiles, it adds the model's whole FP32 size to the build's
        peak memory (2.4 GB on a 0.6B decoder, 16 GB on a 4B one)."""
        from ..memory import release_memory

        if self._embedder is not None:
            self._embedder = None
            release_memory()  # gc alone leaves glibc holding the pages


def load_splits(spec: BuildSpec):
    from ..calibration import (load_corpus, load_default_corpus, load_default_long_passages, load_long_passages,
                               make_splits)

    c = spec.calibration
    if c.corpus == "default":
        samples, longs = load_default_corpus(), load_default_long_passages()
    else:
        samples, longs = load_corpus(c.corpus), load_long_passages(c.corpus)
    splits = make_splits(samples, calib_per_lang=c.calib_per_lang, eval_per_lang=c.eval_per_lang,
                         seed=c.seed, min_languages=c.min_languages, long_passages=longs,
                         long_per_lang=c.long_per_lang)
    if not splits.calibration:
        raise CorpusError("the calibration split is empty", "give the corpus more texts or raise calib_per_lang")
    if not splits.evaluation:
        raise CorpusError("the evaluation split is empty: nothing to judge the artifacts on",
                          "give the corpus more texts per language or raise eval_per_lang")
    return splits


def prompt_style(spec: BuildSpec, source):
    from ..calibration import PromptStyle

    if spec.model.instruct_task:
        return PromptStyle(instruct_task=spec.model.instruct_task)
    return PromptStyle(source.query_prefix, source.passage_prefix)


def prepare(spec: BuildSpec, *, force: bool) -> Prepared:
    """Resolve the model, check the output location, load the corpus and
    splits, and read the family adapter: every error a user can fix shows up
    here, before the export (minutes on a large model)."""
    from ..families import load_model_tokenizer
    from ..fsutil import check_output_location
    from . import output_guard, temps

    from ..models.validate import check_model_folder

    source = resolve_source(spec)
    check_model_folder(source.path)  # a broken folder is one line here, not a traceback from a loader
    out = Path(spec.out) if spec.out else default_out(source)
    corpus = None if spec.calibration.corpus == "default" else Path(spec.calibration.corpus)
    output_guard.check_output(out, force=force, inputs=[("model folder", source.path), ("corpus", corpus)])
    check_output_location(out, force=force)
    failed = output_guard.failed_path(out)
    if failed.exists() and not output_guard.is_embedc_output(failed):
        raise OutputLocationError(f"{failed} exists and is not an embedc build folder; a failing build writes "
                                  "its reports there", "move it away or choose another --out")
    if out.absolute().parent.is_dir():
        temps.sweep(out.absolute().parent, out.name)       # left by killed builds of this output
        temps.sweep(out.absolute().parent, failed.name)
    splits = load_splits(spec)
    family, tokenizer, adapter = load_model_tokenizer(source, shared=True)
    from .low_memory import resolve_low_memory

    low_memory = resolve_low_memory(spec.export.low_memory, family, source, adapter)
    if low_memory["enabled"]:
        log.info("low-memory path: %s", low_memory["reason"])
    return Prepared(spec=spec, source=source, family=family, adapter=adapter, tokenizer=tokenizer, splits=splits,
                    style=prompt_style(spec, source), model_hash=hash_model_folder(source.path), out=out,
                    low_memory=low_memory)


# ---- export -------------------------------------------------------------------------------------
def export_key(p: Prepared) -> str:
    low = {"low_memory": True} if p.low_memory_enabled else {}  # absent when off: normal keys stay as they were
    return content_key("export", {"model": p.model_hash, "opset": p.spec.export.opset, **low,
                                  "adapter": p.adapter.to_dict(), "random": p.source.random_weights,
                                  "versions": versions_of(EXPORT_LIBS), "code": code_digest(*EXPORT_CODE)})


def export(p: Prepared, cache: StageCache) -> tuple[Path, str, dict]:
    """The validated FP32 reference export (cache entry folder, key, its embedc.json)."""
    key = export_key(p)
    hit = cache.lookup("export", key)
    if hit is None:
        from ..exporter import export_reference  # torch: imported only when there is something to export

        def fill(tmp):
            log.info("exporting %s to ONNX", p.source.name)
            export_reference(p.source, tmp, opset=p.spec.export.opset, force=True, low_memory=p.low_memory_enabled)
            faults.point("export")

        hit = cache.store("export", key, {"model": p.source.name}, fill)
    else:
        log.info("export: cached (%s)", key[:12])
    return hit, key, read_meta(hit)


# ---- calibration and evaluation data -------------------------------------------------------------
@dataclass(frozen=True)
class BuildData:
    """Prompted texts, calibration feeds and length statistics: the same for every artifact."""

    calibration: tuple[dict[str, np.ndarray], ...]
    length_stats: dict
    eval_texts: tuple[str, ...]
    eval_ids: tuple[str, ...]
    eval_langs: tuple[str, ...]
    eval_kinds: tuple[str, ...]
    eval_lengths: tuple[int, ...]  # tokens per evaluation text, as judged (after truncation)
    summary: dict                 # splits summary (sizes, languages, hashes)

    @property
    def eval_hash(self) -> str:
        return self.summary["evaluation"]["sha256"]

    @property
    def calibration_hash(self) -> str:
        return self.summary["calibration"]["sha256"]


def data(p: Prepared) -> BuildData:
    from ..calibration import length_distribution, tokenize_batches
    from ..calibration.feeds import token_lengths

    names = list(p.adapter.input_names)
    calib_texts = p.style.apply_all(list(p.splits.calibration))
    evaluation = list(p.splits.evaluation)
    eval_texts = tuple(p.style.apply_all(evaluation))
    return BuildData(
        calibration=tuple(tokenize_batches(p.tokenizer, calib_texts, batch_size=1, max_length=p.calib_max_length,
                                           input_names=names)),
        length_stats=length_distribution(p.tokenizer, calib_texts, p.calib_max_length),
        eval_texts=eval_texts, eval_ids=tuple(s.id for s in evaluation),
        eval_langs=tuple(s.lang for s in evaluation), eval_kinds=tuple(s.kind for s in evaluation),
        eval_lengths=tuple(int(n) for n in token_lengths(p.tokenizer, eval_texts, p.eval_max_length)),
        summary=p.splits.summary())


# ---- torch reference -----------------------------------------------------------------------------
def reference_key(p: Prepared, d: BuildData) -> str:
    return content_key("reference", {"model": p.model_hash, "adapter": p.adapter.to_dict(), "eval": d.eval_hash,
                                     "style": p.style.to_dict(), "max_length": p.eval_max_length,
                                     "versions": versions_of(REFERENCE_LIBS), "code": code_digest(*REFERENCE_CODE)})


def reference(p: Prepared, d: BuildData, cache: StageCache) -> Path:
    """Cache entry folder holding ``embeddings.npy`` (rows in evaluation order)."""
    from ..parity.reference import reference_embeddings

    key = reference_key(p, d)
    hit = cache.lookup("reference", key)
    if hit is None:
        def fill(tmp):
            log.info("computing torch FP32 reference embeddings for %d evaluation texts (up to %d tokens)",
                     len(d.eval_texts), p.eval_max_length)
            np.save(tmp / "embeddings.npy",
                    reference_embeddings(p.embedder(), p.tokenizer, d.eval_texts, max_length=p.eval_max_length))
            faults.point("reference")

        hit = cache.store("reference", key, {"model": p.source.name}, fill)
    else:
        log.info("reference embeddings: cached (%s)", key[:12])
    return hit


# ---- the model's own remote code, when the user allowed it ----------------------------------------
REMOTE_PARITY_TEXTS = 64


def remote_code_parity(p: Prepared, d: BuildData) -> dict | None:
    """With ``--trust-remote-code`` on a model whose remote code embedc's
    family reimplements (pplx-embed), how closely the two agree on the first
    evaluation texts. None when it does not apply."""
    from ..models.loading import read_config

    config = read_config(p.source.path)
    if not (p.source.trust_remote_code and "auto_map" in config and p.family.replaces_remote_code(config)):
        return None
    from ..families.decoder_remote import remote_code_parity as compare

    log.info("comparing the model's own remote code with embedc's implementation")
    texts = list(d.eval_texts[:REMOTE_PARITY_TEXTS])
    return {**compare(p.source, texts, tokenizer=p.tokenizer, adapter=p.adapter),
            "meaning": "embedc's own implementation (what every artifact is exported from) vs the model's remote "
                       "code, torch FP32, per-text cosine"}
