"""One benchmark subject in its own process, so peak RSS and load time are its
own. Prints one JSON line. Run by embedc.bench.run; not a public entry point."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

_EXTRA: dict = {}  # subject facts reported beside the timings


def _torch_subject(path: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    from ..exporter.wrapper import torch_embed
    from ..families import load_embedder
    from ..models import resolve_model

    embedder, tok, adapter = load_embedder(resolve_model(path))
    # Seeded random presets have no weight file on disk; their size is what the weights hold.
    _EXTRA["weights_mb"] = sum(t.numel() * t.element_size() for t in embedder.state_dict().values()) / 1e6
    return (lambda feeds: torch_embed(embedder, feeds)), tok, list(adapter.input_names)


def _artifact_subject(path: str, threads: int):
    from ..runtime.encoder import Encoder

    enc = Encoder(path, threads=threads, verify=False)
    return enc._runner.embed, enc.tokenizer, enc.input_names


def last_token_index(mask: np.ndarray) -> np.ndarray:
    """Index of each row's last real token, whichever side the padding is on."""
    return mask.shape[1] - 1 - np.argmax(mask[:, ::-1] > 0, axis=1)


def _onnx_file_subject(path: str, threads: int, tokenizer_dir: str, pooling: str = "mean"):
    """A plain ONNX file with a token_embeddings/last_hidden_state output (sentence-transformers'
    or optimum-cli's export), pooled (mean, or the last real token) and normalized here
    (``position_ids``, which optimum's decoder exports take, come from the shared feed builder)."""
    import onnxruntime as ort

    from ..models import load_tokenizer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    tok = load_tokenizer(tokenizer_dir)

    def embed(feeds):
        hidden = sess.run(None, {n: feeds[n] for n in names})[0]
        if pooling == "last":
            pooled = hidden[np.arange(len(hidden)), last_token_index(feeds["attention_mask"])]
        else:
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clip(min=1e-9)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    return embed, tok, names


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["torch", "artifact", "onnx-file"], required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--pooling", choices=["mean", "last"], default="mean", help="onnx-file subjects")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--texts", required=True, help="JSON file: {queries: [...], passages: [...]}")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args()
    texts = json.load(open(args.texts, encoding="utf-8"))

    t0 = time.perf_counter()
    if args.kind == "torch":
        embed, tok, names = _torch_subject(args.path, args.threads)
    elif args.kind == "artifact":
        embed, tok, names = _artifact_subject(args.path, args.threads)
    else:
        embed, tok, names = _onnx_file_subject(args.path, args.threads, args.tokenizer, args.pooling)
    load_s = time.perf_counter() - t0

    from ..calibration.feeds import encode_batch

    def feeds(batch):
        return encode_batch(tok, batch, input_names=names, max_length=args.max_length)

    queries = [feeds([q]) for q in texts["queries"]]
    for f in queries[:5]:  # warm-up
        embed(f)
    lat = []
    for f in queries:
        t = time.perf_counter()
        embed(f)
        lat.append((time.perf_counter() - t) * 1000)
    passages = texts["passages"]
    batches = [feeds(passages[i:i + args.batch_size]) for i in range(0, len(passages), args.batch_size)]
    embed(batches[0])  # warm-up
    rates = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for b in batches:
            embed(b)
        rates.append(len(passages) / (time.perf_counter() - t))
    from .memory import peak_rss_bytes

    json.dump({"latency_ms_p50": statistics.median(lat), "latency_ms_p95": float(np.percentile(lat, 95)),
               "throughput": statistics.median(rates), "load_s": load_s,
               "peak_rss_mb": peak_rss_bytes() / 1e6, **_EXTRA}, sys.stdout)


if __name__ == "__main__":
    main()
