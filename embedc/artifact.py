"""The self-describing artifact folder: model file(s), tokenizer files and
``embedc.json`` (inputs, outputs, precision, target, prefixes, versions, numbers)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import ArtifactError
from .fsutil import read_json, write_json_atomic

ARTIFACT_JSON = "embedc.json"
FORMAT = "embedc-artifact/1"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_inventory(folder: Path, exclude: tuple[str, ...] = (ARTIFACT_JSON,)) -> list[dict]:
    """Every file in the folder (recursively) with size and sha256, sorted by path."""
    folder = Path(folder)
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in exclude:
            out.append({"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size,
                        "sha256": sha256_file(p)})
    return out


def write_meta(folder: Path, meta: dict) -> None:
    write_json_atomic(Path(folder) / ARTIFACT_JSON, {"format": FORMAT, **meta})


def read_meta(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / ARTIFACT_JSON
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder {folder} does not exist", "pass a folder made by 'embedc build'")
    if not path.is_file():
        raise ArtifactError(f"{folder} is not an embedc artifact (no {ARTIFACT_JSON})",
                            "pass a folder made by 'embedc export' or 'embedc build'")
    try:
        meta = read_json(path)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is unreadable or not JSON", "rebuild the artifact") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path} is a JSON {type(meta).__name__}, not an artifact description",
                            "rebuild the artifact with 'embedc build'")
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}",
                            "rebuild the artifact with this embedc version")
    return meta


def verify_files(folder: Path, meta: dict) -> None:
    """Raise if a recorded file is missing or its hash changed (truncated/corrupted)."""
    for entry in meta.get("files", []):
        p = Path(folder) / entry["path"]
        if not p.is_file():
            raise ArtifactError(f"artifact file {p} is missing", "rebuild the artifact")
        if p.stat().st_size != entry["bytes"] or sha256_file(p) != entry["sha256"]:
            raise ArtifactError(f"artifact file {p} does not match its recorded sha256 (corrupted or truncated)",
                                "rebuild the artifact")
