"""Embedding parity metrics: candidate artifact vs the FP32 torch reference.

Everything here is numpy on already-computed embeddings (rows = texts of the
held-out evaluation split, same order in both arrays). Cosines are computed in
float64 on re-normalized rows, so a candidate that returns un-normalized or
integer (output-quantized) vectors is judged on direction only.

Retrieval agreement ranks every passage for every query twice: reference
queries against reference passages, and candidate queries against candidate
passages (what a deployment of the artifact would do), then compares the
rankings. Ties are broken by passage order, so results are deterministic.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ArtifactError, EmbedcError

KINDS = ("query", "passage")
SCHEMA_VERSION = 1
# How many of the worst texts a result keeps in its summary (all per-text
# cosines are kept as well; this is the ready-sorted head for reports).
N_WORST = 10
# How many retrieval disagreements a result keeps for reports.
N_RETRIEVAL_EXAMPLES = 10
_DECIMALS = 6


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), _DECIMALS)


@dataclass(frozen=True)
class RetrievalAgreement:
    """How well the candidate reproduces the reference's top-k passages.

    ``k`` is the k actually used: ``min(requested_k, n_passages)``.
    ``worst_queries``: (query id, overlap) for the lowest-overlap queries.
    ``top1_mismatches``: (query id, reference top-1 passage id, candidate
    top-1 passage id) for queries whose top-1 passage changed.
    Both lists are capped at ``N_RETRIEVAL_EXAMPLES`` entries.
    """

    n_queries: int
    n_passages: int
    k: int
    requested_k: int
    topk_overlap: float
    top1_agreement: float
    worst_queries: tuple[tuple[str, float], ...] = ()
    top1_mismatches: tuple[tuple[str, str, str], ...] = ()

    @property
    def k_reduced(self) -> bool:
        """True when there were fewer passages than the requested k."""
        return self.k < self.requested_k

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_queries": self.n_queries,
            "n_passages": self.n_passages,
            "k": self.k,
            "requested_k": self.requested_k,
            "topk_overlap": _r(self.topk_overlap),
            "top1_agreement": _r(self.top1_agreement),
            "worst_queries": [{"id": q, "overlap": _r(o)} for q, o in self.worst_queries],
            "top1_mismatches": [
                {"query": q, "reference": a, "candidate": b} for q, a, b in self.top1_mismatches
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RetrievalAgreement":
        return cls(
            n_queries=int(d["n_queries"]),
            n_passages=int(d["n_passages"]),
            k=int(d["k"]),
            requested_k=int(d["requested_k"]),
            topk_overlap=float(d["topk_overlap"]),
            top1_agreement=float(d["top1_agreement"]),
            worst_queries=tuple((str(w["id"]), float(w["overlap"])) for w in d.get("worst_queries", ())),
            top1_mismatches=tuple(
                (str(m["query"]), str(m["reference"]), str(m["candidate"]))
                for m in d.get("top1_mismatches", ())
            ),
        )


@dataclass(frozen=True)
class LanguageParity:
    """Cosine statistics of one language; ``retrieval`` is within-language
    retrieval agreement, computed only when the language has at least
    ``top_k`` passages and one query (else None)."""

    count: int
    mean: float
    min: float
    retrieval: RetrievalAgreement | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": _r(self.mean),
            "min": _r(self.min),
            "retrieval": None if self.retrieval is None else self.retrieval.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LanguageParity":
        r = d.get("retrieval")
        return cls(
            count=int(d["count"]),
            mean=float(d["mean"]),
            min=float(d["min"]),
            retrieval=None if r is None else RetrievalAgreement.from_dict(r),
        )


@dataclass(frozen=True)
class ParityResult:
    """Parity of one candidate against the reference on one evaluation split.

    ``cosines``, ``text_langs`` and ``text_kinds`` are keyed by text id in
    input order. ``worst`` holds (id, cosine) of the lowest-cosine texts,
    ascending. ``retrieval`` pools all languages (cross-lingual retrieval);
    None when the split has no queries or no passages. ``p01`` is the 1st
    percentile of the per-text cosines (numpy's linear interpolation).
    Treat the mappings as read-only.
    """

    n_texts: int
    mean: float
    p01: float
    min: float
    worst: tuple[tuple[str, float], ...]
    languages: dict[str, LanguageParity]
    retrieval: RetrievalAgreement | None
    top_k: int
    cosines: dict[str, float] = field(repr=False)
    text_langs: dict[str, str] = field(repr=False)
    text_kinds: dict[str, str] = field(repr=False)

    # ---- convenience for gates and reports -------------------------------
    def worst_texts(
        self, n: int = 5, *, langs: Sequence[str] | None = None, below: float | None = None
    ) -> list[tuple[str, str, float]]:
        """Up to ``n`` (id, lang, cosine) ascending by cosine, optionally only
        texts of ``langs`` and/or with cosine < ``below``. Ties keep input order."""
        wanted = None if langs is None else set(langs)
        items = [
            (tid, self.text_langs[tid], cos)
            for tid, cos in self.cosines.items()
            if (wanted is None or self.text_langs[tid] in wanted) and (below is None or cos < below)
        ]
        items.sort(key=lambda t: t[2])  # stable: ties keep input order
        return items[:n]

    # ---- serialization ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; floats rounded to 6 decimals."""
        return {
            "schema": SCHEMA_VERSION,
            "n_texts": self.n_texts,
            "top_k": self.top_k,
            "mean": _r(self.mean),
            "p01": _r(self.p01),
            "min": _r(self.min),
            "worst": [
                {"id": tid, "lang": self.text_langs.get(tid), "cosine": _r(c)} for tid, c in self.worst
            ],
            "languages": {lang: lp.to_dict() for lang, lp in self.languages.items()},
            "retrieval": None if self.retrieval is None else self.retrieval.to_dict(),
            "per_text": {tid: _r(c) for tid, c in self.cosines.items()},
            "text_lang": dict(self.text_langs),
            "text_kind": dict(self.text_kinds),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ParityResult":
        schema = d.get("schema", SCHEMA_VERSION)
        if schema != SCHEMA_VERSION:
            raise ArtifactError(
                f"parity result has schema {schema!r}, this embedc reads {SCHEMA_VERSION}",
                "re-run the parity check with this embedc version",
            )
        try:
            r = d.get("retrieval")
            return cls(
                n_texts=int(d["n_texts"]),
                mean=float(d["mean"]),
                p01=float(d["p01"]),
                min=float(d["min"]),
                worst=tuple((str(w["id"]), float(w["cosine"])) for w in d["worst"]),
                languages={str(k): LanguageParity.from_dict(v) for k, v in d["languages"].items()},
                retrieval=None if r is None else RetrievalAgreement.from_dict(r),
                top_k=int(d["top_k"]),
                cosines={str(k): float(v) for k, v in d["per_text"].items()},
                text_langs={str(k): str(v) for k, v in d["text_lang"].items()},
                text_kinds={str(k): str(v) for k, v in d["text_kind"].items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"parity result is malformed: {type(exc).__name__}: {exc}",
                "re-run the parity check to regenerate it",
            ) from exc


# ---------------------------------------------------------------------------
# computation
# ---------------------------------------------------------------------------

def _validate_inputs(
    reference: np.ndarray, candidate: np.ndarray, ids: Sequence[str], langs: Sequence[str],
    kinds: Sequence[str], top_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference)
    cand = np.asarray(candidate)
    if ref.ndim != 2 or cand.ndim != 2:
        raise ValueError(
            f"embeddings must be 2-D (texts x dims); got reference {ref.shape}, candidate {cand.shape}"
        )
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    n = ref.shape[0]
    if n == 0 or ref.shape[1] == 0:
        raise ValueError(f"no embeddings to compare (shape {ref.shape})")
    for name, seq in (("ids", ids), ("langs", langs), ("kinds", kinds)):
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} embedding rows")
    if len(set(ids)) != n:
        dups = sorted(i for i, c in Counter(ids).items() if c > 1)[:5]
        raise ValueError(f"text ids must be unique; repeated: {dups}")
    bad_kinds = sorted({k for k in kinds if k not in KINDS})
    if bad_kinds:
        raise ValueError(f"kinds must be 'query' or 'passage'; got {bad_kinds}")
    if not all(isinstance(lang, str) and lang for lang in langs):
        raise ValueError("every text needs a non-empty language code")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    for arr, name in ((ref, "reference"), (cand, "candidate")):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"{name} embeddings must be numeric, got dtype {arr.dtype}")
    return ref.astype(np.float64), cand.astype(np.float64)


def _ids_at(ids: Sequence[str], mask: np.ndarray, limit: int = 5) -> str:
    where = np.flatnonzero(mask)
    shown = ", ".join(repr(ids[i]) for i in where[:limit])
    more = f" and {len(where) - limit} more" if len(where) > limit else ""
    return shown + more


def _normalize(x: np.ndarray, ids: Sequence[str], *, side: str) -> np.ndarray:
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        msg = f"{side} embeddings contain NaN/Inf in {int((~finite).sum())} rows: {_ids_at(ids, ~finite)}"
        if side == "candidate":
            raise ArtifactError(msg, "the artifact produced non-finite outputs; for FP16 keep "
                                     "LayerNorm/Softmax in FP32, for INT8 check calibration ranges")
        raise EmbedcError(msg, "the FP32 reference itself is broken; check the model weights and export")
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    if zero.any():
        msg = f"{side} embeddings have zero norm in {int(zero.sum())} rows: {_ids_at(ids, zero)}"
        if side == "candidate":
            raise ArtifactError(msg, "the artifact returned all-zero vectors; its quantization collapsed")
        raise EmbedcError(msg, "the FP32 reference returned all-zero vectors; check pooling and inputs")
    return x / norms[:, None]


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    # stable sort on negated scores: ties go to the lower passage index
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _retrieval(
    ref: np.ndarray, cand: np.ndarray, q_idx: np.ndarray, p_idx: np.ndarray, ids: Sequence[str],
    requested_k: int,
) -> RetrievalAgreement | None:
    nq, npass = len(q_idx), len(p_idx)
    if nq == 0 or npass == 0:
        return None
    k = min(requested_k, npass)
    ref_top = _topk(ref[q_idx] @ ref[p_idx].T, k)
    cand_top = _topk(cand[q_idx] @ cand[p_idx].T, k)
    rows = np.arange(nq)[:, None]
    in_ref = np.zeros((nq, npass), dtype=bool)
    in_cand = np.zeros((nq, npass), dtype=bool)
    in_ref[rows, ref_top] = True
    in_cand[rows, cand_top] = True
    overlap = (in_ref & in_cand).sum(axis=1) / k
    same_top1 = ref_top[:, 0] == cand_top[:, 0]

    order = np.argsort(overlap, kind="stable")
    worst_queries = tuple(
        (ids[q_idx[i]], float(overlap[i])) for i in order[:N_RETRIEVAL_EXAMPLES] if overlap[i] < 1.0
    )
    mismatches = tuple(
        (ids[q_idx[i]], ids[p_idx[ref_top[i, 0]]], ids[p_idx[cand_top[i, 0]]])
        for i in np.flatnonzero(~same_top1)[:N_RETRIEVAL_EXAMPLES]
    )
    return RetrievalAgreement(
        n_queries=nq,
        n_passages=npass,
        k=k,
        requested_k=requested_k,
        topk_overlap=float(overlap.mean()),
        top1_agreement=float(same_top1.mean()),
        worst_queries=worst_queries,
        top1_mismatches=mismatches,
    )


def compute_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    ids: list[str],
    langs: list[str],
    kinds: list[str],
    top_k: int = 10,
) -> ParityResult:
    """Compare ``candidate`` embeddings with ``reference`` row by row.

    Raises ``ValueError`` for caller mistakes (shapes, lengths, duplicate ids,
    unknown kinds), ``ArtifactError`` when the candidate has NaN/Inf or
    all-zero rows, ``EmbedcError`` when the reference does.
    """
    ids = [str(i) for i in ids]
    langs = [str(lang) for lang in langs]
    kinds = [str(k) for k in kinds]
    ref, cand = _validate_inputs(reference, candidate, ids, langs, kinds, top_k)
    top_k = int(top_k)
    ref = _normalize(ref, ids, side="reference")
    cand = _normalize(cand, ids, side="candidate")

    cos = np.clip(np.einsum("ij,ij->i", ref, cand), -1.0, 1.0)
    order = np.argsort(cos, kind="stable")
    worst = tuple((ids[i], float(cos[i])) for i in order[:N_WORST])

    lang_arr = np.asarray(langs, dtype=object)
    kind_arr = np.asarray(kinds, dtype=object)
    is_query = kind_arr == "query"
    is_passage = ~is_query

    languages: dict[str, LanguageParity] = {}
    for lang in sorted(set(langs)):
        mask = lang_arr == lang
        lang_cos = cos[mask]
        lang_retrieval = None
        q_idx = np.flatnonzero(mask & is_query)
        p_idx = np.flatnonzero(mask & is_passage)
        if len(q_idx) >= 1 and len(p_idx) >= top_k:
            lang_retrieval = _retrieval(ref, cand, q_idx, p_idx, ids, top_k)
        languages[lang] = LanguageParity(
            count=int(mask.sum()),
            mean=float(lang_cos.mean()),
            min=float(lang_cos.min()),
            retrieval=lang_retrieval,
        )

    retrieval = _retrieval(
        ref, cand, np.flatnonzero(is_query), np.flatnonzero(is_passage), ids, top_k
    )

    return ParityResult(
        n_texts=len(ids),
        mean=float(cos.mean()),
        p01=float(np.percentile(cos, 1.0)),
        min=float(cos.min()),
        worst=worst,
        languages=languages,
        retrieval=retrieval,
        top_k=top_k,
        cosines={tid: float(c) for tid, c in zip(ids, cos)},
        text_langs=dict(zip(ids, langs)),
        text_kinds=dict(zip(ids, kinds)),
    )
