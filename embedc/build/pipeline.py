"""build(spec): export -> calibrate -> compile per target -> parity -> manifest.

One export feeds every target; one calibration split feeds every quantizer;
one torch FP32 reference on one held-out evaluation split judges every
artifact. Each stage is cached under a content key (stage_cache.py). The build
folder is staged and swapped in whole, so an interrupted build leaves the
previous good build intact; a pair that fails its gate leaves no artifact."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import file_inventory, read_meta, write_meta
from ..errors import EmbedcError, ParityGateError
from ..fsutil import check_output_location, staged_dir
from ..models import load_tokenizer, load_torch_model, resolve_model, save_tokenizer
from ..models.cache import cache_root
from ..models.source import ModelSource
from ..spec import BuildSpec
from .cache import StageCache, code_digest, content_key, copy_tree, hash_model_folder
from ..versions import library_versions

log = logging.getLogger("embedc")

_EXPORT_LIBS = ("torch", "transformers", "tokenizers", "onnx", "onnxscript", "onnxruntime")
_BACKEND_LIBS = {"ort": ("onnx", "onnxruntime", "onnx-ir"), "openvino": ("openvino", "nncf"),
                 "tensorrt": ("onnx", "onnxruntime", "tensorrt")}
# Source that shapes a stage's output; its digest is part of the stage's cache key.
_EXPORT_CODE = ("exporter/export.py", "exporter/wrapper.py", "exporter/validate.py", "exporter/probe_texts.py",
                "models/loading.py")
_ARTIFACT_CODE = ("targets/base.py", "parity/metrics.py", "parity/harness.py", "runtime/st_compat.py")
_BACKEND_CODE = {"ort": ("targets/ort/*.py",), "openvino": ("targets/openvino/*.py",),
                 "tensorrt": ("targets/tensorrt/*.py",)}


@dataclass
class ArtifactOutcome:
    target: str
    precision: str
    status: str                     # "pass" | "fail" | "error"
    path: str | None = None         # relative to the build folder, when kept
    meta: dict = field(default_factory=dict)
    gates: list = field(default_factory=list)   # GateOutcome list
    cached: bool = False
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.target}/{self.precision}"


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


def _versions(names) -> dict:
    v = library_versions()
    return {k: v[k] for k in names if k in v}


def resolve_source(spec: BuildSpec) -> ModelSource:
    m = spec.model
    src = resolve_model(m.name, trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle)
    if m.instruct_task is not None:
        return dataclasses.replace(src, query_prefix="", passage_prefix="")
    changes = {}
    if m.query_prefix is not None:
        changes["query_prefix"] = m.query_prefix
    if m.passage_prefix is not None:
        changes["passage_prefix"] = m.passage_prefix
    return dataclasses.replace(src, **changes) if changes else src


def default_out(source: ModelSource) -> Path:
    return Path("artifacts") / source.name.replace("/", "--").replace("@", "-")


class _Build:
    """State shared by the stages of one build (lazy torch model, cache, keys)."""

    def __init__(self, spec: BuildSpec, cache: StageCache):
        self.spec = spec
        self.cache = cache
        self.source = resolve_source(spec)
        self._model = None
        self.model_hash = hash_model_folder(self.source.path)
        self.plan: list[dict] = []

    @property
    def model(self):
        if self._model is None:
            self._model = load_torch_model(self.source)
        return self._model

    # -- stages ---------------------------------------------------------------
    def export_key(self) -> str:
        from ..exporter import OUTPUT_NAMES

        return content_key("export", {"model": self.model_hash, "opset": self.spec.export.opset,
                                      "outputs": OUTPUT_NAMES, "random": self.source.random_weights,
                                      "versions": _versions(_EXPORT_LIBS), "code": code_digest(*_EXPORT_CODE)})

    def export(self) -> tuple[Path, str]:
        from ..exporter import export_reference

        key = self.export_key()
        hit = self.cache.lookup("export", key)
        if hit is None:
            log.info("exporting %s to ONNX", self.source.name)
            hit = self.cache.store("export", key, {"model": self.source.name},
                                   lambda tmp: export_reference(self.source, tmp, opset=self.spec.export.opset,
                                                                force=True))
        else:
            log.info("export: cached (%s)", key[:12])
        return hit, key

    def splits(self):
        from ..calibration import load_corpus, load_default_corpus, make_splits

        c = self.spec.calibration
        samples = load_default_corpus() if c.corpus == "default" else load_corpus(c.corpus)
        return make_splits(samples, calib_per_lang=c.calib_per_lang, eval_per_lang=c.eval_per_lang,
                           seed=c.seed, min_languages=c.min_languages)

    def prompt_style(self):
        from ..calibration import PromptStyle

        if self.spec.model.instruct_task:
            return PromptStyle(instruct_task=self.spec.model.instruct_task)
        return PromptStyle(self.source.query_prefix, self.source.passage_prefix)

    def reference(self, tokenizer, eval_texts: list[str], eval_hash: str, max_length: int) -> np.ndarray:
        from ..parity.reference import reference_embeddings

        key = content_key("reference", {"model": self.model_hash, "eval": eval_hash, "texts": eval_texts[:1],
                                        "n": len(eval_texts), "max_length": max_length,
                                        "versions": _versions(("torch", "transformers", "tokenizers")),
                                        "code": code_digest("parity/reference.py", "models/loading.py")})
        hit = self.cache.lookup("reference", key)
        if hit is None:
            log.info("computing torch FP32 reference embeddings for %d evaluation texts", len(eval_texts))
            emb = reference_embeddings(self.model, tokenizer, eval_texts, max_length=max_length)
            hit = self.cache.store("reference", key, {"model": self.source.name},
                                   lambda tmp: np.save(tmp / "embeddings.npy", emb))
        else:
            log.info("reference embeddings: cached (%s)", key[:12])
        return np.load(hit / "embeddings.npy")


def build(spec: BuildSpec, *, force: bool = False, cache_dir: Path | None = None) -> BuildResult:
    """Run the whole build. Returns the result; raises ParityGateError (exit 3)
    only after every artifact and report is written; other errors exit 1."""
    from ..calibration import length_distribution, tokenize_batches
    from ..parity import ParityResult, compute_parity, evaluate_gates, parse_gates, resolve_gates
    from ..parity.harness import embed_texts
    from ..targets.base import CompileContext
    from ..targets.registry import get_backend, get_target

    t_start = time.perf_counter()
    b = _Build(spec, StageCache(cache_dir or cache_root() / "stages"))
    out = Path(spec.out) if spec.out else default_out(b.source)
    check_output_location(out, force=force)

    export_dir, export_key = b.export()
    ref_meta = read_meta(export_dir)
    tokenizer = load_tokenizer(dataclasses.replace(b.source, path=export_dir))
    input_names = [i["name"] for i in ref_meta["inputs"]]
    max_len = min(spec.calibration.max_length, ref_meta["max_length"])

    splits = b.splits()
    summary = splits.summary()
    style = b.prompt_style()
    eval_samples = list(splits.evaluation)
    eval_texts = style.apply_all(eval_samples)
    calib_texts = style.apply_all(list(splits.calibration))
    eval_hash = summary["evaluation"]["sha256"]
    reference = b.reference(tokenizer, eval_texts, eval_hash, max_len)
    calibration = tuple(tokenize_batches(tokenizer, calib_texts, batch_size=1, max_length=max_len,
                                         input_names=input_names))
    length_stats = length_distribution(tokenizer, calib_texts, max_len)
    ids = [s.id for s in eval_samples]
    langs = [s.lang for s in eval_samples]
    kinds = [s.kind for s in eval_samples]
    per_model = _per_model_gates(spec, (b.source.name, spec.model.name))

    outcomes: list[ArtifactOutcome] = []
    with staged_dir(out, force=force) as stage:
        copy_tree(export_dir, stage / "export")
        for target_name, precision in spec.pairs():
            target = get_target(target_name)
            backend = get_backend(target)
            options = spec.options_for(target_name, precision)
            key = content_key("artifact", {
                "export": export_key, "target": dataclasses.asdict(target), "precision": precision,
                "options": options, "calibration": summary["calibration"]["sha256"], "eval": eval_hash,
                "style": style.to_dict(), "max_length": max_len,
                "versions": _versions(_BACKEND_LIBS.get(target.backend, ())),
                "code": code_digest(*_ARTIFACT_CODE, *_BACKEND_CODE.get(target.backend, ()))})
            name = f"{target_name}/{precision}"
            try:
                hit = b.cache.lookup("artifact", key)
                cached = hit is not None
                if hit is None:
                    log.info("compiling %s", name)

                    def fill(tmp: Path, target=target, backend=backend, precision=precision, options=options):
                        t0 = time.perf_counter()
                        work = tmp.parent / f".{tmp.name}.work"
                        work.mkdir()
                        try:
                            ctx = CompileContext(reference_dir=export_dir, reference_meta=ref_meta,
                                                 calibration=calibration, length_stats=length_stats,
                                                 options=options, work_dir=work)
                            res = backend.compile(target, precision, ctx, tmp)
                        finally:
                            shutil.rmtree(work, ignore_errors=True)
                        compile_s = time.perf_counter() - t0
                        save_tokenizer(tokenizer, tmp)
                        meta = _artifact_meta(b.source, ref_meta, target, precision, res, summary, style,
                                              length_stats, max_len, compile_s)
                        meta["calibration_spec"] = dataclasses.asdict(spec.calibration)
                        from ..runtime.st_compat import write_st_files

                        meta["sentence_transformers"] = write_st_files(tmp, meta, b.source.path)
                        runner = backend.load(tmp, meta)
                        cand = embed_texts(runner.embed, tokenizer, eval_texts, input_names=input_names,
                                           max_length=max_len)
                        meta["parity"] = compute_parity(reference, cand, ids=ids, langs=langs,
                                                        kinds=kinds).to_dict()
                        meta["files"] = file_inventory(tmp)
                        write_meta(tmp, meta)

                    hit = b.cache.store("artifact", key, {"artifact": name}, fill)
                else:
                    log.info("%s: cached (%s)", name, key[:12])
                meta = read_meta(hit)
                gates = resolve_gates(precision, _gates_for(spec, precision, parse_gates), per_model)
                results = evaluate_gates(ParityResult.from_dict(meta["parity"]), gates)
                passed = all(not o.failed for o in results)
                meta["gates"] = {"verdict": "pass" if passed else "fail", "outcomes": [o.to_dict() for o in results]}
                rel = None
                if passed:
                    rel = f"{target_name}/{precision}"
                    copy_tree(hit, stage / rel)
                    write_meta(stage / rel, meta)  # adds the verdict; the cache entry keeps the neutral copy
                outcomes.append(ArtifactOutcome(target_name, precision, "pass" if passed else "fail", rel, meta,
                                                results, cached))
                _log_parity(name, meta, passed, cached)
            except EmbedcError as exc:
                if isinstance(exc, ParityGateError):
                    raise
                log.error("%s: %s", name, exc)
                outcomes.append(ArtifactOutcome(target_name, precision, "error", error=str(exc)))
        bench = _bench(spec, stage, outcomes)
        from .manifest import build_manifest

        manifest = build_manifest(spec, b.source, ref_meta, summary, outcomes, stage,
                                  seconds=time.perf_counter() - t_start, bench=bench)
        result = BuildResult(out, manifest, outcomes)
        from ..reports.markdown import write_reports

        write_reports(result, stage)
    return result


def _bench(spec: BuildSpec, stage: Path, outcomes: list[ArtifactOutcome]) -> dict | None:
    """Benchmark the kept artifacts against torch FP32 (in the staged folder, so the
    figures land in manifest.json and the reports). Never cached: speed belongs to
    the machine and moment of the run. A benchmark failure is recorded, not fatal:
    the artifacts and their parity verdicts stand without it."""
    if not spec.bench.enabled:
        return None
    kept = [a for a in outcomes if a.path]
    # Only CPU artifacts: a GPU/NPU artifact run on this CPU says nothing about its device's speed.
    here = [stage / a.path for a in kept if a.meta.get("device") == "cpu"]
    skipped = [{"name": a.name, "reason": f"{a.meta.get('device')} artifact: its speed needs that device"}
               for a in kept if a.meta.get("device") != "cpu"]
    if not here:
        return {"rows": [], "skipped": skipped}
    from ..bench.run import run_bench

    try:
        return {**run_bench(here, threads=spec.bench.threads, batch_size=spec.bench.batch_size,
                            repeats=spec.bench.repeats), "skipped": skipped}
    except EmbedcError as exc:
        log.error("benchmark failed: %s", exc)
        return {"error": str(exc), "rows": [], "skipped": skipped}


def _per_model_gates(spec: BuildSpec, names) -> dict | None:
    """The spec's gates for this model as resolve_gates takes them: precision or
    family -> {metric: threshold}; a "*" entry applies to every precision."""
    from ..parity import parse_gates

    table = next((spec.model_gates[n] for n in names if n in spec.model_gates), None)
    if not table:
        return None
    out: dict = {}
    for key, text in table.items():
        thresholds = {g.metric: g.threshold for g in parse_gates(text)}
        if key == "*":
            out.update(thresholds)
        else:
            out[key] = thresholds
    return out


def _gates_for(spec: BuildSpec, precision: str, parse_gates) -> list:
    from ..parity import precision_family

    out = []
    for key in ("*", precision_family(precision), precision):
        if key in spec.gates:
            out.extend(parse_gates(spec.gates[key]))
    merged = {g.metric: g for g in out}  # exact precision wins over family
    return list(merged.values())


def _artifact_meta(source, ref_meta, target, precision, res, summary, style, length_stats, max_len,
                   compile_s) -> dict:
    return {
        "stage": "artifact",
        "target": target.name,
        "backend": target.backend,
        "device": target.device,
        "precision": precision,
        "model": source.to_dict(),
        "model_file": res.model_file,
        "inputs": ref_meta["inputs"],
        "outputs": ref_meta["outputs"][:1],
        "max_length": ref_meta["max_length"],
        "prefixes": ref_meta["prefixes"],
        "prompt_style": style.to_dict(),
        "opset_reference": ref_meta["opset"],
        "recipe": res.recipe,
        "runtime": res.runtime,
        "target_settings": target.settings,
        "target_notes": list(target.notes),
        "unverified": list(res.unverified),
        "calibration": summary,
        "calibration_lengths": length_stats,
        "parity_max_length": max_len,
        "parity_reference": "torch FP32 model, mean pooling + L2 norm, same tokenization",
        "compile_seconds": round(compile_s, 2),
        "versions": library_versions(),
    }


def _log_parity(name: str, meta: dict, passed: bool, cached: bool) -> None:
    p = meta["parity"]
    worst_lang = min(p["languages"].items(), key=lambda kv: kv[1]["mean"]) if p.get("languages") else ("-", {"mean": float("nan")})
    r = p.get("retrieval") or {}
    log.info("%s%s: %s mean %.5f min %.5f worst lang %s %.5f top10 %.3f", name, " (cached)" if cached else "",
             "PASS" if passed else "FAIL", p["mean"], p["min"], worst_lang[0], worst_lang[1]["mean"],
             r.get("topk_overlap", float("nan")))
