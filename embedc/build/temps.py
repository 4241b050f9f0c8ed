"""Temporary folders that carry their owner's pid, so the next build can
remove the ones a killed process (SIGKILL, OOM, power loss) left behind.

Every scratch, staging and swap folder embedc makes beside an output or a
cache entry is named ``.<name>.<label>-<pid>-<random>``: :func:`sweep` removes
those whose process is gone. A live process's folders are never touched, so
concurrent builds sharing a cache or an output parent leave each other alone."""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("embedc")

LABELS = ("tmp", "work", "old")
_PATTERN = re.compile(r"^\..+\.(?:%s)-(\d+)-[A-Za-z0-9_]+$" % "|".join(re.escape(lb) for lb in LABELS))


def make(parent: Path, name: str, label: str) -> Path:
    """A new empty folder ``parent/.<name>.<label>-<pid>-<random>``."""
    if label not in LABELS:
        raise ValueError(label)
    return Path(tempfile.mkdtemp(prefix=f".{name}.{label}-{os.getpid()}-", dir=parent))


def owner_pid(path: Path) -> int | None:
    m = _PATTERN.match(Path(path).name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep(parent: Path, name: str | None = None) -> list[Path]:
    """Remove ``parent``'s embedc temp folders (of ``name`` only, if given)
    whose owning process is dead. Returns what was removed."""
    parent = Path(parent)
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        pid = owner_pid(p)
        if pid is None or (name is not None and not p.name.startswith(f".{name}.")):
            continue
        if pid_alive(pid):
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(p)
    if removed:
        log.info("removed %d temp folder(s) left by stopped builds under %s", len(removed), parent)
    return removed
