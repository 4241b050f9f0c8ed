"""Give freed memory back to the operating system between build stages.

glibc keeps freed heap memory for reuse, and after a few large frees its
dynamic mmap threshold rises to 32 MB, so a model's weight matrices (12 MB
each on a 0.6B decoder) land on the heap: once the model is freed the
process's RSS stays where it was and the next stage's peak adds to it.
``malloc_trim(0)`` hands the free pages back."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

_libc = None


def _malloc_trim():
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _libc = False
    return getattr(_libc, "malloc_trim", None) if _libc else None  # musl has none


def release_memory() -> bool:
    """Collect garbage, then return free heap pages to the OS where the C
    library can (glibc). True when pages were handed back."""
    gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
