"""The GPT-2 family: learned absolute positions, LayerNorm, fused QKV, plain GELU MLP, tied LM head.

Hugging Face GPT-2 (``model_type: gpt2``) stores its projections as ``Conv1D``, weights [in, out]
(``TRANSPOSED``), with QKV fused as rows ``[q | k | v]`` (ours), under ``transformer.``. The
config keys are GPT-2's own (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``, ``n_inner``,
the three ``*_pdrop``). GPT2DoubleHeadsModel (LM plus a multiple-choice summary head) is not read:
we have no multiple-choice head."""

import math
from dataclasses import replace

from archcomposer import hookimpl
from archcomposer.hf_table import (ACTIVATIONS_TO_HF, HEADS, TRANSPOSED, Activation, Expect, Fixed, HFTable, Key,
                                   Tensor, hf_family, token_ids)


class InnerWidth:
    """``n_inner`` (None: 4 x ``n_embd``) <-> ``mlp.intermediate_size``."""

    def to_spec(self, config, data):
        inner = config.get("n_inner")
        data.setdefault("mlp", {})["intermediate_size"] = inner if inner is not None else 4 * data["hidden_size"]

    def to_config(self, spec, config):
        config["n_inner"] = spec.mlp.intermediate_size


class AttentionScale:
    """``scale_attn_weights`` (False: no 1/sqrt(head_dim)) <-> ``attention.scale`` 1.0; with
    ``by_layer``, also ``scale_attn_by_inverse_layer_idx`` (layer i's scale divided by i + 1)
    <-> a ``layers`` entry per layer after the first setting its ``attention.scale``."""

    def __init__(self, *, by_layer: bool):
        self.by_layer = by_layer

    def to_spec(self, config, data):
        attention = data["attention"]
        weights = config.get("scale_attn_weights", True)
        if not weights:
            attention["scale"] = 1.0
        if self.by_layer and config.get("scale_attn_by_inverse_layer_idx", False):
            base = (data["hidden_size"] // attention["num_heads"]) ** -0.5 if weights else 1.0
            data["layers"] = [{"indices": [i], "attention": {"scale": base / (i + 1)}}
                              for i in range(1, data["num_layers"])]

    def to_config(self, spec, config):
        # Another scale reads back as head_dim**-0.5 (or 1.0) and the read-back check names it.
        scales = [layer.attention.score_scale for layer in spec.layer_specs]
        config["scale_attn_weights"] = scales[0] is None or not math.isclose(scales[0], 1.0)
        if self.by_layer:
            config["scale_attn_by_inverse_layer_idx"] = (
                len(scales) > 1 and None not in scales[:2] and math.isclose(scales[1], scales[0] / 2))


#: GPT-2's name for the tanh GELU is gelu_new (the same function).
GPT2_ACTIVATION = replace(Activation("activation_function", default="gelu_new"),
                          write={**ACTIVATIONS_TO_HF, "gelu_tanh": "gelu_new"}.__getitem__)

#: GPT-2's config rows, which GPT-BigCode shares but for its attention and activation.
CONFIG = [
    Fixed("embedding.kind", "tokens"), Fixed("embedding.learned_positions", {"offset": 0}),
    Fixed("position.kind", "none"), Fixed("norm.kind", "layernorm"), Fixed("attention.kind", "gqa"),
    Fixed("attention.qkv_bias", True), Fixed("attention.out_bias", True), Fixed("attention.fused_qkv", True),
    Fixed("mlp.kind", "plain"), Fixed("mlp.bias", True), Fixed("wiring.kind", "pre_norm"),
    Key("vocab_size", "vocab_size", 50257),
    Key(("n_embd", "hidden_size"), "hidden_size", 768),
    Key(("n_layer", "num_hidden_layers"), "num_layers", 12),
    Key(("n_head", "num_attention_heads"), "attention.num_heads", 12),
    Key(("n_positions", "max_position_embeddings"), "max_positions", 1024),
    Key("initializer_range", "initializer_range", 0.02),
    Key("tie_word_embeddings", "embedding.tied", True),
    Key("layer_norm_epsilon", "norm.eps", 1e-5),
    Key("embd_pdrop", "embedding.dropout", 0.1),
    Key("attn_pdrop", "attention.dropout", 0.1),
    Key("resid_pdrop", "wiring.dropout", 0.1),
    InnerWidth(),
    Expect("add_cross_attention", False, "cross-attention layers over an encoder's states (an encoder-decoder use)"),
    *token_ids(pad=None, bos=50256, eos=50256),
]

TABLE = HFTable(
    display="GPT-2",
    model_types=("gpt2",),
    architectures={
        "GPT2LMHeadModel": "causal_lm",
        "GPT2ForSequenceClassification": "sequence_classification",
        "GPT2ForTokenClassification": "token_classification",
        "GPT2ForQuestionAnswering": "question_answering",
        "GPT2Model": None,
    },
    base="transformer.",
    # reorder_and_upcast_attn scales before the product and upcasts to fp32: the same in fp32.
    config=[*CONFIG, GPT2_ACTIVATION, AttentionScale(by_layer=True)],
    tensors=[
        Tensor("embedding.tokens", "{base}wte"),
        Tensor("embedding.positions", "{base}wpe"),
        Tensor("final_norm", "{base}ln_f"),
        Tensor("layers.{i}.attn_norm", "{base}h.{i}.ln_1"),
        Tensor("layers.{i}.attention.qkv.proj", "{base}h.{i}.attn.c_attn", TRANSPOSED),
        Tensor("layers.{i}.attention.out", "{base}h.{i}.attn.c_proj", TRANSPOSED),
        Tensor("layers.{i}.mlp_norm", "{base}h.{i}.ln_2"),
        Tensor("layers.{i}.mlp.up", "{base}h.{i}.mlp.c_fc", TRANSPOSED),
        Tensor("layers.{i}.mlp.down", "{base}h.{i}.mlp.c_proj", TRANSPOSED),
    ],
    heads={**HEADS, "token_classification": "classifier"},
    ignored=(r"\.attn\.(masked_)?bias$",),  # the causal-mask buffers older GPT-2 checkpoints hold
)

FAMILY = hf_family(name="gpt2", table=TABLE,
                   description="GPT-2: learned positions, LayerNorm, fused QKV (Conv1D), plain GELU MLP, tied LM head")


@hookimpl
def register_families(register):
    register(FAMILY)
