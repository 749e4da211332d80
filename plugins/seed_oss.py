"""The Seed-OSS family: full RoPE, GQA, separate QKV/out bias flags, SwiGLU, head_dim independent of width.

Hugging Face Seed-OSS (``model_type: seed_oss``) has the Llama layout: separate q/k/v/o and
gate/up/down projections under ``model.`` (``transformer.`` for the QA head). This module is the
plainest family to copy for a new Llama-style one."""

from archcomposer import CheckpointError, Family, TensorMap, hookimpl
from archcomposer.hf_mapping import (activation_from_hf, head_tensors, heads_from_hf, hf_head_config,
                                     llama_layout_config, llama_layout_tensors, require)

NAME = "Seed-OSS"

#: Hugging Face architecture -> our head kind (None: the bare model).
ARCHITECTURES = {
    "SeedOssForCausalLM": "causal_lm",
    "SeedOssForSequenceClassification": "sequence_classification",
    "SeedOssForTokenClassification": "token_classification",
    "SeedOssForQuestionAnswering": "question_answering",
    "SeedOssModel": None,
}
#: Where each architecture keeps the base model.
BASE_PREFIX = {"SeedOssModel": "", "SeedOssForQuestionAnswering": "transformer."}
#: Our head parameter names -> theirs.
HEAD_TENSORS = {
    "causal_lm": {"proj.weight": "lm_head.weight"},
    "sequence_classification": {"proj.weight": "score.weight"},
    "token_classification": {"proj.weight": "score.weight", "proj.bias": "score.bias"},
    "question_answering": {"proj.weight": "qa_outputs.weight", "proj.bias": "qa_outputs.bias"},
}


def spec_from_hf_config(config: dict, architecture: str) -> dict:
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"config.json rope_parameters.rope_type = {rope['rope_type']!r} is not supported "
                              f"(only 'default' RoPE)")
    heads = config.get("num_attention_heads", 80)
    return {
        "vocab_size": config.get("vocab_size", 155136),
        "hidden_size": config["hidden_size"],
        "num_layers": config["num_hidden_layers"],
        "max_positions": config.get("max_position_embeddings", 524288),
        "pad_token_id": config.get("pad_token_id", 1),
        "bos_token_id": config.get("bos_token_id", 0),
        "eos_token_id": config.get("eos_token_id", 2),
        "initializer_range": config.get("initializer_range", 0.02),
        "embedding": {"kind": "tokens", "tied": config.get("tie_word_embeddings", False)},
        "position": {"kind": "rope", "theta": rope.get("rope_theta", config.get("rope_theta", 10000.0))},
        "attention": {"kind": "gqa", "num_heads": heads, "num_kv_heads": config.get("num_key_value_heads") or heads,
                      "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
                      "qkv_bias": config.get("attention_bias", True),
                      "out_bias": config.get("attention_out_bias", False),
                      "dropout": config.get("attention_dropout", 0.1)},
        "norm": {"kind": "rmsnorm", "eps": config.get("rms_norm_eps", 1e-6)},
        "mlp": {"kind": "gated", "intermediate_size": config["intermediate_size"],
                "activation": activation_from_hf(config), "fused": False, "bias": config.get("mlp_bias", False)},
        "wiring": {"kind": "pre_norm", "dropout": config.get("residual_dropout", 0.1)},
        "heads": heads_from_hf(config, ARCHITECTURES[architecture]),
    }


def hf_config_from_spec(spec, architecture: str) -> dict:
    a = spec.attention
    require(NAME, "position.kind", spec.position.kind, "rope")
    return {
        "model_type": "seed_oss",
        **llama_layout_config(spec, NAME),
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.position.theta},
        "attention_bias": a.qkv_bias,
        "attention_out_bias": a.out_bias,
        "attention_dropout": a.dropout,
        "residual_dropout": spec.wiring.dropout,
        "mlp_bias": spec.mlp.bias,
        **hf_head_config(spec, NAME),
    }


def hf_tensors(spec, architecture: str) -> list[TensorMap]:
    return llama_layout_tensors(spec, BASE_PREFIX.get(architecture, "model.")) + head_tensors(spec, HEAD_TENSORS)


FAMILY = Family(
    name="seed-oss",
    description="Seed-OSS: full RoPE, GQA, separate QKV/out bias flags, SwiGLU, head_dim independent of width",
    hf_model_types=("seed_oss",),
    hf_architectures=ARCHITECTURES,
    spec_from_hf_config=spec_from_hf_config,
    hf_config_from_spec=hf_config_from_spec,
    hf_tensors=hf_tensors,
)


@hookimpl
def register_families(register):
    register(FAMILY)
