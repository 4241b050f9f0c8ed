"""A real vector index over embedc's compressed outputs (usearch, from PyPI).

Embeds documents once with an artifact, stores them three ways and reports
recall@10 of each against the FP32 index:

- ``f32``: the float output, cosine (the baseline, 4 x d bytes per vector)
- ``i8``: the graph's int8 output as usearch ``i8`` vectors, cosine (d bytes)
- ``b1``: the graph's ubinary output as usearch ``b1`` vectors, Hamming (d/8 bytes),
  then rescored with the float query against the int8 documents (the HF
  embedding-quantization recipe: retrieve ``multiplier x k``, rescore)

    python examples/index_client.py ARTIFACT_DIR [--docs docs.txt] [--queries queries.txt] [--dims 256]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def build_indexes(enc, docs: list[str], *, dims: int | None = None) -> dict:
    """usearch indexes of ``docs`` (keys 0..n-1) from an ``embedc.load(...)`` encoder."""
    from usearch.index import Index

    f = enc.encode(docs, kind="passage", dims=dims)
    q8 = enc.encode(docs, kind="passage", output="int8", dims=dims)
    ub = enc.encode(docs, kind="passage", output="ubinary", dims=dims)
    keys = np.arange(len(docs), dtype=np.uint64)
    f32 = Index(ndim=f.shape[1], metric="cos", dtype="f32")
    f32.add(keys, f)
    i8 = Index(ndim=q8.shape[1], metric="cos", dtype="i8")
    i8.add(keys, q8)
    b1 = Index(ndim=ub.shape[1] * 8, metric="hamming", dtype="b1")
    b1.add(keys, ub)
    return {"f32": f32, "i8": i8, "b1": b1, "int8_docs": q8,
            "bytes_per_vector": {"f32": f.shape[1] * 4, "i8": q8.shape[1], "b1": ub.shape[1]}}


def _dequantize(enc, q8: np.ndarray, dims: int | None) -> np.ndarray:
    """int8 documents back to floats with the artifact's recorded calibration ranges."""
    from embedc.outputs.formulas import dequantize
    from embedc.outputs.runtime import pick_output
    from embedc.outputs.spec import Head

    head = pick_output(enc.outputs, "int8", dims, width=enc.dim, where=str(enc.path))
    ranges = None
    if head["scheme"] == "calibrated":
        ranges = json.loads((Path(enc.path) / "output_ranges.json").read_text())
    return dequantize(Head.from_dict(head), q8, ranges)


def search(enc, idx: dict, queries: list[str], *, k: int = 10, dims: int | None = None, multiplier: int = 4) -> dict:
    """Top-k keys per query from each index (``b1+rescore``: Hamming candidates, int8 rescoring)."""
    f = enc.encode(queries, kind="query", dims=dims)
    q8 = enc.encode(queries, kind="query", output="int8", dims=dims)
    ub = enc.encode(queries, kind="query", output="ubinary", dims=dims)
    out = {"f32": idx["f32"].search(f, k).keys, "i8": idx["i8"].search(q8, k).keys,
           "b1": idx["b1"].search(ub, k).keys}
    n = len(idx["int8_docs"])
    cand = idx["b1"].search(ub, min(n, multiplier * k)).keys.astype(np.int64)
    docs = _dequantize(enc, idx["int8_docs"], dims)
    docs = docs / np.linalg.norm(docs, axis=1, keepdims=True).clip(min=1e-12)
    rescored = np.einsum("qd,qcd->qc", f, docs[cand])
    out["b1+rescore"] = np.take_along_axis(cand, np.argsort(-rescored, axis=1, kind="stable")[:, :k], axis=1)
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(map(int, a[:k])) & set(map(int, b))) / k for a, b in zip(found, truth)]))


def report(enc, docs: list[str], queries: list[str], *, k: int = 10, dims: int | None = None) -> dict:
    idx = build_indexes(enc, docs, dims=dims)
    res = search(enc, idx, queries, k=k, dims=dims)
    truth = res["f32"]
    return {"k": k, "documents": len(docs), "queries": len(queries), "bytes_per_vector": idx["bytes_per_vector"],
            "recall_vs_f32": {name: recall_at_k(v, truth) for name, v in res.items() if name != "f32"}}


def main() -> None:
    import embedc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--docs", help="one document per line [default: a few built-in sentences]")
    ap.add_argument("--queries", help="one query per line [default: the first words of each document]")
    ap.add_argument("--dims", type=int, default=None)
    a = ap.parse_args()
    docs = (Path(a.docs).read_text(encoding="utf-8").splitlines() if a.docs else
            [f"Document {i} is about topic {i % 7} and subject {i % 5}." for i in range(200)])
    queries = Path(a.queries).read_text(encoding="utf-8").splitlines() if a.queries else [d[:30] for d in docs[:50]]
    print(json.dumps(report(embedc.load(a.artifact), docs, queries, dims=a.dims), indent=2))


if __name__ == "__main__":
    main()
