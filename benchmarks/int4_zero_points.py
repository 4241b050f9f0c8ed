"""Speed of ORT's 4-bit MatMulNBits by zero-point kind, side by side with the FP32 graph.

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python benchmarks/int4_zero_points.py --export DIR \\
        [--batch 32] [--tokens 128] [--repeats 7]

DIR is an export folder (``embedc export -m MODEL -o DIR``, or a build's stage cache entry).
Every Linear MatMul becomes a 4-bit MatMulNBits (block 32, accuracy_level 4) three ways: no
zero points (symmetric, ORT's default), uint4 zero points (ORT's asymmetric quantizer), one
MatMulNBits with fp32 zero points (``float-zero-points``: what embedc's ``zero_points="float"``
wrote before 2026-12-03, on ORT's slower kernel); the word-embedding table stays FP32 in every
graph, so only the Linears differ. ``float`` is what embedc writes now, the same function in
another form (:mod:`embedc.targets.ort.float_zero`): since ``(code - zero) * scale = (code - 8)
* scale + (8 - zero) * scale``, each Linear is the symmetric kernel (implicit zero point 8;
accuracy_level 1, so its activations stay fp32 as the zero-point kernel's do) plus ``(x @ S) @
C``, S [K, K/32] summing each block of x and C [K/32, N] holding ``(8 - zero) * scale``.
Sessions run interleaved, one pass of each per round, and the medians are reported with their
ratio to FP32. Also printed: each graph's size, the Linears' relative weight error against the
export (what the zero points buy) and the largest difference of ``float``'s embeddings from
``float-zero-points``'.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = ("fp32", "symmetric", "uint4", "float-zero-points", "float")


def _variant(name: str, src: Path, dst: Path) -> None:
    import onnx

    from embedc.onnxkit.files import save_model
    from embedc.onnxkit.graph import weight_matmuls
    from embedc.targets.ort.float_zero import quantize_float_zero, zero_point_nodes

    model = onnx.load(str(src))
    names = [n.name for n in weight_matmuls(model)]
    if name == "float":
        quantize_float_zero(model, names, 32)
    elif name == "float-zero-points":
        quantize_float_zero(model, names, 32, write=zero_point_nodes)
    elif name != "fp32":
        from onnxruntime.quantization import matmul_nbits_quantizer as mnq

        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in names]
        quant = mnq.MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=name == "symmetric",
                                         accuracy_level=4, nodes_to_exclude=others,
                                         op_types_to_quantize=("MatMul",))
        quant.process()
        model = quant.model.model
    save_model(model, dst)


def _weight_error(src: Path, path: Path) -> float:
    """Median over the Linears of ||W_4bit - W|| / ||W|| (W_4bit as ORT dequantizes it)."""
    import onnx
    from onnx import numpy_helper

    from embedc.onnxkit.graph import initializer_map, weight_matmuls
    from embedc.targets.ort.float_zero import dequantized_weights

    ref = onnx.load(str(src))
    ref_inits = initializer_map(ref)
    weights = {n.name: numpy_helper.to_array(ref_inits[n.input[1]]) for n in weight_matmuls(ref)}
    written = dequantized_weights(onnx.load(str(path)))
    errors = [float(np.linalg.norm(w4 - weights[name]) / np.linalg.norm(weights[name])) for name, w4 in written.items()]
    return statistics.median(errors) if errors else 0.0


def main() -> None:
    from embedc.onnxkit.session import cpu_session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    src = args.export / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for v in VARIANTS:
            paths[v] = Path(tmp) / v / "model.onnx"
            paths[v].parent.mkdir()
            _variant(v, src, paths[v])
        sessions = {v: cpu_session(p) for v, p in paths.items()}
        names = [i.name for i in sessions["fp32"].get_inputs()]
        rng = np.random.default_rng(0)
        feeds = {}
        for label, b in (("batch", args.batch), ("one", 1)):
            ids = rng.integers(100, 30000, (b, args.tokens)).astype(np.int64)
            feeds[label] = {n: (ids if n == "input_ids" else np.ones_like(ids)) for n in names}
        times = {(v, label): [] for v in VARIANTS for label in feeds}
        for v in VARIANTS:  # warm-up
            for f in feeds.values():
                sessions[v].run(None, f)
        for _ in range(args.repeats):
            for v in VARIANTS:
                for label, f in feeds.items():
                    t = time.perf_counter()
                    sessions[v].run(None, f)
                    times[(v, label)].append(time.perf_counter() - t)
        med = {k: statistics.median(t) for k, t in times.items()}
        same = np.abs(sessions["float"].run(None, feeds["batch"])[0]
                      - sessions["float-zero-points"].run(None, feeds["batch"])[0]).max()
        print(f"float vs float-zero-points: largest difference of the batch's outputs {same:.2e}")
        print(f"| Linears (block 32) | MB | weight error (median) | batch {args.batch} x "
              f"{args.tokens}: texts/s | vs FP32 | batch 1: ms | vs FP32 |")
        print("|---|---|---|---|---|---|---|")
        for v in VARIANTS:
            size = sum(p.stat().st_size for p in paths[v].parent.iterdir()) / 1e6
            err = "0.0000" if v == "fp32" else f"{_weight_error(src, paths[v]):.4f}"
            print(f"| {v} | {size:.1f} | {err} | {args.batch / med[(v, 'batch')]:.1f} | "
                  f"{med[('fp32', 'batch')] / med[(v, 'batch')]:.2f}x | {1000 * med[(v, 'one')]:.1f} | "
                  f"{med[('fp32', 'one')] / med[(v, 'one')]:.2f}x |")


if __name__ == "__main__":
    main()
