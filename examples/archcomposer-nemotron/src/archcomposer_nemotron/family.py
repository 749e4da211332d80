"""The Nemotron family as data: Hugging Face ``model_type: nemotron`` in the Llama layout, with the
plugin's own norm (``layernorm1p``) and MLP (``squared_relu``) and partial RoPE. Rows and
helpers come from ``archcomposer.hf_table``; see its docstring for what each does."""

from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Expect, Fixed, HFTable, Key, Rope, Tensor, hf_family,
                                   llama_config, token_ids, without)

TABLE = HFTable(
    display="Nemotron",
    model_types=("nemotron",),
    architectures={
        "NemotronForCausalLM": "causal_lm",
        "NemotronForSequenceClassification": "sequence_classification",
        "NemotronForTokenClassification": "token_classification",
        "NemotronForQuestionAnswering": "question_answering",
        "NemotronModel": None,
    },
    bases={"NemotronForQuestionAnswering": "transformer."},
    config=[
        *without(llama_config(vocab_size=256000, max_positions=4096, heads=48),
                 "norm.kind", "norm.eps", "mlp.kind", "mlp.activation"),
        Fixed("norm.kind", "layernorm1p"), Key("norm_eps", "norm.eps", 1e-5),
        Fixed("mlp.kind", "squared_relu"), Expect("hidden_act", "relu2", "the squared_relu MLP is relu^2"),
        Key("initializer_range", "initializer_range", 0.0134),
        Rope(fraction=0.5),
        *token_ids(pad=None, bos=2, eos=3),
    ],
    tensors=[t for t in LLAMA_TENSORS if ".mlp.gate_up." not in t.ours]
    + [Tensor("layers.{i}.mlp.up", "{base}layers.{i}.mlp.up_proj")],
    heads=HEADS,
)

FAMILY = hf_family(name="nemotron", table=TABLE,
                   description="Nemotron: partial RoPE, LayerNorm1P, squared-ReLU MLP (example plugin)")
