"""Benchmark a build side by side with torch FP32 and sentence-transformers' own
dynamic-INT8 ONNX export, in one run on this machine.

    .venv/bin/python benchmarks/compare.py artifacts/multilingual-e5-small [--st-config avx2] [--out FILE.md]

sentence-transformers' export (``backend="onnx"`` + ``export_dynamic_quantized_onnx_model``)
needs optimum-onnx, which does not import on transformers 5 (huggingface/optimum-onnx#114):
that step, and its embedding of the evaluation split, run in a subprocess of
``--st-python`` (default: the legacy-lock venv ``.venv-legacy/bin/python`` if it exists, made
by the README's test command). Everything else (torch reference, parity, speed) runs here.

Parity of every artifact comes from its build (same torch reference, same
held-out evaluation split); the sentence-transformers export is judged here on
that same split. Speed: batch-1 query latency (median, p95) and batch-32
passage throughput, each subject in its own process, ratios to torch FP32.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LEGACY_PYTHON = REPO / ".venv-legacy" / "bin" / "python"


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


def st_embed(st_dir: Path, config: str, texts: list[str], max_length: int) -> np.ndarray:
    """The evaluation texts embedded by sentence-transformers running its quantized export."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_dir), backend="onnx", device="cpu",
                                model_kwargs={"file_name": st_quantized_file(st_dir, config).relative_to(st_dir).as_posix()})
    model.max_seq_length = max_length
    return np.asarray(model.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True))


def st_worker(args: list[str]) -> None:
    """In the sentence-transformers venv: export, quantize and embed; print what was made."""
    ap = argparse.ArgumentParser()
    for name in ("--model-dir", "--work", "--config", "--texts", "--max-length", "--embeddings"):
        ap.add_argument(name, required=True)
    a = ap.parse_args(args)
    st_dir, seconds = st_export(Path(a.model_dir), Path(a.work), a.config)
    texts = json.loads(Path(a.texts).read_text(encoding="utf-8"))
    np.save(a.embeddings, st_embed(st_dir, a.config, texts, int(a.max_length)))
    print(json.dumps({"st_dir": str(st_dir), "file": str(st_quantized_file(st_dir, a.config)), "seconds": seconds}))


def st_baseline(st_python: Path, model_dir: Path, work: Path, config: str, artifact: Path):
    """(export info, parity of sentence-transformers' INT8 export vs torch FP32 on the artifact's evaluation split)."""
    from embedc.artifact import read_meta
    from embedc.parity import compute_parity
    from embedc.parity.recheck import _reference_for_artifact

    meta = read_meta(artifact)
    samples, texts, reference = _reference_for_artifact(artifact, meta)
    (work / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    done = subprocess.run([str(st_python), str(Path(__file__).resolve()), "--st-worker", "--model-dir", str(model_dir),
                           "--work", str(work), "--config", config, "--texts", str(work / "texts.json"),
                           "--max-length", str(meta["parity_max_length"]), "--embeddings", str(work / "st.npy")],
                          check=True, capture_output=True, text=True, cwd=REPO)
    info = json.loads(done.stdout.strip().splitlines()[-1])
    emb = np.load(work / "st.npy")
    parity = compute_parity(reference, emb, ids=[s.id for s in samples], langs=[s.lang for s in samples],
                            kinds=[s.kind for s in samples])
    return info, parity


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
    ap.add_argument("--st-python", type=Path, default=LEGACY_PYTHON if LEGACY_PYTHON.is_file() else Path(sys.executable),
                    help="python of a venv where sentence-transformers' ONNX backend imports (the legacy lock)")
    args = ap.parse_args()

    from embedc.artifact import read_meta
    from embedc.bench.run import render_bench, run_bench

    manifest = json.loads((args.build / "manifest.json").read_text())
    # CPU artifacts only: a TensorRT-ready graph run by ONNX Runtime on this CPU says nothing about its GPU speed.
    arts = [args.build / a["path"] for a in manifest["artifacts"]
            if a["status"] == "pass" and read_meta(args.build / a["path"]).get("device") == "cpu"]
    model_dir = Path(manifest["model"]["path"])
    with tempfile.TemporaryDirectory() as tmp:
        info, st_par = st_baseline(args.st_python, model_dir, Path(tmp), args.st_config, arts[0])
        st_dir, st_file, st_s = Path(info["st_dir"]), Path(info["file"]), info["seconds"]
        st_par = st_par.to_dict()
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
    sys.exit(st_worker(sys.argv[2:]) if sys.argv[1:2] == ["--st-worker"] else main())
