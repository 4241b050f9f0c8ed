"""Calibration / evaluation samples and the loaders that produce them.

Sources:

* the default corpus: dataset-build's 38 languages, segmented into queries
  (one sentence) and passages (one paragraph) by :mod:`.segment`;
* a ``.txt`` file: one text per line, language ``und``, kind by length
  (up to ``QUERY_MAX_UNITS`` a query, longer a passage);
* a ``.jsonl`` file: one object per line with ``text`` and optional ``lang``
  and ``kind``;
* a folder of per-language files, ``<lang>.txt`` or ``<lang>/*.txt``,
  segmented like the default corpus.

Every loader returns samples in a stable order with stable ids
(``lang:kind:sha1(text)[:12]``) and without duplicates.

Long passages (several consecutive paragraphs, up to and past a 512-token
model's maximum; see :func:`.segment.long_passages`) are a separate pool that
:func:`.splits.make_splits` draws for evaluation only:
:func:`load_default_long_passages` for the default corpus,
:func:`load_long_passages` for a user corpus. Only documents have paragraphs
to join, so a folder corpus gets a long pool and a ``.txt`` or ``.jsonl``
corpus does not: its texts are used exactly as given, long ones as ordinary
passages in both splits (truncated to the parity max length like any text).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import CorpusError
from . import sources
from .segment import QUERY_MAX_UNITS, long_passages_of, paragraphs, segment_paragraphs, text_units

KINDS = ("query", "passage")
UNDETERMINED = "und"  # ISO 639-3 "undetermined"
CORPUS_FORMATS_HINT = ("pass a .txt file (one text per line), a .jsonl file "
                       '({"text": ..., "lang": ..., "kind": ...} per line) '
                       "or a folder of <lang>.txt files")


@dataclass(frozen=True)
class Sample:
    id: str
    lang: str
    kind: str  # "query" | "passage"
    text: str  # raw, without prefix

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CorpusError(f"sample {self.id!r} has kind {self.kind!r}",
                              "kind must be 'query' or 'passage'")
        if not self.text.strip():
            raise CorpusError(f"sample {self.id!r} has empty text", "drop empty texts")


def sample_id(lang: str, kind: str, text: str) -> str:
    return f"{lang}:{kind}:{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"


def make_sample(lang: str, kind: str, text: str) -> Sample:
    return Sample(sample_id(lang, kind, text), lang, kind, text)


def kind_by_length(text: str) -> str:
    return "query" if text_units(text) <= QUERY_MAX_UNITS else "passage"


def dedupe(samples: Iterable[Sample]) -> list[Sample]:
    """First occurrence of each id, in order."""
    seen: dict[str, Sample] = {}
    for s in samples:
        seen.setdefault(s.id, s)
    return list(seen.values())


def segment_language(lang: str, texts: Iterable[str]) -> list[Sample]:
    """Queries then passages of one language's documents, deduplicated."""
    return _segmented(lang, (paragraphs(raw) for raw in texts))


def long_language(lang: str, texts: Iterable[str]) -> list[Sample]:
    """Long passages of one language's documents, deduplicated."""
    return _long(lang, (paragraphs(raw) for raw in texts))


def _segmented(lang: str, docs: Iterable[Iterable[str]]) -> list[Sample]:
    queries: list[Sample] = []
    passages: list[Sample] = []
    for paras in docs:
        seg = segment_paragraphs(paras)
        queries += (make_sample(lang, "query", t) for t in seg.queries)
        passages += (make_sample(lang, "passage", t) for t in seg.passages)
    return dedupe(queries + passages)


def _long(lang: str, docs: Iterable[Iterable[str]]) -> list[Sample]:
    return dedupe(make_sample(lang, "passage", t) for paras in docs for t in long_passages_of(paras))


@lru_cache(maxsize=None)
def _default_paragraphs(lang: str) -> tuple[tuple[str, ...], ...]:
    """Each default-corpus document's paragraphs, computed once for both pools
    (the paragraph split is most of the segmentation's time)."""
    return tuple(tuple(paragraphs(p.read_text(encoding="utf-8"))) for p in sources.language_files(lang))


@lru_cache(maxsize=None)
def _default_language(lang: str) -> tuple[Sample, ...]:
    return tuple(_segmented(lang, _default_paragraphs(lang)))


@lru_cache(maxsize=None)
def _default_long(lang: str) -> tuple[Sample, ...]:
    return tuple(_long(lang, _default_paragraphs(lang)))


def _default_wanted(languages: Iterable[str] | None) -> list[str]:
    available = sources.default_languages()
    wanted = list(available) if languages is None else list(dict.fromkeys(languages))
    unknown = [lang for lang in wanted if lang not in available]
    if unknown:
        raise CorpusError(f"the default corpus has no language {', '.join(map(repr, unknown))}",
                          f"choose from: {', '.join(available)}")
    return wanted


