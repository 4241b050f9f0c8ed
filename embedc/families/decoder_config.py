"""What a decoder's config.json means, decided once and checked: which
transformers classes run it, which attention mode it has, and whether every
field is one the installed transformers honours. A field it would ignore or
read differently (RoPE above all: transformers 4.57 ignores the v5
``rope_parameters`` key, and 5.x lets ``rope_scaling`` override it) is refused
with a one-line ``ModelSourceError``: never a silently different model."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ModelSourceError

PPLX_TYPE = "bidirectional_pplx_qwen3"
EMBEDC_MODEL_FILE = "embedc_model.json"  # embedc's own facts about a folder (catalog entries write it)

# model_type -> (config class, base model class) in transformers
ARCHITECTURES = {
    "qwen3": ("Qwen3Config", "Qwen3Model"),
    "qwen2": ("Qwen2Config", "Qwen2Model"),
    "llama": ("LlamaConfig", "LlamaModel"),
    PPLX_TYPE: ("Qwen3Config", "Qwen3Model"),  # pplx's config class is a plain Qwen3Config
}
# Static RoPE variants transformers computes once from the config; "dynamic" and
# "longrope" switch frequencies with the input length, which an exported graph would freeze.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

# Keys read here (attention, RoPE) or with no effect on the forward pass of the base model.
_HANDLED_KEYS = {"auto_map", "torch_dtype", "rope_theta", "rope_scaling", "use_bidirectional_attention",
                 "is_causal", "unk_token_id", "sep_token_id", "tokenizer_class", "_attn_implementation_autoset",
                 "transformers.js_config"}
# Keys that are harmless only at their no-op value.
_INERT_VALUES = {"use_mrope": (False, None), "pretraining_tp": (1, None), "attn_logit_softcapping": (None,),
                 "final_logit_softcapping": (None,)}


def read_embedc_model(folder: Path) -> dict:
    path = Path(folder) / EMBEDC_MODEL_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path} is not valid JSON", "repair or remove it") from exc
    return data if isinstance(data, dict) else {}


def attention_mode(config: dict, folder: Path) -> str:
    """``bidirectional`` or ``causal``: a catalog folder's own statement
    (embedc_model.json) first, then the config (pplx's model type,
    ``use_bidirectional_attention``, ``is_causal``), else causal."""
    stated = read_embedc_model(folder).get("attention")
    if stated is not None:
        if stated not in ("bidirectional", "causal"):
            raise ModelSourceError(f"{folder}/{EMBEDC_MODEL_FILE} names attention {stated!r}",
                                   "use 'bidirectional' or 'causal'")
        return stated
    _check_attention_flags(config, f"{folder}/config.json")
    if config.get("model_type") == PPLX_TYPE or config.get("use_bidirectional_attention") \
            or config.get("is_causal") is False:
        return "bidirectional"
    return "causal"


def _check_attention_flags(config: dict, where: str) -> None:
    bidir_flag = config.get("use_bidirectional_attention")
    causal_flag = config.get("is_causal")
    if config.get("model_type") == PPLX_TYPE and (bidir_flag is False or causal_flag is True):
        raise ModelSourceError(f"{where} is {PPLX_TYPE} but marks attention causal",
                               "pplx-embed is bidirectional: fix the config")
    if bidir_flag is not None and causal_flag is not None and bool(bidir_flag) == bool(causal_flag):
        raise ModelSourceError(f"{where} sets use_bidirectional_attention={bidir_flag} "
                               f"and is_causal={causal_flag}", "keep one of the two fields")


def check_config(config: dict, where: str) -> None:
    """Refuse what embedc's decoder path would run differently from the original."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ModelSourceError(f"{where}: model type {model_type!r} is not a decoder embedc runs",
                               f"supported: {', '.join(ARCHITECTURES)}")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?") if isinstance(
            config["quantization_config"], dict) else "?"
        raise ModelSourceError(f"{where} holds pre-quantized weights ({method})",
                               "pass the FP32/BF16 original; embedc quantizes it itself")
    sliding = [t for t in (config.get("layer_types") or []) if t != "full_attention"]
    if config.get("use_sliding_window") or sliding:
        raise ModelSourceError(f"{where} uses sliding-window attention, which embedc's decoder export does not build",
                               "set use_sliding_window false only if the model was trained without it")
    _check_attention_flags(config, where)
    _unknown_fields(config, where)
    declared_rope(config, where)


