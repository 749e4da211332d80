"""The GLM-4 family: partial interleaved RoPE, GQA, RMSNorm, fused gate/up SwiGLU, QKV bias.

Hugging Face GLM (``model_type: glm``) has the Llama layout but for the gate and up projections,
fused as ``gate_up_proj`` (rows ``[gate | up]``, as ours), no output or MLP bias, and the rotated
fraction of each head in ``rope_parameters.partial_rotary_factor`` (default 0.5)."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Fixed, HFTable, Rope, Tensor, hf_family, llama_config, token_ids,
                                   without)

TABLE = HFTable(
    display="GLM",
    model_types=("glm",),
    architectures={
        "GlmForCausalLM": "causal_lm",
        "GlmForSequenceClassification": "sequence_classification",
        "GlmForTokenClassification": "token_classification",
        "GlmModel": None,
    },
    config=[
        *without(llama_config(vocab_size=151552, max_positions=131072, eps=1.5625e-07, attention_bias=True),
                 "attention.out_bias"),
        Fixed("attention.out_bias", False),
        Fixed("mlp.fused", True),
        Rope(fraction=0.5, interleaved=True),
        *token_ids(pad=151329, bos=None, eos=[151329, 151336, 151338]),
    ],
    tensors=[t for t in LLAMA_TENSORS if ".mlp.gate_up." not in t.ours]
    + [Tensor("layers.{i}.mlp.gate_up.proj", "{base}layers.{i}.mlp.gate_up_proj")],
    heads=HEADS,
)

FAMILY = hf_family(name="glm-4", table=TABLE,
                   description="GLM-4: partial interleaved RoPE, GQA, RMSNorm, fused gate/up SwiGLU, QKV bias")


@hookimpl
def register_families(register):
    register(FAMILY)
