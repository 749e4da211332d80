"""The Gemma 2 family: Gemma's norm and scaled embedding, sandwich layers, scores scaled by
query_pre_attn_scalar**-0.5 and soft-capped, a sliding window on alternate layers, soft-capped
final logits.

Hugging Face Gemma 2 (``model_type: gemma2``) normalises before and after each branch
(``input_layernorm`` / ``post_attention_layernorm`` around attention, ``pre_feedforward_layernorm``
/ ``post_feedforward_layernorm`` around the MLP: our ``sandwich`` wiring). ``layer_types`` names
each layer ``sliding_attention`` or ``full_attention`` (default: sliding on even layers); the
spec keeps those names and gives the sliding layers ``sliding_window`` through a ``layers`` entry
of that type. ``final_logit_softcapping`` caps the causal LM's logits only. The codecs here are
shared with Gemma 3."""

import math

from archcomposer import hookimpl
from archcomposer.errors import CheckpointError
from archcomposer.hf_table import HEADS, LLAMA_TENSORS, HFTable, Key, Rope, Tensor, hf_family
from archcomposer.plugins.gemma import gemma_config

SLIDING, FULL = "sliding_attention", "full_attention"


def layers_of_type(data: dict, layer_type: str) -> dict:
    """The spec's ``layers`` entry for the layers of ``layer_type`` (made when missing)."""
    layers = data.setdefault("layers", [])
    entry = next((e for e in layers if e.get("type") == layer_type), None)
    if entry is None:
        entry = {"type": layer_type}
        layers.append(entry)
    return entry


class SlidingLayers:
    """``layer_types`` and ``sliding_window`` <-> the spec's ``layer_types`` and the window of the
    ``sliding_attention`` layers. ``every``: transformers' default pattern when the config has no
    ``layer_types`` (layer i slides unless (i + 1) is a multiple of it); ``pattern_key`` the older
    config key that sets it (Gemma 3's ``sliding_window_pattern``)."""

    def __init__(self, *, every: int, window: int, pattern_key: str | None = None):
        self.every, self.window, self.pattern_key = every, window, pattern_key

    def to_spec(self, config, data):
        every = config.get(self.pattern_key, self.every) if self.pattern_key else self.every
        types = config.get("layer_types") or [SLIDING if (i + 1) % every else FULL for i in range(data["num_layers"])]
        unknown = sorted(set(types) - {SLIDING, FULL})
        if unknown:
            raise CheckpointError(f"config.json layer_types names {unknown}; supported: {[SLIDING, FULL]}")
        data["layer_types"] = list(types)
        window = config.get("sliding_window", self.window)
        if window is not None and SLIDING in types:
            layers_of_type(data, SLIDING).setdefault("attention", {})["sliding_window"] = window

    def to_config(self, spec, config):
        windows = [layer.attention.sliding_window for layer in spec.layer_specs]
        config["layer_types"] = [FULL if w is None else SLIDING for w in windows]
        config["sliding_window"] = next((w for w in windows if w is not None), None)  # read back: one window


def _whole(x: float) -> float | int:
    return round(x) if math.isclose(x, round(x), rel_tol=1e-9) else x


class QueryPreAttnScalar:
    """``query_pre_attn_scalar`` s <-> ``attention.scale`` = s**-0.5; left unset when s is the
    head_dim (the default scale), as in Gemma 2 9B and Gemma 3 4B."""

    def to_spec(self, config, data):
        scalar = config.get("query_pre_attn_scalar", 256)
        a = data["attention"]
        if scalar != (a.get("head_dim") or data["hidden_size"] // a["num_heads"]):
            a["scale"] = scalar**-0.5

    def to_config(self, spec, config):
        config["query_pre_attn_scalar"] = _whole(spec.attention.score_scale**-2)


TABLE = HFTable(
    display="Gemma 2",
    model_types=("gemma2",),
    architectures={
        "Gemma2ForCausalLM": "causal_lm",
        "Gemma2ForSequenceClassification": "sequence_classification",
        "Gemma2ForTokenClassification": "token_classification",
        "Gemma2Model": None,
    },
    config=[
        *gemma_config(activation="hidden_activation", vocab_size=256000, hidden_size=2304, layers=26, heads=8,
                      kv_heads=4, intermediate_size=9216, max_positions=8192, wiring="sandwich"),
        Key("attn_logit_softcapping", "attention.softcap", 50.0),
        QueryPreAttnScalar(),
        SlidingLayers(every=2, window=4096),
        Rope(),
    ],
    head_config={"causal_lm": [Key("final_logit_softcapping", "softcap", 30.0)]},
    tensors=[t for t in LLAMA_TENSORS if t.ours != "layers.{i}.mlp_norm"] + [
        Tensor("layers.{i}.attn_post_norm", "{base}layers.{i}.post_attention_layernorm"),
        Tensor("layers.{i}.mlp_norm", "{base}layers.{i}.pre_feedforward_layernorm"),
        Tensor("layers.{i}.mlp_post_norm", "{base}layers.{i}.post_feedforward_layernorm"),
    ],
    heads=HEADS,
)

FAMILY = hf_family(name="gemma-2", table=TABLE,
                   description="Gemma 2: Gemma's norm and scaled embedding, sandwich layers, soft-capped scores "
                               "and logits, sliding window on alternate layers")


@hookimpl
def register_families(register):
    register(FAMILY)
