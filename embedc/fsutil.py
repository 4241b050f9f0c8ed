"""Atomic output: artifacts appear whole or not at all, and a failed run never
overwrites a good earlier result (write into a sibling temp dir, then rename)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError, OutputLocationError


def check_output_location(final: Path, *, force: bool) -> None:
    """Fail early, before any expensive work, if ``final`` cannot be produced."""
    final = Path(final)
    if final.exists() and not force:
        raise OutputExistsError(f"output folder {final} already exists",
                                "pass --force to replace it, or choose another --out")
    if final.exists() and not final.is_dir():
        raise OutputLocationError(f"output path {final} exists and is not a folder",
                                  "choose another --out")
    parent = _existing_ancestor(final.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputLocationError(f"cannot write under {parent} (permission denied)",
                                  "choose a writable --out")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


@contextlib.contextmanager
def staged_dir(final: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it replaces ``final``.

    On any exception the temp folder is removed and ``final`` is untouched.
    """
    final = Path(final).absolute()
    check_output_location(final, force=force)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp is 0700; artifacts should look like any folder
    except OSError as exc:
        raise OutputLocationError(f"cannot create {final.parent}: {exc.strerror}",
                                  "choose a writable --out") from exc
    try:
        yield tmp
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    # Keep the old result until the new one is in place.
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.rmdir(old)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON via temp file + os.replace so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
