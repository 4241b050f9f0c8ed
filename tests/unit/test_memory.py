"""Peak RSS must be the measuring process's own: benchmark workers are forked
from a build process that may hold gigabytes."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from embedc.bench.memory import peak_rss_bytes

_CHILD = "from embedc.bench.memory import peak_rss_bytes; print(peak_rss_bytes())"


def test_child_peak_rss_is_not_inherited_from_a_large_parent():
    before = peak_rss_bytes()
    ballast = np.ones(1_500_000_000 // 8)  # 1.5 GB, touched
    assert peak_rss_bytes() >= before + 1_400_000_000 or peak_rss_bytes() >= 1_400_000_000
    child = int(subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                               check=True).stdout.strip())
    del ballast
    assert 0 < child < 1_000_000_000, f"child reported {child / 1e6:.0f} MB: the parent's peak leaked into it"
