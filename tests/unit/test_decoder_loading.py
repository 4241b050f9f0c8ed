"""Decoder folders in the hub's layout: pplx-embed with and without its remote
code, refusals (one line each) for configs embedc would run differently, RoPE
from ``rope_parameters``, and the Qwen2 / Llama bodies."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from decoder_folders import PPLX_AUTO_MAP, tiny, variant, with_pplx_remote_code, write_tiny_folder
from embedc.errors import ModelSourceError
from embedc.families import adapter_for, resolve_family
from embedc.exporter.wrapper import pool
from embedc.families.decoder_remote import remote_code_parity
from embedc.models import resolve_model

TEXTS = ["Bonjour le monde, comment allez-vous ?", "短い", "one two three four five six seven eight", "x"]


@pytest.fixture(scope="module")
def pplx_folder(tmp_path_factory):
    return write_tiny_folder(tmp_path_factory.mktemp("hub") / "pplx-embed-tiny", "random-tiny-pplx")


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    return write_tiny_folder(tmp_path_factory.mktemp("hub") / "qwen3-embedding-tiny", "random-tiny-qwen3-embedding")


@pytest.fixture(scope="module")
def tokenizer():
    """The Qwen3 tokenizer every tiny folder carries (loading one takes seconds: share it)."""
    return tiny("random-tiny-qwen3-embedding").tokenizer


def _load(path, tokenizer, **flags):
    src = resolve_model(str(path), **flags)
    family, _ = resolve_family(src)
    adapter = adapter_for(src, tokenizer)
    return src, family, adapter, family.load_torch(src, adapter)


def _embed(family, model, tokenizer, adapter, texts=TEXTS):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = family.hidden_states(model, batch["input_ids"], batch["attention_mask"], adapter)
    return torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], adapter.pooling.mode), dim=-1)


def _one_line_error(path, match, **flags) -> str:
    """Resolving or loading (no tokenizer needed) fails with a one-line message."""
    with pytest.raises(ModelSourceError, match=match) as info:
        src = resolve_model(str(path), **flags)
        resolve_family(src)[0].load_torch(src)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_pplx_loads_as_embedcs_own_bidirectional_qwen3_without_running_its_code(pplx_folder, tokenizer, tmp_path):
    folder = with_pplx_remote_code(pplx_folder, tmp_path / "pplx", raising=True)
    src, family, adapter, model = _load(folder, tokenizer)
    assert type(model).__name__ == "Qwen3Model" and adapter.attention == "bidirectional"
    assert not any("modeling" in m and "pplx" in m for m in sys.modules)  # their modeling.py was never imported
    # the same weights as the seeded preset they were written from: nothing missing, nothing re-drawn
    reference = tiny("random-tiny-pplx").model
    torch.testing.assert_close(_embed(family, model, tokenizer, adapter),
                               _embed(family, reference, tokenizer, adapter), atol=0, rtol=0)


def test_trust_remote_code_runs_their_code_and_reports_parity(pplx_folder, tokenizer, tmp_path):
    folder = with_pplx_remote_code(pplx_folder, tmp_path / "pplx-trusted", raising=False)
    src = resolve_model(str(folder), trust_remote_code=True)
    report = remote_code_parity(src, TEXTS * 2, tokenizer=tokenizer, batch_size=4)
    assert report["texts"] == 8 and report["min_cosine"] > 0.99999 and report["max_abs_diff"] < 1e-4
    # the compared path is their modeling.py (loaded as a dynamic module), not embedc's Qwen3Model
    assert report["remote_class"].startswith("transformers_modules.")
    assert report["remote_class"].endswith("modeling.PPLXQwen3Model")


def test_remote_code_parity_needs_the_opt_in(pplx_folder, tmp_path):
    folder = with_pplx_remote_code(pplx_folder, tmp_path / "pplx", raising=True)
    with pytest.raises(ModelSourceError, match="--trust-remote-code"):
        remote_code_parity(resolve_model(str(folder)), TEXTS, tokenizer=tokenizer)


def test_foreign_remote_code_is_refused_in_one_line(qwen3_folder, pplx_folder, tmp_path):
    custom = variant(qwen3_folder, tmp_path / "custom", config={"auto_map": {"AutoModel": "modeling.MyModel"}},
                     files={"modeling.py": "raise RuntimeError('ran')\n"})
    _one_line_error(custom, "needs its own remote code")
    other = variant(pplx_folder, tmp_path / "pplx-other",
                    config={"auto_map": {**PPLX_AUTO_MAP, "AutoModel": "modeling.SomethingElse"}})
    _one_line_error(other, "needs its own remote code")


def _body(path):
    src = resolve_model(str(path))
    return resolve_family(src)[0].load_torch(src)


def test_rope_parameters_are_honoured(qwen3_folder, tmp_path):
    """A transformers-5 style config (theta only inside rope_parameters) runs theta 1e6, not 10000."""
    cfg = json.loads((qwen3_folder / "config.json").read_text())
    assert "rope_theta" not in cfg and cfg["rope_parameters"]["rope_theta"] == 1e6
    model = _body(qwen3_folder)
    head_dim = cfg["head_dim"]
    want = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    torch.testing.assert_close(model.rotary_emb.inv_freq, want)
    legacy = variant(qwen3_folder, tmp_path / "legacy", config={"rope_theta": 1e6}, drop=("rope_parameters",))
    legacy_model = _body(legacy)
    torch.testing.assert_close(legacy_model.rotary_emb.inv_freq, want)


@pytest.mark.parametrize("change, match", [
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "both rope_parameters and rope_scaling"),
    ({"rope_theta": 10000.0}, "two RoPE thetas"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}}, "RoPE type 'dynamic'"),
    ({"use_sliding_window": True, "sliding_window": 16}, "sliding-window"),
    ({"quantization_config": {"quant_method": "gptq"}}, "pre-quantized"),
    ({"attn_logit_softcapping": 30.0, "my_new_norm": "layer"}, r"attn_logit_softcapping=30.0, my_new_norm"),
    ({"use_bidirectional_attention": True, "is_causal": True}, "keep one of the two"),
])
def test_configs_run_differently_are_refused_in_one_line(qwen3_folder, tmp_path, change, match):
    _one_line_error(variant(qwen3_folder, tmp_path / "m", config=change), match)


def test_bidirectional_flag_on_a_qwen3_config(qwen3_folder, tokenizer, tmp_path):
    folder = variant(qwen3_folder, tmp_path / "bidir", config={"use_bidirectional_attention": True})
    adapter = adapter_for(resolve_model(str(folder)), tokenizer)
    assert adapter.attention == "bidirectional" and adapter.pooling.mode == "last"  # pooling still from 1_Pooling


def test_missing_weights_are_refused(qwen3_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = variant(qwen3_folder, tmp_path / "partial")
    state = load_file(str(folder / "model.safetensors"))
    state.pop("layers.1.mlp.down_proj.weight")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _one_line_error(folder, "lacks 1 weight")


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_qwen2_and_llama_bodies_load_from_the_hub_layout(arch, qwen3_folder, tokenizer, tmp_path):
    """Same body shape, other classes: saved by transformers' own model class, loaded and run by embedc."""
    import transformers

    from embedc.families.decoder_config import ARCHITECTURES

    cfg = json.loads((qwen3_folder / "config.json").read_text())
    conf_cls, model_cls = (getattr(transformers, n) for n in ARCHITECTURES[arch])
    keep = set(conf_cls().to_dict()) - {"architectures", "model_type", "transformers_version", "layer_types",
                                        "max_window_layers", "dtype"}
    config = conf_cls(**{k: v for k, v in cfg.items() if k in keep})
    torch.manual_seed(1)
    stock = model_cls(config).eval()
    folder = variant(qwen3_folder, tmp_path / arch)
    (folder / "model.safetensors").unlink()
    stock.save_pretrained(str(folder))
    src, family, adapter, model = _load(folder, tokenizer)
    assert type(model) is model_cls and adapter.model_type == arch and adapter.attention == "causal"
    batch = tokenizer(TEXTS, padding=True, padding_side="right", return_tensors="pt")
    with torch.inference_mode():
        ours = family.hidden_states(model, batch["input_ids"], batch["attention_mask"], adapter)
        theirs = stock(**batch).last_hidden_state  # transformers' own causal mask, right padding
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-5, rtol=1e-5)


