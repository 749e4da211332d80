"""Cohere checkpoints against transformers: both heads, GQA and MHA, the per-head QK LayerNorm
(each head its own weight), attention biases, scaled logits, tied and untied LM heads."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "cohere"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=1, bos_token_id=0, eos_token_id=2, logit_scale=0.25,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return transformers.CohereConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


@pytest.mark.parametrize(("architecture", "head"), [("CohereForCausalLM", "causal_lm"), ("CohereModel", None)])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head, inputs=INPUTS,
                 hf_kwargs_for_batch=position_ids)


@pytest.mark.parametrize("overrides", [
    {"use_qk_norm": True,  # CohereRotaryEmbedding rotates whole heads whatever partial_rotary_factor says
     "rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}},
    {"use_qk_norm": True, "num_key_value_heads": 4, "attention_bias": True, "tie_word_embeddings": False,
     "logit_scale": 2.0},
], ids=["gqa-qk-norm", "mha-qk-norm-bias-untied"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="CohereForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.heads[0].logit_scale == overrides.get("logit_scale", 0.25)
    assert ours.spec.position.fraction == 1.0
    assert ours.spec.attention.qk_norm.scope == "per_head"
    assert ours.spec.attention.qkv_bias == ours.spec.attention.out_bias == overrides.get("attention_bias", False)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", True)


#: CohereForAI/c4ai-command-r-v01's config.json.
COMMAND_R = dict(vocab_size=256000, hidden_size=8192, intermediate_size=22528, num_hidden_layers=40,
                 num_attention_heads=64, num_key_value_heads=64, max_position_embeddings=8192, layer_norm_eps=1e-5,
                 logit_scale=0.0625, rope_theta=8000000.0, use_qk_norm=False, tie_word_embeddings=True,
                 pad_token_id=0, bos_token_id=5, eos_token_id=255001)


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.cohere import FAMILY as family

    published = transformers.CohereConfig(**COMMAND_R).to_dict()
    data = family.spec_from_hf_config(published, "CohereForCausalLM")
    data["name"], data["family"] = "command-r-v01", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("command-r-v01", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    check_shipped_spec("command-r-v01", "CohereForCausalLM", transformers.CohereConfig(**published))


@pytest.mark.parametrize(("change", "message"), [
    ({"wiring": {"kind": "pre_norm"}}, "wiring.kind = 'pre_norm' has no equivalent in Hugging Face Cohere: its "
                                       "config.json reads back as 'parallel'"),
    ({"wiring": {"kind": "parallel", "shared_norm": False}}, "wiring.shared_norm = False has no equivalent"),
    ({"norm": {"kind": "layernorm", "bias": True}}, "norm.bias = True has no equivalent in Hugging Face Cohere"),
    ({"norm": {"kind": "rmsnorm"}}, "norm.kind = 'rmsnorm' has no equivalent in Hugging Face Cohere"),
    ({"position": {"kind": "rope"}}, "position.kind = 'rope' has no equivalent in Hugging Face Cohere: its "
                                     "config.json reads back as 'partial_rope'"),
    ({"position": {"kind": "partial_rope", "fraction": 0.5}}, "position.fraction = 0.5 has no equivalent"),
    ({"mlp": {"kind": "gated", "intermediate_size": 128, "bias": True}}, "mlp.bias = True has no equivalent"),
], ids=["pre-norm", "two-norms", "norm-bias", "rmsnorm", "halves-rope", "partial-rope", "mlp-bias"])
def test_export_of_what_cohere_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-cohere", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()


def test_classification_heads_have_no_cohere_architecture(tmp_path):
    spec = build_model("tiny-cohere", device="meta").spec.to_dict()
    spec["heads"] = [{"kind": "sequence_classification"}]
    with pytest.raises(CheckpointError, match="no Hugging Face architecture with a sequence_classification head"):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
