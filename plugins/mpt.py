"""The MPT family: ALiBi, fused QKV, LayerNorms without bias, a 4x GELU MLP, no linear biases.

Hugging Face MPT (``model_type: mpt``), under ``transformer.``: ``Wqkv`` rows ``[q | k | v]`` (ours),
optionally clamped to ``clip_qkv``; scores scaled by ``softmax_scale`` (1/sqrt(head_dim) when
unset); ALiBi with BLOOM's slopes for ``alibi_bias_max`` 8. MPT adds ALiBi by key index where ours
adds it by key position: the two differ by a constant per query row, which softmax ignores, so
padded batches match too. transformers' MPT fixes much of what MosaicML's config can vary (no
biases whatever ``no_bias`` says, a 4 x d_model MLP, always ALiBi with 8 as its maximum bias, no
QK LayerNorm, no logit scale); such keys are read only at the value transformers computes with."""

from archcomposer import hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_table import HEADS, Expect, Fixed, FourTimesHidden, HFTable, Key, Tensor, hf_family, token_ids

_IGNORED = "transformers' MPT ignores it"


class _AttnConfig:
    """Rows for the keys of config.json's ``attn_config`` object."""

    def __init__(self, *rows):
        self.rows = rows

    def to_spec(self, config, data):
        sub = config.get("attn_config") or {}
        for row in self.rows:
            try:
                row.to_spec(sub, data)
            except CheckpointError as exc:
                raise CheckpointError(str(exc).replace("config.json ", "config.json attn_config.", 1)) from None

    def to_config(self, spec, config):
        sub = config.setdefault("attn_config", {})
        for row in self.rows:
            row.to_config(spec, sub)


def _int_if_whole(p: float) -> float | int:
    """transformers' MptAttentionConfig types attn_pdrop as an int (and refuses 0.0)."""
    return int(p) if p == int(p) else p


TABLE = HFTable(
    display="MPT",
    model_types=("mpt",),
    architectures={
        "MptForCausalLM": "causal_lm",
        "MptForSequenceClassification": "sequence_classification",
        "MptForTokenClassification": "token_classification",
        "MptForQuestionAnswering": "question_answering",
        "MptModel": None,
    },
    base="transformer.",
    config=[
        Fixed("embedding.kind", "tokens"), Fixed("position.kind", "alibi"), Fixed("norm.kind", "layernorm"),
        Fixed("norm.bias", False), Fixed("attention.kind", "gqa"), Fixed("attention.fused_qkv", True),
        Fixed("mlp.kind", "plain"), Fixed("mlp.activation", "gelu"), Fixed("mlp.bias", False),
        Fixed("wiring.kind", "pre_norm"),
        Key(("d_model", "hidden_size"), "hidden_size", 2048),
        Key(("n_layers", "num_hidden_layers"), "num_layers", 24),
        Key(("n_heads", "num_attention_heads"), "attention.num_heads", 16),
        Key("max_seq_len", "max_positions", 2048),
        Key("vocab_size", "vocab_size", 50368),
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", True),
        Key("layer_norm_epsilon", "norm.eps", 1e-5),
        Expect("no_bias", True, f"{_IGNORED} and builds no biases"),
        Expect("expansion_ratio", 4, f"{_IGNORED} and builds a 4 x d_model MLP"),
        Expect("logit_scale", None, f"{_IGNORED} and does not scale the logits"),
        Expect("embedding_fraction", 1.0, "it scales the embedding's gradient, which transformers' MPT does not"),
        FourTimesHidden(),
        _AttnConfig(
            Key("attn_pdrop", "attention.dropout", 0.0, write=_int_if_whole),
            Key("attn_pdrop", "wiring.dropout", 0.0, write=_int_if_whole),  # MPT drops each branch output with it too
            Key("softmax_scale", "attention.scale", None),
            Key("clip_qkv", "attention.clip_qkv", None),
            Expect("alibi", True, f"{_IGNORED} and always adds ALiBi"),
            Expect("alibi_bias_max", 8, f"{_IGNORED} and computes ALiBi's slopes for 8"),
            Expect("attn_type", "multihead_attention", f"{_IGNORED} and builds multi-head attention"),
            Expect("qk_ln", False, f"{_IGNORED} and normalises no queries or keys"),
            Expect("prefix_lm", False, f"{_IGNORED} and attends causally"),
            Expect("attn_uses_sequence_id", False, f"{_IGNORED} and attends across sequence ids"),
        ),
        *token_ids(pad=None, bos=None, eos=None),
    ],
    tensors=[
        Tensor("embedding.tokens", "{base}wte"),
        Tensor("final_norm", "{base}norm_f"),
        Tensor("layers.{i}.attn_norm", "{base}blocks.{i}.norm_1"),
        Tensor("layers.{i}.attention.qkv.proj", "{base}blocks.{i}.attn.Wqkv"),
        Tensor("layers.{i}.attention.out", "{base}blocks.{i}.attn.out_proj"),
        Tensor("layers.{i}.mlp_norm", "{base}blocks.{i}.norm_2"),
        Tensor("layers.{i}.mlp.up", "{base}blocks.{i}.ffn.up_proj"),
        Tensor("layers.{i}.mlp.down", "{base}blocks.{i}.ffn.down_proj"),
    ],
    heads={**HEADS, "token_classification": "classifier"},
)

FAMILY = hf_family(name="mpt", table=TABLE,
                   description="MPT: ALiBi, fused QKV (optionally clipped), bias-free LayerNorms, 4x GELU MLP, "
                               "no linear biases, tied LM head")


@hookimpl
def register_families(register):
    register(FAMILY)
