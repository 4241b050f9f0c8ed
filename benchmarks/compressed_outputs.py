"""Compressed output embeddings on a real model: memory per vector and retrieval
retention of every in-graph output of one artifact, side by side with
sentence-transformers' own ``quantize_embeddings`` applied to the torch FP32
embeddings (calibrated on the same calibration split).

    nice -n 10 .venv/bin/python benchmarks/compressed_outputs.py \
        [-m multilingual-e5-small] [-t ort-cpu-avx2] [-p int8-static] [--out artifacts/compressed] \
        [--binary-scheme sign|centered] [--eval-max-length N] [--markdown benchmarks/compressed_outputs.md]

Everything is judged on the build's held-out evaluation split (queries vs
passages, 38 languages pooled) against the torch FP32 full-width ranking:
top-10 overlap and top-1 agreement, compressed-only and rescored (HF guide:
retrieve multiplier x 10 candidates with the compressed vectors, rescore with
the float query against int8 document vectors), and the worst language's
top-1 (rescored)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

MULTIPLIERS = (4, 10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="multilingual-e5-small")
    ap.add_argument("-t", "--target", default="ort-cpu-avx2")
    ap.add_argument("-p", "--precision", default="int8-static")
    ap.add_argument("--dims", default="256,128")
    ap.add_argument("--formats", default="float32,int8,int8-tanh,ubinary")
    ap.add_argument("--binary-scheme", default="sign", choices=("sign", "centered"),
                    help="binary/ubinary bits: the sign, or the sign around the calibration mean")
    ap.add_argument("--eval-max-length", type=int, default=None,
                    help="cap the evaluation texts (tokens), as `embedc build --eval-max-length` does")
    ap.add_argument("--out", default=None)
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from embedc.build import stages
    from embedc.build.cache import StageCache
    from embedc.build.pipeline import build
    from embedc.models.cache import cache_root
    from embedc.outputs import formulas
    from embedc.outputs.build import run_texts
    from embedc.outputs.parity import retrieval
    from embedc.outputs.spec import Head, OutputsSpec, parse_dims, parse_formats
    from embedc.parity.reference import reference_embeddings
    from embedc.runtime.encoder import load
    from embedc.spec import BuildSpec, CalibrationSpec, MatrixEntry, ModelSpec

    t0 = time.time()
    out = Path(a.out or f"artifacts/compressed/{a.model}")
    # full width too: the int8 / ubinary outputs at the model's width
    spec = BuildSpec(model=ModelSpec(name=a.model), matrix=(MatrixEntry(a.target, (a.precision,)),), out=str(out),
                     calibration=CalibrationSpec(eval_max_length=a.eval_max_length),
                     outputs=OutputsSpec(formats=parse_formats(a.formats), dims=(), gates={"*": ""},
                                         binary_scheme=a.binary_scheme))
    # resolve the width first, then ask for full width + the requested dims
    p = stages.prepare(spec, force=True)
    width = p.adapter.hidden_size
    dims = (width,) + tuple(d for d in parse_dims(a.dims) if d != width)
    import dataclasses

    spec = dataclasses.replace(spec, outputs=dataclasses.replace(spec.outputs, dims=dims))
    result = build(spec, force=True)
    art = result.artifacts[0]
    if art.status == "error":
        sys.exit(f"build failed: {art.error}")
    folder = Path(art.entry) if art.path is None else result.out / art.path
    meta = json.loads((folder / "embedc.json").read_text())
    co = meta["compressed_outputs"]
    heads = [Head.from_dict(h) for h in co["outputs"]]
    ranges = json.loads((folder / "output_ranges.json").read_text()) if (folder / "output_ranges.json").exists() else None

    # the same splits, reference and tokenization as the build
    p = stages.prepare(spec, force=True)
    data = stages.data(p)
    cache = StageCache(cache_root() / "stages")
    ref = np.load(stages.reference(p, data, cache) / "embeddings.npy")
    enc = load(folder)
    names = ["sentence_embedding"] + [h.name for h in heads]
    got = run_texts(enc._runner.run, enc.tokenizer, data.eval_texts, input_names=enc.input_names,
                    max_length=p.eval_max_length, names=names)
    kinds = np.asarray(data.eval_kinds, dtype=object)
    langs = np.asarray(data.eval_langs, dtype=object)
    q_idx, p_idx = np.flatnonzero(kinds == "query"), np.flatnonzero(kinds != "query")
    # torch FP32 on the calibration split (for sentence-transformers' calibrated int8)
    calib_texts = p.style.apply_all(list(p.splits.calibration))
    calib = reference_embeddings(p.embedder(), p.tokenizer, calib_texts, max_length=p.calib_max_length)
    from sentence_transformers.util.quantization import quantize_embeddings

    rows = []

    def add(label, head, outv, float_q, rescore_docs=None, r=ranges, source="embedc graph"):
        row = {"variant": label, "source": source, "dims": head.dims, "bytes": head.bytes_per_vector}
        for m in MULTIPLIERS + (len(p_idx) // 10,):
            res = retrieval(head, ref, outv, float_q, q_idx, p_idx, langs[q_idx], r, rescore_multiplier=m,
                            rescore_docs=rescore_docs)
            row["top10"], row["top1"] = res["compressed"]["top10"], res["compressed"]["top1"]
            row["lang_top1_min"] = res["compressed"]["lang_top1_min"]
            if "rescored" in res:
                key = "all" if m == len(p_idx) // 10 else f"x{m}"
                row[f"rescored_top10_{key}"] = res["rescored"]["top10"]
                row[f"rescored_top1_{key}"] = res["rescored"]["top1"]
                row[f"rescored_lang_top1_min_{key}"] = res["rescored"]["lang_top1_min"]
                row[f"rescored_lang_top1_worst_{key}"] = res["rescored"]["lang_top1_worst"]
                row["rescored_with"] = res["rescored"]["documents"]
        rows.append(row)

    art_float = got["sentence_embedding"]
    fhead = Head("sentence_embedding", "float32", None, width, width, "sentence_embedding", False)
    add(f"{a.target}/{a.precision} float32", fhead, art_float, art_float)
    for h in heads:
        mate = None
        if h.format in ("binary", "ubinary"):
            m = next((g for g in heads if g.format == "int8" and g.scheme == "calibrated" and g.dims == h.dims), None)
            mate = (m, got[m.name]) if m else None
        label = h.format + (f" ({h.scheme})" if h.scheme else "") + (" + int8 rescoring" if mate else "")
        add(label, h, got[h.name], art_float, rescore_docs=mate)
    # sentence-transformers' quantize_embeddings on the torch FP32 embeddings, same calibration split
    for d in dims:
        th = Head("t", "float32", None, d, width, "sentence_embedding", d < width)
        e, c = formulas.truncate(th, ref), formulas.truncate(th, calib)
        q8 = quantize_embeddings(e, precision="int8", calibration_embeddings=c)
        h8 = Head(f"st_int8_{d}", "int8", "calibrated", d, width, "sentence_embedding", d < width)
        st_ranges = {h8.name: {"lo": c.min(axis=0).tolist(), "hi": c.max(axis=0).tolist()}}
        # ST's int8 is floor((v - lo) / step) - 128 (and saturates): dequantize at the bin's centre
        add("int8 (calibrated)", h8, q8, ref, r={h8.name: {"lo": (np.asarray(st_ranges[h8.name]["lo"]) +
                                                                (c.max(0) - c.min(0)) / 255 / 2).tolist(),
                                                         "hi": (np.asarray(st_ranges[h8.name]["hi"]) +
                                                                (c.max(0) - c.min(0)) / 255 / 2).tolist()}},
            source="sentence-transformers quantize_embeddings (torch FP32)")
        ub = quantize_embeddings(e, precision="ubinary")
        hb = Head(f"st_ubinary_{d}", "ubinary", None, d, width, "sentence_embedding", d < width)
        add("ubinary + int8 rescoring", hb, ub, ref, rescore_docs=(h8, q8),
            r={h8.name: {"lo": (c.min(0) + (c.max(0) - c.min(0)) / 255 / 2).tolist(),
                         "hi": (c.max(0) + (c.max(0) - c.min(0)) / 255 / 2).tolist()}},
            source="sentence-transformers quantize_embeddings (torch FP32)")
    info = {"model": a.model, "artifact": f"{a.target}/{a.precision}", "queries": int(len(q_idx)),
            "passages": int(len(p_idx)), "languages": len(set(langs.tolist())), "width": width,
            "calibration_texts": len(calib_texts), "eval_max_length": p.eval_max_length,
            "seconds": round(time.time() - t0, 1),
            "formula_check": co["formula_check"], "warnings": co["warnings"]}
    text = render(info, rows)
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text, encoding="utf-8")
    if a.json:
        Path(a.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1), encoding="utf-8")


def _f(x):
    return "-" if x is None else f"{x:.3f}"


def render(info: dict, rows: list[dict]) -> str:
    lines = [f"### {info['model']}: compressed outputs of {info['artifact']}", "",
             f"{info['queries']} queries x {info['passages']} passages ({info['languages']} languages pooled, held-out "
             f"evaluation split), judged against the torch FP32 full-width ranking. Calibrated int8 ranges: "
             f"{info['calibration_texts']} calibration texts. Rescored: candidates = multiplier x 10 retrieved "
             "with the compressed vectors, rescored by cosine of the float query with the dequantized int8 "
             "document vectors; 'all' rescores every passage (the upper bound). Worst language: the lowest "
             "per-query-language top-1 (rescored x10).", "",
             "| source | variant | dims | bytes/vector | top-10 | top-1 | rescored top-10 x4 | x10 | all | "
             "rescored top-1 x4 | x10 | worst language top-1 x10 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['source']} | {r['variant']} | {r['dims']} | {r['bytes']} | {_f(r['top10'])} | "
                     f"{_f(r['top1'])} | {_f(r.get('rescored_top10_x4'))} | {_f(r.get('rescored_top10_x10'))} | "
                     f"{_f(r.get('rescored_top10_all'))} | {_f(r.get('rescored_top1_x4'))} | "
                     f"{_f(r.get('rescored_top1_x10'))} | "
                     + (f"{r.get('rescored_lang_top1_worst_x10')} {_f(r.get('rescored_lang_top1_min_x10'))}"
                        if "rescored_top10_x10" in r else f"{_f(r.get('lang_top1_min'))} (not rescored)") + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
