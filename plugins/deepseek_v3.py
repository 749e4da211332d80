"""The DeepSeek-V3 family: multi-head latent attention (``attention.kind: mla``), RMSNorm, SwiGLU,
pre-norm layers, YaRN with DeepSeek's mscale.

Hugging Face DeepSeek-V3 (``model_type: deepseek_v3``) keeps the Llama layout under ``model.`` but
for the attention: ``q_proj`` (or ``q_a_proj``, ``q_a_layernorm``, ``q_b_proj`` with ``q_lora_rank``),
``kv_a_proj_with_mqa``, ``kv_a_layernorm``, ``kv_b_proj`` and ``o_proj``; ``attention_bias`` puts a
bias on q_a, kv_a and o. ``rope_interleave`` (default true) rotates adjacent pairs of the
``qk_rope_head_dim`` rotated channels (``partial_rope`` with fraction 1), false their halves
(``rope``). Only configs whose layers are all dense (``first_k_dense_replace >= num_hidden_layers``)
are read: the mixture-of-experts layers after them are refused until an mlp kind expresses them."""

from typing import Any

from archcomposer import hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_rope import rope_parameters_of
from archcomposer.hf_table import (LLAMA_TENSORS, Activation, Expect, Fixed, HFTable, Key, Rope, Tensor, hf_family,
                                   token_ids)
from archcomposer.spec import ModelSpecBase, PartialRopeSpec


class DenseLayers:
    """``first_k_dense_replace`` (transformers' default ``default``): the layers before it have a
    dense MLP, those from it on a mixture of experts, which no mlp kind expresses yet: a config with
    any is refused. Export writes ``num_hidden_layers`` (every layer dense)."""

    def __init__(self, *, default: int):
        self.default = default

    def to_spec(self, config: dict, data: dict) -> None:
        layers, dense = data["num_layers"], config.get("first_k_dense_replace", self.default)
        if dense is None or dense < layers:
            raise CheckpointError(f"config.json first_k_dense_replace = {dense!r} with num_hidden_layers = {layers}: "
                                  f"layers {dense or 0} to {layers - 1} are mixture-of-experts layers, which are not "
                                  f"supported yet (only configs with first_k_dense_replace >= num_hidden_layers)")

    def to_config(self, spec: ModelSpecBase, config: dict) -> None:
        config["first_k_dense_replace"] = spec.num_layers


class KVHeads:
    """``num_key_value_heads``: transformers repeats MLA's keys and values num_attention_heads /
    num_key_value_heads times, which is only right when the two are equal (every DeepSeek config)."""

    def to_spec(self, config: dict, data: dict) -> None:
        heads, kv_heads = data["attention"]["num_heads"], config.get("num_key_value_heads")
        if kv_heads not in (None, heads):
            raise CheckpointError(f"config.json num_key_value_heads = {kv_heads} is not supported: multi-head latent "
                                  f"attention needs it equal to num_attention_heads ({heads})")

    def to_config(self, spec: ModelSpecBase, config: dict) -> None:
        config["num_key_value_heads"] = spec.attention.num_heads


class DeepseekRope:
    """``rope_parameters`` (and DeepSeek-V3's ``rope_interleave``) <-> the position section over the
    ``qk_rope_head_dim`` rotated channels; DeepSeek's ``mscale_all_dim`` also sets the score scale
    (``attention.kind: mla``, scale left out), which the spec expresses for ``yarn`` only.
    ``interleave_key`` False: the family always rotates adjacent pairs (DeepSeek-V2's complex
    rotation) and writes no key."""

    def __init__(self, *, interleave_key: bool = True):
        self.interleave_key = interleave_key

    def to_spec(self, config: dict, data: dict) -> None:
        rope = rope_parameters_of(config)
        if rope.get("mscale_all_dim") and rope["rope_type"] not in ("default", "yarn"):
            raise CheckpointError(f"config.json rope_parameters.mscale_all_dim with rope_type {rope['rope_type']!r} "
                                  f"is not supported (DeepSeek's score-scale correction is read for 'yarn' only)")
        interleaved = config.get("rope_interleave", True) if self.interleave_key else True
        Rope(interleaved=bool(interleaved)).to_spec(config, data)

    def to_config(self, spec: ModelSpecBase, config: dict) -> None:
        Rope().to_config(spec, config)
        if self.interleave_key:
            config["rope_interleave"] = isinstance(spec.position, PartialRopeSpec) and spec.position.interleaved


