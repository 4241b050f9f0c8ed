"""The int4-weights stage: one torch computation per (export, calibration
split, algorithm settings, library versions, code), cached in the build's
StageCache and shared by every backend's int4 artifact (ORT, OpenVINO,
TensorRT read the same codes); a second build reuses it."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..fsutil import read_json, write_json_atomic
from .compute import Int4Settings, compute_int4, library_names, require, save_layers

log = logging.getLogger("embedc")
STAGE = "int4"
CODE = ("int4/compute.py", "int4/stage.py", "families/*.py")  # families: the calibration forward
INFO = "int4.json"


def int4_key(*, export_key: str, calibration_hash: str, settings: Int4Settings) -> str:
    from ..build.cache import code_digest, content_key

    return content_key(STAGE, {"export": export_key, "calibration": calibration_hash, "settings": settings.to_dict(),
                               "versions": _versions(settings.algorithm), "code": code_digest(*CODE)})


def _versions(algorithm: str) -> dict:
    from importlib import metadata

    out = {}
    for name in library_names(algorithm):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cached_int4_weights(cache, *, export_key: str, calibration_hash: str, settings: Int4Settings,
                        load_model: Callable[[], tuple], feeds: Sequence) -> tuple[Path, dict]:
    """(cache entry folder holding ``layers.npz`` and ``int4.json``, info for the recipe).
    ``load_model()`` returns ``(hf_model, tokenizer)`` and is called only on a miss."""
    require(settings.algorithm)
    key = int4_key(export_key=export_key, calibration_hash=calibration_hash, settings=settings)
    hit = cache.lookup(STAGE, key)
    reused = hit is not None
    if hit is None:
        log.info("computing %s int4 weights (%s)", settings.algorithm, settings.to_dict())

        def fill(tmp: Path) -> None:
            model, tokenizer = load_model()
            layers, report = compute_int4(model, feeds, settings, tokenizer=tokenizer)
            save_layers(tmp / "layers.npz", layers)
            write_json_atomic(tmp / INFO, {"settings": settings.to_dict(), "calibration_sha256": calibration_hash,
                                           "export_key": export_key, "versions": _versions(settings.algorithm),
                                           **report})
        try:
            hit = cache.store(STAGE, key, {"algorithm": settings.algorithm}, fill)
        finally:
            from ..memory import release_memory

            release_memory()  # the torch model AutoRound / GPTQ ran on: gone before the backend's compile
    else:
        log.info("int4 weights: cached (%s)", key[:12])
    info = read_json(hit / INFO)
    library = ("auto_round.AutoRound(bits=4, sym=True, data_type=" +
               ("'int'" if settings.full_range else "'int_sym_gptq'") + ")" if settings.algorithm == "autoround"
               else "neural_compressor.torch.quantization GPTQConfig(bits=4, use_sym=True) prepare/convert")
    return hit, {"algorithm": settings.algorithm, "library": library, "settings": info["settings"],
                 "calibration_sha256": info["calibration_sha256"], "versions": info["versions"],
                 "layers": info["layers"], "calibration_windows": info["calibration_windows"],
                 "compute_seconds": info["seconds"], "stage_key": key, "reused": reused,
                 "computed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((hit / INFO).stat().st_mtime))}


def source_loader(source) -> Callable[[], tuple]:
    """``load_model`` for :func:`cached_int4_weights`: the HF model inside the
    SentenceEmbedder (module paths ``encoder.<name>``, as the export records them)."""
    def load():
        from ..families import load_embedder

        embedder, tokenizer, adapter = load_embedder(source)
        return calibration_forward(embedder.encoder, embedder.family, adapter), tokenizer
    return load


def calibration_forward(model, family, adapter):
    """``model`` (the HF body) with its forward running in the family's attention mode.
    AutoRound and neural-compressor call ``model(input_ids=..., attention_mask=<2-D>)``;
    a bidirectional decoder (pplx-embed, smollm2-135m-bidir) would otherwise calibrate on
    causal activations that the artifact never computes. The instance's ``forward`` is
    replaced (module names, config and weights stay as they are)."""
    import torch

    inner = model.forward

    def forward(input_ids=None, attention_mask=None, **kwargs):
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        for key in ("position_ids", "use_cache"):
            kwargs.pop(key, None)
        return inner(input_ids=input_ids, **kwargs, **family.model_inputs(model, mask, adapter))

    model.forward = forward
    return model
