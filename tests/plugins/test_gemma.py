"""Gemma checkpoints against transformers: every head, Gemma's (1 + w) RMSNorm and scaled
embedding, MHA/GQA/MQA, head_dim independent of the width, attention_bias, tied and untied LM
heads, and the legacy ``hidden_act: gelu`` that Gemma reads as the tanh GELU."""

import json

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report, position_ids)

FAMILY = "gemma"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, num_labels=3, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return transformers.GemmaConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


@pytest.mark.parametrize(("architecture", "head"), [
    ("GemmaForCausalLM", "causal_lm"),
    ("GemmaForSequenceClassification", "sequence_classification"),
    ("GemmaForTokenClassification", "token_classification"),
    ("GemmaModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.norm.unit_offset and ours.spec.embedding.scale == "sqrt_hidden_size"


@pytest.mark.parametrize("overrides", [
    {"num_key_value_heads": 1, "tie_word_embeddings": False, "attention_bias": True},
    {"num_key_value_heads": 4, "hidden_act": "silu", "head_dim": 8},
], ids=["mqa-untied-bias", "mha-silu-narrow-heads"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="GemmaForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    a = ours.spec.attention
    assert (a.num_kv_heads, a.head_dim) == (overrides["num_key_value_heads"], overrides.get("head_dim", 16))
    assert a.qkv_bias == a.out_bias == overrides.get("attention_bias", False)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", True)
    assert ours.spec.mlp.activation == ("silu" if "hidden_act" in overrides else "gelu_tanh")


def test_legacy_gelu_is_the_tanh_approximation(tmp_path):
    """The first Gemma releases say ``hidden_act: gelu``; GemmaConfig reads it as gelu_pytorch_tanh."""
    reference = build_reference("GemmaForCausalLM", config())
    reference.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "hidden_act": "gelu"}))
    ours = from_pretrained(tmp_path)
    assert ours.spec.mlp.activation == "gelu_tanh"
    with torch.no_grad():
        assert (ours(INPUTS.single).logits - reference(INPUTS.single).logits).abs().max() <= 1e-4


def test_bidirectional_attention_is_refused(tmp_path):
    build_reference("GemmaModel", config(use_bidirectional_attention=True)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="use_bidirectional_attention = True is not supported"):
        from_pretrained(tmp_path)


GEMMA_7B = dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                num_attention_heads=16, num_key_value_heads=16, head_dim=256, hidden_act="gelu",
                max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0, pad_token_id=0,
                bos_token_id=2, eos_token_id=1, tie_word_embeddings=True)


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.gemma import FAMILY as family

    data = family.spec_from_hf_config(GEMMA_7B, "GemmaForCausalLM")
    data["name"], data["family"] = "gemma-7b", "gemma"
    ours = build_model(data, device="meta").spec
    shipped = build_model("gemma-7b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    assert check_shipped_spec("gemma-7b", "GemmaForCausalLM", transformers.GemmaConfig(**GEMMA_7B)) == 8_537_680_896


@pytest.mark.parametrize(("change", "message"), [
    ({"norm": {"kind": "rmsnorm", "eps": 1e-6}},
     "norm.unit_offset = False has no equivalent in Hugging Face Gemma: its config.json reads back as True"),
    ({"embedding": {"kind": "tokens", "tied": True}},
     "embedding.scale = 1.0 has no equivalent in Hugging Face Gemma: its config.json reads back as "
     "'sqrt_hidden_size'"),
    ({"mlp": {"kind": "gated", "intermediate_size": 128, "activation": "gelu"}},
     "mlp.activation = 'gelu' has no equivalent in Hugging Face Gemma: its config.json reads back as 'gelu_tanh'"),
    ({"wiring": {"kind": "sandwich"}}, "wiring.kind = 'sandwich' has no equivalent in Hugging Face Gemma"),
    ({"mlp": {"kind": "gated", "intermediate_size": 128, "activation": "gelu_tanh", "bias": True}},
     "mlp.bias = True has no equivalent in Hugging Face Gemma"),
], ids=["plain-rmsnorm", "unscaled-embedding", "exact-gelu", "sandwich", "mlp-bias"])
def test_export_of_what_gemma_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-gemma", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("config_class", "architecture"), [
    (transformers.GemmaConfig, "GemmaForCausalLM"), (transformers.Gemma2Config, "Gemma2ForCausalLM"),
    (transformers.Gemma3TextConfig, "Gemma3ForCausalLM")])
def test_inputs_embeds_are_not_scaled_as_the_token_table_is(tmp_path, config_class, architecture):
    """Gemma scales inside embed_tokens: embeddings passed as inputs_embeds enter unscaled."""
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
    reference = build_reference(architecture, config_class(**fields))
    reference.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    assert ours.spec.embedding.scale_inputs_embeds is False
    embeds = torch.randn(1, 9, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = reference(inputs_embeds=embeds).logits
        assert (ours(inputs_embeds=embeds).logits - theirs).abs().max() <= 1e-4
        assert (ours(INPUTS.single).logits - reference(INPUTS.single).logits).abs().max() <= 1e-4
