"""The StarCoder 2 family: full RoPE, GQA, LayerNorm, plain GELU MLP, biases on every projection,
a sliding window on every layer.

Hugging Face StarCoder 2 (``model_type: starcoder2``) has the Llama layout's attention and norms
(``model.``), with a plain MLP ``c_fc`` / ``c_proj``; ``use_bias`` switches every projection's
bias; ``residual_dropout`` drops each branch and ``embedding_dropout`` the embeddings."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Activation, Fixed, HFTable, Key, Rope, Tensor,
                                   hf_family, token_ids)

TABLE = HFTable(
    display="StarCoder 2",
    model_types=("starcoder2",),
    architectures={
        "Starcoder2ForCausalLM": "causal_lm",
        "Starcoder2ForSequenceClassification": "sequence_classification",
        "Starcoder2ForTokenClassification": "token_classification",
        "Starcoder2Model": None,
    },
    config=[
        Fixed("embedding.kind", "tokens"), Fixed("norm.kind", "layernorm"), Fixed("attention.kind", "gqa"),
        Fixed("mlp.kind", "plain"), Fixed("wiring.kind", "pre_norm"),
        Key("vocab_size", "vocab_size", 49152),
        Key("hidden_size", "hidden_size", 3072),
        Key("num_hidden_layers", "num_layers", 30),
        Key("max_position_embeddings", "max_positions", 4096),
        Key("initializer_range", "initializer_range", 0.018042),
        Key("tie_word_embeddings", "embedding.tied", True),
        Key("embedding_dropout", "embedding.dropout", 0.0),
        Key("num_attention_heads", "attention.num_heads", 24),
        Key("num_key_value_heads", "attention.num_kv_heads", 2),
        Key("head_dim", "attention.head_dim", None),
        Key("use_bias", "attention.qkv_bias", True),
        Key("use_bias", "attention.out_bias", True),
        Key("use_bias", "mlp.bias", True),
        Key("attention_dropout", "attention.dropout", 0.0),
        Key("sliding_window", "attention.sliding_window", None),
        Key("norm_epsilon", "norm.eps", 1e-5),
        Key("intermediate_size", "mlp.intermediate_size", 12288),
        Activation("hidden_act", default="gelu_pytorch_tanh"),
        Key("residual_dropout", "wiring.dropout", 0.0),
        Rope(),
        *token_ids(pad=None, bos=50256, eos=50256),
    ],
    tensors=[*(t for t in LLAMA_TENSORS if ".mlp." not in t.ours),
             Tensor("layers.{i}.mlp.up", "{base}layers.{i}.mlp.c_fc"),
             Tensor("layers.{i}.mlp.down", "{base}layers.{i}.mlp.c_proj")],
    heads=HEADS,
)

FAMILY = hf_family(name="starcoder2", table=TABLE,
                   description="StarCoder 2: full RoPE, GQA, LayerNorm, plain GELU MLP, biases on every projection, "
                               "sliding window")


@hookimpl
def register_families(register):
    register(FAMILY)
