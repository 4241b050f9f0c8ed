"""Where a build (or an export) may write, checked before any work.

* The output is never the current folder, the home folder or the file
  system root, and never equals, contains or lies inside the model source or
  the calibration corpus: replacing it would delete the user's inputs.
* An existing output is replaced only with ``--force``, and only when it is
  embedc's own: a build folder (``manifest.json`` of format
  ``embedc-manifest/*``), an export or artifact folder (``embedc.json`` of
  format ``embedc-artifact/*``), or an empty folder. Anything else is refused
  in one line, whatever the flags say.
* An output that exists as a file is refused (it is not a folder to replace).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import OutputExistsError, OutputLocationError

BUILD_FORMAT = "embedc-manifest/"
ARTIFACT_FORMAT = "embedc-artifact/"


def _real(p: Path) -> Path:
    return Path(os.path.realpath(Path(p).expanduser()))


def _inside(a: Path, b: Path) -> bool:
    """``a`` equals ``b`` or lies under it."""
    return a == b or b in a.parents


def _json_format(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fmt = data.get("format") if isinstance(data, dict) else None
    return fmt if isinstance(fmt, str) else None


def is_embedc_output(folder: Path) -> bool:
    """A folder embedc made: a build, an export or artifact folder, or an empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    fmt = _json_format(folder / "manifest.json") or ""
    if fmt.startswith(BUILD_FORMAT):
        return True
    return (_json_format(folder / "embedc.json") or "").startswith(ARTIFACT_FORMAT)


def check_output(out: Path, *, force: bool, inputs: Iterable[tuple[str, Path | None]] = ()) -> None:
    """Raise OutputLocationError / OutputExistsError unless ``out`` may be
    (re)written. ``inputs``: (what, path) pairs the output must stay clear of."""
    out = Path(out)
    real = _real(out)
    for what, forbidden in (("the current folder", Path.cwd()), ("your home folder", Path.home()),
                            ("the file system root", Path("/"))):
        if real == _real(forbidden):
            raise OutputLocationError(f"--out {out} is {what}; a build folder there would replace everything in it",
                                      "choose a new folder for --out, e.g. artifacts/<model>")
    if real != _real(Path.cwd()) and _inside(_real(Path.cwd()), real):
        raise OutputLocationError(f"--out {out} contains the current folder; a build folder there would replace it",
                                  "choose a new folder for --out, e.g. artifacts/<model>")
    for what, path in inputs:
        if path is None:
            continue
        src = _real(path)
        if _inside(src, real):
            raise OutputLocationError(f"--out {out} contains the {what} {path}; replacing it would delete it",
                                      "choose an --out outside the model and corpus folders")
        if _inside(real, src):
            raise OutputLocationError(f"--out {out} lies inside the {what} {path}",
                                      "choose an --out outside the model and corpus folders")
    if out.exists() and not out.is_dir():
        raise OutputLocationError(f"--out {out} is a file, not a folder", "choose a folder path for --out")
    if out.exists():
        if not force:
            raise OutputExistsError(f"output folder {out} already exists",
                                    "pass --force to replace it, or choose another --out")
        if not is_embedc_output(out):
            raise OutputLocationError(f"--force refused: {out} is not an embedc build folder (no embedc manifest.json)",
                                      "choose another --out; embedc replaces only folders it made")


def failed_path(out: Path) -> Path:
    """Where a failing build's reports go: ``<out>.failed`` beside the output."""
    out = Path(out)
    return out.with_name(out.name + ".failed")


def junit_path(junit: Path, result_out: Path) -> Path:
    """Where ``--junit`` goes: as asked, unless that lies inside the previous
    build folder while this build failed (its reports went to ``<out>.failed``):
    then into the failed folder, so a failing run never writes over a good build."""
    junit, result_out = Path(junit), Path(result_out)
    if result_out.name.endswith(".failed"):
        out = result_out.with_name(result_out.name[: -len(".failed")])
        if _inside(_real(junit), _real(out)):
            return result_out / junit.name
    return junit
