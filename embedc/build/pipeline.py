"""build(spec): prepare -> export -> data -> reference -> one job per
(target, precision) -> assemble the build folder (manifest, reports).

One export feeds every target; one calibration split feeds every quantizer;
one torch FP32 reference on one held-out evaluation split judges every
artifact. Shared stages and artifacts are cached under content keys
(build/cache.py). Jobs run on an executor (in-process by default); a pair
that fails (compile error or gate) fails alone. The build folder is staged
and swapped in whole."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..artifact import write_meta
from ..errors import EmbedcError
from ..spec import BuildSpec
from . import faults, output_guard, stages, temps
from .artifact_job import ARTIFACT_CODE, ArtifactJob, ArtifactOutcome, run_artifact_job  # noqa: F401
from .cache import StageCache, copy_tree
from .executor import LocalExecutor, make_executor  # noqa: F401
from .keys import artifact_key

log = logging.getLogger("embedc")


@dataclass
class BuildResult:
    out: Path
    manifest: dict
    artifacts: list[ArtifactOutcome]

    @property
    def failed_gates(self) -> list[ArtifactOutcome]:
        return [a for a in self.artifacts if a.status == "fail"]

    @property
    def errors(self) -> list[ArtifactOutcome]:
        return [a for a in self.artifacts if a.status == "error"]


def build(spec: BuildSpec, *, force: bool = False, cache_dir: Path | None = None, executor=None) -> BuildResult:
    """Run the whole build and return its result (gate failures and per-pair
    errors are in ``result.artifacts``; the CLI turns them into exit codes)."""
    from ..models import load_tokenizer
    from ..models.cache import cache_root

    from ..spec import validate

    t_start = time.perf_counter()
    spec = validate(spec)  # options, gates and sizes are checked before any work, whoever made the spec
    executor = executor or make_executor(spec.executor)  # a missing Ray says so before any work
    cache_dir = cache_dir or spec.executor.cache  # [executor] cache: a path every node sees
    cache = StageCache(Path(cache_dir) if cache_dir else cache_root() / "stages")
    cache.sweep()
    p = stages.prepare(spec, force=force)
    from ..outputs.build import plan as plan_outputs

    outputs_plan = plan_outputs(spec, p.adapter)  # dims wider than the model fail here, before the export
    export_dir, export_key, ref_meta = stages.export(p, cache)
    p.tokenizer = load_tokenizer(dataclasses.replace(p.source, path=export_dir), shared=True)  # the tokenizer artifacts carry
    data = stages.data(p)
    reference_dir = stages.reference(p, data, cache)
    remote = stages.remote_code_parity(p, data)
    p.release_torch()  # the compiles and parity runs below never need it
    p.out.absolute().parent.mkdir(parents=True, exist_ok=True)
    work_root = temps.make(p.out.absolute().parent, p.out.name, "work")  # pid-named: swept if this run is killed
    try:
        jobs = plan_jobs(p, data, export_dir, export_key, ref_meta, reference_dir / "embeddings.npy", cache,
                         work_root)
        if outputs_plan is not None:
            jobs = _with_outputs(jobs, outputs_plan, p, data, export_dir, export_key, ref_meta, reference_dir, cache)
        outcomes = executor.run(jobs, on_done=_log_outcome)
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    return assemble(p, data, export_dir, ref_meta, jobs, outcomes, t_start, force=force, remote_parity=remote)


def resolve_pair(target, precision: str, options: dict) -> tuple[dict, dict]:
    """(resolved options, machine facts) of one pair, from its backend."""
    from ..targets.registry import get_backend

    from ..targets.options import jsonable

    backend = get_backend(target)
    resolved = backend.resolve_options(target, precision, options)
    return jsonable(resolved), backend.cache_facts(target, precision, resolved)


def plan_jobs(p: stages.Prepared, data: stages.BuildData, export_dir: Path, export_key: str, ref_meta: dict,
              reference_file: Path, cache: StageCache, work_root: Path) -> list[ArtifactJob]:
    from ..parity import resolve_gates
    from ..targets.registry import get_backend, get_target

    spec = p.spec
    jobs = []
    for target_name, precision in spec.pairs():
        target = get_target(target_name)
        backend = get_backend(target)
        options, facts = resolve_pair(target, precision, stages.pair_options(p, target, precision))
        key = artifact_key(export_key=export_key, target=target, precision=precision, options=options,
                           facts=facts, calibration_hash=data.calibration_hash, eval_hash=data.eval_hash,
                           style=p.style.to_dict(), calib_max_length=p.calib_max_length,
                           eval_max_length=p.eval_max_length, versions=stages.versions_of(backend.libraries),
                           shared_code=ARTIFACT_CODE, backend_package=backend.source_package)
        jobs.append(ArtifactJob(
            target=target, precision=precision, options=options, key=key, cache_root=str(cache.root),
            work_root=str(work_root), export_dir=str(export_dir), ref_meta=ref_meta, calibration=data.calibration,
            length_stats=data.length_stats, eval_texts=data.eval_texts, eval_ids=data.eval_ids,
            eval_langs=data.eval_langs, eval_kinds=data.eval_kinds, eval_lengths=data.eval_lengths,
            reference_file=str(reference_file),
            eval_max_length=p.eval_max_length, calib_max_length=p.calib_max_length, summary=data.summary,
            style=p.style.to_dict(), source=p.source.to_dict(), source_dir=str(p.source.path),
            gates=tuple(resolve_gates(precision, spec.gate_layers(p.model_names))), facts=facts))
    return jobs


def _with_outputs(jobs, outputs_plan, p, data, export_dir, export_key, ref_meta, reference_dir, cache):
    """Compressed outputs: int8 ranges from the FP32 export on the calibration split, once per
    build; each job gets them and a key that covers them (embedc/outputs/build.py)."""
    from ..outputs.build import prepare_job
    from .cache import content_key

    outputs = prepare_job(outputs_plan, p.spec, export_dir=export_dir, export_key=export_key, ref_meta=ref_meta,
                          calibration=data.calibration, calibration_hash=data.calibration_hash,
                          tokenizer=p.tokenizer, eval_texts=data.eval_texts,
                          eval_max_length=p.eval_max_length, reference_file=reference_dir / "embeddings.npy",
                          cache=cache)
    return [dataclasses.replace(j, outputs=outputs,
                                key=content_key("artifact-outputs", {"artifact": j.key, "outputs": outputs["digest"]}))
            for j in jobs]


def assemble(p: stages.Prepared, data: stages.BuildData, export_dir: Path, ref_meta: dict, jobs, outcomes,
             t_start: float, *, force: bool, remote_parity: dict | None = None) -> BuildResult:
    """The build folder: the reference export, every passing artifact with
    its per-build facts (gates and where they came from, the corpus it was
    judged on), benchmarks, manifest.json, report.md, report.html."""
    from ..fsutil import staged_dir
    from ..parity import gates_to_dict
    from .manifest import build_manifest

    spec = p.spec
    # A build with a failed gate or a failed pair never replaces (or creates) <out>: its reports go to
    # <out>.failed, and the previous build stays byte-identical.
    ok = all(o.status == "pass" for o in outcomes)
    dest = p.out if ok else output_guard.failed_path(p.out)
    if not ok:
        log.warning("the build failed: its reports go to %s; %s is left untouched", dest, p.out)
    with staged_dir(dest, force=force or not ok, on_swap=lambda: faults.point("swap")) as stage:
        copy_tree(export_dir, stage / "export")
        for job, o in zip(jobs, outcomes):
            if o.status == "error":
                continue
            o.meta = {**o.meta, "gates": {"verdict": o.status, "resolved": gates_to_dict(job.gates),
                                          "outcomes": [g.to_dict() for g in o.gates]},
                      "calibration_spec": dataclasses.asdict(spec.calibration),
                      "model": job.source}  # this build's model and corpus paths, not the cache filler's
            if o.status == "pass":
                o.path = o.name
                copy_tree(Path(o.entry), stage / o.path)
                write_meta(stage / o.path, o.meta)  # per-build facts: the cache entry keeps the neutral copy
        bench = _bench(spec, stage, outcomes)
        manifest = build_manifest(spec, p.source, ref_meta, data.summary, outcomes, stage,
                                  seconds=time.perf_counter() - t_start, bench=bench, remote_parity=remote_parity)
        result = BuildResult(dest, manifest, outcomes)
        from ..reports.markdown import write_reports

        write_reports(result, stage)
        faults.point("report")
    stale = output_guard.failed_path(p.out)
    if ok and stale.is_dir() and output_guard.is_embedc_output(stale):
        shutil.rmtree(stale, ignore_errors=True)  # an earlier failure's reports: this build passed
    return result


def _log_outcome(o: ArtifactOutcome) -> None:
    if o.status == "error":
        return  # logged where it happened, with the reason
    par = o.meta["parity"]
    langs = par.get("languages") or {}
    worst = min(langs.items(), key=lambda kv: kv[1]["mean"]) if langs else ("-", {"mean": float("nan")})
    top = (par.get("retrieval") or {}).get("topk_overlap")
    log.info("%s%s: %s mean %.5f min %.5f worst lang %s %.5f top10 %s", o.name, " (cached)" if o.cached else "",
             o.status.upper(), par["mean"], par["min"], worst[0], worst[1]["mean"],
             "-" if top is None else f"{top:.3f}")


def _bench(spec: BuildSpec, stage: Path, outcomes: list[ArtifactOutcome]) -> dict | None:
    """Benchmark the kept CPU artifacts against torch FP32 (in the staged
    folder, so the figures land in manifest.json and the reports). Never
    cached: speed belongs to the machine and moment of the run. A benchmark
    failure is recorded, not fatal."""
    if not spec.bench.enabled:
        return None
    from ..targets.registry import get_target

    kept = [a for a in outcomes if a.path]
    here = [a for a in kept if get_target(a.target).benchmarkable_on_cpu]
    skipped = [{"name": a.name, "reason": f"{a.meta.get('device')} artifact: its speed needs that device"}
               for a in kept if a not in here]
    if not here:
        return {"rows": [], "skipped": skipped}
    from ..bench.run import run_bench

    try:
        return {**run_bench([stage / a.path for a in here], threads=spec.bench.threads,
                            batch_size=spec.bench.batch_size, repeats=spec.bench.repeats), "skipped": skipped}
    except EmbedcError as exc:
        log.error("benchmark failed: %s", exc)
        return {"error": str(exc), "rows": [], "skipped": skipped}

