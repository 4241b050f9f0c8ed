"""Model sources: catalog, local folders, hub ids (offline and from a local hub cache), safety opt-ins."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from embedc.errors import ModelSourceError, UnsupportedArchitectureError
from embedc.models import CATALOG, check_architecture, load_torch_model, resolve_model


def test_catalog_lists_real_and_random_models():
    assert {"multilingual-e5-small", "all-minilm-l6-v2", "random-e5-large", "random-tiny-xlmr"} <= set(CATALOG)
    assert CATALOG["random-e5-large"].kind == "random"


def test_random_preset_is_seeded_and_marked(tiny_source):
    a = load_torch_model(tiny_source)
    b = load_torch_model(tiny_source)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert all((pa[k] == pb[k]).all() for k in pa)
    assert tiny_source.random_weights and "random weights" in tiny_source.to_dict()["weights"]
    assert a.config.vocab_size == 250002


def test_minilm_resolves_with_no_prefix():
    src = resolve_model("all-minilm-l6-v2")
    assert (src.path / "model.safetensors").is_file()
    assert src.query_prefix == "" and not src.random_weights


def test_missing_folder(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))


def test_not_a_transformers_folder(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelSourceError, match="not a transformers model folder"):
        resolve_model(str(tmp_path / "m"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unreadable_folder(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    d.chmod(0)
    try:
        with pytest.raises(ModelSourceError, match="not readable"):
            resolve_model(str(d))
    finally:
        d.chmod(0o755)


def test_unsupported_architecture_names_supported(tmp_path):
    d = tmp_path / "gpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2'.*supported model types: bert, .*roberta, xlm-roberta"):
        check_architecture(resolve_model(str(d)))


def _minilm_copy(tmp_path: Path) -> Path:
    d = tmp_path / "minilm"
    shutil.copytree(resolve_model("all-minilm-l6-v2").path, d)
    return d


def test_pickle_weights_need_opt_in(tmp_path):
    d = _minilm_copy(tmp_path)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match="pickle-format.*--allow-pickle"):
        load_torch_model(resolve_model(str(d)))


def test_remote_code_needs_opt_in(tmp_path):
    d = _minilm_copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_x.XModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelSourceError, match="remote code.*--trust-remote-code"):
        check_architecture(resolve_model(str(d)))


def test_hub_id_offline_without_cache_fails_with_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelSourceError, match="cannot get 'intfloat/multilingual-e5-large'.*local model folder"):
        resolve_model("intfloat/multilingual-e5-large")


def test_hub_id_resolves_from_local_hub_cache(tmp_path, monkeypatch):
    """The real hub code path (snapshot_download) served from a cache laid out like the hub's."""
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--intfloat--multilingual-e5-small" / "snapshots" / commit
    shutil.copytree(resolve_model("all-minilm-l6-v2").path, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(commit)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    src = resolve_model("intfloat/multilingual-e5-small")
    assert src.kind == "hub" and src.revision == commit
    assert src.path == snap
    assert src.query_prefix == "query: "  # e5 family prefix applied for e5 hub ids without prompts
