"""The Gemma 3 family (text): Gemma 2's layers with q/k norms instead of score soft-capping,
five sliding-window layers to one global, and a RoPE per layer type.

Hugging Face Gemma 3's text model (``model_type: gemma3_text``; Gemma3ForCausalLM, also the
language model of the multimodal Gemma 3 from 4B up) normalises each query and key head with
Gemma's RMSNorm, one weight [head_dim] shared by the heads (``attention.qk_norm`` scope ``head``),
before the rotation. ``rope_parameters`` is keyed by layer type: the ``full_attention`` RoPE is
the spec's ``position`` (linear scaling 8 in 4B and up), the ``sliding_attention`` one goes in
the ``layers`` entry of the sliding layers. Older configs say ``rope_theta`` / ``rope_scaling``
(global), ``rope_local_base_freq`` (sliding) and ``sliding_window_pattern``. transformers reads
``attn_logit_softcapping`` but never applies it, so it is ignored here too."""

from archcomposer import hookimpl
from archcomposer.hf_rope import position_from_hf, rope_parameters_of, rope_parameters_to_hf
from archcomposer.hf_table import HEADS, Fixed, HFTable, Key, Tensor, hf_family
from archcomposer.plugins.gemma import gemma_config
from archcomposer.plugins.gemma2 import FULL, SLIDING, QueryPreAttnScalar, SlidingLayers, layers_of_type
from archcomposer.plugins.gemma2 import TABLE as GEMMA2


THETA = {FULL: 1_000_000.0, SLIDING: 10_000.0}  # transformers' Gemma3TextConfig.default_theta


def _rope_of_type(config: dict, layer_types: list[str], layer_type: str) -> dict:
    """The standardized ``rope_parameters`` of the layers of ``layer_type``, rotating whole heads
    (as ``Rope`` without a fraction: Gemma's own rotary ignores ``partial_rotary_factor``)."""
    params = config.get("rope_parameters") or {}
    if FULL in params or SLIDING in params:  # transformers 5: keyed by layer type
        rope = rope_parameters_of({**config, "rope_scaling": None, "layer_types": layer_types},
                                  layer_type=layer_type, default_theta=THETA[layer_type])
    elif layer_type == FULL:  # older: rope_theta and rope_scaling
        rope = rope_parameters_of({**config, "rope_parameters": None}, default_theta=THETA[FULL])
    else:
        rope = {"rope_type": "default", "rope_theta": config.get("rope_local_base_freq", THETA[SLIDING])}
    rope.pop("partial_rotary_factor", None)
    return rope


class RopePerType:
    """``rope_parameters`` keyed by layer type <-> the spec's ``position`` (the full-attention
    layers'; the sliding layers' where all slide) and the sliding layers' in their ``layers`` entry.
    Runs after ``SlidingLayers``, which sets ``layer_types``."""

    def to_spec(self, config, data):
        types = data["layer_types"]
        positions = {t: position_from_hf(_rope_of_type(config, types, t), max_positions=data["max_positions"])
                     for t in (FULL, SLIDING) if t in types}
        data["position"] = positions.get(FULL, positions.get(SLIDING))
        if FULL in positions and SLIDING in positions:  # over the full layers': their scaling is not this one's
            layers_of_type(data, SLIDING)["position"] = {"scaling": None, **positions[SLIDING]}

    def to_config(self, spec, config):
        params = {}
        for layer_type in (FULL, SLIDING):
            layer = next((layer for layer, t in zip(spec.layer_specs, config["layer_types"]) if t == layer_type),
                         None)
            if layer is None or layer.position.kind not in ("rope", "partial_rope"):  # the read-back names it
                params[layer_type] = {"rope_type": "default", "rope_theta": THETA[layer_type]}
            else:
                params[layer_type] = rope_parameters_to_hf(layer.position, max_positions=spec.max_positions)
        config["rope_parameters"] = params


TABLE = HFTable(
    display="Gemma 3",
    model_types=("gemma3_text",),
    architectures={
        "Gemma3ForCausalLM": "causal_lm",
        "Gemma3TextForSequenceClassification": "sequence_classification",
        "Gemma3TextModel": None,
    },
    config=[
        *gemma_config(activation="hidden_activation", vocab_size=262208, hidden_size=2304, layers=26, heads=8,
                      kv_heads=4, intermediate_size=9216, max_positions=131072, wiring="sandwich"),
        Fixed("attention.qk_norm", {"scope": "head"}),
        QueryPreAttnScalar(),
        SlidingLayers(every=6, window=4096, pattern_key="sliding_window_pattern"),
        RopePerType(),
    ],
    head_config={"causal_lm": [Key("final_logit_softcapping", "softcap", None)]},
    tensors=[*GEMMA2.tensors,
             Tensor("layers.{i}.attention.q_norm.norm", "{base}layers.{i}.self_attn.q_norm"),
             Tensor("layers.{i}.attention.k_norm.norm", "{base}layers.{i}.self_attn.k_norm")],
    heads=HEADS,
)

FAMILY = hf_family(name="gemma-3", table=TABLE,
                   description="Gemma 3 (text): sandwich layers with Gemma's norm, q/k norms, 5 sliding-window "
                               "layers to 1 global, a RoPE per layer type")


@hookimpl
def register_families(register):
    register(FAMILY)
