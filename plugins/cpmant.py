"""The CPM-Ant family: bucketed relative bias with segments, prompt tokens, prefix-LM mask, GeGLU.

Its input is our ``prompt_segments`` embedding kind (prompt tokens, segment embedding, prefix-LM
mask). Hugging Face CPM-Ant (``model_type: cpmant``) fixes what our spec makes fields: the prompt
is the rows of prompt type 2, input tokens are segment 2 and prompt/pad tokens segment 0, token
id 0 is padding, the bias is bidirectional with segment-pair buckets stored after the position
buckets (``relative_attention_bias`` [segments^2 + buckets, heads], our layout too), and the LM
head is a separate matrix whose loss is not shifted. Its input embedding holds the vocabulary
and then every prompt row, as ours does."""

from archcomposer import Family, TensorMap, hookimpl
from archcomposer.hf_mapping import heads_from_hf, hf_head_config, require, require_same_layers

NAME = "CPM-Ant"
#: What Hugging Face CPM-Ant hard-codes.
PROMPT_TYPE = TOKEN_SEGMENT = 2
PAD_TOKEN_ID = 0

#: Hugging Face architecture -> our head kind (None: the bare model).
ARCHITECTURES = {"CpmAntForCausalLM": "causal_lm", "CpmAntModel": None}


def spec_from_hf_config(config: dict, architecture: str) -> dict:
    dropout = config.get("dropout_p") or 0.0
    return {
        "vocab_size": config.get("vocab_size", 30720),
        "hidden_size": config.get("hidden_size", 4096),
        "num_layers": config.get("num_hidden_layers", 48),
        "max_positions": config.get("position_bias_max_distance", 2048),
        "pad_token_id": PAD_TOKEN_ID,
        "initializer_range": config.get("init_std", 1.0),
        "embedding": {"kind": "prompt_segments",
                      "segments": {"num_types": config.get("segment_types", 32), "token_segment": TOKEN_SEGMENT},
                      "prompt": {"num_types": config.get("prompt_types", 32), "length": config.get("prompt_length", 32),
                                 "type": PROMPT_TYPE}},
        "position": {"kind": "bucket_bias", "num_buckets": config.get("position_bias_num_buckets", 512),
                     "max_distance": config.get("position_bias_max_distance", 2048), "bidirectional": True,
                     "segments": True},
        "attention": {"kind": "gqa", "num_heads": config.get("num_attention_heads", 32),
                      "head_dim": config.get("dim_head", 128), "qkv_bias": False, "out_bias": False,
                      "dropout": dropout},
        "norm": {"kind": "rmsnorm", "eps": config.get("eps", 1e-6)},
        "mlp": {"kind": "gated", "intermediate_size": config.get("dim_ff", 10240), "activation": "gelu",
                "fused": False, "bias": False},
        "wiring": {"kind": "pre_norm", "dropout": dropout},
        "heads": heads_from_hf(config, ARCHITECTURES[architecture], shift_labels=False),
    }


