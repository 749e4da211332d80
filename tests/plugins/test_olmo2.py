"""OLMo 2 checkpoints against transformers: every head, norms on the branch outputs, RMSNorm over
the whole query and key projections (widths H x Dh and Hkv x Dh), GQA, attention biases, tied and
untied LM heads."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "olmo2"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return transformers.Olmo2Config(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


@pytest.mark.parametrize(("architecture", "head"), [
    ("Olmo2ForCausalLM", "causal_lm"),
    ("Olmo2ForSequenceClassification", "sequence_classification"),
    ("Olmo2Model", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head, inputs=INPUTS,
                 hf_kwargs_for_batch=position_ids)


@pytest.mark.parametrize("overrides", [
    {"num_key_value_heads": 4, "attention_bias": True, "tie_word_embeddings": True},
    {"num_key_value_heads": 1},
], ids=["mha-bias-tied", "mqa"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="Olmo2ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.qk_norm.scope == "projection"
    assert ours.spec.wiring.kind == "post_branch_norm"
    assert ours.spec.attention.qkv_bias == ours.spec.attention.out_bias == overrides.get("attention_bias", False)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", False)


#: allenai/OLMo-2-1124-7B's config.json.
OLMO_2_7B = dict(vocab_size=100352, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rope_theta=500000,
                 rms_norm_eps=1e-6, attention_bias=False, pad_token_id=100277, eos_token_id=100257,
                 bos_token_id=None, tie_word_embeddings=False)


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.olmo2 import FAMILY as family

    published = transformers.Olmo2Config(**OLMO_2_7B).to_dict()
    data = family.spec_from_hf_config(published, "Olmo2ForCausalLM")
    data["name"], data["family"] = "olmo-2-7b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("olmo-2-7b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    check_shipped_spec("olmo-2-7b", "Olmo2ForCausalLM", transformers.Olmo2Config(**published))


@pytest.mark.parametrize(("change", "message"), [
    ({"wiring": {"kind": "pre_norm"}}, "wiring.kind = 'pre_norm' has no equivalent in Hugging Face OLMo 2: its "
                                       "config.json reads back as 'post_branch_norm'"),
    ({"wiring": {"kind": "sandwich"}}, "wiring.kind = 'sandwich' has no equivalent"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "qk_norm": {"scope": "head"}}},
     "attention.qk_norm.scope = 'head' has no equivalent in Hugging Face OLMo 2: its config.json reads back as "
     "'projection'"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2}}, "attention.qk_norm = None has no equivalent"),
    ({"norm": {"kind": "layernorm"}}, "norm.kind = 'layernorm' has no equivalent in Hugging Face OLMo 2"),
], ids=["pre-norm", "sandwich", "qk-norm-per-head", "no-qk-norm", "layernorm"])
def test_export_of_what_olmo2_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-olmo2", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
