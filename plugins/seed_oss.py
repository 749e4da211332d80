"""The Seed-OSS family: full RoPE, GQA, separate QKV/out bias flags, SwiGLU, head_dim independent of width.

Hugging Face Seed-OSS (``model_type: seed_oss``) has the Llama layout, under ``model.``
(``transformer.`` for the QA head). The plainest family to copy for a new Llama-style one."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, HFTable, Key, Rope, hf_family, llama_config, token_ids,
                                   without)

TABLE = HFTable(
    display="Seed-OSS",
    model_types=("seed_oss",),
    architectures={
        "SeedOssForCausalLM": "causal_lm",
        "SeedOssForSequenceClassification": "sequence_classification",
        "SeedOssForTokenClassification": "token_classification",
        "SeedOssForQuestionAnswering": "question_answering",
        "SeedOssModel": None,
    },
    bases={"SeedOssForQuestionAnswering": "transformer."},
    config=[
        *without(llama_config(vocab_size=155136, max_positions=524288, heads=80, attention_bias=True),
                 "attention.out_bias", "attention.dropout"),
        Key("attention_out_bias", "attention.out_bias", False),
        Key("attention_dropout", "attention.dropout", 0.1),
        Key("residual_dropout", "wiring.dropout", 0.1),
        Rope(),
        *token_ids(pad=1, bos=0, eos=2),
    ],
    tensors=LLAMA_TENSORS,
    heads=HEADS,
)

FAMILY = hf_family(name="seed-oss", table=TABLE,
                   description="Seed-OSS: full RoPE, GQA, separate QKV/out bias flags, SwiGLU, head_dim "
                               "independent of width")


@hookimpl
def register_families(register):
    register(FAMILY)
