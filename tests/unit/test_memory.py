"""Peak RSS must be the measuring process's own: benchmark workers are forked
from a build process that may hold gigabytes."""
from __future__ import annotations

import subprocess
import sys

# Run in a fresh interpreter: this test process's own peak (whatever earlier
# tests allocated) must not be able to satisfy the first assertion.
_PARENT = """
import subprocess, sys
import numpy as np
from embedc.bench.memory import peak_rss_bytes
before = peak_rss_bytes()
ballast = np.ones(1_500_000_000 // 8)  # 1.5 GB, touched
after = peak_rss_bytes()
child = int(subprocess.run([sys.executable, "-c", "from embedc.bench.memory import peak_rss_bytes; "
                            "print(peak_rss_bytes())"], capture_output=True, text=True, check=True).stdout)
print(before, after, child)
"""


def test_child_peak_rss_is_not_inherited_from_a_large_parent():
    out = subprocess.run([sys.executable, "-c", _PARENT], capture_output=True, text=True, check=True).stdout
    before, after, child = map(int, out.split())
    assert before < 1_000_000_000 and after >= before + 1_400_000_000  # the parent's own peak grew
    assert 0 < child < 1_000_000_000, f"child reported {child / 1e6:.0f} MB: the parent's peak leaked into it"