def test_qwen3_embedding_hub_layout_with_causal_lm_weights(qwen3_folder, tokenizer, tmp_path):
    """Qwen3-Embedding's own config style (rope_theta at the top, rope_scaling and sliding_window
    null, architectures Qwen3ForCausalLM) with weights saved under ``model.`` plus an LM head."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = json.loads((qwen3_folder / "config.json").read_text())
    cfg.pop("rope_parameters")
    cfg.update(architectures=["Qwen3ForCausalLM"], rope_theta=1e6, rope_scaling=None, sliding_window=None,
               torch_dtype="float32", use_cache=True, transformers_version="4.51.3")
    stock_cfg = Qwen3Config(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type",
                                                                          "torch_dtype", "transformers_version")})
    torch.manual_seed(2)
    lm = Qwen3ForCausalLM(stock_cfg).eval()
    folder = variant(qwen3_folder, tmp_path / "qwen3-emb-hub")
    (folder / "model.safetensors").unlink()
    lm.save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps(cfg))
    src, family, adapter, model = _load(folder, tokenizer)
    assert (adapter.attention, adapter.pooling.mode) == ("causal", "last")
    torch.testing.assert_close(model.layers[1].mlp.down_proj.weight, lm.model.layers[1].mlp.down_proj.weight)
    batch = tokenizer(TEXTS, padding=True, padding_side="right", return_tensors="pt")
    with torch.inference_mode():
        ours = family.hidden_states(model, batch["input_ids"], batch["attention_mask"], adapter)
        theirs = lm.model(**batch).last_hidden_state
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-5, rtol=1e-5)
