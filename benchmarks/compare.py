"""Benchmark a build side by side with torch FP32 and sentence-transformers' own
dynamic-INT8 ONNX export, in one run on this machine.

    .venv/bin/python benchmarks/compare.py artifacts/multilingual-e5-small [--st-config avx2] [--out FILE.md]

Parity of every artifact comes from its build (same torch reference, same
held-out evaluation split); the sentence-transformers export is judged here on
that same split. Speed: batch-1 query latency (median, p95) and batch-32
passage throughput, each subject in its own process, ratios to torch FP32.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def st_export(model_dir: Path, work: Path, config: str) -> tuple[Path, float]:
    """sentence-transformers' recipe: backend='onnx' export, then export_dynamic_quantized_onnx_model."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    local = work / "st-model"
    shutil.copytree(model_dir, local)
    t0 = time.perf_counter()
    model = SentenceTransformer(str(local), backend="onnx", device="cpu")
    export_dynamic_quantized_onnx_model(model, config, str(local))
    return local, time.perf_counter() - t0


def st_quantized_file(st_dir: Path, config: str) -> Path:
    """Where sentence-transformers put its quantized model (top level or onnx/, by version)."""
    # The suffix carries the weight type: model_quint8_avx2.onnx, model_qint8_arm64.onnx, ...
    found = sorted(st_dir.rglob(f"model_q*int8_{config}.onnx"))
    if not found:
        raise FileNotFoundError(f"sentence-transformers wrote no model_q*int8_{config}.onnx under {st_dir}")
    return found[0]


def st_parity(st_dir: Path, config: str, artifact: Path):
    """Embed the artifact's evaluation split with the sentence-transformers export, judge vs torch FP32."""
    from sentence_transformers import SentenceTransformer

    from embedc.artifact import read_meta
    from embedc.parity import compute_parity
    from embedc.parity.recheck import _reference_for_artifact

    meta = read_meta(artifact)
    samples, texts, reference = _reference_for_artifact(artifact, meta)
    model = SentenceTransformer(str(st_dir), backend="onnx", device="cpu",
                                model_kwargs={"file_name": st_quantized_file(st_dir, config).relative_to(st_dir).as_posix()})
    model.max_seq_length = meta["parity_max_length"]
    emb = model.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    return compute_parity(reference, np.asarray(emb), ids=[s.id for s in samples], langs=[s.lang for s in samples],
                          kinds=[s.kind for s in samples])


def _parity_row(p: dict) -> dict:
    langs = p["languages"]
    worst = min(langs.items(), key=lambda kv: kv[1]["mean"])
    r = p.get("retrieval") or {}
    return {"mean": p["mean"], "p01": p["p01"], "min": p["min"], "worst_lang": f"{worst[0]} {worst[1]['mean']:.4f}",
            "top10": r.get("topk_overlap"), "top1": r.get("top1_agreement")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", type=Path, help="build folder from 'embedc build'")
    ap.add_argument("--st-config", default="avx2", help="sentence-transformers quantization config")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args()

    from embedc.artifact import read_meta
    from embedc.bench.run import render_bench, run_bench

    manifest = json.loads((args.build / "manifest.json").read_text())
    # CPU artifacts only: a TensorRT-ready graph run by ONNX Runtime on this CPU says nothing about its GPU speed.
    arts = [args.build / a["path"] for a in manifest["artifacts"]
            if a["status"] == "pass" and read_meta(args.build / a["path"]).get("device") == "cpu"]
    model_dir = Path(manifest["model"]["path"])
    with tempfile.TemporaryDirectory() as tmp:
        st_dir, st_s = st_export(model_dir, Path(tmp), args.st_config)
        st_file = st_quantized_file(st_dir, args.st_config)
        st_par = st_parity(st_dir, args.st_config, arts[0]).to_dict()
        bench = run_bench(arts, model=str(model_dir), threads=args.threads, repeats=args.repeats, extra=[
            {"name": f"sentence-transformers int8 ({args.st_config})", "kind": "onnx-file", "path": str(st_file),
             "tokenizer": str(st_dir), "size_mb": st_file.stat().st_size / 1e6}])
    parity = {"torch-fp32": None}
    for a in arts:
        meta = read_meta(a)
        parity[f"{meta['target']}/{meta['precision']}"] = _parity_row(meta["parity"])
    parity[f"sentence-transformers int8 ({args.st_config})"] = _parity_row(st_par)
    lines = [f"## {manifest['model']['name']}: parity and speed", "", render_bench(bench), "",
             "| model | mean cos | p01 | min | worst language | top-10 overlap | top-1 |", "|---|---|---|---|---|---|---|"]
    for name, p in parity.items():
        if p is None:
            lines.append(f"| {name} | reference | | | | | |")
            continue
        lines.append(f"| {name} | {p['mean']:.4f} | {p['p01']:.4f} | {p['min']:.4f} | {p['worst_lang']} | "
                     f"{p['top10']:.3f} | {p['top1']:.3f} |")
    lines.append(f"\nsentence-transformers export + quantization took {st_s:.0f} s.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
