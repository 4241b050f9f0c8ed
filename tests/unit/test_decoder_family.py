"""Decoder family on the tiny Qwen3 presets: attention mode, padding on both
sides, EOS handling and pooling, computed in torch with the family's own path."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from decoder_folders import tiny
from embedc.families import POOLED_OUTPUT, adapter_for, resolve_family
from embedc.exporter.wrapper import pool
from embedc.models import CATALOG, resolve_model

TEXTS = ["Der schnelle braune Fuchs springt über den faulen Hund.", "猫が好きです",
         "a much longer English sentence that needs several more tokens than the others do", "ok"]


@pytest.fixture(scope="module")
def pplx():
    return tiny("random-tiny-pplx")


@pytest.fixture(scope="module")
def qwen3_emb():
    return tiny("random-tiny-qwen3-embedding")


def test_catalog_has_decoder_presets_and_smollm2():
    names = {"random-pplx-embed-0.6b", "random-pplx-embed-4b", "random-qwen3-embedding-0.6b",
             "random-tiny-pplx", "random-tiny-qwen3-embedding", "smollm2-135m-bidir", "smollm2-135m-last"}
    assert names <= set(CATALOG)
    assert all(CATALOG[n].kind == "random" for n in names if n.startswith("random-"))
    assert CATALOG["random-qwen3-embedding-0.6b"].prefixes[0].startswith("Instruct: ")
    assert CATALOG["random-qwen3-embedding-0.6b"].prefixes[0].endswith("\nQuery:")
    assert CATALOG["random-pplx-embed-0.6b"].prefixes == ("", "")


def test_real_shape_presets_resolve_without_weights():
    """Resolving the 4B preset writes config + tokenizer only: nothing near 16 GB."""
    src = resolve_model("random-pplx-embed-4b")
    config = json.loads((src.path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (36, 2560, 8)
    assert sum(f.stat().st_size for f in src.path.rglob("*") if f.is_file()) < 50 * 1024**2
    assert src.random_weights and not any(src.path.glob("*.safetensors"))


def test_adapters_state_mode_pooling_and_outputs(pplx, qwen3_emb):
    a, b = pplx.adapter, qwen3_emb.adapter
    assert (a.family, a.attention, a.pooling.mode, a.final_norm) == ("decoder", "bidirectional", "mean", "rmsnorm")
    assert POOLED_OUTPUT in a.outputs and not a.pooling.normalize  # pplx: no Normalize module
    assert (b.attention, b.pooling.mode, b.padding_side) == ("causal", "last", "left")
    assert POOLED_OUTPUT not in b.outputs and b.pooling.normalize
    assert a.max_length == b.max_length == 4096  # the preset's positions, not the tokenizer's 131072
    assert json.loads(json.dumps(a.to_dict()))["attention"] == "bidirectional"


def test_bidirectional_sees_later_tokens_causal_does_not(pplx, qwen3_emb):
    ids = torch.tensor([[1000, 2000, 3000, 4000, 5000]])
    changed = ids.clone()
    changed[0, -1] = 6000
    mask = torch.ones_like(ids)
    for loaded, sees_future in ((pplx, True), (qwen3_emb, False)):
        first, first_changed = loaded.hidden(ids, mask)[0, 0], loaded.hidden(changed, mask)[0, 0]
        if sees_future:
            assert (first - first_changed).abs().max() > 1e-3
        else:
            assert torch.equal(first, first_changed)
        # every mode attends to the past: the last token always changes
        assert (loaded.hidden(ids, mask)[0, -1] - loaded.hidden(changed, mask)[0, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("which", ["pplx", "qwen3_emb"])
def test_padding_side_does_not_change_embeddings(which, request):
    loaded = request.getfixturevalue(which)
    left, right = loaded.embed(TEXTS, "left"), loaded.embed(TEXTS, "right")
    alone = torch.cat([loaded.embed([t], "right") for t in TEXTS])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    assert (left[0] - left[1]).abs().max() > 1e-2  # texts differ: a constant output would pass the above


def test_padded_tokens_are_never_attended(pplx):
    """Changing what sits in padded slots changes no attended token's state."""
    ids = torch.tensor([[1000, 2000, 3000, 7, 7], [7, 7, 1000, 2000, 3000]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    other = torch.where(mask.bool(), ids, torch.full_like(ids, 99999))
    a, b = pplx.hidden(ids, mask), pplx.hidden(other, mask)
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[0, :3], a[1, 2:], atol=1e-5, rtol=0)


def test_last_token_pooling_reads_the_appended_eos(qwen3_emb, pplx):
    tok = qwen3_emb.tokenizer
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    for side in ("left", "right"):
        batch = tok(TEXTS, padding=True, padding_side=side, return_tensors="pt")
        last = (batch["attention_mask"] * torch.arange(batch["input_ids"].shape[1])).argmax(-1)
        assert (batch["input_ids"][torch.arange(len(TEXTS)), last] == eos).all()
        hidden = qwen3_emb.hidden(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(pool(hidden, batch["attention_mask"], "last"),
                                   hidden[torch.arange(len(TEXTS)), last])
    assert pplx.tokenizer("hello")["input_ids"][-1] != eos  # pplx appends nothing


def test_pooling_comes_from_the_folders_1_pooling(tmp_path):
    src = resolve_model("random-tiny-qwen3-embedding")
    folder = shutil.copytree(src.path, tmp_path / "m")
    cfg = json.loads((folder / "1_Pooling" / "config.json").read_text())
    cfg.update(pooling_mode_lasttoken=False, pooling_mode_mean_tokens=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    local = resolve_model(str(folder))
    tokenizer = tiny("random-tiny-qwen3-embedding").tokenizer  # the folder's own files, loaded once
    adapter = adapter_for(local, tokenizer)
    assert (adapter.attention, adapter.pooling.mode) == ("causal", "mean")
    (folder / "modules.json").unlink()
    shutil.rmtree(folder / "1_Pooling")
    assert adapter_for(local, tokenizer).pooling.mode == "last"  # no ST files: the mode's default


def test_random_presets_are_seeded(pplx):
    again = resolve_family(pplx.source)[0].load_torch(pplx.source)
    for (name, p), q in zip(pplx.model.named_parameters(), again.parameters()):
        assert torch.equal(p, q), name
    std = pplx.model.layers[0].mlp.up_proj.weight.std().item()
    assert 0.015 < std < 0.025  # drawn from the config's initializer_range, not left empty


@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_mask_hides_padding_and_leaves_no_row_empty(mode):
    """Attended tokens never see padded keys; every row (padded ones too) keeps one key,
    so a graph whose mask minimum turns into -inf in FP16 never softmaxes an empty row."""
    from embedc.families.decoder import attention_inputs

    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    add, positions = attention_inputs(mask, mode, torch.float32)
    allowed = add[:, 0] == 0
    assert allowed.any(-1).all()
    valid = mask.bool()
    assert not (allowed & ~valid[:, None, :])[valid].any()  # valid queries x padded keys: never
    assert positions.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]
    if mode == "causal":
        assert not allowed[0, 2, 3] and allowed[0, 4, 2]
    else:
        assert allowed[0, 2, 4]


@pytest.mark.parametrize("target", ["openvino-cpu", "ort-cpu"])
def test_int8_static_keeps_down_proj_out_of_static_int8_by_default(target, tmp_path):
    """The decoder family's recipe default (measured on SmolLM2 causal: OpenVINO mean 0.971 -> 0.995
    at the same size, ORT 0.966 -> 0.992): the plan shows it, an encoder does not get it, and the
    spec or --option overrides it."""
    from click.testing import CliRunner

    from embedc.cli import cli

    def int8_static_options(model, *extra):
        r = CliRunner().invoke(cli, ["-q", "build", "-m", model, "-t", target, "-p", "int8-static",
                                     "-o", str(tmp_path / "o"), *extra, "--dry-run"])
        assert r.exit_code == 0, r.output
        return json.loads(r.output)["plan"][-1]["options"]

    got = int8_static_options("random-tiny-qwen3-embedding")
    assert got["exclude"] == ["mlp.down_proj"] and got["excluded_as"] == "int8-weight-only"
    assert int8_static_options("random-tiny-xlmr")["exclude"] == []
    assert int8_static_options("random-tiny-qwen3-embedding", "--option", "int8-static.exclude=[]")["exclude"] == []