def _unknown_fields(config: dict, where: str) -> None:
    known = set(_config_class(config["model_type"])().to_dict())
    odd = []
    for key, value in config.items():
        if key in known or key in _HANDLED_KEYS:
            continue
        if key in _INERT_VALUES:
            if value not in _INERT_VALUES[key]:
                odd.append(f"{key}={value!r}")
            continue
        odd.append(key)
    if odd:
        raise ModelSourceError(f"{where}: config field(s) {', '.join(sorted(odd))} would be ignored by "
                               f"transformers' {config['model_type']} model",
                               "remove them if they do not change the forward pass, else the model is not supported")


def declared_rope(config: dict, where: str) -> dict:
    """The RoPE the config states, read the same way whichever transformers is
    installed: ``{"rope_type", "rope_theta", ...scaling keys}``. Ambiguous
    configs (keys that 4.57 and 5.x resolve differently) are refused."""
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    top_theta = config.get("rope_theta")
    if params is not None and not isinstance(params, dict):
        raise ModelSourceError(f"{where}: rope_parameters is not an object", "fix config.json")
    if params and any(isinstance(v, dict) for v in params.values()):
        raise ModelSourceError(f"{where}: per-layer-type rope_parameters are not supported",
                               "embedc's decoder family runs one RoPE for all layers")
    if params and scaling:
        raise ModelSourceError(f"{where} sets both rope_parameters and rope_scaling (transformers 5 reads "
                               "rope_scaling, dropping rope_parameters' theta)", "keep only rope_parameters")
    rope = dict(params or scaling or {})
    if "type" in rope:
        rope.setdefault("rope_type", rope.pop("type"))
    if top_theta is not None and "rope_theta" in rope and not math.isclose(float(top_theta), float(rope["rope_theta"])):
        raise ModelSourceError(f"{where} states two RoPE thetas (rope_theta {top_theta} and rope_parameters "
                               f"{rope['rope_theta']}; transformers 4.57 and 5 pick different ones)",
                               "keep one theta")
    rope.setdefault("rope_type", "default")
    theta = rope.get("rope_theta", top_theta)
    # No theta anywhere: both 4.57 and 5.x fall back to the class default (10000).
    rope["rope_theta"] = float(theta) if theta is not None else float(
        getattr(_config_class(config["model_type"]), "default_theta", 10_000.0))
    if rope["rope_type"] not in STATIC_ROPE_TYPES:
        raise ModelSourceError(f"{where}: RoPE type {rope['rope_type']!r} is not supported (its frequencies "
                               "depend on the input length, which an exported graph would freeze)",
                               f"supported RoPE types: {', '.join(STATIC_ROPE_TYPES)}")
    return rope


def effective_rope(hf_config: Any) -> dict:
    """The RoPE a built transformers config object will run (4.57: rope_theta +
    rope_scaling attributes; 5.x: rope_parameters)."""
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        rope = dict(params)
    else:
        rope = dict(getattr(hf_config, "rope_scaling", None) or {})
        rope.setdefault("rope_theta", getattr(hf_config, "rope_theta", None))
    if "type" in rope:
        rope.setdefault("rope_type", rope.pop("type"))
    rope.setdefault("rope_type", "default")
    return rope


def check_rope_honoured(declared: dict, hf_config: Any, where: str) -> None:
    """The built config runs the RoPE the file declares (type, theta, scaling factors)."""
    got = effective_rope(hf_config)
    for key, want in declared.items():
        have = got.get(key)
        same = (math.isclose(float(have), float(want), rel_tol=1e-9) if isinstance(want, (int, float))
                and isinstance(have, (int, float)) and not isinstance(want, bool) else have == want)
        if not same:
            raise ModelSourceError(f"{where}: installed transformers would run RoPE {key}={have!r}, "
                                   f"config.json says {want!r}", "use transformers >= 5 or fix config.json")


def build_hf_config(config: dict, where: str):
    """The transformers config object for embedc's own path: the stock class of
    the architecture (pplx -> Qwen3Config), eager attention, no KV cache."""
    check_config(config, where)
    cls = _config_class(config["model_type"])
    data = {k: v for k, v in config.items()
            if k not in ("model_type", "auto_map", "architectures", "quantization_config")}
    hf_config = cls.from_dict(data, attn_implementation="eager")
    hf_config.use_cache = False
    check_rope_honoured(declared_rope(config, where), hf_config, where)
    return hf_config


def _config_class(model_type: str):
    import transformers

    return getattr(transformers, ARCHITECTURES[model_type][0])


def model_class(model_type: str):
    import transformers

    return getattr(transformers, ARCHITECTURES[model_type][1])
