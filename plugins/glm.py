"""The GLM-4 family: partial interleaved RoPE, GQA, RMSNorm, fused gate/up SwiGLU, QKV bias.

Hugging Face GLM (``model_type: glm``) keeps q/k/v separate, the gate and up projections fused
as ``gate_up_proj`` (rows ``[gate | up]``, as ours), no output or MLP bias, and the rotated
fraction of each head in ``rope_parameters.partial_rotary_factor`` (default 0.5)."""

from archcomposer import CheckpointError, Family, TensorMap, hookimpl
from archcomposer.hf_mapping import (activation_from_hf, fused_or_split, head_tensors, heads_from_hf, hf_head_config,
                                     llama_layout_config, require)

NAME = "GLM"

#: Hugging Face architecture -> our head kind (None: the bare model).
ARCHITECTURES = {
    "GlmForCausalLM": "causal_lm",
    "GlmForSequenceClassification": "sequence_classification",
    "GlmForTokenClassification": "token_classification",
    "GlmModel": None,
}
#: Our head parameter names -> theirs.
HEAD_TENSORS = {
    "causal_lm": {"proj.weight": "lm_head.weight"},
    "sequence_classification": {"proj.weight": "score.weight"},
    "token_classification": {"proj.weight": "score.weight", "proj.bias": "score.bias"},
}


def spec_from_hf_config(config: dict, architecture: str) -> dict:
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"config.json rope_parameters.rope_type = {rope['rope_type']!r} is not supported "
                              f"(only 'default' RoPE)")
    heads = config.get("num_attention_heads", 32)
    return {
        "vocab_size": config.get("vocab_size", 151552),
        "hidden_size": config["hidden_size"],
        "num_layers": config["num_hidden_layers"],
        "max_positions": config.get("max_position_embeddings", 131072),
        "pad_token_id": config.get("pad_token_id", 151329),
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": config.get("eos_token_id", [151329, 151336, 151338]),
        "initializer_range": config.get("initializer_range", 0.02),
        "embedding": {"kind": "tokens", "tied": config.get("tie_word_embeddings", False)},
        "position": {"kind": "partial_rope", "interleaved": True,
                     "theta": rope.get("rope_theta", config.get("rope_theta", 10000.0)),
                     "fraction": rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5))},
        "attention": {"kind": "gqa", "num_heads": heads, "num_kv_heads": config.get("num_key_value_heads") or heads,
                      "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
                      "qkv_bias": config.get("attention_bias", True), "out_bias": False,
                      "dropout": config.get("attention_dropout", 0.0)},
        "norm": {"kind": "rmsnorm", "eps": config.get("rms_norm_eps", 1.5625e-7)},
        "mlp": {"kind": "gated", "intermediate_size": config["intermediate_size"],
                "activation": activation_from_hf(config), "fused": True, "bias": False},
        "heads": heads_from_hf(config, ARCHITECTURES[architecture]),
    }


def hf_config_from_spec(spec, architecture: str) -> dict:
    a = spec.attention
    require(NAME, "position.kind", spec.position.kind, "partial_rope")
    require(NAME, "position.interleaved", spec.position.interleaved, True)
    require(NAME, "attention.out_bias", a.out_bias, False)
    require(NAME, "mlp.fused", spec.mlp.fused, True)
    require(NAME, "mlp.bias", spec.mlp.bias, False)
    require(NAME, "wiring.dropout", spec.wiring.dropout, 0.0)
    return {
        "model_type": "glm",
        **llama_layout_config(spec, NAME),
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.position.theta,
                            "partial_rotary_factor": spec.position.fraction},
        "attention_bias": a.qkv_bias,
        "attention_dropout": a.dropout,
        **hf_head_config(spec, NAME),
    }


def hf_tensors(spec, architecture: str) -> list[TensorMap]:
    a = spec.attention
    base = "" if ARCHITECTURES[architecture] is None else "model."
    qkv_sizes = [a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim, a.num_kv_heads * a.head_dim]
    maps = [TensorMap("embedding.tokens.weight", f"{base}embed_tokens.weight"),
            TensorMap("final_norm.weight", f"{base}norm.weight")]
    for i in range(spec.num_layers):
        ours, theirs = f"layers.{i}", f"{base}layers.{i}"
        maps += [TensorMap(f"{ours}.attn_norm.weight", f"{theirs}.input_layernorm.weight"),
                 TensorMap(f"{ours}.mlp_norm.weight", f"{theirs}.post_attention_layernorm.weight"),
                 TensorMap(f"{ours}.attention.out.weight", f"{theirs}.self_attn.o_proj.weight"),
                 TensorMap(f"{ours}.mlp.gate_up.proj.weight", f"{theirs}.mlp.gate_up_proj.weight"),
                 TensorMap(f"{ours}.mlp.down.weight", f"{theirs}.mlp.down_proj.weight")]
        for p in ("weight", "bias")[: 1 + a.qkv_bias]:
            maps += fused_or_split(f"{ours}.attention.qkv", a.fused_qkv, p,
                                   {n: f"{theirs}.self_attn.{n}_proj.{p}" for n in "qkv"}, qkv_sizes)
    return maps + head_tensors(spec, HEAD_TENSORS)


FAMILY = Family(
    name="glm-4",
    description="GLM-4: partial interleaved RoPE, GQA, RMSNorm, fused gate/up SwiGLU, QKV bias",
    hf_model_types=("glm",),
    hf_architectures=ARCHITECTURES,
    spec_from_hf_config=spec_from_hf_config,
    hf_config_from_spec=hf_config_from_spec,
    hf_tensors=hf_tensors,
)


@hookimpl
def register_families(register):
    register(FAMILY)
