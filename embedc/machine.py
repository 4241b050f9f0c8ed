"""Facts about the machine a build or benchmark ran on."""
from __future__ import annotations

import os
import platform
from pathlib import Path

_INTERESTING_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16",
                      "avx512_bf16", "f16c", "neon", "asimd", "asimddp")


def machine_facts() -> dict:
    flags: set[str] = set()
    model = platform.processor() or ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and not flags:
                flags = set(value.split())
            elif key == "model name" and not model:
                model = value.strip()
    return {
        "cpu": model,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_flags": sorted(f for f in _INTERESTING_FLAGS if f in flags),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
