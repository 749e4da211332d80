"""The OLMo family: the Llama layout with parameter-free LayerNorms and optional QKV clipping.

Hugging Face OLMo (``model_type: olmo``, OLMo-7B-hf and OLMo-1B-hf) has the Llama layout under
``model.``, but its norms are LayerNorms with neither weight nor bias (eps fixed at 1e-5, no
tensors in the checkpoint), ``clip_qkv`` clamps the projected queries, keys and values, and
``attention_bias`` puts biases on all four attention projections."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Fixed, HFTable, Key, Rope, hf_family, llama_config, token_ids,
                                   without)

TABLE = HFTable(
    display="OLMo",
    model_types=("olmo",),
    architectures={
        "OlmoForCausalLM": "causal_lm",
        "OlmoForSequenceClassification": "sequence_classification",
        "OlmoModel": None,
    },
    config=[
        *without(llama_config(vocab_size=50304), "norm.kind", "norm.eps", "mlp.bias"),
        Fixed("norm.kind", "layernorm"), Fixed("norm.affine", False), Fixed("norm.eps", 1e-5),
        Fixed("mlp.bias", False),
        Key("clip_qkv", "attention.clip_qkv", None),
        Rope(),
        *token_ids(pad=1, bos=None, eos=50279),
    ],
    tensors=LLAMA_TENSORS,
    heads=HEADS,
)

FAMILY = hf_family(name="olmo", table=TABLE,
                   description="OLMo: Llama layout with parameter-free LayerNorms and optional QKV clipping")


@hookimpl
def register_families(register):
    register(FAMILY)
