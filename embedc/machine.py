"""Facts about the machine a build or benchmark ran on."""
from __future__ import annotations

import os
import platform
from pathlib import Path

_INTERESTING_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16",
                      "avx512_bf16", "f16c", "neon", "asimd", "asimddp")


def _cpuinfo() -> dict[str, str]:
    """First value of each /proc/cpuinfo key (lower-cased); empty where there is none."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out.setdefault(key.strip().lower(), value.strip())
    return out


def cpu_flags() -> set[str] | None:
    """The CPU's instruction-set flags (x86 "flags", arm "Features"); None when unknown."""
    info = _cpuinfo()
    line = info.get("flags", info.get("features"))
    return set(line.split()) if line is not None else None


def machine_facts() -> dict:
    flags = cpu_flags() or set()
    model = platform.processor() or _cpuinfo().get("model name", "")
    return {
        "cpu": model,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_flags": sorted(f for f in _INTERESTING_FLAGS if f in flags),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
