"""Peak resident memory of this process (for export and benchmark records)."""
from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    """High-water RSS of this process's own address space.

    On Linux, getrusage's ru_maxrss survives fork + execve: a worker started by
    a 3 GB parent reports at least 3 GB whatever it used itself. /proc's VmHWM
    belongs to the current memory map, which execve replaces, so read that."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB
