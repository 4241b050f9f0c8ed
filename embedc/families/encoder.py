"""Bidirectional encoders: BERT, RoBERTa, XLM-RoBERTa (multilingual-e5,
MiniLM, BGE-style CLS models). Post-LayerNorm bodies; pooling from the model's
own sentence-transformers config (mean unless it says CLS or last token)."""
from __future__ import annotations

from ..models.loading import load_hf_model, max_sequence_length
from .base import ModelAdapter, ModelFamily, Pooling, register_family


class EncoderFamily(ModelFamily):
    name = "encoder"
    model_types = ("bert", "xlm-roberta", "roberta")
    default_pooling = Pooling("mean")

    def adapter(self, source, config: dict, tokenizer) -> ModelAdapter:
        return ModelAdapter(
            family=self.name, model_type=config["model_type"], attention="bidirectional",
            pooling=Pooling.from_folder(source.path, self.default_pooling),
            max_length=max_sequence_length(config, tokenizer, source.path), hidden_size=int(config["hidden_size"]),
            final_norm="layernorm", padding_side=getattr(tokenizer, "padding_side", "right") or "right")

    def load_torch(self, source, adapter: ModelAdapter | None = None):
        return load_hf_model(source, pooling_layer=False)

    def hidden_states(self, model, input_ids, attention_mask, adapter: ModelAdapter):
        return model(input_ids=input_ids, **self.model_inputs(model, attention_mask, adapter)).last_hidden_state


ENCODER = register_family(EncoderFamily())
