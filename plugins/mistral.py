"""The Mistral family: the Llama layout without biases, and one sliding window for every layer.

Hugging Face Mistral (``model_type: mistral``) has the Llama layout under ``model.``, no
attention or MLP bias, and ``sliding_window`` (default 4096; None: full attention) applied to all
layers alike: Mistral 7B v0.1 slides over 4096 tokens, v0.2 and later set it to null."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Fixed, HFTable, Key, Rope, hf_family, llama_config,
                                   token_ids, without)

TABLE = HFTable(
    display="Mistral",
    model_types=("mistral",),
    architectures={
        "MistralForCausalLM": "causal_lm",
        "MistralForSequenceClassification": "sequence_classification",
        "MistralForTokenClassification": "token_classification",
        "MistralForQuestionAnswering": "question_answering",
        "MistralModel": None,
    },
    config=[
        *without(llama_config(max_positions=4096 * 32, kv_heads=8, intermediate_size=14336), "attention.qkv_bias",
                 "attention.out_bias", "mlp.bias"),
        Fixed("attention.qkv_bias", False), Fixed("attention.out_bias", False), Fixed("mlp.bias", False),
        Key("sliding_window", "attention.sliding_window", 4096),
        Rope(),
        *token_ids(pad=None, bos=1, eos=2),
    ],
    tensors=LLAMA_TENSORS,
    heads=HEADS,
)

FAMILY = hf_family(name="mistral", table=TABLE,
                   description="Mistral: the Llama layout without biases, one sliding window for every layer")


@hookimpl
def register_families(register):
    register(FAMILY)
