"""The calibration data reader every ONNX Runtime quantizer call gets.

A ``CalibrationDataReader`` over the build's shared tokenized calibration
batches, holding only the model's inputs as contiguous int64. ``set_range``
lets a caller collect one batch at a time (histogram calibration needs equal
shapes inside one collection; texts have different lengths); ``rewind``
starts over from the first batch. Deep-copyable (ORT's GPTQ copies it).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .session import import_quantization


def feed_reader(feeds: Sequence[dict[str, np.ndarray]], input_names: Sequence[str]):
    q = import_quantization()

    class FeedReader(q.CalibrationDataReader):
        def __init__(self, items):
            self.items = [{n: np.ascontiguousarray(f[n], dtype=np.int64) for n in input_names} for f in items]
            self.set_range(0, len(self.items))

        def get_next(self):
            if self.pos >= self.end:
                return None
            self.pos += 1
            return self.items[self.pos - 1]

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pos, self.end = start_index, min(end_index, len(self.items))

        def rewind(self) -> None:
            self.set_range(0, len(self.items))

        def __len__(self) -> int:
            return len(self.items)

    return FeedReader(feeds)
