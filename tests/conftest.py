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
    """Tests never read or write the user's ~/.cache/embedc (unless EMBEDC_CACHE is set)."""
    if "EMBEDC_CACHE" not in os.environ:
        os.environ["EMBEDC_CACHE"] = str(tmp_path_factory.mktemp("embedc-cache"))


@pytest.fixture(scope="session")
def tiny_source():
    from embedc.models import resolve_model

    return resolve_model("random-tiny-xlmr")


@pytest.fixture(scope="session")
def tiny_reference(tiny_source, tmp_path_factory) -> Path:
    """Folder of the validated FP32 reference export of random-tiny-xlmr."""
    from embedc.exporter import export_reference

    out = tmp_path_factory.mktemp("tiny") / "export"
    export_reference(tiny_source, out)
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
