"""The Llama family: RoPE, GQA, RMSNorm, SwiGLU, pre-norm layers (Llama 1, 2 and 3).

Hugging Face Llama (``model_type: llama``) is the reference Llama layout, under ``model.``
(``transformer.`` for the QA head). ``attention_bias`` puts a bias on q, k, v and o alike;
``pretraining_tp`` is read by no code in transformers 5 and is ignored."""

from archcomposer import hookimpl
from archcomposer.hf_table import HEADS, LLAMA_TENSORS, HFTable, Rope, hf_family, llama_config, token_ids

TABLE = HFTable(
    display="Llama",
    model_types=("llama",),
    architectures={
        "LlamaForCausalLM": "causal_lm",
        "LlamaForSequenceClassification": "sequence_classification",
        "LlamaForTokenClassification": "token_classification",
        "LlamaForQuestionAnswering": "question_answering",
        "LlamaModel": None,
    },
    bases={"LlamaForQuestionAnswering": "transformer."},
    config=[*llama_config(), Rope(), *token_ids(pad=None, bos=1, eos=2)],
    tensors=LLAMA_TENSORS,
    heads=HEADS,
)

FAMILY = hf_family(name="llama", table=TABLE,
                   description="Llama: RoPE, GQA, RMSNorm, SwiGLU, optional q/k/v/o and MLP biases")


@hookimpl
def register_families(register):
    register(FAMILY)
