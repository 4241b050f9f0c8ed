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
def staged_dir(final: Path, *, force: bool, on_swap=None) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it replaces ``final``.

    On any exception (a full disk included) the temp folder is removed and
    ``final`` is untouched. The swap leaves no moment without ``final``
    (:func:`swap_into_place`). Temp folders carry the pid (build/temps.py), so
    one left by a killed process is removed by the next run."""
    from .build import temps

    final = Path(final).absolute()
    check_output_location(final, force=force)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        temps.sweep(final.parent, final.name)
        tmp = temps.make(final.parent, final.name, "tmp")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp is 0700; artifacts should look like any folder
    except OSError as exc:
        raise_if_disk_full(exc, final.parent)
        raise OutputLocationError(f"cannot create {final.parent}: {exc.strerror}",
                                  "choose a writable --out") from exc
    try:
        try:
            yield tmp
            swap_into_place(tmp, final, on_swap=on_swap)
        except OSError as exc:
            raise_if_disk_full(exc, final)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def raise_if_disk_full(exc: OSError, where: Path) -> None:
    """ENOSPC / EDQUOT as the one-line DiskFullError naming ``where``."""
    import errno

    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        from .errors import DiskFullError

        raise DiskFullError(f"no space left on {where}",
                            "free disk space (or point EMBEDC_CACHE / --out at a bigger disk) and run again; "
                            "nothing half-written was kept") from exc


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False
    where the platform or file system does not support it."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    import errno

    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_into_place(tmp: Path, final: Path, *, on_swap=None) -> None:
    """Put the folder ``tmp`` at ``final``. An existing ``final`` is exchanged
    with it in one step (renameat2), so there is never a moment without
    ``final``; where that is unavailable, the old folder is renamed aside and
    restored if the second rename fails. ``on_swap`` runs right after the
    swap, before the old folder is removed (fault injection)."""
    from .build import temps

    if not final.exists():
        os.replace(tmp, final)
        if on_swap is not None:
            on_swap()
        return
    if _exchange(tmp, final):
        old = tmp  # the previous result now sits at the temp name (pid-named: swept if we die here)
    else:
        old = temps.make(final.parent, final.name, "old")
        os.rmdir(old)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
    try:
        if on_swap is not None:
            on_swap()
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock for building ``folder``, held on a dot-file
    beside it (``.<name>.lock``, left in place: removing a lock file races
    with the next process opening it). Without ``fcntl`` (Windows) it does
    not lock; the atomic swap still keeps the folder whole."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(folder.parent / f".{folder.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise_if_disk_full(exc, path)
        raise


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
