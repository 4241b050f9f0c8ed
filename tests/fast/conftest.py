"""Fast tier: the toy family and the fake backend registered for the whole
session, one toy model folder and one stage cache shared by every test."""
from __future__ import annotations

import os

import pytest

from toy import FakeBackend, make_toy_model, toy_family_registered, without_plots


@pytest.fixture(scope="session", autouse=True)
def _register_fakes():
    from embedc.targets.registry import register_backend, unregister_backend

    register_backend(FakeBackend())
    with toy_family_registered():
        yield
    unregister_backend("fake")


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory):
    return make_toy_model(tmp_path_factory.mktemp("toy") / "toy-model")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fast-cache")


@pytest.fixture(autouse=True)
def _cache_env(cache_dir, monkeypatch):
    """The CLI finds the shared stage cache through EMBEDC_CACHE (stages/ under it)."""
    monkeypatch.setenv("EMBEDC_CACHE", str(cache_dir))
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="module", autouse=True)
def _no_plots():
    """report.html without its two matplotlib plots (1.2-3 s a build, half of a toy build's
    time); the build that test_build_folder_manifest_and_reports checks draws them
    (``plots_drawn(True)``). Module-scoped, so a worker's later modules draw them again."""
    with without_plots():
        yield
