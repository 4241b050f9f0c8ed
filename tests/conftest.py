"""Shared fixtures: a real FP32 reference export of a tiny random XLM-R (full
250k vocabulary, so embedding-table quantization is exercised) and a real
CompileContext with multilingual calibration batches."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep the torch/ORT thread pools small: CI has 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never read or write the user's ~/.cache/embedc (unless EMBEDC_CACHE is set).
    The pytest-xdist workers of one run share one cache (the stage cache is safe for
    concurrent writers), so a stage one worker computed is served to the other."""
    if "EMBEDC_CACHE" not in os.environ:
        base = tmp_path_factory.getbasetemp()
        root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base   # the run's folder, above gw0/gw1
        cache = root / "embedc-cache"
        cache.mkdir(exist_ok=True)
        os.environ["EMBEDC_CACHE"] = str(cache)


@pytest.fixture(scope="session", autouse=True)
def _process_warmed():
    """What almost every module's builds load once per process (torch, the ONNX runtimes, a
    tokenizer class, the default corpus with its 45k samples) loaded before the first module's
    freeze below, so that it is frozen out of the collector too: otherwise every
    ``release_memory`` in that module's builds traverses it again (0.1 s a pass, about five
    passes a build)."""
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401
    from transformers import PreTrainedTokenizerFast  # noqa: F401

    from embedc.calibration import load_default_corpus, load_default_long_passages

    load_default_corpus()
    load_default_long_passages()


@pytest.fixture(scope="module", autouse=True)
def _long_lived_objects_frozen(_process_warmed):
    """Each module's tests run with what was alive before them (imported libraries, session
    fixtures) frozen out of the cyclic garbage collector. Builds call ``release_memory`` (a full
    ``gc.collect``) two or three times per compile, and in a test process that had imported
    everything and kept every session fixture each pass took 0.2-0.6 s: 138 s of a 731 s
    single-process run (cProfile), against ~0.15 s in a build's own process. Unfrozen again after
    the module, so nothing that becomes garbage later is kept."""
    import gc

    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def stage_cache(_isolated_cache) -> Path:
    """The run's shared stage cache (what a build with no cache_dir uses): real-model tests whose
    assertions do not depend on what is already cached build through it, so the tiny model's
    export and reference are computed once per run."""
    return Path(os.environ["EMBEDC_CACHE"]) / "stages"


@pytest.fixture(scope="session")
def tiny_source():
    from embedc.models import resolve_model

    return resolve_model("random-tiny-xlmr")


@pytest.fixture(scope="session")
def cached_export(stage_cache, tmp_path_factory):
    """``cached_export(model_name)``: the folder of that model's validated FP32 export as a
    build computes it (the export stage), in the run's shared stage cache. Each export is
    computed once per run, not once per test module and worker; tests only read the folder
    (it is a cache entry: a changed file makes builds discard it)."""
    from embedc.build import stages
    from embedc.build.cache import StageCache
    from embedc.spec import BuildSpec, MatrixEntry, ModelSpec

    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            spec = BuildSpec(model=ModelSpec(name=name), matrix=(MatrixEntry("ort-cpu", ("fp32",)),),
                             out=str(tmp_path_factory.mktemp("prepare") / "out"))
            done[name], _, _ = stages.export(stages.prepare(spec, force=False), StageCache(stage_cache))
        return done[name]

    return get


@pytest.fixture(scope="session")
def tiny_reference(cached_export, tmp_path_factory) -> Path:
    """Folder of the validated FP32 reference export of random-tiny-xlmr (a private copy of the
    export stage's entry: what every build of the tiny model exports)."""
    import shutil

    from embedc.build.cache import ENTRY_JSON

    out = tmp_path_factory.mktemp("tiny") / "export"
    shutil.copytree(cached_export("random-tiny-xlmr"), out, ignore=shutil.ignore_patterns(ENTRY_JSON))
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_source):
    from embedc.models import load_tokenizer

    return load_tokenizer(tiny_source)


@pytest.fixture(scope="session")
def tiny_splits():
    from embedc.calibration import load_default_corpus, make_splits

    return make_splits(load_default_corpus(), calib_per_lang=2, eval_per_lang=4, seed=0)


@pytest.fixture()
def compile_context(tiny_reference, tiny_tokenizer, tiny_splits, tmp_path):
    """A real CompileContext over the tiny export (options empty; tests replace them)."""
    from embedc.calibration import PromptStyle, length_distribution, tokenize_batches
    from embedc.artifact import read_meta
    from embedc.targets.base import CompileContext

    meta = read_meta(tiny_reference)
    style = PromptStyle(query_prefix=meta["prefixes"]["query"], passage_prefix=meta["prefixes"]["passage"])
    texts = style.apply_all(tiny_splits.calibration)
    names = [i["name"] for i in meta["inputs"]]
    batches = tokenize_batches(tiny_tokenizer, texts, batch_size=1, max_length=128, input_names=names)
    return CompileContext(reference_dir=tiny_reference, reference_meta=meta, calibration=tuple(batches),
                          length_stats=length_distribution(tiny_tokenizer, texts, 512), options={},
                          work_dir=tmp_path / "work")


# ---- the scaled tiny model: parity floors a broken quantizer fails ------------------------------
# The random tiny model's Linear layers barely move its output (weights ~N(0, 0.02) next to the
# residual stream), so any quantization scores cosine 1.0 on it. Its copy with every Linear weight
# x10 makes the layers matter: INT8 then scores ~0.9998, INT4 0.986-0.999, and INT8 weights rounded
# to 4-bit resolution 0.947 (tests/unit/test_target_*.py hold the floors and that check). The factor
# is helpers.LINEAR_WEIGHT_SCALE (also read by tests that scale a torch model).


@pytest.fixture(scope="session")
def scaled_reference(tiny_reference, tmp_path_factory) -> Path:
    """The tiny export with every Linear weight x10 (its embedc.json re-hashed)."""
    from helpers import scaled_copy

    return scaled_copy(tiny_reference, tmp_path_factory.mktemp("scaled") / "export")


@pytest.fixture()
def scaled_context(compile_context, scaled_reference):
    """compile_context on the scaled model."""
    import dataclasses

    from embedc.artifact import read_meta

    return dataclasses.replace(compile_context, reference_dir=scaled_reference,
                               reference_meta=read_meta(scaled_reference))


@pytest.fixture(scope="session")
def scaled_eval(scaled_reference, tiny_tokenizer, tiny_splits):
    """Held-out texts in batches of 8 and the scaled reference ONNX's FP32 embeddings."""
    import numpy as np
    import onnxruntime as ort

    from embedc.artifact import read_meta
    from embedc.calibration import PromptStyle, tokenize_batches

    meta = read_meta(scaled_reference)
    style = PromptStyle(meta["prefixes"]["query"], meta["prefixes"]["passage"])
    batches = tokenize_batches(tiny_tokenizer, style.apply_all(tiny_splits.evaluation), batch_size=8,
                               max_length=128, input_names=[i["name"] for i in meta["inputs"]])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(scaled_reference / meta["model_file"]), opts, providers=["CPUExecutionProvider"])
    return batches, np.concatenate([sess.run(["sentence_embedding"], b)[0] for b in batches])
