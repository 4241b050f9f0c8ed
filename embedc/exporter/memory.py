"""Peak resident memory of this process (for export and benchmark records)."""
from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB
