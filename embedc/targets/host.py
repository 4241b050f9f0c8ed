"""Facts of the build host that change an artifact built or judged on it.

Parity of a CPU artifact is measured on the build machine's kernels (x86
INT8 runs VNNI dot products or AVX2 VPMADDUBSW; arm64 its own), so those
facts belong in the artifact's cache key (``Backend.cache_facts``): a cache
shared between machines must not serve an artifact judged on other kernels.
"""
from __future__ import annotations

import platform

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_kernel_facts() -> dict:
    """``machine`` (x86_64, aarch64, ...), ``vnni`` (int8 dot-product instructions), ``avx2``."""
    from ..machine import cpu_flags

    flags = cpu_flags() or set()
    return {"machine": platform.machine().lower(), "vnni": bool(flags & VNNI_FLAGS), "avx2": "avx2" in flags}
