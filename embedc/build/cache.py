"""Content-addressed stage cache (export, reference embeddings, artifacts).

Keys hash the stage's inputs, its config, the library versions that shape its
output (Olive omits the versions; a library upgrade must miss the cache) and
the source of the embedc modules that produce it (a recipe fix must miss too).
An entry is a folder holding ``entry.json`` with a sha256 per file; a missing
or altered file makes the entry corrupt, which is reported, removed and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from ..artifact import file_inventory, sha256_file
from ..fsutil import read_json, write_json_atomic

log = logging.getLogger("embedc")
ENTRY_JSON = "entry.json"
LOCKS = ".locks"  # <cache>/.locks: one lock file per key being stored (left in place, see fsutil.folder_lock)


def content_key(stage: str, payload: dict) -> str:
    blob = json.dumps({"stage": stage, **payload}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class StageCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def sweep(self) -> None:
        """Remove temp folders that killed processes left in the cache (live builds' are kept)."""
        from . import temps

        if self.root.is_dir():
            for stage in self.root.iterdir():
                if stage.is_dir():
                    temps.sweep(stage)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str, _again: bool = True) -> Path | None:
        """The entry folder if present and intact; a corrupt entry is removed
        (unless another writer replaced it meanwhile: then that one is checked).

        Intact means: ``entry.json`` is an object whose ``files`` is a
        non-empty list of {path, bytes, sha256}, every listed file matches,
        and the folder holds nothing else (a scratch file some process left
        in it, or a half-written temp model, makes the entry corrupt)."""
        folder = self.path(stage, key)
        meta = folder / ENTRY_JSON
        try:
            inode = meta.stat().st_ino
        except OSError:
            return None
        try:
            _verify_entry(folder, read_json(meta))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            try:
                replaced = meta.stat().st_ino != inode
            except OSError:
                replaced = True
            if replaced and _again:  # a concurrent writer swapped a new entry in while we read
                return self.lookup(stage, key, _again=False)
            log.warning("cache entry %s/%s is corrupt (%s); rebuilding", stage, key, exc)
            self._discard(folder)
            return None
        return folder

    def _discard(self, folder: Path) -> None:
        """Move a corrupt entry aside in one rename (a concurrent reader sees it whole or not at all), then delete it."""
        from . import temps

        try:
            aside = temps.make(folder.parent, folder.name, "old")
            os.rmdir(aside)
            os.replace(folder, aside)
        except OSError:
            aside = folder
        shutil.rmtree(aside, ignore_errors=True)

    def store(self, stage: str, key: str, info: dict, fill) -> Path:
        """Create an entry atomically: ``fill(tmp_folder)`` writes the files into
        this process's own temp folder beside the entry (pid-named, swept when a
        killed run left it), which is then renamed into place. Entries are
        content-addressed, so when another writer (a concurrent build, a node
        sharing the cache) got there first, its intact entry is kept and ours
        dropped; an intact entry is never moved aside while others may read it.
        A full disk raises DiskFullError and leaves no partial entry.

        While ``fill`` runs, this process holds a lock on the key
        (``<cache>/.locks``, an advisory lock the OS drops when the process
        dies): another process storing the same key waits, then takes the
        finished entry instead of computing it again (concurrent builds of one
        model on one cache export it once). Without ``fcntl`` both compute."""
        from ..fsutil import folder_lock

        with folder_lock(self.root / LOCKS / f"{stage}-{key}"):
            done = self.lookup(stage, key)
            if done is not None:
                log.info("cache entry %s/%s was stored by another process meanwhile", stage, key[:12])
                return done
            return self._store(stage, key, info, fill)

    def _store(self, stage: str, key: str, info: dict, fill) -> Path:
        from ..fsutil import _umask, raise_if_disk_full
        from . import temps

        folder = self.path(stage, key)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            temps.sweep(folder.parent)
            tmp = temps.make(folder.parent, key, "tmp")
            os.chmod(tmp, 0o777 & ~_umask())
        except OSError as exc:
            raise_if_disk_full(exc, folder.parent)
            raise
        try:
            try:
                fill(tmp)
                write_json_atomic(tmp / ENTRY_JSON, {"stage": stage, "key": key, **info,
                                                     "files": file_inventory(tmp, exclude=(ENTRY_JSON,))})
            except OSError as exc:
                raise_if_disk_full(exc, folder)
                raise
            for _ in range(3):
                try:
                    os.rename(tmp, folder)   # atomic; refused while a (non-empty) entry is there
                    return folder
                except OSError:
                    if self.lookup(stage, key) is not None:   # another writer's intact entry: keep it
                        log.info("cache entry %s/%s was stored by another writer meanwhile", stage, key[:12])
                        shutil.rmtree(tmp, ignore_errors=True)
                        return folder
                    # a corrupt entry was there (lookup removed it): rename again
            raise OSError(f"cannot store cache entry {folder}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _verify_entry(folder: Path, data) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise ValueError(f"{ENTRY_JSON} is not an object with a 'files' list")
    files = data["files"]
    if not files:
        raise ValueError(f"{ENTRY_JSON} lists no files")
    listed = set()
    for f in files:
        if not isinstance(f, dict) or not {"path", "bytes", "sha256"} <= set(f):
            raise ValueError(f"{ENTRY_JSON} has a malformed file record")
        p = folder / f["path"]
        if not p.is_file() or p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            raise ValueError(f["path"])
        listed.add(Path(f["path"]).as_posix())
    extra = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if not p.is_dir() and p.relative_to(folder).as_posix() not in listed and p.name != ENTRY_JSON)
    if extra:
        raise ValueError(f"unlisted file {extra[0]}")


_PACKAGE = Path(__file__).resolve().parent.parent  # embedc/


def code_digest(*patterns: str) -> str:
    """Hash of the embedc source files matching ``patterns`` (globs relative to the
    package), so editing a backend's recipe invalidates only that backend's entries."""
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in _PACKAGE.glob(pat) if p.is_file()})
    if not files:
        raise ValueError(f"no embedc source matches {patterns}")
    for p in files:
        h.update(p.relative_to(_PACKAGE).as_posix().encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def hash_model_folder(path: Path) -> str:
    """Content hash of a model folder (config, tokenizer, weights)."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.relative_to(path).as_posix().encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def copy_tree(src: Path, dst: Path) -> None:
    """Materialize a cached folder in the build output.

    Copies, never hard links: a linked file is the cache's own inode, so editing
    or corrupting one copy would silently change the other."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(ENTRY_JSON))
