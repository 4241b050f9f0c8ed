"""Static (batch, length) buckets for OpenVINO NPU artifacts, and the padding
that fits a tokenized batch into one.

NPU compiles only static shapes, so an NPU artifact carries one IR per bucket.
Right-padding ``input_ids`` with the pad id and ``attention_mask`` with 0 does
not change ``sentence_embedding``: attention masks padded keys out and the
graph's mean pooling sums over the mask only. numpy only (no OpenVINO here).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from ...errors import TargetError

# NPU tiles favour lengths that are multiples of 32; short texts dominate
# embedding traffic, so the smallest bucket is not rounded past this.
LENGTH_MULTIPLE = 32
# Default buckets: these percentiles of the calibration lengths, plus the
# model's max length so that every tokenized (truncated) text has a bucket.
DEFAULT_PERCENTILES = ("p50", "p90", "p99", "max")
_BUCKET_HINT = ("give buckets as lengths or [batch, length] pairs, e.g. buckets=[64, 128, 512] "
                "or buckets=['1x128', '4x128']")


@dataclass(frozen=True, order=True)
class Bucket:
    """One static shape: every input is (batch, length)."""

    length: int
    batch: int = 1

    @property
    def name(self) -> str:
        return f"b{self.batch}_s{self.length}"

    def to_dict(self) -> dict:
        return {"batch": self.batch, "length": self.length}


def _round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def _parse_one(item) -> Bucket:
    if isinstance(item, Bucket):
        return item
    if isinstance(item, bool):
        raise TargetError(f"bucket {item!r} is not a length or (batch, length)", _BUCKET_HINT)
    if isinstance(item, (int, np.integer)):
        return Bucket(length=int(item))
    if isinstance(item, str):
        m = re.fullmatch(r"\s*(?:(\d+)\s*[xX]\s*)?(\d+)\s*", item)
        if m:
            return Bucket(length=int(m.group(2)), batch=int(m.group(1) or 1))
    if isinstance(item, dict) and set(item) == {"batch", "length"}:
        return Bucket(length=int(item["length"]), batch=int(item["batch"]))
    if isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
        return Bucket(length=int(item[1]), batch=int(item[0]))
    raise TargetError(f"bucket {item!r} is not a length or (batch, length)", _BUCKET_HINT)


def parse_buckets(items: Iterable, max_length: int) -> tuple[Bucket, ...]:
    """Validate user buckets: at least one, batch >= 1, 1 <= length <= max_length."""
    if isinstance(items, (str, int)):
        items = [items]
    buckets = sorted({_parse_one(i) for i in items})
    if not buckets:
        raise TargetError("NPU needs at least one static (batch, length) bucket, got none", _BUCKET_HINT)
    for b in buckets:
        if b.batch < 1 or b.length < 1:
            raise TargetError(f"NPU bucket {b.batch}x{b.length} is empty", _BUCKET_HINT)
        if b.length > max_length:
            raise TargetError(f"NPU bucket length {b.length} exceeds the model's max length {max_length}",
                              f"use lengths up to {max_length}")
    return tuple(buckets)


def default_buckets(length_stats: dict, max_length: int) -> tuple[Bucket, ...]:
    """Batch-1 buckets at the calibration length percentiles (rounded up to a
    multiple of 32, capped at max_length) plus max_length itself."""
    missing = [k for k in DEFAULT_PERCENTILES if k not in length_stats]
    if missing:
        raise TargetError(f"calibration length statistics lack {', '.join(missing)}; cannot size NPU buckets",
                          _BUCKET_HINT)
    lengths = {min(_round_up(length_stats[k], LENGTH_MULTIPLE), max_length) for k in DEFAULT_PERCENTILES}
    lengths.add(max_length)
    return tuple(Bucket(length=n) for n in sorted(lengths))


def used_length(feeds: dict[str, np.ndarray], mask_name: str = "attention_mask") -> int:
    """Columns up to the last attended token (trailing all-padding columns dropped)."""
    mask = feeds[mask_name]
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1]) + 1 if cols.size else 1


def pick_bucket(buckets: Sequence[Bucket], length: int) -> Bucket:
    """The smallest bucket that holds ``length`` tokens (largest batch among equals)."""
    fits = [b for b in buckets if b.length >= length]
    if not fits:
        longest = max(b.length for b in buckets)
        raise TargetError(f"a batch of {length} tokens exceeds the largest NPU bucket ({longest})",
                          f"truncate inputs to {longest} tokens or rebuild with a larger bucket")
    best = min(b.length for b in fits)
    return max((b for b in fits if b.length == best), key=lambda b: b.batch)


def pad_to(feeds: dict[str, np.ndarray], bucket: Bucket, pad_ids: dict[str, int]) -> dict[str, np.ndarray]:
    """Right-pad (and row-pad) every input to the bucket's shape; ``pad_ids``
    gives each input's fill value (input_ids: the pad token, others 0)."""
    out = {}
    for name, arr in feeds.items():
        rows, cols = arr.shape
        if rows > bucket.batch or cols > bucket.length:
            raise TargetError(f"input {name} of shape {rows}x{cols} does not fit bucket "
                              f"{bucket.batch}x{bucket.length}", "pick a larger bucket")
        full = np.full((bucket.batch, bucket.length), pad_ids.get(name, 0), dtype=arr.dtype)
        full[:rows, :cols] = arr
        out[name] = full
    return out


def bucket_chunks(feeds: dict[str, np.ndarray], buckets: Sequence[Bucket],
                  pad_ids: dict[str, int]) -> Iterator[tuple[Bucket, int, dict[str, np.ndarray]]]:
    """Split a tokenized batch into (bucket, real rows, padded feeds) pieces."""
    length = used_length(feeds)
    bucket = pick_bucket(buckets, length)
    n = next(iter(feeds.values())).shape[0]
    for start in range(0, n, bucket.batch):
        part = {k: v[start:start + bucket.batch, :length] for k, v in feeds.items()}
        rows = next(iter(part.values())).shape[0]
        yield bucket, rows, pad_to(part, bucket, pad_ids)


def split_rows(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed per row, trimmed to that row's attended length, so padding
    never enters calibration statistics."""
    n = next(iter(feeds.values())).shape[0]
    out = []
    for i in range(n):
        row = {k: v[i:i + 1] for k, v in feeds.items()}
        out.append({k: v[:, :used_length(row)] for k, v in row.items()})
    return out