TENSORS = (
    *(row for row in LLAMA_TENSORS if ".attention." not in row.ours),
    Tensor("layers.{i}.attention.q", "{base}layers.{i}.self_attn.q_proj"),
    Tensor("layers.{i}.attention.q.down", "{base}layers.{i}.self_attn.q_a_proj"),
    Tensor("layers.{i}.attention.q.norm", "{base}layers.{i}.self_attn.q_a_layernorm"),
    Tensor("layers.{i}.attention.q.up", "{base}layers.{i}.self_attn.q_b_proj"),
    Tensor("layers.{i}.attention.kv_down", "{base}layers.{i}.self_attn.kv_a_proj_with_mqa"),
    Tensor("layers.{i}.attention.kv_norm", "{base}layers.{i}.self_attn.kv_a_layernorm"),
    Tensor("layers.{i}.attention.kv_up", "{base}layers.{i}.self_attn.kv_b_proj"),
    Tensor("layers.{i}.attention.out", "{base}layers.{i}.self_attn.o_proj"),
)


def config_rows(*, vocab_size: int = 129280, hidden_size: int = 7168, layers: int = 61, max_positions: int = 4096,
                heads: int = 128, intermediate_size: int = 18432, dense_layers: int = 3, mlp_bias: Any = None,
                interleave_key: bool = True, bos: Any = 0, eos: Any = 1) -> list:
    """The DeepSeek config rows with transformers' defaults, DeepSeek-V3's unless given.
    ``mlp_bias``: the default of the family's ``mlp_bias`` key (None: no key, no bias);
    ``interleave_key``: the family has ``rope_interleave`` (V3) or always rotates pairs (V2)."""
    mlp = Fixed("mlp.bias", False) if mlp_bias is None else Key("mlp_bias", "mlp.bias", mlp_bias)
    return [
        Fixed("embedding.kind", "tokens"), Fixed("norm.kind", "rmsnorm"), Fixed("attention.kind", "mla"),
        Fixed("mlp.kind", "gated"), mlp, Fixed("wiring.kind", "pre_norm"),
        Key("vocab_size", "vocab_size", vocab_size),
        Key("hidden_size", "hidden_size", hidden_size),
        Key("num_hidden_layers", "num_layers", layers),
        Key("max_position_embeddings", "max_positions", max_positions),
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "embedding.tied", False),
        Key("num_attention_heads", "attention.num_heads", heads),
        KVHeads(),
        Key("q_lora_rank", "attention.q_lora_rank", 1536),
        Key("kv_lora_rank", "attention.kv_lora_rank", 512),
        Key("qk_nope_head_dim", "attention.qk_nope_head_dim", 128),
        Key("qk_rope_head_dim", "attention.qk_rope_head_dim", 64),
        Key("v_head_dim", "attention.v_head_dim", 128),
        Key("attention_bias", "attention.bias", False),
        Key("attention_dropout", "attention.dropout", 0.0),
        Key("rms_norm_eps", "norm.eps", 1e-6),
        Key("intermediate_size", "mlp.intermediate_size", intermediate_size),
        Activation("hidden_act"),
        DenseLayers(default=dense_layers),
        DeepseekRope(interleave_key=interleave_key),
        Expect("is_causal", True, "transformers' masks then let every token attend to every other (bidirectional)"),
        *token_ids(pad=None, bos=bos, eos=eos),
    ]


TABLE = HFTable(
    display="DeepSeek-V3",
    model_types=("deepseek_v3",),
    architectures={
        "DeepseekV3ForCausalLM": "causal_lm",
        "DeepseekV3ForSequenceClassification": "sequence_classification",
        "DeepseekV3ForTokenClassification": "token_classification",
        "DeepseekV3Model": None,
    },
    config=config_rows(),
    tensors=TENSORS,
    heads={"causal_lm": "lm_head", "sequence_classification": "score", "token_classification": "score"},
)

FAMILY = hf_family(name="deepseek-v3", table=TABLE,
                   description="DeepSeek-V3: multi-head latent attention, YaRN with mscale; dense layers only "
                               "(mixture-of-experts layers not yet)")


@hookimpl
def register_families(register):
    register(FAMILY)
