"""The DeepSeek-V3 family: multi-head latent attention (``attention.kind: mla``), RMSNorm, SwiGLU,
pre-norm layers, YaRN with DeepSeek's mscale.

Hugging Face DeepSeek-V3 (``model_type: deepseek_v3``) keeps the Llama layout under ``model.`` but
for the attention: ``q_proj`` (or ``q_a_proj``, ``q_a_layernorm``, ``q_b_proj`` with ``q_lora_rank``),
``kv_a_proj_with_mqa``, ``kv_a_layernorm``, ``kv_b_proj`` and ``o_proj``; ``attention_bias`` puts a
bias on q_a, kv_a and o. ``rope_interleave`` (default true) rotates adjacent pairs of the
``qk_rope_head_dim`` rotated channels (``partial_rope`` with fraction 1), false their halves
(``rope``). The first ``first_k_dense_replace`` layers have a dense SwiGLU MLP, the others a
mixture of experts (``mlp``: ``gate`` with ``e_score_correction_bias``, ``experts.{e}``,
``shared_experts``)."""

from typing import Any

from archcomposer import TensorMap, hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_rope import rope_parameters_of
from archcomposer.hf_table import (ACTIVATIONS_TO_HF, LLAMA_TENSORS, Expect, Fixed, HFTable, Key, Rope, Tensor,
                                   _activation, expert_tensors, hf_family, token_ids)
from archcomposer.spec import ModelSpecBase, PartialRopeSpec


class MoELayers:
    """The MLPs: ``first_k_dense_replace`` (default ``dense_layers``) dense layers, a gated MLP
    ``intermediate_size`` wide (``mlp_bias``: the default of the family's ``mlp_bias`` key, None
    where it has none), then mixture-of-experts layers: ``n_routed_experts`` experts
    ``moe_intermediate_size`` wide, ``num_experts_per_tok`` per token, and a shared expert
    ``n_shared_experts`` x ``moe_intermediate_size`` wide. The spec's ``mlp`` is the experts and a
    ``layers`` entry gives the first layers their dense MLP. transformers computes no load-balancing
    loss for DeepSeek (``aux_loss_coef: null``). Runs after ``num_hidden_layers``.

    The router is DeepSeek-V3's (``grouped_sigmoid``: ``n_group``, ``topk_group``,
    ``norm_topk_prob``, ``routed_scaling_factor``; transformers reads no ``topk_method`` or
    ``scoring_func`` for V3); other families override ``router_to_spec`` / ``router_to_config``."""

    def __init__(self, *, dense_layers: int, width: int, dense_width: int, experts: int, top_k: int | None,
                 shared: int, mlp_bias: bool | None):
        self.dense_layers, self.width, self.dense_width = dense_layers, width, dense_width
        self.experts, self.top_k, self.shared, self.mlp_bias = experts, top_k, shared, mlp_bias

    def router_to_spec(self, config: dict) -> dict:
        return {"kind": "grouped_sigmoid", "normalize": bool(config.get("norm_topk_prob", True)),
                "num_groups": config.get("n_group", 8), "top_groups": config.get("topk_group", 4),
                "scale": config.get("routed_scaling_factor", 2.5)}

    def router_to_config(self, router, config: dict) -> None:
        if router.kind != "grouped_sigmoid":
            raise CheckpointError(f"mlp.router.kind {router.kind!r} cannot be written as a DeepSeek-V3 config "
                                  f"(only 'grouped_sigmoid')")
        config.update(n_group=router.num_groups, topk_group=router.top_groups, norm_topk_prob=router.normalize,
                      routed_scaling_factor=router.scale)

    def to_spec(self, config: dict, data: dict) -> None:
        layers, first = data["num_layers"], config.get("first_k_dense_replace", self.dense_layers)
        activation = _activation(config.get("hidden_act", "silu"))
        bias = self.mlp_bias is not None and bool(config.get("mlp_bias", self.mlp_bias))  # V3's MLPs: never
        dense = {"kind": "gated", "intermediate_size": config.get("intermediate_size", self.dense_width),
                 "activation": activation, "bias": bias}
        if first is None:
            raise CheckpointError("config.json first_k_dense_replace is null: DeepSeek's layers need the number of "
                                  "dense layers before the mixture-of-experts ones")
        if first >= layers:
            data["mlp"] = dense
            return
        if bias:
            raise CheckpointError(f"config.json mlp_bias = true with mixture-of-experts layers (first_k_dense_replace "
                                  f"= {first} < num_hidden_layers = {layers}) is not supported: the shared expert "
                                  f"has no bias (only mlp_bias = false)")
        width, shared = config.get("moe_intermediate_size", self.width), config.get("n_shared_experts", self.shared)
        if not shared:
            raise CheckpointError(f"config.json n_shared_experts = {shared!r} is not supported: the mixture-of-experts "
                                  f"layers need at least one shared expert (transformers builds one "
                                  f"n_shared_experts x moe_intermediate_size wide)")
        top_k = config.get("num_experts_per_tok", self.top_k)
        if top_k is None:
            raise CheckpointError("config.json num_experts_per_tok is missing or null: the mixture-of-experts layers "
                                  "need the number of experts per token")
        data["mlp"] = {"kind": "moe", "num_experts": config.get("n_routed_experts", self.experts), "top_k": top_k,
                       "intermediate_size": width, "activation": activation, "router": self.router_to_spec(config),
                       "shared_expert": {"intermediate_size": shared * width}, "aux_loss_coef": None}
        if first > 0:
            data.setdefault("layers", []).append({"range": [0, first], "mlp": dense})

    def to_config(self, spec: ModelSpecBase, config: dict) -> None:
        mlps = [layer.mlp for layer in spec.layer_specs]
        first = next((i for i, m in enumerate(mlps) if m.kind == "moe"), len(mlps))
        moe, dense = (mlps[first] if first < len(mlps) else None), (mlps[0] if first else None)
        where = [i for i, m in enumerate(mlps) if (m != moe if i >= first else m != dense)]
        if dense is not None and (dense.kind != "gated" or (dense.bias and self.mlp_bias is None)):
            where.insert(0, 0)
        if moe is not None and (moe.aux_loss_coef is not None or (dense and dense.activation != moe.activation)):
            where.insert(0, first)
        if where:
            raise CheckpointError(f"layer {where[0]}'s mlp cannot be written as a DeepSeek config: it needs "
                                  f"identical gated MLPs{'' if self.mlp_bias is not None else ' without bias'} on "
                                  f"the first layers (first_k_dense_replace) and identical mixture-of-experts MLPs "
                                  f"without a load-balancing loss (aux_loss_coef: null) on all the others, all with "
                                  f"one activation (hidden_act)")
        config["first_k_dense_replace"] = first
        config["hidden_act"] = ACTIVATIONS_TO_HF[(dense or moe).activation]
        if dense is not None:
            config["intermediate_size"] = dense.intermediate_size
            if self.mlp_bias is not None:
                config["mlp_bias"] = dense.bias
        if moe is None:
            return
        shared = moe.shared_expert
        if shared is None or shared.gated or shared.intermediate_size % moe.intermediate_size:
            raise CheckpointError(f"layer {first}'s shared expert ({shared}) cannot be written as a DeepSeek "
                                  f"config: it needs an ungated shared expert whose width is a multiple of the "
                                  f"experts' ({moe.intermediate_size}; n_shared_experts)")
        config.update(n_routed_experts=moe.num_experts, num_experts_per_tok=moe.top_k,
                      moe_intermediate_size=moe.intermediate_size,
                      n_shared_experts=shared.intermediate_size // moe.intermediate_size)
        self.router_to_config(moe.router, config)


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
    Tensor("layers.{i}.mlp.router.gate", "{base}layers.{i}.mlp.gate"),
    Tensor("layers.{i}.mlp.shared.gate_up.gate", "{base}layers.{i}.mlp.shared_experts.gate_proj"),
    Tensor("layers.{i}.mlp.shared.gate_up.up", "{base}layers.{i}.mlp.shared_experts.up_proj"),
    Tensor("layers.{i}.mlp.shared.down", "{base}layers.{i}.mlp.shared_experts.down_proj"),
)

