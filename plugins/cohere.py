"""The Cohere family (Command R, Aya 23): parallel layers behind one LayerNorm without bias,
interleaved RoPE, GQA, SwiGLU, scaled logits, tied LM head.

Hugging Face Cohere (``model_type: cohere``) has the Llama layout's tensors but one norm per layer
(``input_layernorm``, a LayerNorm with weight only, statistics in fp32) feeding attention and MLP
side by side; RoPE rotates adjacent pairs; the LM head multiplies the logits by ``logit_scale``;
``use_qk_norm`` adds a LayerNorm over each head of the queries and keys, each head with its own
weight ([H, Dh])."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Fixed, HFTable, Key, Rope, Tensor, hf_family, llama_config,
                                   token_ids, without)


class _QKNorm:
    """``use_qk_norm``: a LayerNorm over each head of the queries and keys, each head its own weight."""

    def to_spec(self, config, data):
        if config.get("use_qk_norm", False):
            data.setdefault("attention", {})["qk_norm"] = {"scope": "per_head"}

    def to_config(self, spec, config):
        config["use_qk_norm"] = getattr(spec.attention, "qk_norm", None) is not None


TABLE = HFTable(
    display="Cohere",
    model_types=("cohere",),
    architectures={
        "CohereForCausalLM": "causal_lm",
        "CohereModel": None,
    },
    config=[
        *without(llama_config(vocab_size=256000, max_positions=8192, heads=64, tied=True),
                 "norm.kind", "norm.eps", "wiring.kind", "mlp.bias", "hidden_size", "mlp.intermediate_size",
                 "num_layers"),
        Fixed("norm.kind", "layernorm"), Fixed("norm.bias", False), Fixed("mlp.bias", False),
        Fixed("wiring.kind", "parallel"), Fixed("wiring.shared_norm", True),
        Key("hidden_size", "hidden_size", 8192),
        Key("intermediate_size", "mlp.intermediate_size", 22528),
        Key("num_hidden_layers", "num_layers", 40),
        Key("layer_norm_eps", "norm.eps", 1e-5),
        Rope(theta=500000.0, interleaved=True),
        _QKNorm(),
        *token_ids(pad=0, bos=5, eos=255001),
    ],
    tensors=[
        *LLAMA_TENSORS,
        Tensor("layers.{i}.attention.q_norm.norm", "{base}layers.{i}.self_attn.q_norm"),
        Tensor("layers.{i}.attention.k_norm.norm", "{base}layers.{i}.self_attn.k_norm"),
    ],
    heads=HEADS,
    head_config={"causal_lm": [Key("logit_scale", "logit_scale", 0.0625)]},
)

FAMILY = hf_family(name="cohere", table=TABLE,
                   description="Cohere (Command R): parallel layers behind one bias-free LayerNorm, interleaved "
                               "RoPE, GQA, SwiGLU, scaled logits, tied LM head")


@hookimpl
def register_families(register):
    register(FAMILY)
