"""GLM checkpoints against transformers: every head, GQA and MQA, partial rotary factors other
than 0.5 (in ``rope_parameters``), tied and untied LM heads."""

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report, position_ids)

FAMILY = "glm-4"
report_largest_difference = largest_difference_report(FAMILY)


def config(partial_rotary_factor=0.5, **overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, pad_token_id=0, eos_token_id=[1, 2], num_labels=3,
                  max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                   "partial_rotary_factor": partial_rotary_factor})
    return transformers.GlmConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


@pytest.mark.parametrize(("architecture", "head"), [
    ("GlmForCausalLM", "causal_lm"),
    ("GlmForSequenceClassification", "sequence_classification"),
    ("GlmForTokenClassification", "token_classification"),
    ("GlmModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head, inputs=INPUTS,
                 hf_kwargs_for_batch=position_ids)


@pytest.mark.parametrize(("factor", "overrides"), [
    (0.25, {"num_key_value_heads": 1}),
    (0.75, {"tie_word_embeddings": True, "attention_bias": False}),
    (1.0, {"num_key_value_heads": 4}),
], ids=["mqa-quarter-rotary", "tied-three-quarter-rotary-no-bias", "mha-full-rotary"])
def test_causal_lm_variants_match_transformers(tmp_path, factor, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="GlmForCausalLM",
                        config=config(partial_rotary_factor=factor, **overrides), head="causal_lm", inputs=INPUTS,
                        hf_kwargs_for_batch=position_ids)
    assert ours.spec.position.fraction == factor
    assert ours.spec.attention.num_kv_heads == overrides.get("num_key_value_heads", 2)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", False)


def test_sharded_transformers_checkpoint_loads(tmp_path):
    reference = build_reference("GlmForCausalLM", config())
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = from_pretrained(tmp_path)
    with torch.no_grad():
        assert (ours(INPUTS.single).logits - reference(INPUTS.single).logits).abs().max() <= 1e-4


def test_shipped_spec_is_what_the_default_config_translates_to():
    from archcomposer.plugins.glm import FAMILY as family

    data = family.spec_from_hf_config(transformers.GlmConfig().to_dict(), "GlmForCausalLM")
    data["name"], data["family"] = "glm-4-9b", "glm-4"
    shipped = build_model("glm-4-9b", device="meta").spec
    ours = build_model(data, device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    check_shipped_spec("glm-4-9b", "GlmForCausalLM", transformers.GlmConfig())


def test_export_without_fused_gate_up_names_the_field(tmp_path):
    spec = build_model("tiny-glm-4", device="meta").spec.to_dict()
    spec["mlp"]["fused"] = False
    with pytest.raises(CheckpointError, match=r"mlp.fused = False has no equivalent in Hugging Face GLM"):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")


@pytest.mark.parametrize(("change", "message"), [
    ({"wiring": {"kind": "pre_norm", "dropout": 0.1}}, "wiring.dropout = 0.1 has no equivalent in Hugging Face GLM: "
                                                       "its config.json reads back as 0.0"),
    ({"wiring": {"kind": "parallel", "shared_norm": False}}, "wiring.kind = 'parallel' has no equivalent in "
                                                             "Hugging Face GLM: its config.json reads back as 'pre_norm'"),
    ({"embedding": {"kind": "tokens", "scale": 2.0}}, "embedding.scale = 2.0 has no equivalent in Hugging Face GLM"),
    ({"final_norm": False}, "final_norm = False has no equivalent in Hugging Face GLM"),
], ids=["wiring-dropout", "parallel", "embedding-scale", "no-final-norm"])
def test_export_of_what_glm_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-glm-4", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")


def test_question_answering_has_no_glm_architecture(tmp_path):
    spec = build_model("tiny-glm-4", device="meta").spec.to_dict()
    spec["heads"] = [{"kind": "question_answering"}]
    with pytest.raises(CheckpointError, match="no Hugging Face architecture with a question_answering head"):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
