"""Parity per token-length bucket: do long inputs embed as well as short ones?

A mean over the whole evaluation split hides a length effect (most texts are
short), and a truncation mismatch shows only on texts longer than the cut.
Buckets double from 64 tokens (1-64, 65-128, 129-256, 257-512, ...) up to the
parity max length, which closes the last bucket (1-64, ..., 257-300 for 300).
Empty buckets are kept on purpose: an empty top bucket says the evaluation
split never reached the model's maximum.

Token lengths are per text, special tokens and prompt included, after
truncation to the max length (``embedc.calibration.feeds.token_lengths``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

FIRST_BUCKET_MAX = 64
_DECIMALS = 6


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), _DECIMALS)


def length_buckets(token_lengths: Sequence[int], max_length: int) -> tuple[tuple[int, int], ...]:
    """Inclusive (low, high) token ranges, doubling from 64, the last ending at
    ``max_length``. Every length must lie in 1..max_length (i.e. truncated to it)."""
    if max_length < 1:
        raise UsageError(f"max length {max_length} is invalid", "use a max length of 1 token or more")
    lengths = np.asarray(token_lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > max_length):
        raise UsageError(f"token lengths {int(lengths.min())}..{int(lengths.max())} fall outside "
                         f"1..{max_length}", "measure lengths after truncation to the parity max length")
    buckets: list[tuple[int, int]] = []
    low, high = 1, FIRST_BUCKET_MAX
    while low <= max_length:
        buckets.append((low, min(high, max_length)))
        low, high = high + 1, high * 2
    return tuple(buckets)


@dataclass(frozen=True)
class LengthBucket:
    """Per-text cosines of the texts whose token length is in low..high.
    ``mean``, ``min`` and ``worst`` (the lowest-cosine text's id) are None
    when the bucket is empty."""

    low: int
    high: int
    count: int
    mean: float | None
    min: float | None
    worst: str | None

    @property
    def label(self) -> str:
        return f"{self.low}-{self.high}"

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "count": self.count, "mean": _r(self.mean),
                "min": _r(self.min), "worst": self.worst}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LengthBucket":
        return cls(int(d["low"]), int(d["high"]), int(d["count"]),
                   None if d.get("mean") is None else float(d["mean"]),
                   None if d.get("min") is None else float(d["min"]), d.get("worst"))


@dataclass(frozen=True)
class LengthParity:
    """Parity by length bucket for one artifact. ``at_max_length``: texts
    that reach ``max_length`` (truncated, or exactly that long)."""

    max_length: int
    at_max_length: int
    buckets: tuple[LengthBucket, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "at_max_length": self.at_max_length,
                "buckets": [b.to_dict() for b in self.buckets]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LengthParity":
        return cls(int(d["max_length"]), int(d["at_max_length"]),
                   tuple(LengthBucket.from_dict(b) for b in d["buckets"]))


def parity_by_length(cosines: Mapping[str, float], ids: Sequence[str], token_lengths: Sequence[int],
                     max_length: int) -> LengthParity:
    """Count, mean and min of the per-text ``cosines`` (text id -> cosine, as
    in ``ParityResult.cosines``) in each length bucket; ``ids`` and
    ``token_lengths`` are aligned, one entry per evaluation text."""
    if len(ids) != len(token_lengths):
        raise UsageError(f"{len(ids)} ids but {len(token_lengths)} token lengths",
                         "pass one token length per evaluation text, in the same order")
    missing = [i for i in ids if i not in cosines]
    if missing:
        raise UsageError(f"{len(missing)} text id(s) have no cosine, e.g. {missing[0]!r}",
                         "pass the ids of the texts the parity result was computed on")
    lengths = np.asarray(token_lengths, dtype=np.int64)
    cos = np.array([cosines[i] for i in ids], dtype=np.float64)
    buckets = []
    for low, high in length_buckets(lengths, max_length):
        idx = np.flatnonzero((lengths >= low) & (lengths <= high))
        if idx.size:
            worst = int(idx[np.argmin(cos[idx])])  # first of equal minima: input order
            buckets.append(LengthBucket(low, high, int(idx.size), float(cos[idx].mean()),
                                        float(cos[worst]), ids[worst]))
        else:
            buckets.append(LengthBucket(low, high, 0, None, None, None))
    return LengthParity(max_length, int((lengths >= max_length).sum()), tuple(buckets))


def render_length_table(parity: LengthParity, *, decimals: int = 5) -> str:
    """A markdown table for report.md: one row per bucket; the top bucket
    says how many of its texts reach the max length."""
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.{decimals}f}"

    lines = ["| tokens | texts | mean | min |", "|---|---|---|---|"]
    for b in parity.buckets:
        texts = str(b.count)
        if b.high == parity.max_length and parity.at_max_length:
            texts += f" ({parity.at_max_length} at {parity.max_length})"
        lines.append(f"| {b.label} | {texts} | {fmt(b.mean)} | {fmt(b.min)} |")
    return "\n".join(lines)
