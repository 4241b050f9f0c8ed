"""A small in-process memo for values derived from files (parsed tokenizers,
converted models, validation results) that a build would otherwise compute
again for every artifact: a 250k-vocabulary tokenizer.json costs ~0.4 s to
parse, every time.

An entry is keyed by the files' identity (resolved path, size, mtime, inode),
so a rewritten or replaced file is read again. Entries are per thread: the
values (a Rust tokenizer, an OpenVINO model) are not safe to share between
threads that use them at once."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_LOCAL = threading.local()
MAX_ENTRIES = 8  # per thread: a build touches a handful of folders


def file_identity(paths: Iterable[Path]) -> tuple:
    """What changes when any of ``paths`` is rewritten, replaced or appears."""
    out = []
    for p in paths:
        p = Path(p)
        try:
            st = p.stat()
        except FileNotFoundError:
            out.append((str(p.absolute()), None))
            continue
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def memoized(kind: str, paths: Iterable[Path], compute: Callable[[], Any], extra: Any = None) -> Any:
    """``compute()``, or the value it gave this thread for the same files
    (and ``extra``). Exceptions are not memoized."""
    cache: OrderedDict = getattr(_LOCAL, "cache", None)
    if cache is None:
        cache = _LOCAL.cache = OrderedDict()
    key = (kind, extra, file_identity(paths))
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = compute()
    cache[key] = value
    while len(cache) > MAX_ENTRIES:
        cache.popitem(last=False)
    return value

