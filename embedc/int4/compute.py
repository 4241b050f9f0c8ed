"""INT4 weights computed in torch on the calibration split, once, for every backend.

``compute_int4`` runs one of

- ``autoround``: Intel's AutoRound (``auto-round``; sign-gradient descent on
  each weight's rounding offset and each group's clip range, block by block,
  minimizing the block output error on calibration activations), or
- ``gptq-inc``: neural-compressor's weight-only GPTQ (``GPTQConfig``,
  ``prepare`` / calibration forwards / ``convert``),

on the torch FP32 encoder and returns, per ``nn.Linear`` (keyed by its module
path as the ONNX export records it: ``encoder.<name inside the HF model>``),
symmetric int4 codes ``q`` in [-8, 7] shaped like the torch weight
``[out, in]`` and one scale per group of ``group_size`` input channels,
``[out, ceil(in / group)]``, with ``weight ~= q * scale`` (the group dim
repeated). Writers (:mod:`embedc.int4.ort` etc.) put exactly those numbers
into each backend's INT4 form.

Scales are positive by default (``full_range=False``: AutoRound's
``int_sym_gptq`` data type, scale = 2 * amax / 15, codes -8..7): TensorRT's
blockwise ``DequantizeLinear`` needs scale > 0, and one positive-scale
result serves ORT, OpenVINO and TensorRT from one computation.
``full_range=True`` is AutoRound's default ``int_sym`` (scale = +-amax / 8,
the sign chosen so the largest magnitude maps to -8): one more level per
group, negative scales, for ORT/OpenVINO only.

Layers in ``keep`` (module paths, as the backends' ``exclude`` option names them) stay out
of the 4-bit computation: the algorithm sees them at full precision while it rounds
the others, so its block-by-block error compensation works around them (the writers
store them in 8 bits). Measured on all-MiniLM-L6-v2 (README, "INT4 recipes computed in
torch"): AutoRound's 4-bit layers compensate each other (each rounded alone costs 0.046 of
mean cosine in sum, all together 0.016), so layers moved to 8 bits *after* the computation
gained little (every attention MatMul: 0.9799 -> 0.9814), while 16 Linears kept out *during*
it reached 0.9918 at 18% of FP32.

Calibration: the calibration split's tokenized texts (batch 1, the attended
tokens only) are concatenated into one token stream and cut into
``nsamples`` windows of ``seqlen`` tokens (the LLM-style calibration AutoRound
and GPTQ expect: equal-length samples, no padding in the loss).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import CompileError, MissingDependencyError

log = logging.getLogger("embedc")

INSTALL_HINT = "pip install 'embedc[int4]'"
ALGORITHMS = ("autoround", "gptq-inc")
QMIN, QMAX = -8, 7
# what the module paths of the ONNX export start with (exporter/wrapper.py: SentenceEmbedder.encoder)
PATH_PREFIX = "encoder."


@dataclass(frozen=True)
class Int4Settings:
    """What shapes the computed weights (part of the stage's cache key)."""

    algorithm: str = "autoround"
    group_size: int = 32
    iters: int = 200          # AutoRound sign-gradient steps per block
    nsamples: int = 128       # calibration windows
    seqlen: int = 64          # tokens per window
    full_range: bool = False  # AutoRound int_sym (negative scales) instead of int_sym_gptq
    seed: int = 42
    keep: tuple[str, ...] = ()  # module paths (with PATH_PREFIX) left out of the 4-bit computation

    def to_dict(self) -> dict:
        d = {"algorithm": self.algorithm, "bits": 4, "sym": True, "group_size": self.group_size,
             "nsamples": self.nsamples, "seqlen": self.seqlen, "seed": self.seed}
        if self.algorithm == "autoround":
            d.update(iters=self.iters, full_range=self.full_range)
        if self.keep:
            d["keep"] = sorted(self.keep)
        return d

    @classmethod
    def from_options(cls, options: Mapping, keep: Sequence[str] = ()) -> Int4Settings:
        """From a backend's resolved int4 options (keys ``algorithm``, ``block_size``,
        ``iters``, ``nsamples``, ``seqlen``, ``full_range``) and the module paths its
        ``exclude`` option selects."""
        return cls(algorithm=options["algorithm"], group_size=int(options.get("block_size", 32)),
                   iters=int(options.get("iters", cls.iters)), nsamples=int(options.get("nsamples", cls.nsamples)),
                   seqlen=int(options.get("seqlen", cls.seqlen)),
                   full_range=bool(options.get("full_range", False)), keep=tuple(sorted(set(keep))))


def library_names(algorithm: str) -> tuple[str, ...]:
    """Distributions whose versions shape the result (cache key)."""
    base = ("torch", "transformers")
    return base + (("auto-round",) if algorithm == "autoround" else ("neural-compressor",))


def require(algorithm: str) -> None:
    """Import check with the one-line install hint."""
    import importlib

    mod, dist = ("auto_round", "auto-round") if algorithm == "autoround" else ("neural_compressor",
                                                                              "neural-compressor")
    try:
        importlib.import_module(mod)
    except ImportError as exc:
        raise MissingDependencyError(f"the {algorithm} int4 recipe needs {dist} (not installed)",
                                     INSTALL_HINT) from exc


# ---- calibration windows --------------------------------------------------------------------------
def calibration_windows(feeds: Sequence[Mapping[str, np.ndarray]], nsamples: int, seqlen: int) -> np.ndarray:
    """[n, seqlen] int64 token windows cut from the calibration texts' attended tokens, in order."""
    stream = []
    for f in feeds:
        ids = np.asarray(f["input_ids"]).reshape(-1)
        mask = np.asarray(f.get("attention_mask", np.ones_like(ids))).reshape(-1)
        stream.append(ids[mask.astype(bool)])
    if not stream:
        raise CompileError("no calibration texts for the int4 recipe", "check that the calibration split is not empty")
    tokens = np.concatenate(stream).astype(np.int64)
    n = len(tokens) // seqlen
    if n == 0:  # fewer tokens than one window: repeat the stream
        tokens = np.tile(tokens, -(-seqlen // len(tokens)))
        n = 1
    windows = tokens[: n * seqlen].reshape(n, seqlen)
    if n > nsamples:  # evenly spaced over the stream: every language, not just the first ones
        windows = windows[np.linspace(0, n - 1, nsamples).round().astype(int)]
    return windows


# ---- codes from a quantize-dequantized weight -------------------------------------------------------
def codes_from_qdq(w_qdq: np.ndarray, scale: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of a quantize-dequantized weight [N, K] with scales [N, G]; raises if not on the grid."""
    n, k = w_qdq.shape
    scale = np.asarray(scale, np.float32).reshape(n, -1)
    full = np.repeat(scale, group, axis=1)[:, :k]
    safe = np.where(full == 0, 1.0, full)
    raw = w_qdq.astype(np.float64) / safe
    q = np.rint(raw)
    off = float(np.abs(raw - q).max()) if raw.size else 0.0
    if off > 1e-2 or q.min() < QMIN or q.max() > QMAX:
        raise CompileError(f"int4 weights are off the 4-bit grid (max offset {off:.3g}, codes {q.min()}..{q.max()})",
                           "report this with the library versions; the quantizer's storage format changed")
    return q.astype(np.int8), scale


def dequantize(q: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
    """float32 [N, K] from codes [N, K] and scales [N, G]."""
    return q.astype(np.float32) * np.repeat(scale, group, axis=1)[:, : q.shape[1]]


# ---- the algorithms ------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    """auto-round / INC log at INFO and draw progress bars; keep them out unless embedc is at DEBUG."""
    if logging.getLogger("embedc").isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(n) for n in ("autoround", "auto_round", "neural_compressor", "accelerate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def linear_names(model) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _kept_names(model, s: Int4Settings, prefix: str) -> list[str]:
    """The torch names of ``s.keep``; a path that is no Linear of the model is an error (a typo or
    another model), not a silently 4-bit layer."""
    names = set(linear_names(model))
    kept = [p[len(prefix):] if p.startswith(prefix) else p for p in s.keep]
    unknown = [k for k in kept if k not in names]
    if unknown:
        raise CompileError(f"int4 keep names {unknown[0]!r}, which is no Linear layer of the model",
                           "fix the exclude pattern (it must name Linear layers of this model)")
    return kept


def _autoround(model, windows: np.ndarray, s: Int4Settings, tokenizer,
               kept: Sequence[str] = ()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import torch
    from auto_round import AutoRound

    data = [{"input_ids": torch.as_tensor(w[None]), "attention_mask": torch.ones(1, len(w), dtype=torch.long)}
            for w in windows]
    with _quiet():
        ar = AutoRound(model, tokenizer=tokenizer, bits=4, group_size=s.group_size, sym=True,
                       data_type="int" if s.full_range else "int_sym_gptq", iters=s.iters, nsamples=len(data),
                       seqlen=int(windows.shape[1]), dataset=data, device_map="cpu", batch_size=min(8, len(data)),
                       enable_torch_compile=False, seed=s.seed, low_gpu_mem_usage=False, amp=False,
                       # bits 16: AutoRound leaves the layer as is and tunes the rest of its block around it
                       layer_config={name: {"bits": 16} for name in kept})
        ar.quantize()
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and getattr(m, "scale", None) is not None:
            w = m.weight.detach().float().numpy()
            scale = m.scale.detach().float().numpy().reshape(w.shape[0], -1)
            out[name] = codes_from_qdq(w, scale, s.group_size)
    return out


@contextlib.contextmanager
def _inc_workspace():
    """neural-compressor creates ``./nc_workspace/<time>/`` in the caller's working folder the first
    time its options are read: point it at a temporary folder embedc owns and removes."""
    from neural_compressor.common import options

    old = options._workspace  # the getter would create the default folder
    with tempfile.TemporaryDirectory(prefix="embedc-inc-") as tmp:
        options.workspace = tmp
        try:
            yield
        finally:
            options._workspace = old


def _inc(model, windows: np.ndarray, s: Int4Settings, kept: Sequence[str] = ()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import torch
    from neural_compressor.torch.quantization import GPTQConfig, convert, prepare

    skip = set(kept)
    names = [n for n in linear_names(model) if n not in skip]
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in names}
    cfg = GPTQConfig(bits=4, group_size=s.group_size, use_sym=True)
    for name in kept:  # fp32: GPTQ's error feedback runs through the kept layer unquantized
        cfg.set_local(name, GPTQConfig(dtype="fp32"))
    with _quiet(), _inc_workspace():
        model = prepare(model, cfg)
        with torch.no_grad():
            for w in windows:
                model(input_ids=torch.as_tensor(w[None]), attention_mask=torch.ones(1, len(w), dtype=torch.long))
        model = convert(model)
    out = {}
    for name, m in model.named_modules():
        if name not in weights or not hasattr(m, "recover"):
            continue
        w = m.recover().detach().float()
        w = w.T if tuple(w.shape) != tuple(weights[name].shape) else w
        scale = m.scales.detach().float().numpy() if hasattr(m, "scales") else None
        if scale is None:
            raise CompileError(f"neural-compressor left no scales on {name}", "report this with the library versions")
        scale = scale.reshape(w.shape[0], -1) if scale.shape[0] == w.shape[0] else scale.T.reshape(w.shape[0], -1)
        out[name] = codes_from_qdq(w.numpy(), scale, s.group_size)
    return out


def compute_int4(model, feeds: Sequence[Mapping[str, np.ndarray]], settings: Int4Settings, *,
                 tokenizer=None, prefix: str = PATH_PREFIX) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """``({module path: {"q": int8 [N, K], "scale": float32 [N, G]}}, report)`` for every Linear the
    algorithm quantized. ``model`` is the HF model inside the SentenceEmbedder (modified in place)."""
    import torch

    if settings.algorithm not in ALGORITHMS:
        raise CompileError(f"unknown int4 algorithm {settings.algorithm!r}", f"choose one of {', '.join(ALGORITHMS)}")
    require(settings.algorithm)
    windows = calibration_windows(feeds, settings.nsamples, settings.seqlen)
    kept = _kept_names(model, settings, prefix)
    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    model.eval()
    try:
        if settings.algorithm == "autoround":
            raw = _autoround(model, windows, settings, tokenizer, kept)
        else:
            raw = _inc(model, windows, settings, kept)
    except (MissingDependencyError, CompileError):
        raise
    except Exception as exc:  # the libraries raise their own types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CompileError(f"{settings.algorithm} int4 computation failed: {type(exc).__name__}: {first}",
                           "re-run with fewer iters/nsamples or another algorithm; report it with the versions"
                           ) from exc
    if not raw:
        raise CompileError(f"{settings.algorithm} quantized no Linear layer", "report this with the model name")
    leaked = sorted(set(raw) & set(kept))
    if leaked:
        raise CompileError(f"{settings.algorithm} quantized {leaked[0]}, which was to be kept",
                           "report this with the library versions")
    layers = {prefix + n: {"q": q, "scale": sc.astype(np.float32)} for n, (q, sc) in raw.items()}
    report = {"layers": len(layers), "kept": sorted(prefix + k for k in kept),
              "calibration_windows": int(len(windows)), "window_tokens": int(windows.shape[1]),
              "seconds": round(time.perf_counter() - t0, 1)}
    return layers, report


def save_layers(path, layers: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    arrays = {}
    for i, (name, d) in enumerate(sorted(layers.items())):
        arrays[f"{i}__q"] = d["q"]
        arrays[f"{i}__scale"] = d["scale"]
        arrays[f"{i}__name"] = np.array(name)
    np.savez(path, **arrays)


def load_layers(path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    with np.load(path) as z:
        ids = sorted({k.split("__")[0] for k in z.files}, key=int)
        for i in ids:
            out[str(z[f"{i}__name"])] = {"q": z[f"{i}__q"], "scale": z[f"{i}__scale"]}
    return out
