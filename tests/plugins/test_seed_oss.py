"""Seed-OSS checkpoints against transformers: every head, GQA and MQA, head_dim independent of
the width, attention_out_bias and mlp_bias on, tied and untied LM heads."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "seed-oss"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=24, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return transformers.SeedOssConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


@pytest.mark.parametrize(("architecture", "head"), [
    ("SeedOssForCausalLM", "causal_lm"),
    ("SeedOssForSequenceClassification", "sequence_classification"),
    ("SeedOssForTokenClassification", "token_classification"),
    ("SeedOssForQuestionAnswering", "question_answering"),
    ("SeedOssModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head, inputs=INPUTS,
                 hf_kwargs_for_batch=position_ids)


@pytest.mark.parametrize("overrides", [
    {"attention_out_bias": True, "mlp_bias": True},
    {"num_key_value_heads": 1, "tie_word_embeddings": True, "attention_bias": False},
], ids=["out-and-mlp-bias", "mqa-tied-no-qkv-bias"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="SeedOssForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.out_bias == overrides.get("attention_out_bias", False)
    assert ours.spec.mlp.bias == overrides.get("mlp_bias", False)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", False)


def test_fused_projections_export_as_separate_tensors(tmp_path):
    """A spec with fused QKV and gate/up (not Seed-OSS's own layout) still exports: the rows are
    split into q/k/v and gate/up on the way out and concatenated on the way back."""
    spec = build_model("tiny-seed-oss", device="meta").spec.to_dict()
    spec["attention"]["fused_qkv"] = True
    spec["mlp"]["fused"] = True
    model = build_model(spec, seed=0)
    model.save_pretrained(tmp_path / "hf", format="hf")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = INPUTS.single
    assert (model(ids).logits - reference(ids).logits).abs().max() <= 1e-4
    back = from_pretrained(tmp_path / "hf")  # HF layout: split projections
    assert not back.spec.attention.fused_qkv
    assert (model(ids).logits - back(ids).logits).abs().max() <= 1e-5


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.seed_oss import FAMILY as family

    published = transformers.SeedOssConfig(hidden_size=5120, rope_parameters={"rope_theta": 1e7}).to_dict()
    data = family.spec_from_hf_config(published, "SeedOssForCausalLM")
    data["name"], data["family"] = "seed-oss-36b", "seed-oss"
    ours = build_model(data, device="meta").spec
    shipped = build_model("seed-oss-36b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    check_shipped_spec("seed-oss-36b", "SeedOssForCausalLM", transformers.SeedOssConfig(**published))


def test_residual_dropout_is_the_wiring_dropout():
    from archcomposer.plugins.seed_oss import FAMILY as family

    data = family.spec_from_hf_config(config(residual_dropout=0.2).to_dict(), "SeedOssForCausalLM")
    data["name"] = "dropout"
    spec = build_model(data, device="meta").spec
    assert (spec.wiring.kind, spec.wiring.dropout) == ("pre_norm", 0.2)
    assert family.hf_config_from_spec(spec, "SeedOssForCausalLM")["residual_dropout"] == 0.2


PROMPT_SEGMENTS = {"kind": "prompt_segments", "prompt": {"num_types": 3, "length": 2}, "segments": {"num_types": 3}}


@pytest.mark.parametrize(("change", "message"), [
    ({"embedding": PROMPT_SEGMENTS},  # prompt tokens and a prefix-LM mask
     "embedding.kind = 'prompt_segments' has no equivalent in Hugging Face Seed-OSS: its config.json reads "
     "back as 'tokens'"),
    ({"embedding": {"kind": "tokens", "norm": True}}, "embedding.norm = True has no equivalent"),
    ({"embedding": {"kind": "tokens", "scale": "sqrt_hidden_size"}},
     "embedding.scale = 'sqrt_hidden_size' has no equivalent in Hugging Face Seed-OSS: its config.json "
     "reads back as 1.0"),
    ({"embedding": {"kind": "tokens", "learned_positions": {"offset": 2}}},
     "embedding.learned_positions = {'offset': 2} has no equivalent"),
    ({"wiring": {"kind": "sandwich"}}, "wiring.kind = 'sandwich' has no equivalent in Hugging Face Seed-OSS: its "
                                       "config.json reads back as 'pre_norm'"),
    ({"wiring": {"kind": "post_branch_norm"}}, "wiring.kind = 'post_branch_norm' has no equivalent"),
    ({"wiring": {"kind": "parallel"}}, "wiring.kind = 'parallel' has no equivalent"),
    ({"wiring": {"kind": "post_norm"}, "final_norm": False}, "final_norm = False has no equivalent"),
    ({"wiring": {"kind": "pre_norm", "residual_from_norm": True}},
     "wiring.residual_from_norm = True has no equivalent in Hugging Face Seed-OSS: its config.json reads "
     "back as False"),
    ({"final_norm": False}, "final_norm = False has no equivalent in Hugging Face Seed-OSS: its config.json "
                            "reads back as True"),
], ids=["prompt-segments", "embedding-norm", "embedding-scale", "learned-positions", "sandwich", "post-branch-norm",
        "parallel", "post-norm", "residual-from-norm", "no-final-norm"])
def test_export_of_what_the_llama_layout_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-seed-oss", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