_EXPERTS = expert_tensors(experts="{base}layers.{i}.mlp.experts", gate="gate_proj", up="up_proj", down="down_proj")


def moe_tensors(spec: ModelSpecBase, architecture: str, base: str) -> list[TensorMap]:
    """The routed experts (stored per expert) and the grouped router's score bias, which transformers
    names ``e_score_correction_bias`` (a Tensor row keeps the parameter's name)."""
    biases = [TensorMap(f"layers.{i}.mlp.router.score_bias", f"{base}layers.{i}.mlp.gate.e_score_correction_bias")
              for i, layer in enumerate(spec.layer_specs)
              if layer.mlp.kind == "moe" and layer.mlp.router.kind == "grouped_sigmoid"]
    return _EXPERTS(spec, architecture, base) + biases


def config_rows(*, vocab_size: int = 129280, hidden_size: int = 7168, layers: int = 61, max_positions: int = 4096,
                heads: int = 128, moe: MoELayers | None = None, interleave_key: bool = True, bos: Any = 0,
                eos: Any = 1) -> list:
    """The DeepSeek config rows with transformers' defaults, DeepSeek-V3's unless given.
    ``moe``: the family's MLP codec (DeepSeek-V3's by default);
    ``interleave_key``: the family has ``rope_interleave`` (V3) or always rotates pairs (V2)."""
    moe = moe or MoELayers(dense_layers=3, width=2048, dense_width=18432, experts=256, top_k=8, shared=1,
                           mlp_bias=None)
    return [
        Fixed("embedding.kind", "tokens"), Fixed("norm.kind", "rmsnorm"), Fixed("attention.kind", "mla"),
        Fixed("wiring.kind", "pre_norm"),
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
        moe,
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
    extra_tensors=moe_tensors,
    heads={"causal_lm": "lm_head", "sequence_classification": "score", "token_classification": "score"},
)

FAMILY = hf_family(name="deepseek-v3", table=TABLE,
                   description="DeepSeek-V3: multi-head latent attention, YaRN with mscale; dense first layers, then "
                               "256 routed experts (grouped sigmoid router) plus a shared expert")


@hookimpl
def register_families(register):
    register(FAMILY)
