"""Decoder embedders: Qwen3, Qwen2 and Llama bodies (final RMSNorm) in two modes.

- *bidirectional + mean pooling*: pplx-embed-v1 (``bidirectional_pplx_qwen3``),
  run as embedc's own bidirectional Qwen3 from the same safetensors, the way
  text-embeddings-inference serves it: their ``modeling.py`` never runs.
- *causal + last-token pooling*: Qwen3-Embedding.

The mode comes from the model (pplx's model type, config flags, a catalog
folder's ``embedc_model.json``), pooling from its sentence-transformers files.
``hidden_states`` builds position ids and a 4-D additive attention mask from
the 2-D padding mask inside the traced graph: padded keys are never attended,
any padding side gives the same result, and transformers' own mask builders
(vmap, packed-sequence detection, ``is_causal`` shortcuts) are bypassed, which
keeps the dynamo export free of shape specialization.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import ModelSourceError
from ..models.loading import loadable_weights_format, max_sequence_length
from .base import POOLED_OUTPUT, SENTENCE_OUTPUT, TOKEN_OUTPUT, ModelAdapter, ModelFamily, Pooling, register_family
from .decoder_config import (ARCHITECTURES, PPLX_TYPE, attention_mode, build_hf_config, check_config, model_class,
                             read_embedc_model)

REMOTE_ATTR = "_embedc_remote_code"  # set on a model loaded through the folder's own remote code


class DecoderFamily(ModelFamily):
    name = "decoder"
    model_types = tuple(ARCHITECTURES)
    default_pooling = Pooling("last")
    low_memory_path = True

    # int8-static: the MLP down_proj inputs carry decoders' massive activations, which one static scale
    # per tensor does not hold even after SmoothQuant; those MatMuls get 8-bit weights only (activations
    # FP32 on OpenVINO; on ORT, MatMulNBits quantizes them per block of 32 at run time).
    # SmolLM2-135M, evaluation split (benchmarks/decoders.md): causal, OpenVINO mean 0.97146 -> 0.99487
    # (min 0.70 -> 0.95, same size), ORT 0.96576 -> 0.99203 (min 0.84 -> 0.94, 138.2 -> 141.4 MB);
    # bidirectional, ORT 0.99317 -> 0.99616 (min 0.49 -> 0.75). ORT's sensitivity search still runs on top.
    _DOWN_PROJ_WEIGHT_ONLY = {"exclude": ("mlp.down_proj",), "excluded_as": "int8-weight-only"}
    _RECIPES = {("openvino", "int8-static"): _DOWN_PROJ_WEIGHT_ONLY, ("ort", "int8-static"): _DOWN_PROJ_WEIGHT_ONLY}

    def recipe_defaults(self, backend: str, precision: str) -> dict:
        return dict(self._RECIPES.get((backend, precision), {}))

    def replaces_remote_code(self, config: dict) -> bool:
        """pplx-embed's remote code is Qwen3Model with bidirectional attention:
        embedc's own path is that model. Any other auto_map is someone else's code."""
        if config.get("model_type") != PPLX_TYPE:
            return False
        auto_model = (config.get("auto_map") or {}).get("AutoModel", "modeling.PPLXQwen3Model")
        return str(auto_model).rsplit(".", 1)[-1] == "PPLXQwen3Model"

    def adapter(self, source, config: dict, tokenizer: Any) -> ModelAdapter:
        check_config(config, source.name)
        attention = attention_mode(config, source.path)
        default = Pooling("mean") if attention == "bidirectional" else Pooling("last")
        pooling = Pooling.from_folder(source.path, default)
        outputs = (SENTENCE_OUTPUT, TOKEN_OUTPUT)
        if config.get("model_type") == PPLX_TYPE:
            outputs += (POOLED_OUTPUT,)  # pplx's int8/binary outputs quantize the pooled, unnormalized vector
        notes = [str(n) for n in read_embedc_model(source.path).get("notes", [])]
        if config.get("model_type") == PPLX_TYPE:
            notes.append("pplx-embed run as embedc's own bidirectional Qwen3 (the folder's remote code is not run)")
        return ModelAdapter(
            family=self.name, model_type=config["model_type"], attention=attention, pooling=pooling,
            max_length=max_sequence_length(config, tokenizer, source.path), hidden_size=int(config["hidden_size"]),
            final_norm="rmsnorm", padding_side=getattr(tokenizer, "padding_side", "right") or "right",
            outputs=outputs, notes=tuple(notes))

    def load_torch(self, source, adapter: ModelAdapter | None = None, *, low_memory: bool = False):
        """embedc's own FP32 body (eager attention, no KV cache); the folder's
        remote code only for a model type embedc does not replace, with
        ``source.trust_remote_code``. ``low_memory`` fills the body tensor by
        tensor (peak: FP32 size plus one tensor, not transformers' loading copies)."""
        from ..models.loading import read_config

        config = read_config(source.path)
        if "auto_map" in config and not self.replaces_remote_code(config):
            if low_memory:
                raise ModelSourceError(f"{source.name} runs its own remote code, which the low-memory path "
                                       "cannot load tensor by tensor", "build with --low-memory off")
            from .decoder_remote import load_remote_torch

            return load_remote_torch(source)
        if low_memory or _random_seed(source) is not None:
            from ..models.weights import materialize

            model, weights = self.weight_stream(source)
            return materialize(model, weights)
        return load_own_torch(source, config)

    def weight_stream(self, source, adapter: ModelAdapter | None = None):
        """The body with its parameters on the meta device (buffers real) and
        the source of its FP32 tensors: seeded per tensor for a random preset,
        the folder's safetensors otherwise."""
        from ..models.loading import read_config
        from ..models.weights import SafetensorsWeights, SeededWeights, parameter_shapes, parameters_on_meta

        config = read_config(source.path)
        hf_config = build_hf_config(config, source.name)
        with parameters_on_meta():
            model = model_class(config["model_type"])(hf_config)
        seed = _random_seed(source)
        if seed is not None:
            weights = SeededWeights(parameter_shapes(model), seed, float(getattr(hf_config, "initializer_range", 0.02)))
        else:
            if loadable_weights_format(source) != "safetensors":
                raise ModelSourceError(f"{source.path} has no safetensors weights; the low-memory path reads "
                                       "safetensors only", "convert the checkpoint to safetensors")
            weights = SafetensorsWeights(source.path, list(parameter_shapes(model)))
        return model.eval(), weights

    def model_inputs(self, model, attention_mask, adapter: ModelAdapter) -> dict:
        if getattr(model, REMOTE_ATTR, False):  # their code, called the way sentence-transformers does
            return {"attention_mask": attention_mask, "use_cache": False}
        mask_4d, position_ids = attention_inputs(attention_mask, adapter.attention, model.dtype)
        return {"attention_mask": mask_4d, "position_ids": position_ids, "use_cache": False}

    def hidden_states(self, model, input_ids, attention_mask, adapter: ModelAdapter):
        return model(input_ids=input_ids, **self.model_inputs(model, attention_mask, adapter)).last_hidden_state

    def prepare_tokenizer(self, tokenizer: Any, adapter: ModelAdapter | None = None) -> Any:
        """Decoder tokenizers often lack a pad token: pad with EOS (attention
        never sees padding, so its id does not matter)."""
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ModelSourceError("the tokenizer has neither a pad nor an EOS token",
                                       "add a pad_token to tokenizer_config.json")
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer


def load_own_torch(source, config: dict):
    """Qwen3Model / Qwen2Model / LlamaModel from safetensors, whatever the
    folder's model_type and auto_map say."""
    import torch

    hf_config = build_hf_config(config, source.name)
    cls = model_class(config["model_type"])
    fmt = loadable_weights_format(source)
    try:
        model, info = cls.from_pretrained(str(source.path), config=hf_config, dtype=torch.float32,
                                          use_safetensors=fmt == "safetensors", output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load weights from {source.path}: {str(exc).splitlines()[0]}",
                               "check that the folder is an intact Hugging Face model") from exc
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ModelSourceError(f"{source.path} lacks {len(missing)} weight(s) of {cls.__name__} (e.g. {missing[0]})",
                               "the checkpoint does not match its config.json")
    return model.float().eval()


def _random_seed(source) -> int | None:
    """The seed of a random preset folder (its weights are drawn per tensor), else None."""
    from ..models.catalog import RANDOM_MARKER

    marker = source.path / RANDOM_MARKER
    return int(json.loads(marker.read_text())["seed"]) if marker.is_file() else None


def attention_inputs(attention_mask, attention: str, dtype):
    """(4-D additive mask [batch, 1, query, key], position ids) from a 2-D
    padding mask. Positions count attended tokens only, so left padding gives
    the same positions as right padding; padded keys get the dtype's minimum."""
    import torch

    mask = attention_mask.to(torch.long)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    allowed = mask.bool()[:, None, None, :]
    idx = torch.arange(mask.shape[-1], device=mask.device)
    if attention == "causal":
        allowed = allowed & (idx[:, None] >= idx[None, :])[None, None]
    # Every query also sees itself: only padded query rows change (their outputs are never pooled),
    # and no row is fully masked, so an FP16 graph (where the minimum becomes -inf) cannot make NaN.
    allowed = allowed | (idx[:, None] == idx[None, :])[None, None]
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min), position_ids


DECODER = register_family(DecoderFamily())
