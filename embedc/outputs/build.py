"""The build's compressed-output steps, called by the pipeline and the
artifact job (small hooks there, the work here):

1. ``plan`` (after ``stages.prepare``): the heads, or a one-line error for
   dims wider than the model, before any export
2. ``prepare_job`` (once per build): per-dimension int8 ranges from the FP32
   export's float outputs on the CALIBRATION split, the FP32 float source
   vectors on the evaluation split (both a stage-cache entry: minutes of
   FP32 inference on a large model), and the digest that keys artifacts
3. ``attach`` (after each compile): the backend adds the heads to its graph;
   the ranges file goes into the artifact folder
4. ``judge`` (after parity): every head on the evaluation split, checked
   against the formula on the artifact's own float output, and its parity
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CompileError
from . import formulas
from .spec import POOLED, SENTENCE, TRAINED, Head, plan_heads

log = logging.getLogger("embedc")
RANGES_FILE = "output_ranges.json"


@dataclass(frozen=True)
class OutputsPlan:
    heads: tuple[Head, ...]
    warnings: tuple[str, ...]
    untrained: tuple[str, ...]        # heads the model was not trained for (no default gates)


def plan(spec, adapter) -> OutputsPlan | None:
    o = spec.outputs
    heads, warnings = plan_heads(o, model_type=adapter.model_type, width=adapter.hidden_size,
                                 graph_outputs=adapter.outputs)
    if not heads:
        return None
    trained = TRAINED.get(adapter.model_type) or {}
    untrained = tuple(h.name for h in heads
                      if (h.scheme == "tanh" and "int8-tanh" not in trained.get("formats", ()))
                      or (h.dims < h.width and not trained.get("matryoshka")))
    for w in warnings:
        log.warning("outputs: %s", w)
    return OutputsPlan(tuple(heads), tuple(warnings), untrained)


def _session(export_dir: Path, ref_meta: dict):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    if (ref_meta.get("low_memory") or {}).get("enabled"):
        # no pre-packed copy of every weight: the session then reads the memory-mapped external data
        opts.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(Path(export_dir) / ref_meta["model_file"]), opts,
                                providers=["CPUExecutionProvider"])


def run_texts(run, tokenizer, texts, *, input_names, max_length: int, names: list[str],
              batch_size: int = 16) -> dict[str, np.ndarray]:
    """``run(feeds, names) -> {name: array}`` over texts batched by length, in input order."""
    from ..calibration.feeds import encode_batch, token_lengths

    texts = list(texts)
    order = np.argsort(token_lengths(tokenizer, texts, max_length), kind="stable")
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        feeds = encode_batch(tokenizer, [texts[i] for i in idx], input_names=input_names, max_length=max_length)
        got = run(feeds, names)
        for n in names:
            a = np.asarray(got[n])
            if n not in out:
                out[n] = np.empty((len(texts),) + a.shape[1:], dtype=a.dtype)
            out[n][idx] = a
    return out


def prepare_job(pl: OutputsPlan, spec, *, export_dir: Path, export_key: str, ref_meta: dict, calibration,
                calibration_hash: str, tokenizer, eval_texts, eval_max_length: int,
                reference_file: Path, cache) -> dict:
    """Everything an artifact job needs for its heads, as plain data and paths. The FP32 passes
    (ranges, pooled evaluation vectors) are a stage-cache entry keyed by what they read."""
    from ..build.cache import code_digest, content_key

    sources = sorted({h.source for h in pl.heads} | {SENTENCE})
    calibrated = any(h.needs_calibration for h in pl.heads)
    ranges, hit = {}, None
    if calibrated or POOLED in sources:
        key = content_key("outputs", {"export": export_key, "sources": sources, "calibrated": calibrated,
                                      "feeds": _feeds_digest(calibration) if calibrated else None,
                                      "eval": _texts_digest(eval_texts) if POOLED in sources else None,
                                      "eval_max_length": eval_max_length, "code": code_digest("outputs/build.py")})
        hit = cache.lookup("outputs", key)
        if hit is None:
            def fill(tmp: Path) -> None:
                _fp32_passes(sources, calibrated, export_dir=export_dir, ref_meta=ref_meta, calibration=calibration,
                             tokenizer=tokenizer, eval_texts=eval_texts, eval_max_length=eval_max_length, out=tmp)

            hit = cache.store("outputs", key, {"export": export_key}, fill)
        else:
            log.info("outputs: FP32 calibration and evaluation vectors cached (%s)", key[:12])
    if calibrated:
        ranges = formulas.compute_ranges(pl.heads, {s: np.load(hit / _calibration_file(s)) for s in sources})
        log.info("outputs: int8 ranges / binary centres from %d calibration texts through the FP32 export",
                 len(calibration))
    eval_files = {SENTENCE: str(reference_file)}  # the torch FP32 reference (normalized)
    if POOLED in sources:
        eval_files[POOLED] = str(hit / POOLED_EVAL_FILE)
    ranges_blob = json.dumps(ranges, sort_keys=True).encode()
    o = spec.outputs
    digest = hashlib.sha256(json.dumps({
        "heads": [h.to_dict() for h in pl.heads], "ranges": hashlib.sha256(ranges_blob).hexdigest(),
        "calibration": calibration_hash, "rescore": o.rescore_multiplier,
        "code": code_digest("outputs/*.py")}, sort_keys=True).encode()).hexdigest()
    return {"heads": [h.to_dict() for h in pl.heads], "ranges": ranges, "warnings": list(pl.warnings),
            "untrained": list(pl.untrained), "eval_sources": eval_files, "rescore_multiplier": o.rescore_multiplier,
            "gates": dict(o.gates), "calibration_hash": calibration_hash, "calibration_texts": len(calibration),
            "digest": digest}


POOLED_EVAL_FILE = "eval-pooler_output.npy"


def _feeds_digest(feeds) -> str:
    """The calibration feeds themselves (token ids and masks), so any change of texts, tokenizer or
    length gives another entry."""
    h = hashlib.sha256()
    for f in feeds:
        for name in sorted(f):
            a = np.ascontiguousarray(f[name])
            h.update(f"{name}{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _texts_digest(texts) -> str:
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def _calibration_file(source: str) -> str:
    return f"calibration-{source}.npy"


def _fp32_passes(sources: list[str], calibrated: bool, *, export_dir: Path, ref_meta: dict, calibration,
                 tokenizer, eval_texts, eval_max_length: int, out: Path) -> None:
    """``out/calibration-<source>.npy`` (each source output's FP32 vectors of the calibration split,
    from which the heads' ranges are computed) and, when the heads read the pooled vector,
    ``out/eval-pooler_output.npy`` (the FP32 export's pooled vectors of the evaluation split, in
    its order): one ORT session for both passes."""
    sess = _session(export_dir, ref_meta)  # one session: two would hold the FP32 weights twice
    names = [i.name for i in sess.get_inputs()]
    rows = {s: [] for s in sources}
    if calibrated:
        for b in calibration:  # batch 1, unpadded: padding never enters the ranges
            for s, a in zip(sources, sess.run(sources, {n: b[n] for n in names})):
                rows[s].append(a)
        for s, v in rows.items():
            np.save(out / _calibration_file(s), np.concatenate(v).astype(np.float32))
    if POOLED in sources:
        got = run_texts(lambda f, n: dict(zip(n, sess.run(n, f))), tokenizer, eval_texts, input_names=names,
                        max_length=eval_max_length, names=[POOLED])
        np.save(out / POOLED_EVAL_FILE, got[POOLED].astype(np.float32))


def heads_of(outputs: dict) -> list[Head]:
    return [Head.from_dict(h) for h in outputs["heads"]]


def attach(outputs: dict, backend, out: Path, res) -> dict:
    """Add the heads to the compiled artifact (the backend's hook) and write the ranges file."""
    if not backend.capabilities.output_heads:
        raise CompileError(f"the {backend.name} backend cannot add compressed outputs",
                           "build this target without [outputs] / --output")
    record = backend.attach_output_heads(Path(out), res, heads_of(outputs), outputs["ranges"] or None)
    if outputs["ranges"]:
        (Path(out) / RANGES_FILE).write_text(json.dumps(outputs["ranges"], indent=1, sort_keys=True) + "\n",
                                             encoding="utf-8")
    return record


def judge(outputs: dict, runner, tokenizer, job, attach_record: dict, out: Path) -> dict:
    """Run the heads on the evaluation split; check them against the formula on
    the artifact's own float output; their parity against the FP32 model."""
    from ..artifact import sha256_file
    from .parity import judge as judge_heads

    heads = heads_of(outputs)
    ranges = outputs["ranges"] or None
    sources = sorted({h.source for h in heads} | {SENTENCE})
    names = sources + [h.name for h in heads]
    got = run_texts(runner.run, tokenizer, job.eval_texts,
                    input_names=[i["name"] for i in job.ref_meta["inputs"]],
                    max_length=job.eval_max_length, names=names)
    formula = {}
    for h in heads:
        want = formulas.apply(h, got[h.source], ranges)
        have = got[h.name]
        if h.format in ("binary", "ubinary"):
            formula[h.name] = {"exact": bool(np.array_equal(have, want)),
                               "mismatches": int((have != want).sum())}
        else:
            diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
            formula[h.name] = {"max_abs_diff": float(diff.max()), "within_one_step": bool(diff.max() <= 1.0 + 1e-6)
                               if h.format == "int8" else bool(diff.max() <= 1e-4)}
        ok = formula[h.name].get("exact", formula[h.name].get("within_one_step"))
        if not ok:
            raise CompileError(f"compressed output {h.name} does not match its formula on the artifact's float "
                               f"output ({formula[h.name]})", "report this as an embedc bug")
    ref_sources = {s: np.load(p) for s, p in outputs["eval_sources"].items()}
    parity = judge_heads(heads, got, ref_emb=ref_sources[SENTENCE], ref_sources=ref_sources,
                         float_art=got[SENTENCE], langs=list(job.eval_langs), kinds=list(job.eval_kinds),
                         ranges=ranges, rescore_multiplier=outputs["rescore_multiplier"])
    record = {
        "outputs": [{**h.to_dict(), "graph_output": h.name} for h in heads],
        "heads": attach_record,
        "formula_check": formula,
        "parity": parity,
        "reference": "FP32 model on the evaluation split: retrieval vs the torch FP32 full-width ranking; "
                     "cosine vs the FP32 float vector in the format's space"
                     + ("; pooler_output from the FP32 export (validated against torch)"
                        if POOLED in outputs["eval_sources"] else ""),
        "rescore_multiplier": outputs["rescore_multiplier"],
        "warnings": list(outputs["warnings"]),
        "untrained": list(outputs["untrained"]),
    }
    if outputs["ranges"]:
        record["calibration"] = {"file": RANGES_FILE, "sha256": sha256_file(Path(out) / RANGES_FILE),
                                 "split": "calibration", "texts": outputs["calibration_texts"],
                                 "split_sha256": outputs["calibration_hash"],
                                 "computed_from": "the FP32 reference export's float outputs (ONNX Runtime)"}
    return record


def gate_outcomes(meta: dict, spec_gates: dict | None = None) -> list:
    from .gates import evaluate

    co = meta.get("compressed_outputs")
    if not co:
        return []
    heads = [Head.from_dict(h) for h in co["outputs"]]
    gates = co.get("gates_spec", {}) if spec_gates is None else spec_gates
    return evaluate(heads, co["parity"], gates, set(co.get("untrained", ())))
