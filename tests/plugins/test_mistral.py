"""Mistral checkpoints against transformers: every head, a sliding window on every layer (shorter
than the test sequences, so it masks) and none, GQA and MQA, tied and untied LM heads."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "mistral"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, sliding_window=4,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.MistralConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


def spec_of(hf_config, architecture="MistralForCausalLM") -> dict:
    from archcomposer.plugins.mistral import FAMILY as family

    return {**family.spec_from_hf_config(hf_config.to_dict(), architecture), "name": "tiny-mistral", "family": FAMILY}


@pytest.mark.parametrize(("architecture", "head"), [
    ("MistralForCausalLM", "causal_lm"),
    ("MistralForSequenceClassification", "sequence_classification"),
    ("MistralForTokenClassification", "token_classification"),
    ("MistralForQuestionAnswering", "question_answering"),
    ("MistralModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert [layer.attention.sliding_window for layer in ours.spec.layer_specs] == [4, 4]


@pytest.mark.parametrize("overrides", [
    {"sliding_window": None, "num_key_value_heads": 1, "tie_word_embeddings": True},
    {"sliding_window": 2, "head_dim": 16},
], ids=["no-window-mqa-tied", "window-2-head-dim-16"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="MistralForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.sliding_window == overrides["sliding_window"]
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", False)


def test_a_config_without_sliding_window_slides_over_4096():
    from archcomposer.plugins.mistral import FAMILY as family

    published = {k: v for k, v in config().to_dict().items() if k != "sliding_window"}
    assert family.spec_from_hf_config(published, "MistralForCausalLM")["attention"]["sliding_window"] == 4096


def test_shipped_spec_is_what_the_published_config_translates_to():
    """Mistral-7B-v0.1's config.json: a 4096-token window on every layer."""
    from archcomposer.plugins.mistral import FAMILY as family

    published = transformers.MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=4096,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}).to_dict()
    data = family.spec_from_hf_config(published, "MistralForCausalLM")
    data["name"], data["family"] = "mistral-7b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("mistral-7b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    assert check_shipped_spec("mistral-7b", "MistralForCausalLM", transformers.MistralConfig(**published)) \
        == 7_241_732_096


@pytest.mark.parametrize(("change", "message"), [
    ({"layers": [{"indices": [0], "attention": {"sliding_window": None}}]},
     r"attention.sliding_window \(layers 0\) = None has no equivalent in Hugging Face Mistral: its config.json "
     r"reads back as 4"),
    ({"attention": {"qkv_bias": True}},
     "attention.qkv_bias = True has no equivalent in Hugging Face Mistral: its config.json reads back as False"),
    ({"mlp": {"bias": True}}, "mlp.bias = True has no equivalent in Hugging Face Mistral"),
], ids=["window-on-some-layers", "qkv-bias", "mlp-bias"])
def test_export_of_what_mistral_cannot_express_names_the_field(tmp_path, change, message):
    spec = spec_of(config())
    for section, fields in change.items():
        spec[section] = fields if section == "layers" else {**spec[section], **fields}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
