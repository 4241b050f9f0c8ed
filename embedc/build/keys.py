"""Cache keys of artifacts: the inputs, the resolved options, the library
versions and machine facts that shape the output, and a digest of the source
that produces it (embedc's shared artifact code plus the backend's own
package), so a recipe fix recompiles that backend's artifacts and nothing else."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
from pathlib import Path

from .cache import code_digest, content_key


def package_digest(module_name: str) -> str:
    """Hash of every .py file of a module's package (or of the module alone)."""
    mod = importlib.import_module(module_name)
    root = Path(mod.__file__).resolve()
    files = sorted(root.parent.rglob("*.py")) if root.name == "__init__.py" else [root]
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root.parent).as_posix().encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def artifact_key(*, export_key: str, target, precision: str, options: dict, facts: dict, calibration_hash: str,
                 eval_hash: str, style: dict, calib_max_length: int, eval_max_length: int, versions: dict,
                 shared_code: tuple[str, ...], backend_package: str) -> str:
    return content_key("artifact", {
        "export": export_key, "target": dataclasses.asdict(target), "precision": precision, "options": options,
        "facts": facts, "calibration": calibration_hash, "eval": eval_hash, "style": style,
        "calib_max_length": calib_max_length, "eval_max_length": eval_max_length, "versions": versions,
        "code": [code_digest(*shared_code), package_digest(backend_package)]})
