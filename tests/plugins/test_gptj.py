"""GPT-J checkpoints against transformers: every head, rotary widths other than GPT-J-6B's quarter
(whole heads included), n_inner set, tied and untied LM heads (each with its bias)."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "gpt-j"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, n_embd=64, n_layer=2, n_head=4, rotary_dim=4, n_positions=64, pad_token_id=3,
                  bos_token_id=1, eos_token_id=2, num_labels=3)
    return transformers.GPTJConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=3)


@pytest.mark.parametrize(("architecture", "head", "overrides"), [
    ("GPTJForCausalLM", "causal_lm", {}),
    ("GPTJForSequenceClassification", "sequence_classification", {}),
    ("GPTJForQuestionAnswering", "question_answering", {"num_labels": 2}),  # its qa_outputs has num_labels rows
    ("GPTJModel", None, {}),
])
def test_every_head_matches_transformers(tmp_path, architecture, head, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(**overrides), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    position = ours.spec.position
    assert (position.kind, position.fraction, position.interleaved) == ("partial_rope", 0.25, True)


@pytest.mark.parametrize("overrides", [
    {"rotary_dim": 16, "tie_word_embeddings": True, "n_inner": 96},
    {"rotary_dim": 8, "n_head": 2, "activation_function": "gelu"},
], ids=["whole-head-tied-inner", "half-head-2-heads-gelu"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="GPTJForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.position.rotary_dim(ours.spec.attention.head_dim) == overrides["rotary_dim"]
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", False)
    assert ours.spec.heads[0].bias


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.gptj import FAMILY as family

    published = transformers.GPTJConfig().to_dict()  # EleutherAI/gpt-j-6b is transformers' default
    data = family.spec_from_hf_config(published, "GPTJForCausalLM")
    data["name"], data["family"] = "gpt-j-6b", "gpt-j"
    ours = build_model(data, device="meta").spec
    shipped = build_model("gpt-j-6b", device="meta").spec
    assert ours.model_dump() == shipped.model_dump()
    assert check_shipped_spec("gpt-j-6b", "GPTJForCausalLM", transformers.GPTJConfig(**published)) == 6_050_882_784


@pytest.mark.parametrize("rotary_dim", [5, 24])
def test_rotary_dim_that_is_not_an_even_part_of_a_head_is_refused(tmp_path, rotary_dim):
    transformers.GPTJForCausalLM(config(rotary_dim=rotary_dim)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=f"config.json rotary_dim = {rotary_dim} is not supported: it must be "
                                              f"an even number of channels of a head .head_dim = 16."):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"position": {"kind": "rope"}}, "position.kind = 'rope' has no equivalent in Hugging Face GPT-J: its "
                                     "config.json reads back as 'partial_rope'"),
    ({"position": {"kind": "partial_rope", "fraction": 0.5, "interleaved": False}},
     "position.interleaved = False has no equivalent in Hugging Face GPT-J"),
    ({"position": {"kind": "partial_rope", "fraction": 0.5, "theta": 500.0}},
     "position.theta = 500.0 has no equivalent in Hugging Face GPT-J: its config.json reads back as 10000.0"),
    ({"wiring": {"kind": "parallel", "shared_norm": False}},
     "wiring.shared_norm = False has no equivalent in Hugging Face GPT-J"),
    ({"heads": [{"kind": "causal_lm"}]}, "heads.0.bias = False has no equivalent in Hugging Face GPT-J"),
], ids=["rope-halves", "not-interleaved", "theta", "two-norms", "lm-head-without-bias"])
def test_export_of_what_gptj_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-gpt-j", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
