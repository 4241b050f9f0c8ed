"""manifest.json: one per build. The resolved spec, versions, machine, every
artifact with sha256 and size, its parity numbers and verdict, benchmark
figures, and what was not verified. Written atomically."""
from __future__ import annotations

from pathlib import Path

from ..fsutil import write_json_atomic
from ..machine import machine_facts
from ..versions import library_versions

MANIFEST = "manifest.json"


def build_manifest(spec, source, ref_meta: dict, split_summary: dict, outcomes, folder: Path, *,
                   seconds: float, bench: dict | None = None, remote_parity: dict | None = None) -> dict:
    artifacts = []
    for o in outcomes:
        entry = {"name": o.name, "target": o.target, "backend": _backend_name(o.target), "precision": o.precision,
                 "status": o.status, "path": o.path, "cached": o.cached}
        if o.error:
            entry["error"] = o.error
        if o.node:
            entry["node"] = o.node                      # where this build ran the pair (remote executors)
        if (o.meta or {}).get("built_on"):
            entry["built_on"] = o.meta["built_on"]      # where the artifact was compiled and judged
        if o.meta:
            p = o.meta.get("parity", {})
            entry.update({
                "files": o.meta.get("files", []),
                "bytes": o.meta.get("model_bytes"),
                "model_files": o.meta.get("model_files", []),
                "recipe": o.meta.get("recipe"),
                "runtime": o.meta.get("runtime"),
                "unverified": o.meta.get("unverified", []),
                "parity": {k: p.get(k) for k in ("n_texts", "mean", "p01", "min")} | {
                    "languages": {lang: {"mean": v["mean"], "min": v["min"]}
                                  for lang, v in p.get("languages", {}).items()},
                    "retrieval": {k: (p.get("retrieval") or {}).get(k) for k in ("k", "topk_overlap", "top1_agreement")},
                },
                "gates": o.meta.get("gates"),
                "parity_by_length": o.meta.get("parity_by_length"),
                "compressed_outputs": _compressed(o.meta.get("compressed_outputs")),
            })
        artifacts.append(entry)
    manifest = {
        "format": "embedc-manifest/1",
        "spec": spec.to_dict(),
        "model": source.to_dict(),
        "adapter": ref_meta.get("adapter"),
        "random_weights": source.random_weights,
        "reference_export": {"path": "export", "opset": ref_meta.get("opset"),
                             "low_memory": ref_meta.get("low_memory", {"enabled": False}),
                             "validation": {k: ref_meta["validation"][k] for k in
                                            ("texts", "mean_cosine", "min_cosine", "max_abs_diff", "passed")},
                             "files": ref_meta.get("files", [])},
        "calibration": split_summary,
        "versions": library_versions(),
        "machine": machine_facts(),
        "artifacts": artifacts,
        "unverified": sorted({u for a in artifacts for u in a.get("unverified", [])}),
        "verdict": "pass" if all(a["status"] == "pass" for a in artifacts) else
                   ("error" if any(a["status"] == "error" for a in artifacts) else "fail"),
        "bench": bench,
        "remote_code_parity": remote_parity,
        "seconds": round(seconds, 1),
    }
    write_json_atomic(Path(folder) / MANIFEST, manifest)
    return manifest


def _backend_name(target: str) -> str:
    from ..targets.registry import get_target

    return get_target(target).backend


def _compressed(record: dict | None) -> dict | None:
    """The artifact's compressed outputs, without the per-language detail (that stays in embedc.json)."""
    if not record:
        return None
    from ..outputs.record import manifest_entry

    return manifest_entry(record)
