"""SmolLM3 checkpoints against transformers: every head, NoPE layers from no_rope_layers and from
no_rope_layer_interval, GQA and MQA, attention_bias (q, k, v and o) and mlp_bias, tied and untied
LM heads."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "smollm3"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, no_rope_layers=[1, 0],
                  rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.SmolLM3Config(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


def spec_of(hf_config, architecture="SmolLM3ForCausalLM") -> dict:
    from archcomposer.plugins.smollm3 import FAMILY as family

    return {**family.spec_from_hf_config(hf_config.to_dict(), architecture), "name": "tiny-smollm3", "family": FAMILY}


@pytest.mark.parametrize(("architecture", "head"), [
    ("SmolLM3ForCausalLM", "causal_lm"),
    ("SmolLM3ForSequenceClassification", "sequence_classification"),
    ("SmolLM3ForTokenClassification", "token_classification"),
    ("SmolLM3ForQuestionAnswering", "question_answering"),
    ("SmolLM3Model", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert [layer.position.kind for layer in ours.spec.layer_specs] == ["rope", "none"]


@pytest.mark.parametrize("overrides", [
    {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": False, "no_rope_layers": [0, 1]},
    {"num_key_value_heads": 1, "num_hidden_layers": 3, "no_rope_layers": None, "no_rope_layer_interval": 2},
], ids=["biases-untied-first-layer-nope", "mqa-interval-2"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="SmolLM3ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    bias = overrides.get("attention_bias", False)
    assert (ours.spec.attention.qkv_bias, ours.spec.attention.out_bias, ours.spec.mlp.bias) == (bias, bias, bias)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", True)
    kinds = [layer.position.kind for layer in ours.spec.layer_specs]
    assert kinds == (["none", "rope"] if overrides.get("no_rope_layers") else ["rope", "none", "rope"])


@pytest.mark.parametrize(("overrides", "windows"), [
    ({"use_sliding_window": True, "sliding_window": 3}, [None, 3]),
    ({"use_sliding_window": False, "sliding_window": 3, "layer_types": ["sliding_attention", "full_attention"]},
     [3, None]),
], ids=["nope-layers-slide", "layer-types-slide-without-use-sliding-window"])
def test_sliding_windows_match_transformers(tmp_path, overrides, windows):
    """transformers masks a sliding_attention layer with sliding_window even when use_sliding_window
    is off (that flag only chooses the default layer_types)."""
    ours = check_parity(tmp_path, family=FAMILY, architecture="SmolLM3ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert [layer.attention.sliding_window for layer in ours.spec.layer_specs] == windows


def test_a_config_without_no_rope_layers_drops_rope_every_interval_layers():
    from archcomposer.plugins.smollm3 import FAMILY as family

    published = {k: v for k, v in config(num_hidden_layers=6, no_rope_layers=None).to_dict().items()
                 if k not in ("no_rope_layers", "layer_types")}
    data = family.spec_from_hf_config({**published, "no_rope_layer_interval": 3}, "SmolLM3ForCausalLM")
    assert data["layers"] == [{"indices": [2, 5], "position": {"kind": "none"}}]


def test_all_rope_layers_need_no_layers_entry():
    spec = spec_of(config(no_rope_layers=[1, 1]))
    assert "layers" not in spec and spec["position"] == {"kind": "rope", "theta": 1000.0}


def test_shipped_spec_is_what_the_published_config_translates_to():
    """SmolLM3-3B's config.json: every fourth layer without RoPE, no sliding window."""
    from archcomposer.plugins.smollm3 import FAMILY as family

    published = transformers.SmolLM3Config(
        vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=4, max_position_embeddings=65536, rms_norm_eps=1e-6, no_rope_layer_interval=4,
        use_sliding_window=False, sliding_window=None, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0}).to_dict()
    data = family.spec_from_hf_config(published, "SmolLM3ForCausalLM")
    data["name"], data["family"] = "smollm3-3b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("smollm3-3b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    assert [i for i, layer in enumerate(shipped.layer_specs) if layer.position.kind == "none"] == list(range(3, 36, 4))
    assert check_shipped_spec("smollm3-3b", "SmolLM3ForCausalLM", transformers.SmolLM3Config(**published)) \
        == 3_075_098_624


def test_short_no_rope_layers_is_refused():
    from archcomposer.plugins.smollm3 import FAMILY as family

    with pytest.raises(CheckpointError, match="config.json no_rope_layers has 1 entries; expected one per layer"):
        family.spec_from_hf_config({**config().to_dict(), "no_rope_layers": [1]}, "SmolLM3ForCausalLM")


@pytest.mark.parametrize(("change", "message"), [
    ({"layers": [{"indices": [1], "position": {"kind": "alibi"}}]},
     r"position.kind \(layers 1\) = 'alibi' has no equivalent in Hugging Face SmolLM3: its config.json reads back "
     r"as 'rope'"),
    ({"layers": [{"indices": [1], "position": {"theta": 10.0}}]},
     r"position.theta \(layers 1\) = 10.0 has no equivalent in Hugging Face SmolLM3"),
    ({"attention": {"qkv_bias": True}}, "attention.qkv_bias = True has no equivalent in Hugging Face SmolLM3"),
], ids=["alibi-layer", "theta-per-layer", "qkv-bias-without-out-bias"])
def test_export_of_what_smollm3_cannot_express_names_the_field(tmp_path, change, message):
    spec = spec_of(config(no_rope_layers=[1, 1]))
    for section, fields in change.items():
        spec[section] = fields if section == "layers" else {**spec[section], **fields}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
