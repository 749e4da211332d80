"""The Granite family: the Llama layout with muP multipliers on the embedding, the attention
scores, each residual branch and the logits (IBM Granite 3.0 to 3.3).

Hugging Face Granite (``model_type: granite``) has the Llama layout under ``model.`` and four
multipliers: ``embedding_multiplier`` scales the token embeddings (``embedding.scale``),
``attention_multiplier`` replaces head_dim**-0.5 as the score scale (``attention.scale``),
``residual_multiplier`` scales each branch before it is added (``wiring.residual_scale``), and
the LM head divides its logits by ``logits_scaling`` (``logit_scale`` = 1 / logits_scaling)."""

import math

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, HFTable, Key, Rope, hf_family, llama_config, reciprocal,
                                   token_ids)


class EmbeddingMultiplier:
    """``embedding_multiplier`` <-> ``embedding.scale`` (a number: ``sqrt_hidden_size`` is written
    as its value, and the read-back check names the field)."""

    def to_spec(self, config, data):
        data.setdefault("embedding", {})["scale"] = config.get("embedding_multiplier", 1.0)

    def to_config(self, spec, config):
        scale = getattr(spec.embedding, "scale", 1.0)
        config["embedding_multiplier"] = spec.hidden_size**0.5 if scale == "sqrt_hidden_size" else scale


class AttentionMultiplier:
    """``attention_multiplier`` <-> ``attention.scale``, left unset where it is head_dim**-0.5 (the
    default scale). transformers' default multiplier is 1.0."""

    def to_spec(self, config, data):
        multiplier = config.get("attention_multiplier", 1.0)
        a = data["attention"]
        if not math.isclose(multiplier, (a.get("head_dim") or data["hidden_size"] // a["num_heads"]) ** -0.5):
            a["scale"] = multiplier

    def to_config(self, spec, config):
        config["attention_multiplier"] = spec.attention.score_scale


TABLE = HFTable(
    display="Granite",
    model_types=("granite",),
    architectures={"GraniteForCausalLM": "causal_lm", "GraniteModel": None},
    config=[
        *llama_config(),
        EmbeddingMultiplier(),
        AttentionMultiplier(),
        Key("residual_multiplier", "wiring.residual_scale", 1.0),
        Rope(),
        *token_ids(pad=None, bos=1, eos=2),
    ],
    head_config={"causal_lm": [Key("logits_scaling", "logit_scale", 1.0, read=reciprocal, write=reciprocal)]},
    tensors=LLAMA_TENSORS,
    heads=HEADS,
)

FAMILY = hf_family(name="granite", table=TABLE,
                   description="Granite: the Llama layout with embedding, attention, residual and logit multipliers")


@hookimpl
def register_families(register):
    register(FAMILY)
