"""Plain helpers shared by the backend tests: ``from helpers import cosines, embed``
(``tests/`` is on sys.path through the ``pythonpath`` setting in pyproject.toml;
conftest.py is for fixtures and is not meant to be imported)."""
from __future__ import annotations

import numpy as np


def compile_once(backend, targets: dict, compile_context, tmp_path_factory, built: dict):
    """A ``build(target, precision, **options)`` that compiles each combination once per
    session with ``backend`` and returns (out_dir, CompileResult)."""
    import dataclasses
    import json

    def _build(target: str, precision: str, **options):
        key = (target, precision, json.dumps(options, sort_keys=True))
        if key not in built:
            out = tmp_path_factory.mktemp(f"{target}-{precision}")
            ctx = dataclasses.replace(compile_context, options=options)
            built[key] = (out, backend.compile(targets[target], precision, ctx, out))
        return built[key]

    return _build


def embed(runner, batches) -> np.ndarray:
    """A runner's ``sentence_embedding`` over tokenized batches, stacked."""
    return np.concatenate([runner.embed(b) for b in batches])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity of two (texts, dim) embedding arrays."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_load_reproduces_parity(folder, cache_dir) -> None:
    """embedc.load(folder).encode(raw texts, kind=...) applies the prompt itself and gives
    the embeddings the build judged: per-text cosines with the torch reference agree with
    the recorded parity run to 1e-6."""
    import embedc
    from embedc.artifact import read_meta
    from embedc.parity.recheck import _reference_for_artifact

    meta = read_meta(folder)
    samples, _, reference = _reference_for_artifact(folder, meta, cache_dir)
    enc = embedc.load(folder)
    got = np.zeros_like(reference)
    for kind in ("query", "passage"):
        idx = [i for i, s in enumerate(samples) if s.kind == kind]
        got[idx] = enc.encode([samples[i].text for i in idx], kind=kind)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    recorded = np.array([meta["parity"]["per_text"][s.id] for s in samples])
    np.testing.assert_allclose(cosines(got, reference), recorded, atol=1e-6)


# Parity floors on the scaled tiny model (conftest.scaled_reference), per precision family:
# (mean, min) per-text cosine against the scaled reference ONNX. Measured there (old and new stack,
# whose tokenizers split some texts differently): fp16 1.0 / 1.0; int8 0.9998-0.99996 / 0.9977-0.99994
# (ORT static, dynamic, OpenVINO, TensorRT); int4 0.986-0.999 / 0.970-0.998. A broken INT8 (weights at
# 4-bit resolution) scores 0.947 / 0.917 and a broken INT4 (2-bit levels) fails too: see the tests.
# every Linear weight of the scaled tiny model is multiplied by this (conftest.scaled_reference)
LINEAR_WEIGHT_SCALE = 10.0

FLOORS = {"fp32": (0.99999, 0.9999), "fp16": (0.9999, 0.9995), "int8": (0.9995, 0.995), "int4": (0.98, 0.96)}


def scaled_copy(export_dir, out, factor: float = LINEAR_WEIGHT_SCALE, *, tensors=None):
    """A copy of an export folder with every Linear weight (or the initializers
    ``tensors(model)`` names) multiplied by ``factor`` (its embedc.json re-hashed): random tiny
    models' Linear layers barely move their output, so any quantization scores 1.0 on them;
    scaled, a broken quantizer misses the floors."""
    import shutil
    from pathlib import Path

    import onnx
    from onnx import numpy_helper

    from embedc.artifact import file_inventory, read_meta, write_meta
    from embedc.build.cache import ENTRY_JSON
    from embedc.onnxkit.graph import weight_matmuls

    out = Path(out)
    shutil.copytree(export_dir, out, ignore=shutil.ignore_patterns(ENTRY_JSON))
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    for name in (tensors(model) if tensors else [n.input[1] for n in weight_matmuls(model)]):
        t = inits[name]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * factor, t.name))
    onnx.save(model, str(out / "model.onnx"))
    meta = read_meta(out)
    meta.pop("format")
    meta["files"] = file_inventory(out)
    write_meta(out, meta)
    return out


def floor_of(precision: str, floors: dict = FLOORS) -> tuple[float, float]:
    """The (mean, min) floor of a precision's family (int8-static -> int8)."""
    return floors[precision.split("-")[0]]


def meets_floor(cos: np.ndarray, precision: str, floors: dict = FLOORS) -> bool:
    mean, low = floor_of(precision, floors)
    return bool(cos.mean() >= mean and cos.min() >= low)


def q4_1_weight(rng, k: int = 96, n: int = 24) -> np.ndarray:
    """[K, N] weight on GGUF Q4_1's grid along K (blocks of 32): fp16 scale and minimum per block, codes 0..15 (each
    block holds a 0 and a 15, as llama.cpp's quantizer writes them)."""
    codes = rng.integers(0, 16, (n, k // 32, 32))
    codes[..., 0], codes[..., 1] = 0, 15
    d = rng.uniform(0.002, 0.05, (n, k // 32, 1)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.4, 0.0, (n, k // 32, 1)).astype(np.float16).astype(np.float32)
    return (codes * d + m).reshape(n, k).T.astype(np.float32)
