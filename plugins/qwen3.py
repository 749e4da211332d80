"""The Qwen3 family: the Llama layout with an RMSNorm on each query and key head, and sliding
windows on the layers ``layer_types`` names.

Hugging Face Qwen3 (``model_type: qwen3``, the dense models) has the Llama layout under ``model.``
(``transformer.`` for the QA head), ``attention_bias`` on q, k, v and o, ``head_dim`` set on its
own (default 128), and ``q_norm`` / ``k_norm``: an RMSNorm over each head's head_dim channels with
one weight shared by the heads, before RoPE (``attention.qk_norm`` with scope ``head``). Windows
are Qwen2's (``WindowLayers``)."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Fixed, HFTable, Key, Rope, Tensor, hf_family, llama_config,
                                   token_ids, without)
from archcomposer.plugins.qwen2 import WindowLayers

TABLE = HFTable(
    display="Qwen3",
    model_types=("qwen3",),
    architectures={
        "Qwen3ForCausalLM": "causal_lm",
        "Qwen3ForSequenceClassification": "sequence_classification",
        "Qwen3ForTokenClassification": "token_classification",
        "Qwen3ForQuestionAnswering": "question_answering",
        "Qwen3Model": None,
    },
    bases={"Qwen3ForQuestionAnswering": "transformer."},
    config=[
        *without(llama_config(vocab_size=151936, max_positions=32768, kv_heads=32, intermediate_size=22016),
                 "mlp.bias", "attention.head_dim"),
        Fixed("mlp.bias", False),
        Key("head_dim", "attention.head_dim", 128),
        Fixed("attention.qk_norm", {"scope": "head"}),
        WindowLayers(),
        Rope(),
        *token_ids(pad=None, bos=None, eos=None),
    ],
    tensors=[*LLAMA_TENSORS,
             Tensor("layers.{i}.attention.q_norm.norm", "{base}layers.{i}.self_attn.q_norm"),
             Tensor("layers.{i}.attention.k_norm.norm", "{base}layers.{i}.self_attn.k_norm")],
    heads=HEADS,
)

FAMILY = hf_family(name="qwen3", table=TABLE,
                   description="Qwen3: the Llama layout with per-head q/k RMSNorm, sliding windows on the layers "
                               "layer_types names")


@hookimpl
def register_families(register):
    register(FAMILY)
