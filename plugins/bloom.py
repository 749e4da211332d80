"""The BLOOM family: ALiBi, embedding LayerNorm, fused per-head QKV, plain GELU MLP, tied LM head.

Hugging Face BLOOM (``model_type: bloom``) stores the fused QKV projection per head, rows
``[H, 3, Dh]`` (``GROUPED_QKV`` with one query per group); the MLP is always 4x wide with biases,
the GELU the tanh one."""

from archcomposer import hookimpl
from archcomposer.hf_table import (GROUPED_QKV, HEADS, Fixed, FourTimesHidden, HFTable, Key, Tensor, hf_family,
                                   token_ids)

TABLE = HFTable(
    display="BLOOM",
    model_types=("bloom",),
    architectures={
        "BloomForCausalLM": "causal_lm",
        "BloomForSequenceClassification": "sequence_classification",
        "BloomForTokenClassification": "token_classification",
        "BloomForQuestionAnswering": "question_answering",
        "BloomModel": None,
    },
    base="transformer.",
    config=[
        Fixed("embedding.kind", "tokens"), Fixed("embedding.norm", True), Fixed("position.kind", "alibi"),
        Fixed("norm.kind", "layernorm"), Fixed("attention.kind", "gqa"), Fixed("attention.qkv_bias", True),
        Fixed("attention.out_bias", True), Fixed("attention.fused_qkv", True), Fixed("mlp.kind", "plain"),
        Fixed("mlp.activation", "gelu_tanh"), Fixed("mlp.bias", True), Fixed("wiring.kind", "pre_norm"),
        Key("vocab_size", "vocab_size", 250880),
        Key(("hidden_size", "n_embed"), "hidden_size", 64),
        Key(("n_layer", "num_hidden_layers"), "num_layers", 2),
        Key(("n_head", "num_attention_heads"), "attention.num_heads", 8),
        Key("seq_length", "max_positions", 2048),  # ALiBi has no limit; BLOOM trained on 2048
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", True),
        Key("layer_norm_epsilon", "norm.eps", 1e-5),
        Key("attention_dropout", "attention.dropout", 0.0),
        Key("apply_residual_connection_post_layernorm", "wiring.residual_from_norm", False),
        Key("hidden_dropout", "wiring.dropout", 0.0),
        FourTimesHidden(),
        *token_ids(pad=None, bos=1, eos=2),
    ],
    tensors=[
        Tensor("embedding.tokens", "{base}word_embeddings"),
        Tensor("embedding.norm", "{base}word_embeddings_layernorm"),
        Tensor("final_norm", "{base}ln_f"),
        Tensor("layers.{i}.attn_norm", "{base}h.{i}.input_layernorm"),
        Tensor("layers.{i}.attention.qkv.proj", "{base}h.{i}.self_attention.query_key_value", GROUPED_QKV),
        Tensor("layers.{i}.attention.out", "{base}h.{i}.self_attention.dense"),
        Tensor("layers.{i}.mlp_norm", "{base}h.{i}.post_attention_layernorm"),
        Tensor("layers.{i}.mlp.up", "{base}h.{i}.mlp.dense_h_to_4h"),
        Tensor("layers.{i}.mlp.down", "{base}h.{i}.mlp.dense_4h_to_h"),
    ],
    heads={**HEADS, "token_classification": "classifier"},
)

FAMILY = hf_family(name="bloom", table=TABLE,
                   description="BLOOM: ALiBi, embedding LayerNorm, fused per-head QKV, plain GELU MLP, tied LM head")


@hookimpl
def register_families(register):
    register(FAMILY)
