"""OLMo checkpoints against transformers: every head, parameter-free LayerNorms, QKV clipping,
GQA, attention biases, tied and untied LM heads."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "olmo"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return transformers.OlmoConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


@pytest.mark.parametrize(("architecture", "head"), [
    ("OlmoForCausalLM", "causal_lm"),
    ("OlmoForSequenceClassification", "sequence_classification"),
    ("OlmoModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(clip_qkv=0.5), head=head,
                 inputs=INPUTS, hf_kwargs_for_batch=position_ids)


@pytest.mark.parametrize("overrides", [
    {"num_key_value_heads": 4, "attention_bias": True, "tie_word_embeddings": True},
    {"num_key_value_heads": 1, "clip_qkv": 0.05},
], ids=["mha-bias-tied", "mqa-tight-clip"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="OlmoForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.clip_qkv == overrides.get("clip_qkv")
    assert ours.spec.attention.qkv_bias == ours.spec.attention.out_bias == overrides.get("attention_bias", False)
    assert (ours.spec.norm.kind, ours.spec.norm.affine) == ("layernorm", False)
    assert not any("norm" in name for name in ours.state_dict())  # the norms hold no tensors


#: allenai/OLMo-7B-hf's config.json.
OLMO_7B = dict(vocab_size=50304, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048, rope_theta=10000.0,
               attention_bias=False, clip_qkv=None, pad_token_id=1, bos_token_id=None, eos_token_id=50279,
               tie_word_embeddings=False)


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.olmo import FAMILY as family

    published = transformers.OlmoConfig(**OLMO_7B).to_dict()
    data = family.spec_from_hf_config(published, "OlmoForCausalLM")
    data["name"], data["family"] = "olmo-7b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("olmo-7b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    check_shipped_spec("olmo-7b", "OlmoForCausalLM", transformers.OlmoConfig(**published))


@pytest.mark.parametrize(("change", "message"), [
    ({"norm": {"kind": "layernorm", "bias": False}}, "norm.affine = True has no equivalent in Hugging Face OLMo: "
                                                     "its config.json reads back as False"),
    ({"norm": {"kind": "layernorm", "affine": False, "eps": 1e-6}}, "norm.eps = 1e-06 has no equivalent"),
    ({"norm": {"kind": "rmsnorm"}}, "norm.kind = 'rmsnorm' has no equivalent in Hugging Face OLMo"),
    ({"wiring": {"kind": "parallel"}}, "wiring.kind = 'parallel' has no equivalent in Hugging Face OLMo"),
    ({"mlp": {"kind": "gated", "intermediate_size": 128, "bias": True}}, "mlp.bias = True has no equivalent"),
], ids=["affine-norm", "norm-eps", "rmsnorm", "parallel", "mlp-bias"])
def test_export_of_what_olmo_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-olmo", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
