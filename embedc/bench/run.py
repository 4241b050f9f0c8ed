"""Side-by-side benchmarks: every artifact and the torch FP32 baseline, each in
its own process, on the same texts, with warm-up. Figures are medians and
ratios to torch FP32 measured in the same run."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..artifact import read_meta
from ..errors import EmbedcError
from ..machine import machine_facts

log = logging.getLogger("embedc")


def bench_texts(n_queries: int = 64, n_passages: int = 128, seed: int = 0) -> dict:
    """Multilingual queries (batch-1 latency) and passages (batch-32 throughput)."""
    from ..calibration import load_default_corpus, make_splits

    splits = make_splits(load_default_corpus(), calib_per_lang=1, eval_per_lang=8, seed=seed + 1000)
    qs = [s for s in splits.evaluation if s.kind == "query"][:n_queries]
    ps = [s for s in splits.evaluation if s.kind == "passage"][:n_passages]
    return {"queries": qs, "passages": ps}


def _run(args: list[str], texts_file: str, threads: int, batch_size: int, repeats: int, max_length: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "embedc.bench.worker", *args, "--threads", str(threads), "--texts", texts_file,
           "--batch-size", str(batch_size), "--repeats", str(repeats), "--max-length", str(max_length)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EmbedcError(f"benchmark of {args[-1]} failed: {tail}", "run it alone with -v to see the log")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _size_mb(folder: Path) -> float:
    """The model files' size, as the backend names them (recorded at build time)."""
    meta = read_meta(folder)
    if "model_bytes" in meta:
        return meta["model_bytes"] / 1e6
    from ..targets.registry import get_backend

    backend = get_backend("ort" if meta.get("stage") == "reference-export" else meta["backend"])
    return sum((Path(folder) / f).stat().st_size for f in backend.model_files(Path(folder), meta)) / 1e6


def artifact_names(artifacts: list[Path]) -> list[str]:
    """Each artifact's row name, target/precision; where two builds share one (the same pair
    built with different options), the folder is added so the rows can be told apart."""
    names = []
    for a in artifacts:
        meta = read_meta(a)
        names.append(f"{meta.get('target') or 'reference'}/{meta['precision']}")
    return [f"{n} ({a})" if names.count(n) > 1 else n for n, a in zip(names, artifacts)]


def run_bench(artifacts: list[Path], *, model: str | None = None, threads: int | None = None,
              batch_size: int = 32, repeats: int = 5, max_length: int = 256,
              extra: list[dict] | None = None) -> dict:
    """Benchmark torch FP32 (baseline) and each artifact. ``extra`` adds subjects like
    {"name", "kind": "onnx-file", "path", "tokenizer", "size_mb", "pooling": "mean"|"last"}."""
    threads = threads or os.cpu_count() or 1
    if model is None:
        model = read_meta(artifacts[0])["model"]["path"] if artifacts else None
    from ..calibration import PromptStyle

    meta = read_meta(artifacts[0]) if artifacts else {}
    style = PromptStyle(**meta["prompt_style"]) if meta.get("prompt_style") else PromptStyle(
        *(meta.get("prefixes", {}).get(k, "") for k in ("query", "passage")))
    texts = bench_texts()
    payload = {"queries": [style.apply(s) for s in texts["queries"]],
               "passages": [style.apply(s) for s in texts["passages"]]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tf = str(Path(tmp) / "texts.json")
        Path(tf).write_text(json.dumps(payload))
        common = dict(texts_file=tf, threads=threads, batch_size=batch_size, repeats=repeats, max_length=max_length)
        if model:
            log.info("bench: torch FP32 baseline")
            base = _run(["--kind", "torch", "--path", str(model)], **common)
            on_disk = sum(p.stat().st_size for p in Path(model).glob("*.safetensors")) / 1e6
            rows.append({"name": "torch-fp32", **base, "size_mb": on_disk or base.get("weights_mb", 0.0)})
        for a, name in zip(artifacts, artifact_names(artifacts)):
            log.info("bench: %s", name)
            rows.append({"name": name, **_run(["--kind", "artifact", "--path", str(a)], **common),
                         "size_mb": _size_mb(Path(a)), "path": str(a)})
        for e in extra or []:
            log.info("bench: %s", e["name"])
            rows.append({"name": e["name"], **_run(["--kind", e["kind"], "--tokenizer", e["tokenizer"],
                                                     "--pooling", e.get("pooling", "mean"), "--path", e["path"]],
                                                    **common), "size_mb": e["size_mb"]})
    base_tp = rows[0]["throughput"] if rows and rows[0]["name"] == "torch-fp32" else None
    base_sz = rows[0]["size_mb"] if base_tp else None
    for r in rows:
        r["speedup"] = r["throughput"] / base_tp if base_tp else float("nan")
        r["size_ratio"] = r["size_mb"] / base_sz if base_sz else float("nan")
    return {"threads": threads, "batch_size": batch_size, "repeats": repeats, "max_length": max_length,
            "n_queries": len(payload["queries"]), "n_passages": len(payload["passages"]),
            "machine": machine_facts(), "rows": rows}


def render_bench(result: dict) -> str:
    lines = [f"machine: {result['machine']['cpu']} ({result['machine']['cores']} cores, "
             f"{', '.join(result['machine']['cpu_flags'])}); threads {result['threads']}; "
             f"{result['n_queries']} batch-1 queries, {result['n_passages']} passages at batch {result['batch_size']}",
             "",
             "| model | latency ms p50 | p95 | texts/s (b32) | vs torch | size MB | size vs torch | peak RSS MB | load s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} | {r['throughput']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['size_mb']:.1f} | {r['size_ratio'] * 100:.0f}% | "
                     f"{r['peak_rss_mb']:.0f} | {r['load_s']:.2f} |")
    return "\n".join(lines)
