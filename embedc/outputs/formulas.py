"""The reference formulas, in NumPy float32: every graph head (ONNX, OpenVINO)
must equal these applied to the artifact's own float output (exactly for
binary / ubinary, within one int8 step for int8).

- truncate: the first ``dims`` components (Matryoshka), then L2-normalize
  when the source is the normalized ``sentence_embedding``
- int8 calibrated: ``clip(round((v - lo) / step) - 128, -128, 127)`` with
  ``step = (hi - lo) / 255`` and per-dimension ``lo``/``hi`` from the
  calibration split (sentence-transformers' ``quantize_embeddings`` computes
  ``((v - lo) / step - 128).astype(int8)``: it truncates toward zero and wraps
  out-of-range values around; here values round and saturate)
- int8 tanh (pplx-embed): ``clip(round(127 * tanh(v)), -128, 127)``
- binary: ``+1 if v >= 0 else -1`` as int8; ubinary: ``np.packbits(v >= 0)``; the centered
  scheme compares ``v - mean`` instead, ``mean`` per dimension from the calibration split
Rounding is half to even (``np.round`` and ONNX ``Round`` agree)."""
from __future__ import annotations

import numpy as np

from .spec import Head

EPS = 1e-12


def truncate(head: Head, src: np.ndarray) -> np.ndarray:
    v = np.asarray(src, dtype=np.float32)[:, :head.dims]
    if head.renormalize:
        v = v / np.maximum(np.sqrt((v * v).sum(axis=1, keepdims=True)), np.float32(EPS))
    return v.astype(np.float32)


def steps(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per-dimension int8 step; a constant dimension gets a tiny step (maps to -128)."""
    return np.maximum((np.asarray(hi, np.float32) - np.asarray(lo, np.float32)) / np.float32(255.0),
                      np.float32(1e-12)).astype(np.float32)


def _centre(head: Head, v: np.ndarray, ranges: dict | None) -> np.ndarray:
    """``v`` minus the head's calibration mean (centered binary); ``v`` otherwise."""
    if not head.centered:
        return v
    if ranges is None or head.name not in ranges:
        raise ValueError(f"centered binary output {head.name} needs its calibration mean")
    return (v - np.asarray(ranges[head.name]["mean"], np.float32)).astype(np.float32)


def apply(head: Head, src: np.ndarray, ranges: dict | None = None) -> np.ndarray:
    """The head's output for float source vectors ``src`` (batch, width)."""
    v = truncate(head, src)
    if head.format == "float32":
        return v
    v = _centre(head, v, ranges)
    if head.format == "binary":
        return np.where(v >= 0, 1, -1).astype(np.int8)
    if head.format == "ubinary":
        return np.packbits(v >= 0, axis=1)
    if head.scheme == "tanh":
        q = np.round(np.float32(127.0) * np.tanh(v))
    else:
        if ranges is None or head.name not in ranges:
            raise ValueError(f"calibrated int8 output {head.name} needs its calibration ranges")
        lo = np.asarray(ranges[head.name]["lo"], np.float32)
        st = steps(lo, ranges[head.name]["hi"])
        q = np.round((v - lo) / st) - np.float32(128.0)
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(head: Head, q: np.ndarray, ranges: dict | None = None) -> np.ndarray:
    """Back to float32 in the space the format approximates: calibrated int8 ->
    the truncated vector; tanh int8 -> ``tanh`` of it (compare with
    ``tanh(reference)``); binary/ubinary -> ±1 (the sign vector)."""
    if head.format == "float32":
        return np.asarray(q, np.float32)
    if head.format == "ubinary":
        return np.unpackbits(np.asarray(q, np.uint8), axis=1)[:, :head.dims].astype(np.float32) * 2 - 1
    if head.format == "binary":
        return np.asarray(q, np.float32)
    if head.scheme == "tanh":
        return np.asarray(q, np.float32) / np.float32(127.0)
    lo = np.asarray(ranges[head.name]["lo"], np.float32)
    return (np.asarray(q, np.float32) + 128) * steps(lo, ranges[head.name]["hi"]) + lo


def reference_space(head: Head, src: np.ndarray, ranges: dict | None = None) -> np.ndarray:
    """The float vector that ``dequantize`` approximates, from float source vectors."""
    v = truncate(head, src)
    if head.format == "int8" and head.scheme == "tanh":
        return np.tanh(v)
    if head.format in ("binary", "ubinary"):
        return np.where(_centre(head, v, ranges) >= 0, 1.0, -1.0).astype(np.float32)
    return v


def compute_ranges(heads, sources: dict[str, np.ndarray]) -> dict:
    """Per-dimension min/max (calibrated int8) or mean (centered binary) of each
    head's truncated vector on the calibration split (``sources``: graph output
    name -> (n, width))."""
    out = {}
    for h in heads:
        if h.calibrated:
            v = truncate(h, sources[h.source])
            out[h.name] = {"lo": [float(x) for x in v.min(axis=0)], "hi": [float(x) for x in v.max(axis=0)],
                           "n": int(v.shape[0])}
        elif h.centered:
            v = truncate(h, sources[h.source])
            out[h.name] = {"mean": [float(x) for x in v.mean(axis=0, dtype=np.float64)], "n": int(v.shape[0])}
    return out


def hamming(q: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Hamming distances (nq, nd) between packed-bit rows."""
    x = np.bitwise_xor(np.asarray(q, np.uint8)[:, None, :], np.asarray(docs, np.uint8)[None, :, :])
    return np.unpackbits(x, axis=2).sum(axis=2)
