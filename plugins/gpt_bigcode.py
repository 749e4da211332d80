"""The GPT-BigCode family (SantaCoder, StarCoder): GPT-2 with multi-query attention and nn.Linear.

Hugging Face GPT-BigCode (``model_type: gpt_bigcode``) has GPT-2's config keys and layout under
``transformer.``, but its projections are ``nn.Linear`` (no transpose) and with ``multi_query``
(the default) one key/value head: ``c_attn`` rows ``[q | k | v]``. Without it, the rows are per
head ``[H, 3, Dh]``: both are ``GROUPED_QKV`` (one group of H queries, or H groups of one).
``attention_softmax_in_fp32`` and ``scale_attention_softmax_in_fp32`` only change reduced
precision, so they are accepted."""

from archcomposer import hookimpl
from archcomposer.hf_table import GROUPED_QKV, HEADS, Activation, HFTable, Tensor, hf_family
from archcomposer.plugins.gpt2 import CONFIG, AttentionScale


class MultiQuery:
    """``multi_query`` (one key/value head) <-> ``attention.num_kv_heads`` (1, or every head)."""

    def to_spec(self, config, data):
        data.setdefault("attention", {})["num_kv_heads"] = 1 if config.get("multi_query", True) else None

    def to_config(self, spec, config):
        a = spec.attention
        config["multi_query"] = a.num_kv_heads == 1 and a.num_heads > 1


TABLE = HFTable(
    display="GPT-BigCode",
    model_types=("gpt_bigcode",),
    architectures={
        "GPTBigCodeForCausalLM": "causal_lm",
        "GPTBigCodeForSequenceClassification": "sequence_classification",
        "GPTBigCodeForTokenClassification": "token_classification",
        "GPTBigCodeModel": None,
    },
    base="transformer.",
    config=[*CONFIG, Activation("activation_function", default="gelu_pytorch_tanh"), MultiQuery(),
            AttentionScale(by_layer=False)],
    tensors=[
        Tensor("embedding.tokens", "{base}wte"),
        Tensor("embedding.positions", "{base}wpe"),
        Tensor("final_norm", "{base}ln_f"),
        Tensor("layers.{i}.attn_norm", "{base}h.{i}.ln_1"),
        Tensor("layers.{i}.attention.qkv.proj", "{base}h.{i}.attn.c_attn", GROUPED_QKV),
        Tensor("layers.{i}.attention.out", "{base}h.{i}.attn.c_proj"),
        Tensor("layers.{i}.mlp_norm", "{base}h.{i}.ln_2"),
        Tensor("layers.{i}.mlp.up", "{base}h.{i}.mlp.c_fc"),
        Tensor("layers.{i}.mlp.down", "{base}h.{i}.mlp.c_proj"),
    ],
    heads={**HEADS, "token_classification": "classifier"},
)

FAMILY = hf_family(name="gpt-bigcode", table=TABLE,
                   description="GPT-BigCode (StarCoder): GPT-2 layout with multi-query attention, learned "
                               "positions, tied LM head")


@hookimpl
def register_families(register):
    register(FAMILY)
