"""The GPT-NeoX family (Pythia): partial RoPE over halves, QKV fused per head, LayerNorm, plain GELU
MLP, attention and MLP side by side with a norm each.

Hugging Face GPT-NeoX (``model_type: gpt_neox``) stores the fused QKV projection per head, rows
``[H, 3, Dh]`` (``GROUPED_QKV`` with one query per group), under ``gpt_neox.``; the untied LM head
is ``embed_out``. ``use_parallel_residual`` chooses ``x + attn(ln1(x)) + mlp(ln2(x))`` (parallel,
two norms) or the pre-norm order; ``attention_bias`` is on q/k/v and the output; ``hidden_dropout``
drops the embeddings and each branch. Older configs (Pythia's) name the rotary fraction and base
``rotary_pct`` and ``rotary_emb_base`` and the scaling ``rope_scaling``."""

from archcomposer import hookimpl
from archcomposer.hf_table import (GROUPED_QKV, HEADS, Activation, Fixed, HFTable, Key, Rope, Tensor, hf_family,
                                   parallel_residual, token_ids)


class LegacyRope(Rope):
    """``Rope`` that also reads ``rope_theta`` and ``partial_rotary_factor`` under the older names
    of a family's configs (GPT-NeoX's ``rotary_emb_base`` and ``rotary_pct``), as transformers does."""

    def __init__(self, *, theta_key: str, fraction_key: str, **kwargs):
        super().__init__(**kwargs)
        self.legacy = {"rope_theta": theta_key, "partial_rotary_factor": fraction_key}

    def to_spec(self, config, data):
        renamed = {key: config[old] for key, old in self.legacy.items()
                   if config.get(key) is None and config.get(old) is not None}
        super().to_spec({**config, **renamed}, data)


TABLE = HFTable(
    display="GPT-NeoX",
    model_types=("gpt_neox",),
    architectures={
        "GPTNeoXForCausalLM": "causal_lm",
        "GPTNeoXForSequenceClassification": "sequence_classification",
        "GPTNeoXForTokenClassification": "token_classification",
        "GPTNeoXForQuestionAnswering": "question_answering",
        "GPTNeoXModel": None,
    },
    base="gpt_neox.",
    config=[
        Fixed("embedding.kind", "tokens"), Fixed("norm.kind", "layernorm"), Fixed("attention.kind", "gqa"),
        Fixed("attention.fused_qkv", True), Fixed("mlp.kind", "plain"), Fixed("mlp.bias", True),
        Key("vocab_size", "vocab_size", 50432),
        Key("hidden_size", "hidden_size", 6144),
        Key("num_hidden_layers", "num_layers", 44),
        Key("max_position_embeddings", "max_positions", 2048),
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", False),
        Key("hidden_dropout", "embedding.dropout", 0.0),
        Key("num_attention_heads", "attention.num_heads", 64),
        Key("attention_bias", "attention.qkv_bias", True),
        Key("attention_bias", "attention.out_bias", True),
        Key("attention_dropout", "attention.dropout", 0.0),
        Key("layer_norm_eps", "norm.eps", 1e-5),
        Key("intermediate_size", "mlp.intermediate_size", 24576),
        Activation("hidden_act", default="gelu"),
        parallel_residual(default=True, shared_norm=False),
        Key("hidden_dropout", "wiring.dropout", 0.0),
        LegacyRope(fraction=0.25, theta_key="rotary_emb_base", fraction_key="rotary_pct"),
        *token_ids(pad=None, bos=0, eos=2),
    ],
    tensors=[
        Tensor("embedding.tokens", "{base}embed_in"),
        Tensor("final_norm", "{base}final_layer_norm"),
        Tensor("layers.{i}.attn_norm", "{base}layers.{i}.input_layernorm"),
        Tensor("layers.{i}.attention.qkv.proj", "{base}layers.{i}.attention.query_key_value", GROUPED_QKV),
        Tensor("layers.{i}.attention.out", "{base}layers.{i}.attention.dense"),
        Tensor("layers.{i}.mlp_norm", "{base}layers.{i}.post_attention_layernorm"),
        Tensor("layers.{i}.mlp.up", "{base}layers.{i}.mlp.dense_h_to_4h"),
        Tensor("layers.{i}.mlp.down", "{base}layers.{i}.mlp.dense_4h_to_h"),
    ],
    heads={**HEADS, "causal_lm": "embed_out", "token_classification": "classifier"},
    ignored=(r"\.attention\.(masked_)?bias$",),  # the causal-mask buffers Pythia checkpoints hold
)

FAMILY = hf_family(name="gpt-neox", table=TABLE,
                   description="GPT-NeoX (Pythia): partial RoPE over halves, QKV fused per head, LayerNorm, plain "
                               "GELU MLP, parallel attention and MLP with a norm each")


@hookimpl
def register_families(register):
    register(FAMILY)
