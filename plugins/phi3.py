"""The Phi-3 family (Phi-3, Phi-3.5, Phi-4-mini): RoPE (LongRoPE for the long-context models, over
part of each head for Phi-4-mini), GQA, RMSNorm, fused QKV and gate/up projections, SwiGLU.

Hugging Face Phi-3 (``model_type: phi3``) has the Llama layout (``model.``) with q/k/v fused as
``qkv_proj`` (rows ``[q | k | v]``) and gate/up as ``gate_up_proj`` (rows ``[gate | up]``), as ours,
and no biases; ``resid_pdrop`` drops each branch (``embd_pdrop`` is in the config but transformers
does not use it). LongRoPE switches to its long factors when a forward reaches past
``original_max_position_embeddings``; transformers' Phi-3 ``generate`` then encodes the whole
sequence again with them, where ours keeps the keys cached before (exact up to that length)."""

from archcomposer import hookimpl
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Fixed, HFTable, Key, Rope, Tensor, hf_family,
                                   llama_config, token_ids, without)


class Phi3Rope(Rope):
    """``Rope``, with the older Phi-3 configs' ``rope_scaling`` types ``su`` and ``yarn`` read as
    ``longrope``, as Phi-3's config does (its ``yarn`` is LongRoPE, not YaRN)."""

    def to_spec(self, config, data):
        key = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
        rope = dict(config.get(key) or {})
        for name in ("rope_type", "type"):
            if rope.get(name) in ("su", "yarn"):
                rope[name] = "longrope"
        super().to_spec({**config, key: rope}, data)


class OriginalLength:
    """``original_max_position_embeddings``: Phi-3 keeps LongRoPE's pretraining length at the top
    level (default 4096), and transformers lets it win over ``rope_parameters``' own, so export
    writes it there (``Rope`` reads it)."""

    def to_spec(self, config, data):
        pass

    def to_config(self, spec, config):
        original = getattr(getattr(spec.position, "scaling", None), "original_max_positions", None)
        config["original_max_position_embeddings"] = original or spec.max_positions

TABLE = HFTable(
    display="Phi-3",
    model_types=("phi3",),
    architectures={
        "Phi3ForCausalLM": "causal_lm",
        "Phi3ForSequenceClassification": "sequence_classification",
        "Phi3ForTokenClassification": "token_classification",
        "Phi3Model": None,
    },
    config=[
        *without(llama_config(vocab_size=32064, max_positions=4096, eps=1e-5),
                 "hidden_size", "attention.qkv_bias", "attention.out_bias", "mlp.bias", "mlp.intermediate_size"),
        Fixed("attention.fused_qkv", True), Fixed("mlp.fused", True),
        Key("hidden_size", "hidden_size", 3072),
        Key("intermediate_size", "mlp.intermediate_size", 8192),
        Key("sliding_window", "attention.sliding_window", None),
        Key("resid_pdrop", "wiring.dropout", 0.0),
        Phi3Rope(fraction=1.0), OriginalLength(),
        *token_ids(pad=32000, bos=1, eos=32000),
    ],
    tensors=[*(t for t in LLAMA_TENSORS if ".qkv." not in t.ours and ".gate_up." not in t.ours),
             Tensor("layers.{i}.attention.qkv.proj", "{base}layers.{i}.self_attn.qkv_proj"),
             Tensor("layers.{i}.mlp.gate_up.proj", "{base}layers.{i}.mlp.gate_up_proj")],
    heads=HEADS,
)

FAMILY = hf_family(name="phi3", table=TABLE,
                   description="Phi-3: RoPE (LongRoPE for long context), GQA, RMSNorm, fused QKV and gate/up, SwiGLU")


@hookimpl
def register_families(register):
    register(FAMILY)
