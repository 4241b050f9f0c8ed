"""All hardware targets by name. Backend modules stay import-light (their
heavy libraries are imported inside functions), so listing targets is cheap."""
from __future__ import annotations

import importlib

from ..errors import TargetError
from .base import Backend, Target

_BACKEND_MODULES = {"ort": "embedc.targets.ort", "openvino": "embedc.targets.openvino",
                    "tensorrt": "embedc.targets.tensorrt"}


def _module(backend: str):
    return importlib.import_module(_BACKEND_MODULES[backend])


def all_targets() -> dict[str, Target]:
    out: dict[str, Target] = {}
    for backend in _BACKEND_MODULES:
        try:
            mod = _module(backend)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("embedc.targets"):
                continue  # backend module not present in this build
            raise
        for t in mod.TARGETS:
            out[t.name] = t
    return out


def get_target(name: str) -> Target:
    targets = all_targets()
    if name not in targets:
        raise TargetError(f"unknown target {name!r}", f"choose one of: {', '.join(targets)} (see 'embedc targets')")
    return targets[name]


def check_precision(target: Target, precision: str) -> None:
    if precision not in target.precisions:
        raise TargetError(f"target {target.name} has no precision {precision!r}",
                          f"choose one of: {', '.join(target.precisions)}")


def get_backend(target: Target) -> Backend:
    return _module(target.backend).BACKEND
