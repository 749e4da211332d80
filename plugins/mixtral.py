"""The Mixtral family: Mistral's layout with a mixture of experts in place of every MLP.

Hugging Face Mixtral (``model_type: mixtral``) has the Llama layout's attention under ``model.``
and, in each layer, ``block_sparse_moe``: a router (``gate``, no bias) that keeps the
``num_experts_per_tok`` most probable of ``num_local_experts`` experts and renormalises their
probabilities, and gated SiLU experts stored per expert as ``w1`` (gate), ``w3`` (up) and ``w2``
(down). ``sliding_window`` (default None) applies to every layer; ``router_aux_loss_coef`` weighs
the load-balancing loss; ``router_jitter_noise`` (training-time noise on the router input) is
refused unless 0."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Expect, Fixed, HFTable, Key, Rope, Tensor, expert_tensors,
                                   hf_family, llama_config, token_ids, without)

TABLE = HFTable(
    display="Mixtral",
    model_types=("mixtral",),
    architectures={
        "MixtralForCausalLM": "causal_lm",
        "MixtralForSequenceClassification": "sequence_classification",
        "MixtralForTokenClassification": "token_classification",
        "MixtralForQuestionAnswering": "question_answering",
        "MixtralModel": None,
    },
    config=[
        *without(llama_config(max_positions=4096 * 32, eps=1e-5, kv_heads=8, intermediate_size=14336),
                 "attention.qkv_bias", "attention.out_bias", "mlp.bias", "mlp.kind"),
        Fixed("attention.qkv_bias", False), Fixed("attention.out_bias", False),
        Fixed("mlp.kind", "moe"), Fixed("mlp.router", {"kind": "softmax", "normalize": True}),
        Key(("num_local_experts", "num_experts"), "mlp.num_experts", 8),
        Key("num_experts_per_tok", "mlp.top_k", 2),
        Key("router_aux_loss_coef", "mlp.aux_loss_coef", 0.001),
        Expect("router_jitter_noise", 0.0, "it multiplies the router's input by random noise in training"),
        Key("sliding_window", "attention.sliding_window", None),
        Rope(theta=1e6),
        *token_ids(pad=None, bos=1, eos=2),
    ],
    tensors=[*(t for t in LLAMA_TENSORS if ".mlp." not in t.ours),
             Tensor("layers.{i}.mlp.router.gate", "{base}layers.{i}.block_sparse_moe.gate")],
    extra_tensors=expert_tensors(experts="{base}layers.{i}.block_sparse_moe.experts", gate="w1", up="w3", down="w2"),
    heads=HEADS,
)

FAMILY = hf_family(name="mixtral", table=TABLE,
                   description="Mixtral: the Mistral layout with a top-2 mixture of 8 gated experts in every layer")


@hookimpl
def register_families(register):
    register(FAMILY)
