"""One (target, precision) of a build as a self-contained, picklable job:
compile (or take from the stage cache), run the evaluation split through the
artifact, compute parity, check the gates. ``run_artifact_job`` never raises
for a failing artifact: any error becomes that pair's outcome, with a one-line
reason, and the rest of the matrix goes on. An executor (local, or Ray) runs
the jobs; everything a job reads is a path or plain data."""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EmbedcError
from . import faults

log = logging.getLogger("embedc")

# embedc source that shapes every artifact besides its backend's own package
ARTIFACT_CODE = ("targets/base.py", "targets/options.py", "targets/host.py", "onnxkit/*.py", "parity/metrics.py",
                 "parity/lengths.py", "parity/harness.py", "calibration/feeds.py", "runtime/st_compat.py",
                 "build/artifact_job.py", "int4/*.py")  # outputs/*.py: in the key of artifacts with compressed outputs only


@dataclass(frozen=True)
class ArtifactJob:
    target: object                  # targets.base.Target
    precision: str
    options: dict                   # resolved by the backend
    key: str                        # artifact cache key
    cache_root: str
    work_root: str                  # the build's own scratch folder
    export_dir: str
    ref_meta: dict
    calibration: tuple
    length_stats: dict
    eval_texts: tuple[str, ...]
    eval_ids: tuple[str, ...]
    eval_langs: tuple[str, ...]
    eval_kinds: tuple[str, ...]
    eval_lengths: tuple[int, ...]
    reference_file: str             # embeddings.npy of the torch FP32 reference
    eval_max_length: int
    calib_max_length: int
    summary: dict                   # calibration/evaluation split summary
    style: dict
    source: dict                    # ModelSource.to_dict()
    source_dir: str
    gates: tuple = ()               # resolved parity.Gate list
    facts: dict = field(default_factory=dict)   # backend cache facts
    outputs: dict | None = None     # compressed output heads (embedc/outputs/build.py prepare_job)
    node: dict = field(default_factory=dict)    # the cluster node running it (remote executors; not in the key)

    @property
    def name(self) -> str:
        return f"{self.target.name}/{self.precision}"


@dataclass
class ArtifactOutcome:
    target: str
    precision: str
    status: str                     # "pass" | "fail" | "error"
    entry: str | None = None        # the cache entry holding the artifact (pass and fail)
    path: str | None = None         # relative to the build folder, once kept
    meta: dict = field(default_factory=dict)
    gates: list = field(default_factory=list)   # GateOutcome list
    cached: bool = False
    error: str | None = None
    seconds: float = 0.0
    node: dict | None = None        # where the job ran (remote executors: host, ip, node id, resources)

    @property
    def name(self) -> str:
        return f"{self.target}/{self.precision}"


