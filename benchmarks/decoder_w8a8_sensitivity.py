"""Where static per-tensor W8A8 loses on a decoder: a torch simulation on the model's own
Linear layers, so each layer type and each layer can be quantized alone.

Simulated like ORT's ``ort-cpu`` int8-static without SmoothQuant: weights symmetric per output
channel at 7 bits (``reduce_range``), activations asymmetric uint8 with one MinMax range per
Linear input taken over calibration texts. Judged on the evaluation split's queries (where
decoders lose most), cosine against the unquantized model; the per-type and per-layer rows use
the ``--worst`` queries of the all-quantized run.

    PYTHONPATH=. .venv/bin/python benchmarks/decoder_w8a8_sensitivity.py [-m smollm2-135m-bidir] \\
        [--calibration-every 5] [--worst 24] [--no-layers]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def _fake_weight(w: torch.Tensor) -> torch.Tensor:
    """The INT8 recipe's own emulation (7-bit per output channel); torch weights are [out, in]."""
    from embedc.targets.ort.smoothquant import _fake_quant_weight

    return torch.from_numpy(_fake_quant_weight(w.T.numpy(), reduce_range=True).T.copy())


def _fake_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The INT8 recipe's own per-tensor MinMax emulation (uint8 asymmetric)."""
    from embedc.targets.ort.smoothquant import _fake_quant_act

    return torch.from_numpy(_fake_quant_act(x.numpy(), lo, hi, signed=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="smollm2-135m-bidir")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--calibration-every", type=int, default=5, help="use every n-th calibration text")
    ap.add_argument("--worst", type=int, default=24)
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer rows")
    a = ap.parse_args()

    from embedc.build.stages import load_splits
    from embedc.exporter.wrapper import pool
    from embedc.families import adapter_for, resolve_family
    from embedc.models import load_tokenizer, resolve_model
    from embedc.spec import BuildSpec

    torch.set_num_threads(2)
    splits = load_splits(BuildSpec())
    source = resolve_model(a.model)
    family, _ = resolve_family(source)
    tok = family.prepare_tokenizer(load_tokenizer(source))
    adapter = adapter_for(source, tok)
    model = family.load_torch(source, adapter).eval()

    real = {}  # the batch's real-token mask: ranges, like ORT's batch-1 calibration, see no padding

    @torch.inference_mode()
    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 16):
            b = tok(texts[i:i + 16], padding=True, truncation=True, max_length=a.max_length, return_tensors="pt")
            real["mask"] = b["attention_mask"].bool()
            hidden = family.hidden_states(model, b["input_ids"], b["attention_mask"], adapter)
            out.append(torch.nn.functional.normalize(pool(hidden, b["attention_mask"], adapter.pooling.mode), dim=-1))
        return torch.cat(out)

    queries = [s.text for s in splits.evaluation if s.kind == "query"]  # these models use no prefixes
    reference = embed(queries)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    ranges = {n: [np.inf, -np.inf] for n in linears}

    def record(name):
        def hook(_, args):
            x = args[0][real["mask"]]
            ranges[name][0] = min(ranges[name][0], x.min().item())
            ranges[name][1] = max(ranges[name][1], x.max().item())
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in linears.items()]
    embed([s.text for s in splits.calibration][::a.calibration_every])
    for h in hooks:
        h.remove()

    weights = {n: m.weight.data.clone() for n, m in linears.items()}
    active: dict[str, bool] = {}

    def quantize_input(name):
        def hook(_, args):
            return (_fake_activation(args[0], *ranges[name]),) if active.get(name) else None
        return hook

    for n, m in linears.items():
        m.register_forward_pre_hook(quantize_input(n))

    def use(names, *, acts=True, wts=True):
        active.clear()
        for n, m in linears.items():
            m.weight.data.copy_(_fake_weight(weights[n]) if wts and n in names else weights[n])
            active[n] = acts and n in names

    def row(label, texts, ref):
        cos = (embed(texts) * ref).sum(-1).numpy()
        print(f"| {label} | {cos.mean():.5f} | {cos.min():.5f} |", flush=True)
        return cos

    names = list(linears)
    print(f"{a.model}: {len(queries)} evaluation queries, {len(names)} Linear layers\n")
    print("| quantized (all queries) | mean | min |\n|---|---|---|")
    use(names)
    cos = row("weights and activations, every Linear", queries, reference)
    use(names, acts=False)
    row("weights only", queries, reference)
    use(names, wts=False)
    row("activations only", queries, reference)
    worst = np.argsort(cos)[:a.worst]
    texts, ref = [queries[i] for i in worst], reference[worst]
    print(f"\n| quantized alone ({a.worst} worst queries) | mean | min |\n|---|---|---|")
    for kind in sorted({n.rsplit(".", 1)[1] for n in names}):
        use([n for n in names if n.endswith("." + kind)])
        row(f"every {kind}", texts, ref)
    if not a.no_layers:
        for layer in sorted({n.split(".")[1] for n in names if n.startswith("layers.")}, key=int):
            use([n for n in names if n.startswith(f"layers.{layer}.")])
            row(f"layer {layer}", texts, ref)


if __name__ == "__main__":
    main()
