"""The Phi family (Phi-1, Phi-1.5, Phi-2): partial RoPE over halves, attention and MLP side by side
on one shared LayerNorm, biases everywhere (the LM head's too), plain GELU MLP.

Hugging Face Phi (``model_type: phi``) has separate q/k/v projections and ``dense`` for the output
(``model.``), ``fc1`` / ``fc2`` for the MLP and ``final_layernorm``; ``qk_layernorm`` normalises
each head's queries and keys with one LayerNorm (weight and bias) shared by the heads.
``embd_pdrop`` drops the embeddings, ``resid_pdrop`` each branch."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, Activation, Fixed, Flag, HFTable, Key, Rope, Tensor, hf_family,
                                   token_ids)

TABLE = HFTable(
    display="Phi",
    model_types=("phi",),
    architectures={
        "PhiForCausalLM": "causal_lm",
        "PhiForSequenceClassification": "sequence_classification",
        "PhiForTokenClassification": "token_classification",
        "PhiModel": None,
    },
    config=[
        Fixed("embedding.kind", "tokens"), Fixed("norm.kind", "layernorm"), Fixed("attention.kind", "gqa"),
        Fixed("attention.qkv_bias", True), Fixed("attention.out_bias", True), Fixed("mlp.kind", "plain"),
        Fixed("mlp.bias", True), Fixed("wiring.kind", "parallel"), Fixed("wiring.shared_norm", True),
        Key("vocab_size", "vocab_size", 51200),
        Key("hidden_size", "hidden_size", 2048),
        Key("num_hidden_layers", "num_layers", 24),
        Key("max_position_embeddings", "max_positions", 2048),
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", False),
        Key("embd_pdrop", "embedding.dropout", 0.0),
        Key("num_attention_heads", "attention.num_heads", 32),
        Key("num_key_value_heads", "attention.num_kv_heads", None),
        Key("head_dim", "attention.head_dim", None),
        Key("attention_dropout", "attention.dropout", 0.0),
        Flag("qk_layernorm", "attention.qk_norm", lambda config: {"scope": "head"}),  # the layer's LayerNorm
        Key("layer_norm_eps", "norm.eps", 1e-5),
        Key("intermediate_size", "mlp.intermediate_size", 8192),
        Activation("hidden_act", default="gelu_new"),
        Key("resid_pdrop", "wiring.dropout", 0.0),
        Rope(fraction=0.5),
        *token_ids(pad=None, bos=1, eos=2),
    ],
    tensors=[
        Tensor("embedding.tokens", "{base}embed_tokens"),
        Tensor("final_norm", "{base}final_layernorm"),
        Tensor("layers.{i}.attn_norm", "{base}layers.{i}.input_layernorm"),
        Tensor("layers.{i}.attention.qkv.q", "{base}layers.{i}.self_attn.q_proj"),
        Tensor("layers.{i}.attention.qkv.k", "{base}layers.{i}.self_attn.k_proj"),
        Tensor("layers.{i}.attention.qkv.v", "{base}layers.{i}.self_attn.v_proj"),
        Tensor("layers.{i}.attention.out", "{base}layers.{i}.self_attn.dense"),
        Tensor("layers.{i}.attention.q_norm.norm", "{base}layers.{i}.self_attn.q_layernorm"),
        Tensor("layers.{i}.attention.k_norm.norm", "{base}layers.{i}.self_attn.k_layernorm"),
        Tensor("layers.{i}.mlp.up", "{base}layers.{i}.mlp.fc1"),
        Tensor("layers.{i}.mlp.down", "{base}layers.{i}.mlp.fc2"),
    ],
    heads=HEADS,
    head_fields={"causal_lm": {"bias": True}},
)

FAMILY = hf_family(name="phi", table=TABLE,
                   description="Phi (1, 1.5, 2): partial RoPE, parallel attention and MLP on one LayerNorm, biases "
                               "everywhere, plain GELU MLP")


@hookimpl
def register_families(register):
    register(FAMILY)
