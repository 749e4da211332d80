"""The StableLM family (StableLM 2, StableLM-3B-4E1T): partial RoPE over halves, GQA, LayerNorm,
SwiGLU, optional q/k/v bias, per-head LayerNorm on queries and keys, optional parallel residual.

Hugging Face StableLM (``model_type: stablelm``) has the Llama layout (``model.``) with LayerNorm
(weight and bias) for the norms. ``qk_layernorm`` gives every query and key head a LayerNorm of
its own (weight only), stored as ``q_layernorm.norms.{h}``; ``use_parallel_residual`` runs
attention and MLP side by side on the input norm; ``hidden_dropout`` drops the MLP branch alone."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Activation, Expect, Fixed, HFTable, Key, Rope, hf_family,
                                   parallel_residual, token_ids)

TABLE = HFTable(
    display="StableLM",
    model_types=("stablelm",),
    architectures={
        "StableLmForCausalLM": "causal_lm",
        "StableLmForSequenceClassification": "sequence_classification",
        "StableLmForTokenClassification": "token_classification",
        "StableLmModel": None,
    },
    config=[
        Fixed("embedding.kind", "tokens"), Fixed("norm.kind", "layernorm"), Fixed("attention.kind", "gqa"),
        Fixed("attention.out_bias", False), Fixed("mlp.kind", "gated"),
        Key("vocab_size", "vocab_size", 50304),
        Key("hidden_size", "hidden_size", 2560),
        Key("num_hidden_layers", "num_layers", 32),
        Key("max_position_embeddings", "max_positions", 4096),
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", False),
        Key("num_attention_heads", "attention.num_heads", 32),
        Key("num_key_value_heads", "attention.num_kv_heads", 32),
        Key("use_qkv_bias", "attention.qkv_bias", False),
        Key("attention_dropout", "attention.dropout", 0.0),
        Expect("qk_layernorm", False, "LayerNorm on queries and keys needs attention.qk_norm"),
        Key("layer_norm_eps", "norm.eps", 1e-5),
        Key("intermediate_size", "mlp.intermediate_size", 6912),
        Activation("hidden_act", default="silu"),
        parallel_residual(default=False, shared_norm=True),
        Expect("hidden_dropout", 0.0, "StableLM drops the MLP branch alone (training only); wiring.dropout "
                                      "drops both branches"),
        Rope(fraction=0.25),
        *token_ids(pad=None, bos=0, eos=0),
    ],
    tensors=LLAMA_TENSORS,
    heads=HEADS,
)

FAMILY = hf_family(name="stablelm", table=TABLE,
                   description="StableLM: partial RoPE, GQA, LayerNorm, SwiGLU, per-head q/k LayerNorm, optional "
                               "parallel residual")


@hookimpl
def register_families(register):
    register(FAMILY)
