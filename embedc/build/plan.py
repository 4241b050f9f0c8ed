"""--dry-run: the resolved spec, the model's family adapter, each pair's
resolved options and gates, and which stages the cache already holds."""
from __future__ import annotations

from ..spec import BuildSpec


def plan_build(spec: BuildSpec, *, cache_dir=None) -> dict:
    """Cheap plan: resolves the model, corpus and targets (no export, no torch model)."""
    from pathlib import Path

    from ..models.cache import cache_root
    from ..parity import gates_to_dict, resolve_gates
    from ..targets.registry import get_target
    from . import stages
    from .cache import StageCache
    from .pipeline import resolve_pair

    cache = StageCache(Path(cache_dir) if cache_dir else cache_root() / "stages")
    p = stages.prepare(spec, force=True)  # the output location is checked for real by the build
    export_cached = cache.lookup("export", stages.export_key(p)) is not None
    plan = [{"stage": "export", "cached": export_cached},
            {"stage": "calibration+evaluation split", "cached": False, "note": "deterministic, cheap",
             "calibration": len(p.splits.calibration), "evaluation": len(p.splits.evaluation)},
            {"stage": "reference embeddings", "cached": None, "note": "keyed on the evaluation split",
             "max_length": p.eval_max_length}]
    for target_name, precision in spec.pairs():
        t = get_target(target_name)
        options, facts = resolve_pair(t, precision, stages.pair_options(p, t, precision))
        plan.append({"stage": f"compile {target_name}/{precision}", "backend": t.backend, "device": t.device,
                     "options": options, "facts": facts,
                     "gates": gates_to_dict(resolve_gates(precision, spec.gate_layers(p.model_names)))})
        if spec.executor.kind != "local":   # what a cluster node must offer (build/resources.py)
            from .resources import request_for

            plan[-1]["resources"] = request_for(t, precision, cpus=spec.executor.cpus_per_pair,
                                                hardware=spec.executor.hardware).describe()
    return {"spec": spec.to_dict(), "model": p.source.to_dict(), "adapter": p.adapter.to_dict(),
            "out": str(p.out), "plan": plan}
