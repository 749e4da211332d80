"""The OLMo 2 family: RMSNorm on each branch's output instead of its input, and RMSNorm over the
whole query and key projections.

Hugging Face OLMo 2 (``model_type: olmo2``) has the Llama layout's projections under ``model.``;
each layer normalises the attention output (``post_attention_layernorm``) and the MLP output
(``post_feedforward_layernorm``) before adding them to the residual, and has no input norms;
``q_norm`` and ``k_norm`` normalise the query and key projections over all their channels
(H x Dh and Hkv x Dh) before RoPE."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Fixed, HFTable, Rope, Tensor, hf_family, llama_config,
                                   token_ids, without)

TABLE = HFTable(
    display="OLMo 2",
    model_types=("olmo2",),
    architectures={
        "Olmo2ForCausalLM": "causal_lm",
        "Olmo2ForSequenceClassification": "sequence_classification",
        "Olmo2Model": None,
    },
    config=[
        *without(llama_config(vocab_size=50304, eps=1e-5), "wiring.kind", "mlp.bias"),
        Fixed("wiring.kind", "post_branch_norm"), Fixed("mlp.bias", False),
        Fixed("attention.qk_norm", {"scope": "projection"}),
        Rope(),
        *token_ids(pad=1, bos=None, eos=50279),
    ],
    tensors=[
        *(t for t in LLAMA_TENSORS if not t.ours.endswith(("attn_norm", "mlp_norm"))),
        Tensor("layers.{i}.attn_post_norm", "{base}layers.{i}.post_attention_layernorm"),
        Tensor("layers.{i}.mlp_post_norm", "{base}layers.{i}.post_feedforward_layernorm"),
        Tensor("layers.{i}.attention.q_norm.norm", "{base}layers.{i}.self_attn.q_norm"),
        Tensor("layers.{i}.attention.k_norm.norm", "{base}layers.{i}.self_attn.k_norm"),
    ],
    heads=HEADS,
)

FAMILY = hf_family(name="olmo2", table=TABLE,
                   description="OLMo 2: RMSNorm on each branch output (post-branch norm), RMSNorm over the "
                               "query and key projections, Llama layout otherwise")


@hookimpl
def register_families(register):
    register(FAMILY)
