"""How ONNX Runtime's INT8 activation schemes treat a decoder: the same INT8 weights with
activations quantized per tensor, per block of each token, or not at all, judged on the
build's evaluation split against the FP32 export they were made from.

Why: decoder LLMs carry a few huge activations on a few tokens ("massive activations"), so one
scale per tensor rounds the other tokens away. This script separates what the activation
scheme costs from what the INT8 weights alone cost (the ``weights-only`` row: the same 8-bit
MatMulNBits with ``accuracy_level`` 1, i.e. FP32 activations), which bounds every INT8 recipe.

    .venv/bin/embedc export -m smollm2-135m-bidir -o /tmp/smol-bidir
    PYTHONPATH=. .venv/bin/python benchmarks/int8_activation_schemes.py --export /tmp/smol-bidir \\
        [--schemes per-tensor,per-block-32,per-block-64,per-block-128,weights-only-32] [--max-length 256]

The reference is the FP32 ONNX (the export validated it against torch at cosine 1.0000000),
so the numbers isolate quantization; embedc's build reports judge against torch itself.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

SCHEMES = ("per-tensor", "per-block-32", "per-block-64", "per-block-128", "weights-only-32")


def _quantize(scheme: str, src: Path, dst: Path, family: str, work: Path) -> None:
    import onnx

    from embedc.onnxkit.files import save_model
    from embedc.onnxkit.graph import weight_matmuls
    from embedc.targets.ort.backend import TARGETS, resolve_options
    from embedc.targets.ort.block_quant import weight_only_8bit
    from embedc.targets.ort.int8 import quantize_int8_dynamic

    target = next(t for t in TARGETS if t.name == "ort-cpu")
    if scheme.startswith("weights-only"):  # same 8-bit weights as per-block, FP32 activations
        model = onnx.load(str(src))
        names = [n.name for n in weight_matmuls(model)]
        save_model(weight_only_8bit(model, names, block_size=int(scheme.rsplit("-", 1)[1]), accuracy_level=1), dst)
        return
    given = ({"activations": "per-tensor"} if scheme == "per-tensor"
             else {"activations": "per-block", "block_size": int(scheme.rsplit("-", 1)[1])})
    options = resolve_options("int8-dynamic", given, target.name)
    quantize_int8_dynamic(src, dst, settings=target.settings, options=options, work=work, family=family)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, required=True, help="an 'embedc export' folder")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import onnxruntime as ort

    from embedc.artifact import read_meta
    from embedc.build.stages import load_splits
    from embedc.calibration import PromptStyle, tokenize_batches
    from embedc.models import load_tokenizer
    from embedc.onnxkit.files import files_bytes
    from embedc.parity.metrics import compute_parity
    from embedc.spec import BuildSpec

    meta = read_meta(a.export)
    src = a.export / meta["model_file"]
    splits = load_splits(BuildSpec())  # the default split, as `embedc build` draws it
    style = PromptStyle(meta["prefixes"]["query"], meta["prefixes"]["passage"])
    names = [i["name"] for i in meta["inputs"]]
    batches = tokenize_batches(load_tokenizer(a.export), style.apply_all(splits.evaluation), batch_size=16,
                               max_length=a.max_length, input_names=names)
    ev = splits.evaluation

    def embed(path: Path) -> np.ndarray:
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(["sentence_embedding"], b)[0] for b in batches])

    ref = embed(src)
    print(f"{meta['adapter']['family']} {src}: {len(ev)} evaluation texts, max {a.max_length} tokens, "
          f"reference = FP32 ONNX")
    print("| scheme | mean | p01 | min | worst language | top-10 | size % FP32 |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in a.schemes.split(","):
            dst = Path(tmp) / scheme / "model.onnx"
            dst.parent.mkdir()
            _quantize(scheme, src, dst, meta["adapter"]["family"], Path(tmp))
            r = compute_parity(ref, embed(dst), ids=[s.id for s in ev], langs=[s.lang for s in ev],
                               kinds=[s.kind for s in ev])
            worst = min(r.languages, key=lambda lang: r.languages[lang].mean)
            top10 = f"{r.retrieval.topk_overlap:.3f}" if r.retrieval else "-"
            size = 100 * files_bytes(dst) / files_bytes(src)
            print(f"| {scheme} | {r.mean:.5f} | {r.p01:.5f} | {r.min:.5f} | {worst} {r.languages[worst].mean:.5f} "
                  f"| {top10} | {size:.1f} |", flush=True)


if __name__ == "__main__":
    main()
