"""Reliability suite: the toy family, the fake and probe backends, a toy
model, a small corpus, and one good build (module-independent, session-wide)
that tests copy as "the previous build" they must not lose."""
from __future__ import annotations

import os
import shutil

import pytest

from rel_helpers import ProbeBackend, rel_spec, write_corpus
from toy import FakeBackend, make_toy_model, toy_family_registered, without_plots


@pytest.fixture(scope="session", autouse=True)
def _register_fakes():
    from embedc.targets.registry import _BACKENDS, register_backend, unregister_backend

    added = []
    for b in (FakeBackend(), ProbeBackend()):
        if b.name not in _BACKENDS:
            register_backend(b)
            added.append(b.name)
    with toy_family_registered():
        yield
    for name in added:
        unregister_backend(name)


@pytest.fixture(scope="module", autouse=True)
def _no_plots():
    """report.html without its two matplotlib plots (1.2-3 s a build, ~60 builds here): this
    suite checks files, processes and the cache; the plots are tested in tests/fast and
    tests/unit/test_pipeline.py. Module-scoped, so a worker's later modules draw them again."""
    with without_plots():
        yield


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    return make_toy_model(tmp_path_factory.mktemp("rel-toy") / "toy-model")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("rel-corpus") / "corpus.jsonl")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("rel-cache")


@pytest.fixture(autouse=True)
def _cache_env(shared_cache, monkeypatch):
    monkeypatch.setenv("EMBEDC_CACHE", str(shared_cache))
    monkeypatch.delenv("EMBEDC_FAULT", raising=False)
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def good_build(toy, corpus, shared_cache, tmp_path_factory):
    """A passing build (fake-cpu fp32) in the shared cache; copy it with ``previous``."""
    from embedc.build.pipeline import build

    out = tmp_path_factory.mktemp("rel-good") / "build"
    os.environ["EMBEDC_CACHE"] = str(shared_cache)
    result = build(rel_spec(toy, corpus, out), cache_dir=shared_cache / "stages")
    assert result.manifest["verdict"] == "pass"
    return out


@pytest.fixture()
def previous(good_build, tmp_path):
    """A copy of the good build at tmp_path/proj/build: the result a later run must not lose."""
    dst = tmp_path / "proj" / "build"
    shutil.copytree(good_build, dst)
    return dst
