"""Granite checkpoints against transformers: the causal LM and the bare model, the four muP
multipliers (embedding, attention, residual, logits) at values other than 1 and at their
defaults, an attention multiplier equal to head_dim**-0.5, GQA and MQA, biases, tied and untied
LM heads."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "granite"
MULTIPLIERS = dict(embedding_multiplier=3.0, attention_multiplier=0.05, residual_multiplier=0.5, logits_scaling=4.0)


report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                  **MULTIPLIERS)
    return transformers.GraniteConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


def spec_of(hf_config, architecture="GraniteForCausalLM") -> dict:
    from archcomposer.plugins.granite import FAMILY as family

    return {**family.spec_from_hf_config(hf_config.to_dict(), architecture), "name": "tiny-granite", "family": FAMILY}


@pytest.mark.parametrize(("architecture", "head"), [("GraniteForCausalLM", "causal_lm"), ("GraniteModel", None)])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    assert (spec.embedding.scale, spec.attention.scale, spec.wiring.residual_scale) == (3.0, 0.05, 0.5)
    assert [h.logit_scale for h in spec.heads] == ([0.25] if head else [])


@pytest.mark.parametrize("overrides", [
    {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 1, "tie_word_embeddings": True},
    {"embedding_multiplier": 1.0, "attention_multiplier": 1.0, "residual_multiplier": 1.0, "logits_scaling": 1.0},
    {"attention_multiplier": 12**-0.5, "logits_scaling": 0.3},
], ids=["biases-mqa-tied", "transformers-defaults", "default-score-scale"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="GraniteForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    multiplier = overrides.get("attention_multiplier", 0.05)
    assert ours.spec.attention.scale == (None if multiplier == 12**-0.5 else multiplier)
    assert ours.spec.heads[0].logit_scale == pytest.approx(1 / overrides.get("logits_scaling", 4.0))


def test_shipped_spec_is_what_the_published_config_translates_to():
    """granite-3.0-8b-base's config.json."""
    from archcomposer.plugins.granite import FAMILY as family

    published = transformers.GraniteConfig(
        vocab_size=49155, hidden_size=4096, intermediate_size=12800, num_hidden_layers=40, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=4096, rms_norm_eps=1e-5, attention_dropout=0.1,
        embedding_multiplier=12.0, attention_multiplier=0.0078125, residual_multiplier=0.22, logits_scaling=16.0,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}).to_dict()
    data = family.spec_from_hf_config(published, "GraniteForCausalLM")
    data["name"], data["family"] = "granite-3-8b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("granite-3-8b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    assert check_shipped_spec("granite-3-8b", "GraniteForCausalLM", transformers.GraniteConfig(**published)) \
        == 8_170_848_256


@pytest.mark.parametrize(("change", "message"), [
    ({"embedding": {"scale": "sqrt_hidden_size"}},
     "embedding.scale = 'sqrt_hidden_size' has no equivalent in Hugging Face Granite: its config.json reads back "
     "as 6.9"),
    ({"heads": [{"kind": "causal_lm", "softcap": 30.0}]},
     r"heads.0.softcap = 30.0 has no equivalent in Hugging Face Granite"),
    ({"attention": {"softcap": 30.0}}, "attention.softcap = 30.0 has no equivalent in Hugging Face Granite"),
], ids=["sqrt-embedding-scale", "logit-softcap", "score-softcap"])
def test_export_of_what_granite_cannot_express_names_the_field(tmp_path, change, message):
    spec = spec_of(config())
    for section, fields in change.items():
        spec[section] = fields if section == "heads" else {**spec[section], **fields}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
