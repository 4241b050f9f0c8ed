"""Turn ``--model`` into a ModelSource: catalog name, local folder or hub id."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import ModelSourceError
from .catalog import CATALOG, E5_PREFIXES
from .source import ModelSource

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# Only what an embedding export needs; never pickle weights unless asked.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "1_Pooling/*", "2_Normalize/*"]


def resolve_model(spec: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> ModelSource:
    """Resolve a catalog name, a local Hugging Face folder, or ``org/name[@revision]``."""
    if spec in CATALOG:
        return _with_flags(CATALOG[spec].resolve(), trust_remote_code, allow_pickle)
    path = Path(spec).expanduser()
    if path.exists() or _looks_like_path(spec):
        return _local(path, trust_remote_code, allow_pickle)
    if _HUB_ID.match(spec):
        return _hub(spec, trust_remote_code, allow_pickle)
    raise ModelSourceError(
        f"model {spec!r} is not a catalog model, an existing folder or a hub id",
        "run 'embedc models' to list offline models, or pass a folder path")


def _with_flags(src: ModelSource, trust: bool, pickle: bool) -> ModelSource:
    from dataclasses import replace

    return replace(src, trust_remote_code=trust, allow_pickle=pickle)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec and not _HUB_ID.match(spec)


def _local(path: Path, trust: bool, pickle: bool, *, name: str | None = None,
           kind: str = "local", revision: str | None = None) -> ModelSource:
    if not path.exists():
        raise ModelSourceError(f"model folder {path} does not exist", "check the path, or run 'embedc models'")
    if not path.is_dir():
        raise ModelSourceError(f"model path {path} is not a folder", "pass a Hugging Face model folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelSourceError(f"model folder {path} is not readable (permission denied)",
                               "fix its permissions or copy it somewhere readable")
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{path} is not a transformers model folder (no config.json)",
                               "pass the folder that holds config.json and the weights")
    qp, pp = _prefixes(path)
    return ModelSource(name=name or path.name, path=path.absolute(), kind=kind, query_prefix=qp,
                       passage_prefix=pp, revision=revision, trust_remote_code=trust, allow_pickle=pickle)


def _prefixes(path: Path) -> tuple[str, str]:
    """Prompts from sentence-transformers' config; e5-style names default to e5 prefixes."""
    for marker in ("embedc_model.json", "config_sentence_transformers.json"):
        f = path / marker
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if "query_prefix" in data:
                return data.get("query_prefix", ""), data.get("passage_prefix", "")
            prompts = data.get("prompts") or {}
            if prompts:
                return prompts.get("query", ""), prompts.get("passage", prompts.get("document", ""))
    if "e5" in path.name.lower():
        return E5_PREFIXES
    return "", ""


def _hub(spec: str, trust: bool, pickle: bool) -> ModelSource:
    repo_id, _, revision = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download

        patterns = _HUB_PATTERNS + (["*.bin"] if pickle else []) + (["*.py"] if trust else [])
        folder = snapshot_download(repo_id=repo_id, revision=revision or None, allow_patterns=patterns)
    except Exception as exc:  # offline, unknown repo, gated repo: all end the same way for the user
        reason = type(exc).__name__
        raise ModelSourceError(
            f"cannot get {repo_id!r} from the Hugging Face Hub or its cache ({reason})",
            "pass a local model folder (--model ./path) or an offline model from 'embedc models'",
        ) from exc
    path = Path(folder)
    src = _local(path, trust, pickle, name=repo_id, kind="hub", revision=path.name)
    if "e5" in repo_id.lower() and not src.query_prefix:
        from dataclasses import replace

        src = replace(src, query_prefix=E5_PREFIXES[0], passage_prefix=E5_PREFIXES[1])
    return src
