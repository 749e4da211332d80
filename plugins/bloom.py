"""The BLOOM family: ALiBi, embedding LayerNorm, fused per-head QKV, plain GELU MLP, tied LM head.

Hugging Face BLOOM (``model_type: bloom``) stores the fused QKV projection per head, rows
``[H, 3, Dh]`` (q, k, v of head 0, then of head 1, ...); ours concatenates ``[q | k | v]``, so the
rows are permuted both ways. The MLP is always 4x wide with biases; the GELU is the tanh one."""

from archcomposer import Family, TensorMap, hookimpl
from archcomposer.hf_mapping import head_tensors, heads_from_hf, hf_head_config, require, require_plain_trunk

NAME = "BLOOM"

#: Hugging Face architecture -> our head kind (None: the bare model).
ARCHITECTURES = {
    "BloomForCausalLM": "causal_lm",
    "BloomForSequenceClassification": "sequence_classification",
    "BloomForTokenClassification": "token_classification",
    "BloomForQuestionAnswering": "question_answering",
    "BloomModel": None,
}
#: Our head parameter names -> theirs.
HEAD_TENSORS = {
    "causal_lm": {"proj.weight": "lm_head.weight"},
    "sequence_classification": {"proj.weight": "score.weight"},
    "token_classification": {"proj.weight": "classifier.weight", "proj.bias": "classifier.bias"},
    "question_answering": {"proj.weight": "qa_outputs.weight", "proj.bias": "qa_outputs.bias"},
}


def spec_from_hf_config(config: dict, architecture: str) -> dict:
    hidden = config.get("hidden_size", config.get("n_embed", 64))
    return {
        "vocab_size": config.get("vocab_size", 250880),
        "hidden_size": hidden,
        "num_layers": config.get("n_layer", config.get("num_hidden_layers", 2)),
        "max_positions": config.get("seq_length", 2048),  # ALiBi has no limit; BLOOM trained on 2048
        "pad_token_id": config.get("pad_token_id"),
        "bos_token_id": config.get("bos_token_id", 1),
        "eos_token_id": config.get("eos_token_id", 2),
        "initializer_range": config.get("initializer_range", 0.02),
        "embedding": {"kind": "tokens", "tied": config.get("tie_word_embeddings", True), "norm": True},
        "position": {"kind": "alibi"},
        "attention": {"kind": "gqa", "num_heads": config.get("n_head", config.get("num_attention_heads", 8)),
                      "qkv_bias": True, "out_bias": True, "fused_qkv": True,
                      "dropout": config.get("attention_dropout", 0.0)},
        "norm": {"kind": "layernorm", "eps": config.get("layer_norm_epsilon", 1e-5)},
        "mlp": {"kind": "plain", "intermediate_size": 4 * hidden, "activation": "gelu_tanh", "bias": True},
        "wiring": {"kind": "pre_norm",
                   "residual_from_norm": config.get("apply_residual_connection_post_layernorm", False),
                   "dropout": config.get("hidden_dropout", 0.0)},
        "heads": heads_from_hf(config, ARCHITECTURES[architecture]),
    }


def hf_config_from_spec(spec, architecture: str) -> dict:
    a = spec.attention
    require(NAME, "position.kind", spec.position.kind, "alibi")
    require(NAME, "norm.kind", spec.norm.kind, "layernorm")
    require(NAME, "norm.bias", spec.norm.bias, True)
    require_plain_trunk(spec, NAME, embedding_norm=True)
    require(NAME, "attention.kind", a.kind, "gqa")
    require(NAME, "attention.sliding_window", a.sliding_window, None)
    require(NAME, "attention.num_kv_heads", a.num_kv_heads, a.num_heads)
    require(NAME, "attention.head_dim", a.head_dim, spec.hidden_size // a.num_heads)
    require(NAME, "attention.fused_qkv", a.fused_qkv, True)
    require(NAME, "attention.qkv_bias", a.qkv_bias, True)
    require(NAME, "attention.out_bias", a.out_bias, True)
    require(NAME, "mlp.kind", spec.mlp.kind, "plain")
    require(NAME, "mlp.intermediate_size", spec.mlp.intermediate_size, 4 * spec.hidden_size)
    require(NAME, "mlp.activation", spec.mlp.activation, "gelu_tanh")
    require(NAME, "mlp.bias", spec.mlp.bias, True)
    return {
        "model_type": "bloom",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "n_layer": spec.num_layers,
        "n_head": a.num_heads,
        "layer_norm_epsilon": spec.norm.eps,
        "initializer_range": spec.initializer_range,
        "pad_token_id": spec.pad_token_id,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id,
        "apply_residual_connection_post_layernorm": spec.wiring.residual_from_norm,
        "hidden_dropout": spec.wiring.dropout,
        "attention_dropout": a.dropout,
        "tie_word_embeddings": spec.embedding.tied,
        "pretraining_tp": 1,
        "slow_but_exact": False,
        **hf_head_config(spec, NAME),
    }


def hf_tensors(spec, architecture: str) -> list[TensorMap]:
    H, Dh = spec.attention.num_heads, spec.attention.head_dim
    base = "" if ARCHITECTURES[architecture] is None else "transformer."

    def qkv_to_ours(t):  # rows [H, 3, Dh] -> [3, H, Dh]
        return t.unflatten(0, (H, 3, Dh)).transpose(0, 1).flatten(0, 2)

    def qkv_to_theirs(t):  # rows [3, H, Dh] -> [H, 3, Dh]
        return (t.unflatten(0, (3, H, Dh)).transpose(0, 1).flatten(0, 2),)

    maps = [TensorMap("embedding.tokens.weight", f"{base}word_embeddings.weight")]
    for p in ("weight", "bias"):
        maps.append(TensorMap(f"embedding.norm.{p}", f"{base}word_embeddings_layernorm.{p}"))
        maps.append(TensorMap(f"final_norm.{p}", f"{base}ln_f.{p}"))
        for i in range(spec.num_layers):
            ours, theirs = f"layers.{i}", f"{base}h.{i}"
            maps += [
                TensorMap(f"{ours}.attn_norm.{p}", f"{theirs}.input_layernorm.{p}"),
                TensorMap(f"{ours}.attention.qkv.proj.{p}", f"{theirs}.self_attention.query_key_value.{p}",
                          to_ours=qkv_to_ours, to_theirs=qkv_to_theirs),
                TensorMap(f"{ours}.attention.out.{p}", f"{theirs}.self_attention.dense.{p}"),
                TensorMap(f"{ours}.mlp_norm.{p}", f"{theirs}.post_attention_layernorm.{p}"),
                TensorMap(f"{ours}.mlp.up.{p}", f"{theirs}.mlp.dense_h_to_4h.{p}"),
                TensorMap(f"{ours}.mlp.down.{p}", f"{theirs}.mlp.dense_4h_to_h.{p}"),
            ]
    return maps + head_tensors(spec, HEAD_TENSORS)


FAMILY = Family(
    name="bloom",
    description="BLOOM: ALiBi, embedding LayerNorm, fused per-head QKV, plain GELU MLP, tied LM head",
    hf_model_types=("bloom",),
    hf_architectures=ARCHITECTURES,
    spec_from_hf_config=spec_from_hf_config,
    hf_config_from_spec=hf_config_from_spec,
    hf_tensors=hf_tensors,
)


@hookimpl
def register_families(register):
    register(FAMILY)