def one_line(exc: BaseException) -> str:
    """An exception as the one line a user reads (embedc errors carry their hint)."""
    if isinstance(exc, EmbedcError):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def run_artifact_job(job: ArtifactJob) -> ArtifactOutcome:
    from ..artifact import read_meta
    from ..parity import ParityResult, evaluate_gates
    from ..memory import release_memory
    from .cache import StageCache

    t0 = time.perf_counter()
    cache = StageCache(Path(job.cache_root))
    try:
        hit = cache.lookup("artifact", job.key)
        cached = hit is not None
        if hit is None:
            log.info("compiling %s", job.name)
            try:
                hit = cache.store("artifact", job.key, {"artifact": job.name}, lambda tmp: _compile_and_judge(job, tmp))
            finally:
                release_memory()  # the compile's models and sessions, back to the OS before the next pair
        else:
            log.info("%s: cached (%s)", job.name, job.key[:12])
        meta = read_meta(hit)
        outcomes = evaluate_gates(ParityResult.from_dict(meta["parity"]), job.gates)
        if job.outputs:
            from ..outputs.build import gate_outcomes

            outcomes += gate_outcomes(meta, job.outputs["gates"])
        passed = not any(o.failed for o in outcomes)
        return ArtifactOutcome(job.target.name, job.precision, "pass" if passed else "fail", entry=str(hit),
                               meta=meta, gates=outcomes, cached=cached, seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - any backend failure fails this pair only
        log.debug("%s failed:\n%s", job.name, traceback.format_exc())
        log.error("%s: %s", job.name, one_line(exc))
        return ArtifactOutcome(job.target.name, job.precision, "error", error=one_line(exc),
                               seconds=time.perf_counter() - t0)


def _compile_and_judge(job: ArtifactJob, out: Path) -> None:
    """Fill a new cache entry: model files, tokenizer, sentence-transformers
    files, and embedc.json with the parity numbers (build-neutral: gates,
    corpus paths and other per-build facts go into the build's copy only)."""
    from ..artifact import file_inventory, write_meta
    from ..memory import release_memory
    from ..models import load_tokenizer, save_tokenizer
    from ..parity import compute_parity
    from ..parity.harness import embed_texts
    from ..parity.lengths import parity_by_length
    from ..runtime.st_compat import write_st_files
    from ..targets.base import CompileContext
    from ..targets.registry import get_backend
    from ..versions import library_versions

    backend = get_backend(job.target)
    work = Path(tempfile.mkdtemp(prefix=job.name.replace("/", "-") + "-", dir=job.work_root))
    # Freed heap pages stay with the process until trimmed: the stages before and the compile itself
    # leave gigabytes at a 0.6B decoder's size (measured: 1.5 GB before an OpenVINO compile, 0.7 GB
    # after it), which the compile and then the parity runtime would add to the build's peak.
    release_memory()
    t0 = time.perf_counter()
    try:
        ctx = CompileContext(reference_dir=Path(job.export_dir), reference_meta=job.ref_meta,
                             calibration=job.calibration, length_stats=job.length_stats, options=dict(job.options),
                             work_dir=work, int4_weights=_int4_weights(job))
        res = backend.compile(job.target, job.precision, ctx, out)
        if job.outputs:
            from ..outputs.build import attach as attach_heads

            heads_record = attach_heads(job.outputs, backend, out, res)
        faults.point("compile")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    compile_s = time.perf_counter() - t0
    release_memory()  # the compiler's models are gone: their pages back before the runtime loads
    tokenizer = load_tokenizer(_with_path(job.source, job.export_dir), shared=True)
    save_tokenizer(tokenizer, out)
    meta = _artifact_meta(job, res, compile_s, library_versions())
    meta["sentence_transformers"] = write_st_files(out, meta, Path(job.source_dir))
    runner = backend.load(out, meta)
    candidate = embed_texts(runner.embed, tokenizer, job.eval_texts, input_names=[i["name"] for i in meta["inputs"]],
                            max_length=job.eval_max_length)
    reference = np.load(job.reference_file)
    parity = compute_parity(reference, candidate, ids=list(job.eval_ids), langs=list(job.eval_langs),
                            kinds=list(job.eval_kinds))
    meta["parity"] = parity.to_dict()
    faults.point("parity")
    meta["parity_by_length"] = parity_by_length(parity.cosines, list(job.eval_ids), list(job.eval_lengths),
                                                job.eval_max_length).to_dict()
    if job.outputs:
        from ..outputs.build import judge as judge_heads

        meta["compressed_outputs"] = judge_heads(job.outputs, runner, tokenizer, job, heads_record, out)
        meta["unverified"] += [heads_record["unverified"]] if heads_record.get("unverified") else []
    meta["model_files"] = backend.model_files(out, meta)
    meta["model_bytes"] = sum((out / f).stat().st_size for f in meta["model_files"])
    meta["files"] = file_inventory(out)
    if job.node:
        meta["built_on"] = dict(job.node)   # compiled and judged there (a remote executor's node)
    write_meta(out, meta)


def _int4_weights(job: ArtifactJob):
    """The cached torch int4-weights stage for this build (embedc.int4.stage): one computation per
    export, calibration split and settings, shared by every backend's int4 artifact."""
    def fetch(settings):
        from ..int4.stage import cached_int4_weights, source_loader
        from .cache import StageCache

        return cached_int4_weights(StageCache(Path(job.cache_root)), export_key=Path(job.export_dir).name,
                                   calibration_hash=job.summary["calibration"]["sha256"], settings=settings,
                                   load_model=source_loader(_with_path(job.source, job.source_dir)),
                                   feeds=job.calibration)
    return fetch


def _with_path(source: dict, path: str):
    from ..models.source import ModelSource

    return ModelSource(name=source["name"], path=Path(path), kind=source["kind"],
                       trust_remote_code=source.get("trust_remote_code", False))


def _artifact_meta(job: ArtifactJob, res, compile_s: float, versions: dict) -> dict:
    ref = job.ref_meta
    t = job.target
    return {
        "stage": "artifact",
        "target": t.name,
        "backend": t.backend,
        "device": t.device,
        "precision": job.precision,
        "model": job.source,
        "adapter": ref["adapter"],
        "model_file": res.model_file,
        "inputs": ref["inputs"],
        "outputs": [o for o in ref["outputs"] if o["name"] == "sentence_embedding"],
        "max_length": ref["max_length"],          # the model's own: artifacts serve at this length
        "prefixes": ref["prefixes"],
        "prompt_style": job.style,
        "opset_reference": ref["opset"],
        "recipe": res.recipe,
        "runtime": res.runtime,
        "target_settings": t.settings,
        "target_notes": list(t.notes),
        "build_facts": job.facts,
        "unverified": list(res.unverified),
        "calibration": job.summary,
        "calibration_lengths": job.length_stats,
        "calibration_max_length": job.calib_max_length,
        "parity_max_length": job.eval_max_length,
        "parity_reference": f"torch FP32 model, {ref['adapter']['pooling']['mode']} pooling + L2 norm, "
                            "same tokenization",
        "compile_seconds": round(compile_s, 2),
        "versions": versions,
    }
