"""What a compressed output costs, against the FP32 model on the evaluation split.

- cosine of the dequantized vector with the reference's own vector in the same
  space (calibrated int8 / float32: the truncated vector; tanh int8: its tanh)
- retrieval of queries against passages (all languages pooled), judged
  against the FP32 model's full-width float ranking: top-10 overlap, top-1
  agreement, and top-1 per query language (its minimum is gated):
  - ``compressed``: ranking by the compressed vectors alone (int8 cosine,
    Hamming distance for binary / ubinary, float cosine for float32 dims)
  - ``rescored``: the HF embedding-quantization recipe: retrieve
    ``rescore_multiplier x k`` candidates with the compressed vectors, then
    rescore them with the float query against the dequantized int8 document vectors (cosine)
    (binary / ubinary use the int8 output at the same dims when the artifact
    has one, else their ±1 vectors)."""
from __future__ import annotations

import numpy as np

from . import formulas
from .spec import Head


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def compressed_scores(head: Head, q: np.ndarray, d: np.ndarray, ranges: dict | None) -> np.ndarray:
    """Query x document similarity from the compressed vectors alone (higher is better)."""
    if head.format == "ubinary":
        return -formulas.hamming(q, d).astype(np.float64)
    if head.format == "binary":
        return -formulas.hamming(np.packbits(np.asarray(q) > 0, axis=1), np.packbits(np.asarray(d) > 0, axis=1)
                                 ).astype(np.float64)
    if head.format == "int8":  # what an int8 index computes: cosine of the raw int8 vectors
        return _unit(np.asarray(q, np.float64)) @ _unit(np.asarray(d, np.float64)).T
    return _unit(q) @ _unit(d).T


def agreement(ref_top: np.ndarray, cand_top: np.ndarray, q_langs: np.ndarray, k: int) -> dict:
    nq = len(ref_top)
    overlap = np.array([len(set(ref_top[i, :k]) & set(cand_top[i, :k])) / k for i in range(nq)])
    top1 = ref_top[:, 0] == cand_top[:, 0]
    langs = {str(lang): float(top1[q_langs == lang].mean()) for lang in sorted(set(q_langs.tolist()))}
    worst = min(langs.items(), key=lambda kv: kv[1]) if langs else ("-", float("nan"))
    return {"top10": float(overlap.mean()), "top1": float(top1.mean()), "lang_top1": langs,
            "lang_top1_min": worst[1], "lang_top1_worst": worst[0]}


def retrieval(head: Head, ref: np.ndarray, out: np.ndarray, float_art: np.ndarray, q_idx, p_idx, q_langs,
              ranges: dict | None, *, k: int = 10, rescore_multiplier: int = 4,
              rescore_docs: tuple[Head, np.ndarray] | None = None) -> dict:
    """``ref``: the FP32 model's normalized full-width embeddings (ground truth);
    ``out``: the head's outputs; ``float_art``: the artifact's own float
    embeddings (the float query for rescoring)."""
    ref = _unit(ref)
    k = min(k, len(p_idx))
    ref_top = _topk(ref[q_idx] @ ref[p_idx].T, k)
    scores = compressed_scores(head, out[q_idx], out[p_idx], ranges)
    res = {"k": k, "compressed": agreement(ref_top, _topk(scores, k), q_langs, k)}
    if head.format == "float32":
        return res
    n_cand = min(len(p_idx), rescore_multiplier * k)
    cand = _topk(scores, n_cand)
    fq = _unit(formulas.truncate(Head("q", "float32", None, head.dims, head.width, "x", True), float_art[q_idx]))
    rh, rout = rescore_docs if rescore_docs is not None else (head, out)
    docs = _unit(formulas.dequantize(rh, rout[p_idx], ranges))  # cosine, as the float index ranks
    full = fq @ docs.T
    rescored = np.take_along_axis(full, cand, axis=1)
    order = np.argsort(-rescored, axis=1, kind="stable")[:, :k]
    res["rescored"] = {**agreement(ref_top, np.take_along_axis(cand, order, axis=1), q_langs, k),
                       "candidates": int(n_cand), "rescore_multiplier": int(rescore_multiplier),
                       "documents": rh.name if rh is not head else (
                           "its own dequantized int8" if head.format == "int8" else "its own ±1 vectors")}
    return res


def judge(heads: list[Head], outputs: dict[str, np.ndarray], *, ref_emb: np.ndarray, ref_sources: dict,
          float_art: np.ndarray, langs, kinds, ranges: dict | None, rescore_multiplier: int = 4,
          k: int = 10) -> dict:
    """Parity of every head: ``outputs`` name -> artifact head outputs on the evaluation split;
    ``ref_sources`` graph output name -> the FP32 model's float vectors (for the cosine)."""
    langs = np.asarray(langs, dtype=object)
    kinds = np.asarray(kinds, dtype=object)
    q_idx, p_idx = np.flatnonzero(kinds == "query"), np.flatnonzero(kinds != "query")
    result = {}
    for h in heads:
        out = outputs[h.name]
        entry: dict = {"format": h.format, "scheme": h.scheme, "dims": h.dims, "bytes_per_vector": h.bytes_per_vector,
                       "bytes_vs_float32": round(h.bytes_per_vector / (4 * h.width), 5)}
        if h.format in ("float32", "int8"):
            want = formulas.reference_space(h, ref_sources[h.source])
            cos = np.einsum("ij,ij->i", _unit(formulas.dequantize(h, out, ranges)), _unit(want))
            per_lang = {str(lang): float(cos[langs == lang].mean()) for lang in sorted(set(langs.tolist()))}
            entry.update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
                         lang_cosine_min=min(per_lang.values()),
                         lang_cosine_worst=min(per_lang, key=per_lang.get),
                         cosine_space="tanh(v) vs q/127" if h.scheme == "tanh" else "dequantized vs float")
        else:
            want = formulas.apply(h, ref_sources[h.source], ranges)
            same = np.asarray(out) == np.asarray(want)
            entry["bit_agreement" if h.format == "ubinary" else "sign_agreement"] = float(
                np.unpackbits(np.bitwise_not(np.bitwise_xor(out, want)), axis=1)[:, :h.dims].mean()
                if h.format == "ubinary" else same.mean())
        if len(q_idx) and len(p_idx):
            rescore_docs = None
            if h.format in ("binary", "ubinary"):
                mate = next((g for g in heads if g.format == "int8" and g.dims == h.dims and g.source == h.source),
                            None)
                if mate is not None:
                    rescore_docs = (mate, outputs[mate.name])
            entry["retrieval"] = retrieval(h, ref_emb, out, float_art, q_idx, p_idx, langs[q_idx], ranges, k=k,
                                           rescore_multiplier=rescore_multiplier, rescore_docs=rescore_docs)
        result[h.name] = entry
    return result


def flat_metrics(entry: dict) -> dict[str, float]:
    """Gateable metrics of one head: cosine_mean, cosine_min, lang_cosine_min,
    top10, top1, lang_top1_min, rescored_top10, rescored_top1, rescored_lang_top1_min."""
    out = {k: entry[k] for k in ("cosine_mean", "cosine_min", "lang_cosine_min") if k in entry}
    r = entry.get("retrieval") or {}
    for part, prefix in (("compressed", ""), ("rescored", "rescored_")):
        if part in r:
            for m in ("top10", "top1", "lang_top1_min"):
                out[prefix + m] = r[part][m]
    return out
