"""OPT checkpoints against transformers: every head, pre-norm and post-norm (OPT-350m's wiring,
without a final norm), enable_bias off, norms without parameters, tied and untied LM heads, the
offset-2 learned positions."""

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import Inputs, build_reference, check_parity, check_shipped_spec, largest_difference_report

FAMILY = "opt"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, ffn_dim=96,
                  max_position_embeddings=64, pad_token_id=1, bos_token_id=2, eos_token_id=2, num_labels=3)
    return transformers.OPTConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


def position_ids(inputs):
    """OPT counts positions over real tokens, as we do, but gives pads position -1 where we give 0:
    the loss reads the last pad's logits (it predicts the first real token), so both get ours."""
    return {"position_ids": inputs.position_ids}


@pytest.mark.parametrize(("architecture", "head"), [
    ("OPTForCausalLM", "causal_lm"),
    ("OPTForSequenceClassification", "sequence_classification"),
    ("OPTForQuestionAnswering", "question_answering"),
    ("OPTModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.embedding.learned_positions.offset == 2
    assert (ours.spec.wiring.kind, ours.spec.final_norm) == ("pre_norm", True)


@pytest.mark.parametrize("overrides", [
    {"do_layer_norm_before": False, "activation_function": "gelu"},
    {"enable_bias": False, "tie_word_embeddings": False, "num_attention_heads": 3, "dropout": 0.2},
    {"_remove_final_layer_norm": True},
    {"layer_norm_elementwise_affine": False},
    {"layer_norm_elementwise_affine": False, "do_layer_norm_before": False},
], ids=["post-norm-gelu", "no-bias-untied-3-heads", "no-final-norm", "norms-without-parameters",
        "post-norm-without-parameters"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="OPTForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    before = overrides.get("do_layer_norm_before", True)
    assert spec.wiring.kind == ("pre_norm" if before else "post_norm")
    assert spec.final_norm == (before and not overrides.get("_remove_final_layer_norm", False))
    assert spec.attention.qkv_bias == spec.mlp.bias == overrides.get("enable_bias", True)
    assert spec.embedding.tied == overrides.get("tie_word_embeddings", True)
    assert spec.norm.affine == spec.norm.bias == overrides.get("layer_norm_elementwise_affine", True)


def test_checkpoint_saved_from_the_bare_model_loads_into_the_lm(tmp_path):
    """Published OPT checkpoints (facebook/opt-1.3b) name tensors ``decoder.layers.0...`` without
    ``model.`` while config.json says OPTForCausalLM, as an OPTModel checkpoint with a tied head would."""
    reference = build_reference("OPTForCausalLM", config())
    reference.model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(config_file.read_text().replace('"OPTModel"', '"OPTForCausalLM"'))
    ours = from_pretrained(tmp_path)
    with torch.no_grad():
        assert (ours(INPUTS.single).logits - reference(INPUTS.single).logits).abs().max() <= 1e-4


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.opt import FAMILY as family

    # facebook/opt-1.3b's config.json
    published = transformers.OPTConfig(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                                       ffn_dim=8192, word_embed_proj_dim=2048).to_dict()
    data = family.spec_from_hf_config(published, "OPTForCausalLM")
    data["name"], data["family"] = "opt-1.3b", "opt"
    ours = build_model(data, device="meta").spec
    shipped = build_model("opt-1.3b", device="meta").spec
    assert ours.model_dump() == shipped.model_dump()
    assert check_shipped_spec("opt-1.3b", "OPTForCausalLM", transformers.OPTConfig(**published)) == 1_315_758_080


@pytest.mark.parametrize(("overrides", "message"), [
    ({"word_embed_proj_dim": 32}, "config.json word_embed_proj_dim = 32 is not supported .only hidden_size = 48.: "
                                  "it embeds in a narrower width with projections in and out of the layers"),
    ({"layerdrop": 0.1}, "config.json layerdrop = 0.1 is not supported"),
    ({"activation_function": "gelu_10"}, "config.json activation 'gelu_10' is not supported"),
], ids=["project-in-out", "layerdrop", "activation"])
def test_refused_config_flags_name_the_key(tmp_path, overrides, message):
    transformers.OPTForCausalLM(config(**overrides)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"wiring": {"kind": "post_norm"}}, "final_norm = True has no equivalent in Hugging Face OPT: its config.json "
                                        "reads back as False"),
    ({"wiring": {"kind": "parallel"}}, "wiring.kind = 'parallel' has no equivalent in Hugging Face OPT"),
    ({"embedding": {"kind": "tokens", "tied": True, "learned_positions": {"offset": 0}}},
     "embedding.learned_positions.offset = 0 has no equivalent in Hugging Face OPT: its config.json reads back as 2"),
    ({"mlp": {"kind": "plain", "intermediate_size": 128, "bias": False}},
     "mlp.bias = False has no equivalent in Hugging Face OPT"),
    ({"norm": {"kind": "layernorm", "eps": 1e-6}}, "norm.eps = 1e-06 has no equivalent in Hugging Face OPT"),
    ({"norm": {"kind": "layernorm", "bias": False}}, "norm.bias = False has no equivalent in Hugging Face OPT: its "
                                                     "config.json reads back as True"),
    ({"norm": {"kind": "rmsnorm", "eps": 1e-5}}, "norm.kind = 'rmsnorm' has no equivalent in Hugging Face OPT"),
], ids=["post-norm-with-final-norm", "parallel", "position-offset", "mlp-bias-alone", "norm-eps", "norm-scale-only",
        "rmsnorm"])
def test_export_of_what_opt_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-opt", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
