"""The OLMoE family (OLMoE-1B-7B): OLMo's attention with RMSNorm over the whole query and key
projections and a mixture of experts in every layer.

Hugging Face OLMoE (``model_type: olmoe``) has the Llama layout under ``model.``, ``q_norm`` and
``k_norm`` over the query and key projections (all their channels) before ``clip_qkv`` clamps q,
k and v, ``attention_bias`` on q, k, v and o, and in every layer ``mlp``: a router (``gate``)
keeping the ``num_experts_per_tok`` most probable of ``num_experts`` experts (renormalised when
``norm_topk_prob``), experts ``intermediate_size`` wide stored per expert."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Fixed, HFTable, Key, Rope, Tensor, hf_family, llama_config,
                                   token_ids, without)
from archcomposer.plugins.qwen2_moe import EXPERTS, MOE_TENSORS

TABLE = HFTable(
    display="OLMoE",
    model_types=("olmoe",),
    architectures={
        "OlmoeForCausalLM": "causal_lm",
        "OlmoeModel": None,
    },
    config=[
        *without(llama_config(vocab_size=50304, max_positions=4096, eps=1e-5, heads=16, hidden_size=2048, layers=16,
                              intermediate_size=2048), "mlp.bias", "mlp.kind"),
        Fixed("mlp.kind", "moe"),
        Key(("num_experts", "num_local_experts"), "mlp.num_experts", 64),
        Key("num_experts_per_tok", "mlp.top_k", 8),
        Key("norm_topk_prob", "mlp.router.normalize", False),
        Fixed("mlp.router.kind", "softmax"),
        Key("router_aux_loss_coef", "mlp.aux_loss_coef", 0.01),
        Fixed("attention.qk_norm", {"scope": "projection"}),
        Key("clip_qkv", "attention.clip_qkv", None),
        Rope(),
        *token_ids(pad=1, bos=None, eos=50279),
    ],
    tensors=[*(t for t in LLAMA_TENSORS if ".mlp." not in t.ours), *MOE_TENSORS,
             Tensor("layers.{i}.attention.q_norm.norm", "{base}layers.{i}.self_attn.q_norm"),
             Tensor("layers.{i}.attention.k_norm.norm", "{base}layers.{i}.self_attn.k_norm")],
    extra_tensors=EXPERTS,
    heads=HEADS,
)

FAMILY = hf_family(name="olmoe", table=TABLE,
                   description="OLMoE: OLMo attention (q/k RMSNorm over the projections, optional QKV clipping), "
                               "routed experts in every layer")


@hookimpl
def register_families(register):
    register(FAMILY)
