"""--dry-run: the resolved spec and which stages would run or come from cache."""
from __future__ import annotations

from ..spec import BuildSpec


def plan_build(spec: BuildSpec) -> dict:
    """Cheap plan: resolves the model and targets, reports cache state of the export."""
    from ..models.cache import cache_root
    from .pipeline import _Build, default_out
    from .cache import StageCache
    from ..targets.registry import get_target

    b = _Build(spec, StageCache(cache_root() / "stages"))
    export_key = b.export_key()
    export_cached = b.cache.lookup("export", export_key) is not None
    stages = [{"stage": "export", "cached": export_cached},
              {"stage": "calibration+evaluation split", "cached": False, "note": "deterministic, cheap"},
              {"stage": "reference embeddings", "cached": None, "note": "keyed on the evaluation split"}]
    for target, precision in spec.pairs():
        t = get_target(target)
        stages.append({"stage": f"compile {target}/{precision}", "backend": t.backend, "device": t.device,
                       "options": spec.options_for(target, precision),
                       "cached": None if not export_cached else "checked at build time"})
    return {"spec": spec.to_dict(), "model": b.source.to_dict(),
            "out": spec.out or str(default_out(b.source)), "plan": stages}
