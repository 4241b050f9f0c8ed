"""Which Linears to keep out of 4 bits under a size budget, judged on the calibration split.

    PYTHONPATH=. .venv/bin/python benchmarks/int4_sensitivity.py [--model all-minilm-l6-v2]
        [--budget 0.18] [--calib-per-lang 8] [--max-length 256] [--linear-scales fp16]

For each Linear of the torch FP32 embedder alone, its weight is rounded to 4 bits
(symmetric, block 32 along the input, round to nearest: ORT's default) and the
calibration texts are embedded again; the loss is 1 - mean cosine to the FP32
embeddings. Linears are then taken greedily by loss per weight while the artifact
stays within ``--budget`` of the FP32 size, with the size estimated from the weight
counts (4-bit Linears at 5 bits per weight with their fp32 block-32 scales, kept ones at
9 as 8-bit; 4.5 and 8.5 with ``--linear-scales fp16``; the word-embedding table at 4.5;
everything else fp32). Prints the table and the
``exclude`` patterns for the int4 options (a suffix shared by every layer is one
pattern). Only the calibration split is read: the evaluation split stays unseen.
"""
from __future__ import annotations

import argparse
import re

BITS_TABLE = 4.5
SCALE_BITS = {"fp32": 32, "fp16": 16}  # one scale per block of 32 weights


def rtn_4bit(w, block: int = 32):
    """Round-to-nearest symmetric 4-bit (codes -8..7, the largest magnitude on -8), blocks along K."""
    import torch

    n, k = w.shape
    pad = (-k) % block
    g = torch.nn.functional.pad(w, (0, pad)).reshape(n, -1, block)
    peak = torch.gather(g, -1, g.abs().argmax(-1, keepdim=True))
    scale = torch.where(peak == 0, torch.ones_like(peak), -peak / 8)
    return (torch.clamp(torch.round(g / scale), -8, 7) * scale).reshape(n, -1)[:, :k]


def patterns(paths: list[str], chosen: set[str]) -> list[str]:
    """Exclude patterns for ``chosen``: one suffix pattern where every layer's Linear is chosen."""
    by_suffix: dict[str, list[str]] = {}
    for p in paths:
        m = re.search(r"layer\.\d+\.(.+)$", p)
        by_suffix.setdefault(m.group(1) if m else p, []).append(p)
    out = []
    for suffix, members in by_suffix.items():
        picked = [p for p in members if p in chosen]
        if picked and len(picked) == len(members) and len(members) > 1:
            out.append(suffix)
        else:
            out += [re.search(r"(layer\.\d+\..+)$", p).group(1) if "layer." in p else p for p in picked]
    return out


def main() -> None:
    import torch

    from embedc.calibration import load_default_corpus, load_default_long_passages, make_splits
    from embedc.families import load_embedder
    from embedc.models import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--budget", type=float, default=0.18, help="artifact size as a fraction of FP32")
    ap.add_argument("--calib-per-lang", type=int, default=8)
    ap.add_argument("--eval-per-lang", type=int, default=16, help="only to cut the same splits as the build")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--linear-scales", choices=sorted(SCALE_BITS), default="fp32",
                    help="the 4-bit Linears' scale storage (the ORT int4 option linear_scales)")
    args = ap.parse_args()
    bits_4, bits_8 = (b + SCALE_BITS[args.linear_scales] / 32 for b in (4.0, 8.0))

    source = resolve_model(args.model)
    embedder, tokenizer, _ = load_embedder(source)
    splits = make_splits(load_default_corpus(), calib_per_lang=args.calib_per_lang, eval_per_lang=args.eval_per_lang,
                         seed=args.seed, long_passages=load_default_long_passages())
    prefix = {"query": source.query_prefix or "", "passage": source.passage_prefix or ""}
    texts = [prefix[s.kind] + s.text for s in splits.calibration]  # as the build embeds them

    def embed() -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 32):
                b = tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=args.max_length,
                              return_tensors="pt")
                out.append(embedder(b["input_ids"], b["attention_mask"])[0])  # the sentence embedding
        return torch.cat(out)

    ref = embed()
    linears = {n: m for n, m in embedder.encoder.named_modules() if isinstance(m, torch.nn.Linear)}
    table = embedder.encoder.get_input_embeddings().weight.numel()
    others = sum(p.numel() for p in embedder.encoder.parameters()) - table - sum(m.weight.numel() for m in linears.values())
    loss = {}
    for name, m in linears.items():
        w = m.weight.data.clone()
        m.weight.data = rtn_4bit(w)
        loss[name] = 1.0 - float((embed() * ref).sum(-1).mean())
        m.weight.data = w
        print(f"{name:50s} loss {loss[name]:.5f}", flush=True)

    fp32_bits = 32.0 * (table + others + sum(m.weight.numel() for m in linears.values()))
    bits = BITS_TABLE * table + 32.0 * others + bits_4 * sum(m.weight.numel() for m in linears.values())
    chosen: set[str] = set()
    for name in sorted(loss, key=lambda n: -loss[n] / linears[n].weight.numel()):
        extra = (bits_8 - bits_4) * linears[name].weight.numel()
        if (bits + extra) / fp32_bits <= args.budget:
            bits += extra
            chosen.add(name)
    print(f"\nall 4-bit: {(bits - (bits_8 - bits_4) * sum(linears[n].weight.numel() for n in chosen)) / fp32_bits:.3f} "
          f"of FP32; with {len(chosen)} Linears kept 8-bit: {bits / fp32_bits:.3f} (estimated)")
    print(f"sum of the kept Linears' losses {sum(loss[n] for n in chosen):.5f} of {sum(loss.values()):.5f}")
    print("exclude =", [*patterns(list(linears), chosen)])


if __name__ == "__main__":
    main()
