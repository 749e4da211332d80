"""The StableLM family (StableLM 2, StableLM-3B-4E1T): partial RoPE over halves, GQA, LayerNorm,
SwiGLU, optional q/k/v bias, per-head LayerNorm on queries and keys, optional parallel residual.

Hugging Face StableLM (``model_type: stablelm``) has the Llama layout (``model.``) with LayerNorm
(weight and bias) for the norms. ``qk_layernorm`` gives every query and key head a LayerNorm of
its own (weight only), stored as ``q_layernorm.norms.{h}``; ``use_parallel_residual`` runs
attention and MLP side by side on the input norm; ``hidden_dropout`` drops the MLP branch alone."""

import torch

from archcomposer import hookimpl
from archcomposer.family import TensorMap
from archcomposer.hf_table import (HEADS, LLAMA_TENSORS, Activation, Expect, Fixed, Flag, HFTable, Key, Rope,
                                   hf_family, parallel_residual, token_ids)


def _qk_layernorm(config):
    """Each query and key head its own LayerNorm, weight only, at the layers' epsilon."""
    eps = config.get("layer_norm_eps", 1e-5)
    return {"scope": "per_head", "norm": {"kind": "layernorm", "bias": False, "eps": eps}}


def _per_head_norms(spec, architecture, base):
    """Our per-head q/k norm weight [H, Dh] <-> their ``norms.{h}.weight`` [Dh], one per head."""
    maps = []
    for i, layer in enumerate(spec.layer_specs):  # layers alike share one LayerSpec: count them here
        a = layer.attention
        if a.qk_norm is None:
            continue
        for ours, theirs, heads in (("q_norm", "q_layernorm", a.num_heads), ("k_norm", "k_layernorm", a.num_kv_heads)):
            names = tuple(f"{base}layers.{i}.self_attn.{theirs}.norms.{h}.weight" for h in range(heads))
            maps.append(TensorMap(f"layers.{i}.attention.{ours}.norm.weight", names,
                                  to_ours=lambda *ts: torch.stack(ts),  # [H, Dh]
                                  to_theirs=lambda t: tuple(w.clone() for w in t.unbind(0))))
    return maps


TABLE = HFTable(
    display="StableLM",
    model_types=("stablelm",),
    architectures={
        "StableLmForCausalLM": "causal_lm",
        "StableLmForSequenceClassification": "sequence_classification",
        "StableLmForTokenClassification": "token_classification",
        "StableLmModel": None,
    },
    config=[
        Fixed("embedding.kind", "tokens"), Fixed("norm.kind", "layernorm"), Fixed("attention.kind", "gqa"),
        Fixed("attention.out_bias", False), Fixed("mlp.kind", "gated"),
        Key("vocab_size", "vocab_size", 50304),
        Key("hidden_size", "hidden_size", 2560),
        Key("num_hidden_layers", "num_layers", 32),
        Key("max_position_embeddings", "max_positions", 4096),
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", False),
        Key("num_attention_heads", "attention.num_heads", 32),
        Key("num_key_value_heads", "attention.num_kv_heads", 32),
        Key("use_qkv_bias", "attention.qkv_bias", False),
        Key("attention_dropout", "attention.dropout", 0.0),
        Flag("qk_layernorm", "attention.qk_norm", _qk_layernorm),
        Key("layer_norm_eps", "norm.eps", 1e-5),
        Key("intermediate_size", "mlp.intermediate_size", 6912),
        Activation("hidden_act", default="silu"),
        parallel_residual(default=False, shared_norm=True),
        Expect("hidden_dropout", 0.0, "StableLM drops the MLP branch alone (training only); wiring.dropout "
                                      "drops both branches"),
        Rope(fraction=0.25),
        *token_ids(pad=None, bos=0, eos=0),
    ],
    tensors=LLAMA_TENSORS,
    heads=HEADS,
    extra_tensors=_per_head_norms,
)

FAMILY = hf_family(name="stablelm", table=TABLE,
                   description="StableLM: partial RoPE, GQA, LayerNorm, SwiGLU, per-head q/k LayerNorm, optional "
                               "parallel residual")


@hookimpl
def register_families(register):
    register(FAMILY)
