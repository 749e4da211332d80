"""BLOOM checkpoints against transformers: every head, ALiBi with head counts that are not a
power of two, tied and untied LM heads, residuals from the normed input."""

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report)

FAMILY = "bloom"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=40, n_layer=2, n_head=5, pad_token_id=3, bos_token_id=1,
                  eos_token_id=2, num_labels=3)
    return transformers.BloomConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=3)


@pytest.mark.parametrize(("architecture", "head"), [
    ("BloomForCausalLM", "causal_lm"),
    ("BloomForSequenceClassification", "sequence_classification"),
    ("BloomForTokenClassification", "token_classification"),
    ("BloomForQuestionAnswering", "question_answering"),
    ("BloomModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head, inputs=INPUTS)


@pytest.mark.parametrize("overrides", [
    {"n_head": 6, "hidden_size": 48, "tie_word_embeddings": False},
    {"n_head": 3, "hidden_size": 48, "apply_residual_connection_post_layernorm": True},
], ids=["6-heads-untied", "3-heads-residual-from-norm"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="BloomForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", True)
    assert ours.spec.embedding.norm
    assert ours.spec.attention.num_heads == overrides["n_head"]
    assert ours.spec.wiring.kind == "pre_norm"
    assert ours.spec.wiring.residual_from_norm == overrides.get("apply_residual_connection_post_layernorm", False)


def test_qkv_rows_are_permuted_per_head(tmp_path):
    """HF rows [H, 3, Dh] -> ours [3, H, Dh]: our q rows of head 1 are HF rows 3*Dh .. 4*Dh."""
    build = transformers.BloomForCausalLM(config()).eval()
    build.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    theirs = build.transformer.h[0].self_attention.query_key_value.weight
    mine = ours.layers[0].attention.qkv.proj.weight
    Dh = 8
    assert (mine[Dh:2 * Dh] == theirs[3 * Dh:4 * Dh]).all()  # q of head 1
    assert (mine[40 + Dh:40 + 2 * Dh] == theirs[4 * Dh:5 * Dh]).all()  # k of head 1


def test_checkpoint_saved_from_the_bare_model_loads_into_the_lm(tmp_path):
    """Published BLOOM checkpoints (bloom-560m) name tensors ``h.0...`` without ``transformer.``
    while config.json says BloomForCausalLM, as a BloomModel checkpoint with a tied head would."""
    reference = build_reference("BloomForCausalLM", config())
    reference.transformer.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(config_file.read_text().replace('"BloomModel"', '"BloomForCausalLM"'))
    ours = from_pretrained(tmp_path)
    with torch.no_grad():
        assert (ours(INPUTS.single).logits - reference(INPUTS.single).logits).abs().max() <= 1e-4


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.bloom import FAMILY as family

    published = transformers.BloomConfig(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16,
                                         pad_token_id=3).to_dict()
    data = family.spec_from_hf_config(published, "BloomForCausalLM")
    shipped = build_model("bloom-560m", device="meta").spec
    for key in ("vocab_size", "hidden_size", "num_layers", "pad_token_id", "bos_token_id", "eos_token_id"):
        assert data[key] == getattr(shipped, key)
    assert data["attention"]["num_heads"] == shipped.attention.num_heads
    assert data["mlp"]["intermediate_size"] == shipped.mlp.intermediate_size
    check_shipped_spec("bloom-560m", "BloomForCausalLM", transformers.BloomConfig(**published))
    check_shipped_spec("bloom-176b", "BloomForCausalLM", transformers.BloomConfig(
        vocab_size=250880, hidden_size=14336, n_layer=70, n_head=112, pad_token_id=3))


def test_export_of_a_spec_bloom_cannot_express_names_the_block(tmp_path):
    spec = build_model("tiny-bloom", device="meta").spec.to_dict()
    spec["mlp"] = {"kind": "gated", "intermediate_size": 160}
    model = build_model(spec, seed=0)
    with pytest.raises(CheckpointError, match=r"mlp.kind = 'gated' has no equivalent in Hugging Face BLOOM"):
        model.save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()


def test_hidden_dropout_and_residual_from_norm_are_the_wiring():
    from archcomposer.plugins.bloom import FAMILY as family

    data = family.spec_from_hf_config(config(hidden_dropout=0.1, apply_residual_connection_post_layernorm=True)
                                      .to_dict(), "BloomForCausalLM")
    data["name"] = "wiring"
    spec = build_model(data, device="meta").spec
    assert (spec.wiring.kind, spec.wiring.residual_from_norm, spec.wiring.dropout) == ("pre_norm", True, 0.1)
    exported = family.hf_config_from_spec(spec, "BloomForCausalLM")
    assert (exported["hidden_dropout"], exported["apply_residual_connection_post_layernorm"]) == (0.1, True)


@pytest.mark.parametrize(("change", "message"), [
    ({"embedding": {"kind": "tokens", "tied": True}},
     "embedding.norm = False has no equivalent in Hugging Face BLOOM: its config.json reads back as True"),
    ({"embedding": {"kind": "tokens", "tied": True, "norm": True, "scale": "sqrt_hidden_size"}},
     "embedding.scale = 'sqrt_hidden_size' has no equivalent in Hugging Face BLOOM"),
    ({"embedding": {"kind": "tokens", "tied": True, "norm": True, "learned_positions": {}}},
     "embedding.learned_positions = {'offset': 0} has no equivalent"),
    ({"embedding": {"kind": "prompt_segments", "prompt": {"num_types": 3, "length": 2}, "segments": {"num_types": 3}},
      "heads": []}, "embedding.kind = 'prompt_segments' has no equivalent in Hugging Face BLOOM: its "
                  "config.json reads back as 'tokens'"),
    ({"wiring": {"kind": "sandwich"}}, "wiring.kind = 'sandwich' has no equivalent in Hugging Face BLOOM"),
    ({"wiring": {"kind": "parallel"}}, "wiring.kind = 'parallel' has no equivalent in Hugging Face BLOOM"),
    ({"wiring": {"kind": "post_norm"}}, "wiring.kind = 'post_norm' has no equivalent in Hugging Face BLOOM"),
    ({"final_norm": False}, "final_norm = False has no equivalent in Hugging Face BLOOM: its config.json reads back as True"),
], ids=["no-embedding-norm", "embedding-scale", "learned-positions", "prompt-segments", "sandwich", "parallel",
        "post-norm", "no-final-norm"])
def test_export_of_what_bloom_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-bloom", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
