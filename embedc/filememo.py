"""A small in-process memo for values derived from files (parsed tokenizers,
converted models, validation results) that a build would otherwise compute
again for every artifact: a 250k-vocabulary tokenizer.json costs ~0.4 s to
parse, every time.

An entry is keyed by the files' identity (resolved path, size, mtime, inode),
so a rewritten or replaced file is read again; or, for small files that a
build copies into many folders (a tokenizer goes into the export and every
artifact), by their content, so each copy is not parsed again. Entries are per
thread: the values (a Rust tokenizer, an OpenVINO model) are not safe to share
between threads that use them at once."""
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


_DIGESTS: dict[tuple, str] = {}  # file identity -> sha256, so an unchanged file is hashed once
MAX_DIGESTS = 256


def content_identity(paths: Iterable[Path]) -> tuple:
    """What ``paths`` hold: per file its name and sha256 (None when missing).
    Copies of the same files in two folders give the same value."""
    out = []
    for p in paths:
        ident = file_identity([p])[0]
        if ident[1] is None:
            out.append((Path(p).name, None))
            continue
        digest = _DIGESTS.get(ident)
        if digest is None:
            from .artifact import sha256_file

            digest = sha256_file(p)
            if len(_DIGESTS) >= MAX_DIGESTS:
                _DIGESTS.clear()
            _DIGESTS[ident] = digest
        out.append((Path(p).name, digest))
    return tuple(out)


def memoized(kind: str, paths: Iterable[Path], compute: Callable[[], Any], extra: Any = None, *,
             by_content: bool = False) -> Any:
    """``compute()``, or the value it gave this thread for the same files
    (and ``extra``): the same files on disk, or with ``by_content`` the same
    bytes under the same names wherever they are (``compute`` must then depend
    on nothing but those bytes). Exceptions are not memoized."""
    cache: OrderedDict = getattr(_LOCAL, "cache", None)
    if cache is None:
        cache = _LOCAL.cache = OrderedDict()
    key = (kind, extra, content_identity(paths) if by_content else file_identity(paths))
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = compute()
    cache[key] = value
    while len(cache) > MAX_ENTRIES:
        cache.popitem(last=False)
    return value

