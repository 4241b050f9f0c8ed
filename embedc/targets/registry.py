"""Every backend and target by name. Built-in backend packages register
themselves when imported (``register_backend(BACKEND)`` in their ``__init__``);
they import their heavy libraries inside functions, so listing targets is
cheap. Tests add a fake backend with ``register_backend`` and remove it with
``unregister_backend``."""
from __future__ import annotations

import importlib

from ..errors import TargetError
from .base import Backend, Target

_BUILTIN = ("embedc.targets.ort", "embedc.targets.openvino", "embedc.targets.tensorrt")
_BACKENDS: dict[str, Backend] = {}
_TARGETS: dict[str, tuple[Target, ...]] = {}   # backend name -> its targets
_loaded = False


def register_backend(backend: Backend, targets: tuple[Target, ...] | None = None) -> Backend:
    """Add ``backend`` and its targets (``backend.targets`` unless given).
    A target name may belong to one backend only."""
    own = tuple(targets if targets is not None else getattr(backend, "targets", ()))
    if not backend.name or not own:
        raise ValueError("a backend needs a name and at least one target")
    for t in own:
        if t.backend != backend.name:
            raise ValueError(f"target {t.name} names backend {t.backend!r}, not {backend.name!r}")
        for other, ts in _TARGETS.items():
            if other != backend.name and any(x.name == t.name for x in ts):
                raise ValueError(f"target {t.name} already belongs to backend {other!r}")
    _BACKENDS[backend.name] = backend
    _TARGETS[backend.name] = own
    return backend


def unregister_backend(name: str) -> None:
    _BACKENDS.pop(name, None)
    _TARGETS.pop(name, None)


def _load_builtins() -> None:
    """Import the built-in backend packages; each registers itself."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod_name in _BUILTIN:
        importlib.import_module(mod_name)


def backends() -> dict[str, Backend]:
    _load_builtins()
    return dict(_BACKENDS)


def all_targets() -> dict[str, Target]:
    _load_builtins()
    return {t.name: t for ts in _TARGETS.values() for t in ts}


def get_target(name: str) -> Target:
    targets = all_targets()
    if name not in targets:
        raise TargetError(f"unknown target {name!r}", f"choose one of: {', '.join(targets)} (see 'embedc targets')")
    return targets[name]


def check_precision(target: Target, precision: str) -> None:
    if precision not in target.precisions:
        raise TargetError(f"target {target.name} has no precision {precision!r}",
                          f"choose one of: {', '.join(target.precisions)}")


def get_backend(target: Target | str) -> Backend:
    """The backend of a target (or a backend by its name)."""
    _load_builtins()
    name = target.backend if isinstance(target, Target) else target
    if name not in _BACKENDS:
        raise TargetError(f"no backend {name!r} is registered", f"known backends: {', '.join(_BACKENDS)}")
    return _BACKENDS[name]
