"""Language-stratified, seeded calibration / evaluation splits.

Defaults, and why:

* ``calib_per_lang=8``: 38 languages -> 304 calibration texts. Static
  activation calibration (ORT MinMax/Entropy, NNCF, TensorRT-side ranges)
  estimates a min/max or histogram per tensor; those settle after a few
  hundred texts (NNCF's default subset is 300), and what matters more for a
  multilingual model is that every script is seen. 304 texts of <= ~320 tokens
  also keep calibration to minutes on 2 CPU cores.
* ``eval_per_lang=16``: 38 x 16 = 608 held-out texts, 8 queries and 8 passages
  per language: enough for a per-language mean cosine (gates are per language,
  not only on the mean) and a small 8-vs-8 retrieval check, while a torch FP32
  reference pass over them stays cheap.
* ``long_per_lang=2``: 76 long passages (several paragraphs each, from
  their own pool; see :mod:`.corpus`) join the evaluation split, so that
  parity covers texts up to and past the model's maximum length: with the
  multilingual-e5 tokenizer ~20% of the evaluation passages are over 300
  tokens (the aim is >= 10%) and about half the long ones reach 512.
  They are drawn after everything else and appended, so the calibration
  split and the other evaluation texts are what they were without them.
* ``seed=0``; ``min_languages=2``: a one-language corpus is refused unless the
  caller asks for it, because calibrating a multilingual model on one language
  is the mistake this toolchain exists to avoid.

Draws are per (language, kind) from a random stream seeded by
``sha256(seed, lang, kind)`` over samples sorted by id, so the result does not
depend on input order or on which other languages are present.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import CorpusError, UsageError
from .corpus import KINDS, UNDETERMINED, Sample

DEFAULT_CALIB_PER_LANG = 8
DEFAULT_EVAL_PER_LANG = 16
DEFAULT_LONG_PER_LANG = 2
DEFAULT_SEED = 0
DEFAULT_MIN_LANGUAGES = 2

_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=1 << 17)  # make_splits keys every corpus text, and a process often splits one corpus twice
def normalize_text(text: str) -> str:
    """The comparison key for "same text": NFKC, casefolded, spaces collapsed."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).casefold().strip()


def content_hash(samples: Iterable[Sample]) -> str:
    """sha256 over (id, lang, kind, text) of each sample, in order."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.id, s.lang, s.kind, s.text], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _split_summary(samples: Sequence[Sample]) -> dict:
    return {
        "size": len(samples),
        "languages": dict(sorted(Counter(s.lang for s in samples).items())),
        "kinds": {k: sum(1 for s in samples if s.kind == k) for k in KINDS},
        "sha256": content_hash(samples),
    }


@dataclass(frozen=True)
class Splits:
    calibration: tuple[Sample, ...]
    evaluation: tuple[Sample, ...]
    seed: int
    calib_per_lang: int
    eval_per_lang: int
    languages: tuple[str, ...]
    # lang -> {"available", "calibration", "evaluation"} where a quota was not met
    short_languages: dict[str, dict[str, int]] = field(default_factory=dict)
    long_per_lang: int = 0
    # the long passages: the tail of ``evaluation``, in language order
    long_passages: tuple[Sample, ...] = ()
    # lang -> {"available", "drawn"} where fewer than long_per_lang were drawn
    short_long: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready description: sizes, per-language/kind counts, hashes.
        ``evaluation`` covers every evaluation text, long passages included;
        ``evaluation.long_passages`` describes those alone."""
        evaluation = _split_summary(self.evaluation)
        evaluation["long_passages"] = {
            **_split_summary(self.long_passages),
            "short_languages": {k: dict(v) for k, v in self.short_long.items()},
        }
        return {
            "seed": self.seed,
            "calib_per_lang": self.calib_per_lang,
            "eval_per_lang": self.eval_per_lang,
            "long_per_lang": self.long_per_lang,
            "languages": list(self.languages),
            "short_languages": {k: dict(v) for k, v in self.short_languages.items()},
            "calibration": _split_summary(self.calibration),
            "evaluation": evaluation,
        }