def load_default_corpus(languages: Iterable[str] | None = None) -> list[Sample]:
    """The dataset-build corpus (all 38 languages unless ``languages`` says).

    Segmenting all languages (and the long passages, from the same
    paragraphs) takes 1-3 s on a 2-core machine; results are cached per
    process.
    """
    samples = [s for lang in _default_wanted(languages) for s in _default_language(lang)]
    return _non_empty(samples, "the default corpus")


def load_default_long_passages(languages: Iterable[str] | None = None) -> list[Sample]:
    """The default corpus's long passages (evaluation only; see the module
    docstring): 33-73 per language, 432 for English."""
    return [s for lang in _default_wanted(languages) for s in _default_long(lang)]


def load_corpus(path: str | Path) -> list[Sample]:
    """Samples from a user corpus: ``.txt``, ``.jsonl`` or a folder."""
    path = _checked(path)
    if path.is_dir():
        samples = _load_folder(path)
    elif path.suffix.lower() == ".txt":
        samples = _load_txt(path)
    else:
        samples = _load_jsonl(path)
    return _non_empty(dedupe(samples), f"corpus {path}")


def load_long_passages(path: str | Path) -> list[Sample]:
    """Long passages of a user corpus: built from a folder's documents; none
    for a ``.txt`` or ``.jsonl`` file (see the module docstring)."""
    path = _checked(path)
    if not path.is_dir():
        return []
    docs = _folder_documents(path)
    return [s for lang in sorted(docs) for s in long_language(lang, (_read(f) for f in docs[lang]))]


def _checked(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist", CORPUS_FORMATS_HINT)
    if not path.is_dir() and path.suffix.lower() not in (".txt", ".jsonl"):
        raise CorpusError(f"corpus {path} has an unknown extension {path.suffix or '(none)'!r}",
                          CORPUS_FORMATS_HINT)
    return path


def _non_empty(samples: list[Sample], what: str) -> list[Sample]:
    if not samples:
        raise CorpusError(f"{what} has no usable text",
                          "add non-empty lines (queries >= 24 characters, passages are "
                          "paragraphs), or " + CORPUS_FORMATS_HINT)
    return samples


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"corpus file {path} is not UTF-8 (byte {exc.start})",
                          "re-save it as UTF-8") from exc
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc.strerror}",
                          "check the path and its permissions") from exc


def _load_txt(path: Path) -> list[Sample]:
    lines = (line.strip() for line in _read(path).splitlines())
    return [make_sample(UNDETERMINED, kind_by_length(t), t) for t in lines if t]


def _load_jsonl(path: Path) -> list[Sample]:
    out: list[Sample] = []
    for n, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{where} is not valid JSON: {exc.msg}",
                              'write one object per line, e.g. {"text": "...", "lang": "deu"}') from exc
        if not isinstance(obj, dict):
            raise CorpusError(f"{where} is a JSON {type(obj).__name__}, not an object",
                              'write one object per line, e.g. {"text": "..."}')
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f"{where} has no non-empty string 'text'",
                              'every line needs "text": "..."')
        lang = obj.get("lang", UNDETERMINED)
        if not isinstance(lang, str) or not lang.strip():
            raise CorpusError(f"{where} has an invalid 'lang' {lang!r}",
                              'use a language code such as "deu", or leave "lang" out')
        kind = obj.get("kind")
        if kind is None:
            kind = kind_by_length(text.strip())
        elif kind not in KINDS:
            raise CorpusError(f"{where} has kind {kind!r}",
                              'use "query" or "passage", or leave "kind" out')
        out.append(make_sample(lang.strip(), kind, text.strip()))
    return out


def _folder_documents(path: Path) -> dict[str, list[Path]]:
    """language -> its files, from ``<lang>.txt`` and ``<lang>/*.txt``."""
    docs: dict[str, list[Path]] = {}
    for f in sorted(path.glob("*.txt")):
        docs.setdefault(f.stem, []).append(f)
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(sub.glob("*.txt"))
        if files:
            docs.setdefault(sub.name, []).extend(files)
    if not docs:
        raise CorpusError(f"corpus folder {path} has no <lang>.txt or <lang>/*.txt files",
                          CORPUS_FORMATS_HINT)
    return docs


def _load_folder(path: Path) -> list[Sample]:
    docs = _folder_documents(path)
    out: list[Sample] = []
    for lang in sorted(docs):
        out += segment_language(lang, (_read(f) for f in docs[lang]))
    return out
