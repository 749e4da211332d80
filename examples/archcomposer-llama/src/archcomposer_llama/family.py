"""The Llama family and its Hugging Face mapping (``model_type: llama``).

Hugging Face Llama keeps separate q/k/v/o and gate/up/down projections under ``model.``
(``transformer.`` for the QA head); one ``attention_bias`` flag covers q, k, v and o. Its RoPE is
``rope_type: default`` (our ``rope``) or ``llama3`` (this plugin's ``llama3_rope``). Follows
``archcomposer.plugins.seed_oss``."""

from archcomposer import CheckpointError, Family, TensorMap
from archcomposer.hf_mapping import (activation_from_hf, head_tensors, heads_from_hf, hf_head_config,
                                     llama_layout_config, llama_layout_tensors, require)

NAME = "Llama"

#: Hugging Face architecture -> our head kind (None: the bare model).
ARCHITECTURES = {
    "LlamaForCausalLM": "causal_lm",
    "LlamaForSequenceClassification": "sequence_classification",
    "LlamaForTokenClassification": "token_classification",
    "LlamaForQuestionAnswering": "question_answering",
    "LlamaModel": None,
}
#: Where each architecture keeps the base model.
BASE_PREFIX = {"LlamaModel": "", "LlamaForQuestionAnswering": "transformer."}
#: Our head parameter names -> theirs.
HEAD_TENSORS = {
    "causal_lm": {"proj.weight": "lm_head.weight"},
    "sequence_classification": {"proj.weight": "score.weight"},
    "token_classification": {"proj.weight": "score.weight", "proj.bias": "score.bias"},
    "question_answering": {"proj.weight": "qa_outputs.weight", "proj.bias": "qa_outputs.bias"},
}
#: Our ``llama3_rope`` fields -> the keys of Hugging Face ``rope_parameters``.
LLAMA3_ROPE = {"theta": "rope_theta", "factor": "factor", "low_freq_factor": "low_freq_factor",
               "high_freq_factor": "high_freq_factor", "original_max_positions": "original_max_position_embeddings"}


def _position_from_hf(config: dict) -> dict:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return {"kind": "rope", "theta": theta}
    if rope_type == "llama3":
        missing = [theirs for theirs in LLAMA3_ROPE.values() if theirs != "rope_theta" and theirs not in rope]
        if missing:
            raise CheckpointError(f"config.json rope_parameters (rope_type 'llama3') lacks {missing}")
        return {"kind": "llama3_rope", **{ours: rope[theirs] if theirs != "rope_theta" else theta
                                         for ours, theirs in LLAMA3_ROPE.items()}}
    raise CheckpointError(f"config.json rope_parameters.rope_type = {rope_type!r} is not supported by the llama "
                          f"family (only 'default' and 'llama3')")


def spec_from_hf_config(config: dict, architecture: str) -> dict:
    heads = config.get("num_attention_heads", 32)
    bias = config.get("attention_bias", False)
    return {
        "vocab_size": config.get("vocab_size", 32000),
        "hidden_size": config["hidden_size"],
        "num_layers": config["num_hidden_layers"],
        "max_positions": config.get("max_position_embeddings", 2048),
        "pad_token_id": config.get("pad_token_id"),
        "bos_token_id": config.get("bos_token_id", 1),
        "eos_token_id": config.get("eos_token_id", 2),
        "initializer_range": config.get("initializer_range", 0.02),
        "embedding": {"kind": "tokens", "tied": config.get("tie_word_embeddings", False)},
        "position": _position_from_hf(config),
        "attention": {"kind": "gqa", "num_heads": heads, "num_kv_heads": config.get("num_key_value_heads") or heads,
                      "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
                      "qkv_bias": bias, "out_bias": bias, "dropout": config.get("attention_dropout", 0.0)},
        "norm": {"kind": "rmsnorm", "eps": config.get("rms_norm_eps", 1e-6)},
        "mlp": {"kind": "gated", "intermediate_size": config["intermediate_size"],
                "activation": activation_from_hf(config), "fused": False, "bias": config.get("mlp_bias", False)},
        "heads": heads_from_hf(config, ARCHITECTURES[architecture]),
    }


def hf_config_from_spec(spec, architecture: str) -> dict:
    a, p = spec.attention, spec.position
    if p.kind == "rope":
        rope = {"rope_type": "default", "rope_theta": p.theta}
    elif p.kind == "llama3_rope":
        rope = {"rope_type": "llama3", **{theirs: getattr(p, ours) for ours, theirs in LLAMA3_ROPE.items()}}
    else:
        raise CheckpointError(f"position.kind = {p.kind!r} has no equivalent in Hugging Face {NAME}, which needs "
                              f"'rope' or 'llama3_rope'")
    require(NAME, "attention.out_bias (one attention_bias flag covers q, k, v and o)", a.out_bias, a.qkv_bias)
    require(NAME, "wiring.dropout", spec.wiring.dropout, 0.0)
    return {
        "model_type": "llama",
        **llama_layout_config(spec, NAME),
        "rope_parameters": rope,
        "attention_bias": a.qkv_bias,
        "attention_dropout": a.dropout,
        "mlp_bias": spec.mlp.bias,
        **hf_head_config(spec, NAME),
    }


def hf_tensors(spec, architecture: str) -> list[TensorMap]:
    return llama_layout_tensors(spec, BASE_PREFIX.get(architecture, "model.")) + head_tensors(spec, HEAD_TENSORS)


FAMILY = Family(
    name="llama",
    description="Llama 2/3: RoPE (Llama 3.1 scaled), GQA, RMSNorm, SwiGLU; Hugging Face LlamaFor*",
    hf_model_types=("llama",),
    hf_architectures=ARCHITECTURES,
    spec_from_hf_config=spec_from_hf_config,
    hf_config_from_spec=hf_config_from_spec,
    hf_tensors=hf_tensors,
)
