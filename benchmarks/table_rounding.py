"""Does a better 4-bit rounding of the word-embedding table lift a decoder's worst query?

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python benchmarks/table_rounding.py \\
        [--model smollm2-135m-bidir] [--block 32]

Emulated in torch, where only the table changes (every Linear stays as loaded, so the table is
the only error, as in the SmolLM2 specs' ORT int4 whose Linears are stored exactly): the
evaluation split's queries (the build's split, seed 0, 8 calibration / 16 evaluation per
language) are embedded with the FP32 table and with each rounding of it, and the cosines to
FP32 reported with the table's mean row cosine. Roundings, all asymmetric 4-bit per block with
fp16 scales and integer zero points (what ``GatherBlockQuantized`` stores):

- ``minmax``: each block's [min, max] with zero in range (ORT's quantizer);
- ``mse-clip``: the block's range shrunk by the factor in 0.60..1.00 that minimizes its error;
- ``minmax, K columns exact``: the K columns of largest magnitude kept in full precision (a
  dense side table would store them) and the rest rounded without them;
- ``8-bit``: symmetric 8-bit per block, the reference.

Not the artifact's numbers: the built ORT graph also keeps the rows of added tokens exact and
runs the ONNX graph; this isolates what the rounding of the table alone does.
"""
from __future__ import annotations

import argparse

import numpy as np


def _round4(table: np.ndarray, block: int, shrinks=(1.0,)) -> np.ndarray:
    rows, width = table.shape
    b = table.reshape(rows, width // block, block).astype(np.float64)
    lo, hi = np.minimum(b.min(2, keepdims=True), 0), np.maximum(b.max(2, keepdims=True), 0)
    best, best_err = None, None
    for shrink in shrinks:
        mid = (lo + hi) / 2
        low, high = mid + (lo - mid) * shrink, mid + (hi - mid) * shrink
        scale = (high - low) / 15
        scale[scale == 0] = 1
        scale = scale.astype(np.float16).astype(np.float64)
        zero = np.clip(np.round(-low / scale), 0, 15)
        deq = (np.clip(np.round(b / scale + zero), 0, 15) - zero) * scale
        err = ((deq - b) ** 2).sum(2, keepdims=True)
        if best is None:
            best, best_err = deq, err
        else:
            best, best_err = np.where(err < best_err, deq, best), np.minimum(err, best_err)
    return best.reshape(rows, width).astype(np.float32)


def _round8(table: np.ndarray, block: int) -> np.ndarray:
    rows, width = table.shape
    b = table.reshape(rows, width // block, block)
    scale = np.abs(b).max(2, keepdims=True) / 127
    scale[scale == 0] = 1
    return (np.round(b / scale) * scale).reshape(rows, width).astype(np.float32)


def _columns_exact(table: np.ndarray, block: int, k: int) -> np.ndarray:
    cols = np.argsort(-np.abs(table).max(0))[:k]
    rest = table.copy()
    rest[:, cols] = 0
    out = _round4(rest, block)
    out[:, cols] = table[:, cols]
    return out


def main() -> None:
    import torch

    from embedc.calibration import load_default_corpus, load_default_long_passages
    from embedc.calibration.splits import make_splits
    from embedc.exporter.wrapper import pool
    from embedc.families import adapter_for, resolve_family
    from embedc.models import load_tokenizer, resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-bidir")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    source = resolve_model(args.model)
    family, _ = resolve_family(source)
    tokenizer = family.prepare_tokenizer(load_tokenizer(source))
    adapter = adapter_for(source, tokenizer)
    model = family.load_torch(source, adapter)
    splits = make_splits(load_default_corpus(), calib_per_lang=8, eval_per_lang=16, seed=0,
                         long_passages=load_default_long_passages())
    queries = sorted((s for s in splits.evaluation if s.kind == "query"), key=lambda s: len(s.text))
    texts = [s.text for s in queries]
    embedding = model.get_input_embeddings()
    fp32 = embedding.weight.data.clone().numpy()

    @torch.inference_mode()
    def embed() -> np.ndarray:
        out = []
        for i in range(0, len(texts), args.batch):
            batch = tokenizer(texts[i:i + args.batch], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = family.hidden_states(model, batch["input_ids"], batch["attention_mask"], adapter)
            out.append(torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], adapter.pooling.mode),
                                                     dim=-1))
        return torch.cat(out).numpy()

    reference = embed()
    print(f"{args.model}: {len(texts)} evaluation queries, table {fp32.shape[0]} x {fp32.shape[1]}, block {args.block}")
    print("| table | mean | p01 | min | worst query | table row cosine |\n|---|---|---|---|---|---|")
    variants = {"minmax": lambda t: _round4(t, args.block),
                "mse-clip": lambda t: _round4(t, args.block, np.linspace(0.6, 1.0, 17)),
                "minmax, 4 columns exact": lambda t: _columns_exact(t, args.block, 4),
                "minmax, 16 columns exact": lambda t: _columns_exact(t, args.block, 16),
                "8-bit": lambda t: _round8(t, args.block)}
    for name, rounding in variants.items():
        rounded = rounding(fp32)
        embedding.weight.data = torch.from_numpy(rounded)
        cos = (embed() * reference).sum(1)
        rows = (rounded * fp32).sum(1) / np.maximum(np.linalg.norm(rounded, axis=1) * np.linalg.norm(fp32, axis=1), 1e-30)
        worst = int(np.argmin(cos))
        print(f"| {name} | {cos.mean():.5f} | {np.percentile(cos, 1):.5f} | {cos.min():.5f} | "
              f"{queries[worst].lang} \"{texts[worst][:32]}\" | {rows.mean():.6f} |", flush=True)
        embedding.weight.data = torch.from_numpy(fp32)


if __name__ == "__main__":
    main()
