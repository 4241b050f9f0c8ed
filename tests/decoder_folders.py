"""Tiny decoder model folders in the hub's layout (config.json,
model.safetensors, tokenizer files, modules.json + 1_Pooling), written by the
tests from seeded random weights: ``from decoder_folders import ...``."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

RAISING_CODE = 'raise RuntimeError("remote code was executed")\n'

# A stand-in for pplx-embed's own code, written independently of embedc: Qwen3Model
# with non-causal layers and transformers' own bidirectional padding mask.
PPLX_CONFIGURATION = '''from transformers import Qwen3Config


class PPLXQwen3Config(Qwen3Config):
    model_type = "bidirectional_pplx_qwen3"
'''
PPLX_MODELING = '''from transformers import Qwen3Model
from transformers.masking_utils import create_bidirectional_mask

from .configuration import PPLXQwen3Config


class PPLXQwen3Model(Qwen3Model):
    config_class = PPLXQwen3Config

    def __init__(self, config):
        super().__init__(config)
        for layer in self.layers:
            layer.self_attn.is_causal = False

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        embeds = self.embed_tokens(input_ids)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=embeds, attention_mask=attention_mask)
        return super().forward(inputs_embeds=embeds, attention_mask={"full_attention": mask}, **kwargs)
'''
PPLX_AUTO_MAP = {"AutoConfig": "configuration.PPLXQwen3Config", "AutoModel": "modeling.PPLXQwen3Model"}


class Loaded:
    """A decoder preset resolved, its tokenizer prepared and its body loaded, with the
    family's own torch path to hidden states and embeddings. The tokenizer's padding side
    is passed per call, never changed on the (possibly shared) object."""

    def __init__(self, name: str):
        from embedc.families import adapter_for, resolve_family
        from embedc.models import load_tokenizer, resolve_model

        self.source = resolve_model(name)
        self.family, _ = resolve_family(self.source)
        self.tokenizer = self.family.prepare_tokenizer(load_tokenizer(self.source))
        self.adapter = adapter_for(self.source, self.tokenizer)
        self.model = self.family.load_torch(self.source, self.adapter)

    def hidden(self, ids, mask):
        import torch

        with torch.inference_mode():
            return self.family.hidden_states(self.model, torch.as_tensor(ids), torch.as_tensor(mask), self.adapter)

    def embed(self, texts, side: str):
        import torch

        from embedc.exporter.wrapper import pool

        batch = self.tokenizer(texts, padding=True, padding_side=side, return_tensors="pt")
        hidden = self.hidden(batch["input_ids"], batch["attention_mask"])
        with torch.inference_mode():
            return torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], self.adapter.pooling.mode), dim=-1)


@functools.cache
def tiny(name: str) -> Loaded:
    """Loaded once per test session (a Qwen3 tokenizer alone takes seconds to load);
    callers must not modify what they get."""
    return Loaded(name)


def write_tiny_folder(dest: Path, preset_name: str) -> Path:
    """A tiny preset written out as a plain hub folder with model.safetensors."""
    from embedc.models.decoder_presets import write_weights

    loaded = tiny(preset_name)
    shutil.copytree(loaded.source.path, dest)
    write_weights(dest, loaded.model)
    (dest / "embedc_model.json").unlink()  # a hub folder has no embedc facts
    return dest


def variant(base: Path, dest: Path, *, config: dict | None = None, drop: tuple[str, ...] = (),
            files: dict[str, str] | None = None) -> Path:
    """A copy of ``base`` with config.json keys replaced/removed and extra files."""
    shutil.copytree(base, dest)
    cfg = json.loads((dest / "config.json").read_text())
    for key in drop:
        cfg.pop(key, None)
    cfg.update(config or {})
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    for name, text in (files or {}).items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(text)
    return dest


def with_pplx_remote_code(base: Path, dest: Path, *, raising: bool) -> Path:
    """The pplx folder as the hub ships it: auto_map to its own configuration.py and
    modeling.py (which raise when imported if ``raising``)."""
    code = {"configuration.py": RAISING_CODE if raising else PPLX_CONFIGURATION,
            "modeling.py": RAISING_CODE if raising else PPLX_MODELING}
    return variant(base, dest, config={"auto_map": PPLX_AUTO_MAP}, files=code)