def hf_config_from_spec(spec, architecture: str) -> dict:
    a, e = spec.attention, spec.embedding
    require(NAME, "position.kind", spec.position.kind, "bucket_bias")
    require(NAME, "position.bidirectional", spec.position.bidirectional, True)
    require(NAME, "position.segments", spec.position.segments, True)
    require(NAME, "embedding.kind", e.kind, "prompt_segments")
    require(NAME, "embedding.segments.token_segment", e.segments.token_segment, TOKEN_SEGMENT)
    require(NAME, "embedding.prompt.type", e.prompt.type, PROMPT_TYPE)
    require(NAME, "pad_token_id", spec.pad_token_id, PAD_TOKEN_ID)
    require(NAME, "norm.kind", spec.norm.kind, "rmsnorm")
    require(NAME, "attention.kind", a.kind, "gqa")
    require(NAME, "attention.sliding_window", a.sliding_window, None)
    require(NAME, "attention.num_kv_heads", a.num_kv_heads, a.num_heads)
    require(NAME, "attention.fused_qkv", a.fused_qkv, False)
    require(NAME, "attention.qkv_bias", a.qkv_bias, False)
    require(NAME, "attention.out_bias", a.out_bias, False)
    require(NAME, "mlp.kind", spec.mlp.kind, "gated")
    require(NAME, "mlp.activation", spec.mlp.activation, "gelu")
    require(NAME, "mlp.fused", spec.mlp.fused, False)
    require(NAME, "mlp.bias", spec.mlp.bias, False)
    require(NAME, "wiring.kind", spec.wiring.kind, "pre_norm")
    require(NAME, "wiring.residual_from_norm", spec.wiring.residual_from_norm, False)
    require(NAME, "wiring.dropout (one dropout_p covers attention and residuals)", spec.wiring.dropout, a.dropout)
    require(NAME, "final_norm", spec.final_norm, True)
    require_same_layers(spec, NAME)
    return {
        "model_type": "cpmant",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_attention_heads": a.num_heads,
        "dim_head": a.head_dim,
        "dim_ff": spec.mlp.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "dropout_p": a.dropout,
        "position_bias_num_buckets": spec.position.num_buckets,
        "position_bias_max_distance": spec.position.max_distance,
        "eps": spec.norm.eps,
        "init_std": spec.initializer_range,
        "prompt_types": e.prompt.num_types,
        "prompt_length": e.prompt.length,
        "segment_types": e.segments.num_types,
        "tie_word_embeddings": False,
        **hf_head_config(spec, NAME, shift_labels=False),
    }


def hf_tensors(spec, architecture: str) -> list[TensorMap]:
    base = "" if ARCHITECTURES[architecture] is None else "cpmant."
    maps = [TensorMap("embedding.tokens.weight", f"{base}input_embedding.weight"),
            TensorMap("embedding.segments.weight", f"{base}segment_embedding.weight"),
            TensorMap("positions.0.weight", f"{base}position_bias.relative_attention_bias"),
            TensorMap("final_norm.weight", f"{base}encoder.output_layernorm.weight")]
    for i in range(spec.num_layers):
        ours, theirs = f"layers.{i}", f"{base}encoder.layers.{i}"
        attention, ffn = f"{theirs}.self_att.self_attention", f"{theirs}.ffn.ffn"
        maps += [TensorMap(f"{ours}.attn_norm.weight", f"{theirs}.self_att.layernorm_before_attention.weight"),
                 TensorMap(f"{ours}.attention.qkv.q.weight", f"{attention}.project_q.weight"),
                 TensorMap(f"{ours}.attention.qkv.k.weight", f"{attention}.project_k.weight"),
                 TensorMap(f"{ours}.attention.qkv.v.weight", f"{attention}.project_v.weight"),
                 TensorMap(f"{ours}.attention.out.weight", f"{attention}.attention_out.weight"),
                 TensorMap(f"{ours}.mlp_norm.weight", f"{theirs}.ffn.layernorm_before_ffn.weight"),
                 TensorMap(f"{ours}.mlp.gate_up.gate.weight", f"{ffn}.w_in.w_0.weight"),
                 TensorMap(f"{ours}.mlp.gate_up.up.weight", f"{ffn}.w_in.w_1.weight"),
                 TensorMap(f"{ours}.mlp.down.weight", f"{ffn}.w_out.weight")]
    if spec.heads:
        maps.append(TensorMap("heads.causal_lm.proj.weight", "lm_head.weight"))
    return maps


FAMILY = Family(
    name="cpm-ant",
    description="CPM-Ant: bucketed relative bias with segments, prompt tokens, prefix-LM mask, GeGLU",
    hf_model_types=("cpmant",),
    hf_architectures=ARCHITECTURES,
    spec_from_hf_config=spec_from_hf_config,
    hf_config_from_spec=hf_config_from_spec,
    hf_tensors=hf_tensors,
)


@hookimpl
def register_families(register):
    register(FAMILY)