def _rng(seed: int, lang: str, kind: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{lang}\0{kind}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class _Pool:
    """Shuffled samples of one language and kind, drawn front to back."""

    def __init__(self, samples: list[Sample], rng: random.Random):
        self.items = sorted(samples, key=lambda s: s.id)
        rng.shuffle(self.items)
        self.pos = 0

    def take(self, n: int, accept) -> list[Sample]:
        out: list[Sample] = []
        while len(out) < n and self.pos < len(self.items):
            s = self.items[self.pos]
            self.pos += 1
            if accept(s):
                out.append(s)
        return out


def _draw(pools: dict[str, _Pool], n: int, accept) -> list[Sample]:
    """n samples, half queries (the odd one a query), the rest from the other
    kind when one runs out; queries first, then passages."""
    want_q = (n + 1) // 2
    q = pools["query"].take(want_q, accept)
    p = pools["passage"].take(n - len(q), accept)
    if len(q) + len(p) < n:
        q += pools["query"].take(n - len(q) - len(p), accept)
    return q + p


def make_splits(samples: Sequence[Sample], *, calib_per_lang: int = DEFAULT_CALIB_PER_LANG,
                eval_per_lang: int = DEFAULT_EVAL_PER_LANG, seed: int = DEFAULT_SEED,
                min_languages: int = DEFAULT_MIN_LANGUAGES, long_passages: Sequence[Sample] = (),
                long_per_lang: int = DEFAULT_LONG_PER_LANG) -> Splits:
    """Per language, ``calib_per_lang`` calibration and ``eval_per_lang``
    evaluation samples, about half queries and half passages each, then up
    to ``long_per_lang`` long passages per language from ``long_passages``
    (a separate pool, e.g. :func:`.corpus.load_default_long_passages`),
    appended to the evaluation split.

    No evaluation text equals a calibration text after :func:`normalize_text`
    (checked, CorpusError otherwise), and none contains or is contained in a
    calibration text of its language (a query sentence cut from a calibration
    passage is not held out); a long passage neither contains nor is
    contained in a calibration text of any language (checked too). Within a
    split, texts are distinct.
    A language with fewer distinct texts than both quotas splits what it has
    in proportion to the quotas; it is listed in ``short_languages``. Long
    passages are drawn only for the corpus's languages; a language with too
    few is listed in ``summary()["evaluation"]["long_passages"]``.
    Neither ``long_passages`` nor ``long_per_lang`` changes the calibration
    split or the other evaluation texts.
    """
    if calib_per_lang < 0 or eval_per_lang < 0 or calib_per_lang + eval_per_lang == 0:
        raise UsageError(f"split sizes {calib_per_lang} calibration / {eval_per_lang} "
                         "evaluation per language are invalid",
                         "use non-negative sizes, at least one of them positive")
    if long_per_lang < 0:
        raise UsageError(f"{long_per_lang} long passages per language is invalid",
                         "use 0 (none) or more")
    if any(s.kind != "passage" for s in long_passages):
        raise UsageError("the long-passage pool holds queries",
                         "pass only passages (e.g. load_default_long_passages())")
    if not samples:
        raise CorpusError("the corpus is empty", "pass a corpus with text, or use the default one")
    by_lang: dict[str, list[Sample]] = {}
    for s in samples:
        by_lang.setdefault(s.lang, []).append(s)
    languages = tuple(sorted(by_lang))
    # A corpus whose languages are not labelled (a .txt file: "und") cannot be stratified
    # by language; it is split as one pool rather than refused, and reported as "und".
    if len(languages) < min_languages and languages != (UNDETERMINED,):
        raise CorpusError(
            f"the corpus has {len(languages)} language(s) ({', '.join(languages)}) but "
            f"language-stratified splits need at least {min_languages}",
            "pass --min-languages 1 (spec: calibration.min_languages = 1) to accept it, or a multi-language "
            "corpus (the default corpus has 38 languages; in .jsonl give each line a 'lang')")

    quota = calib_per_lang + eval_per_lang
    plans: dict[str, tuple[dict[str, _Pool], int, int, int]] = {}
    for lang in languages:
        pools = {k: _Pool([s for s in by_lang[lang] if s.kind == k], _rng(seed, lang, k))
                 for k in KINDS}
        available = len({normalize_text(s.text) for s in by_lang[lang]})
        if available >= quota:
            n_cal, n_eval = calib_per_lang, eval_per_lang
        else:  # proportional, and at least one each when there are two texts
            n_cal = round(available * calib_per_lang / quota)
            if available >= 2 and calib_per_lang and eval_per_lang:
                n_cal = min(max(n_cal, 1), available - 1)
            n_eval = available - n_cal
        plans[lang] = (pools, available, n_cal, n_eval)

    def fresh(keys: set[str]):
        def accept(s: Sample) -> bool:
            key = normalize_text(s.text)
            if key in keys:
                return False
            keys.add(key)
            return True
        return accept

    # Calibration for every language first, so that evaluation can avoid all
    # of it (the same sentence may occur under two languages or kinds).
    calib_keys: set[str] = set()
    cal_by_lang = {lang: _draw(plans[lang][0], plans[lang][2], fresh(calib_keys))
                   for lang in languages}
    eval_keys: set[str] = set()
    take_eval = fresh(eval_keys)
    calibration: list[Sample] = []
    evaluation: list[Sample] = []
    short: dict[str, dict[str, int]] = {}
    for lang in languages:
        pools, available, _, n_eval = plans[lang]
        cal = cal_by_lang[lang]
        cal_texts = [normalize_text(s.text) for s in cal]

        def held_out(s: Sample) -> bool:
            key = normalize_text(s.text)
            if key in calib_keys or any(key in c or c in key for c in cal_texts):
                return False
            return take_eval(s)

        ev = _draw(pools, n_eval, held_out)
        calibration += cal
        evaluation += ev
        if len(cal) < calib_per_lang or len(ev) < eval_per_lang:
            short[lang] = {"available": available, "calibration": len(cal),
                           "evaluation": len(ev)}

    # Long passages last, from their own pool and random streams, so that
    # everything above is the same with or without them.
    long_by_lang: dict[str, list[Sample]] = {}
    for s in long_passages:
        long_by_lang.setdefault(s.lang, []).append(s)
    all_cal = [normalize_text(s.text) for s in calibration]

    def long_held_out(s: Sample) -> bool:
        return not _overlapping(normalize_text(s.text), all_cal) and take_eval(s)

    longs: list[Sample] = []
    short_long: dict[str, dict[str, int]] = {}
    for lang in languages if long_per_lang else ():
        pool = long_by_lang.get(lang, [])
        drawn = _Pool(pool, _rng(seed, lang, "long")).take(long_per_lang, long_held_out)
        longs += drawn
        if len(drawn) < long_per_lang:
            short_long[lang] = {"available": len(pool), "drawn": len(drawn)}

    evaluation += longs
    _check_disjoint(calibration, evaluation)
    _check_long_held_out(calibration, longs)
    return Splits(tuple(calibration), tuple(evaluation), seed, calib_per_lang, eval_per_lang,
                  languages, short, long_per_lang, tuple(longs), short_long)


def _check_disjoint(calibration: Sequence[Sample], evaluation: Sequence[Sample]) -> None:
    shared = ({normalize_text(s.text) for s in calibration}
              & {normalize_text(s.text) for s in evaluation})
    if shared:
        example = next(iter(sorted(shared)))[:60]
        raise CorpusError(f"{len(shared)} text(s) are in both the calibration and evaluation "
                          f"splits, e.g. {example!r}",
                          "this is a bug in the split; report it with the corpus and seed")


def _overlapping(key: str, others: Sequence[str]) -> list[str]:
    """The texts of ``others`` that contain or are contained in ``key``."""
    return [c for c in others if c in key or key in c]


def _check_long_held_out(calibration: Sequence[Sample], longs: Sequence[Sample]) -> None:
    cal = [normalize_text(s.text) for s in calibration]
    for s in longs:
        inside = _overlapping(normalize_text(s.text), cal)
        if inside:
            raise CorpusError(f"long passage {s.id} overlaps {len(inside)} calibration text(s), "
                              f"e.g. {inside[0][:60]!r}",
                              "this is a bug in the split; report it with the corpus and seed")
