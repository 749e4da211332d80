"""GPT-BigCode checkpoints against transformers: every head, multi-query and multi-head attention
(both layouts of the fused c_attn), n_inner set and unset, tied and untied LM heads."""

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report, position_ids)

FAMILY = "gpt-bigcode"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, n_embd=48, n_layer=2, n_head=4, n_positions=64, pad_token_id=3, bos_token_id=1,
                  eos_token_id=2, num_labels=3)
    return transformers.GPTBigCodeConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=3)


@pytest.mark.parametrize(("architecture", "head"), [
    ("GPTBigCodeForCausalLM", "causal_lm"),
    ("GPTBigCodeForSequenceClassification", "sequence_classification"),
    ("GPTBigCodeForTokenClassification", "token_classification"),
    ("GPTBigCodeModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.num_kv_heads == 1


@pytest.mark.parametrize("overrides", [
    {"multi_query": False, "n_inner": 72, "tie_word_embeddings": False},
    {"n_head": 6, "activation_function": "gelu_new", "attention_softmax_in_fp32": False},
    {"scale_attn_weights": False},
], ids=["multi-head-inner-untied", "mqa-6-heads-gelu-new", "unscaled"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="GPTBigCodeForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    a = ours.spec.attention
    assert a.num_kv_heads == (1 if overrides.get("multi_query", True) else a.num_heads)
    assert ours.spec.mlp.intermediate_size == overrides.get("n_inner", 4 * 48)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", True)
    assert a.scale == (None if overrides.get("scale_attn_weights", True) else 1.0)


def test_multi_head_c_attn_rows_are_per_head(tmp_path):
    """Without multi_query, c_attn rows are [H, 3, Dh]: our k rows of head 1 are its rows 4*Dh .. 5*Dh."""
    reference = build_reference("GPTBigCodeForCausalLM", config(multi_query=False))
    reference.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    theirs, mine, Dh = reference.transformer.h[0].attn.c_attn.weight, ours.layers[0].attention.qkv.proj.weight, 12
    assert torch.equal(mine[48 + Dh:48 + 2 * Dh], theirs[4 * Dh:5 * Dh])


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.gpt_bigcode import FAMILY as family

    # bigcode/starcoderbase-1b's config.json
    published = transformers.GPTBigCodeConfig(vocab_size=49152, n_positions=8192, n_embd=2048, n_layer=24,
                                              n_head=16, n_inner=8192, multi_query=True, bos_token_id=0,
                                              eos_token_id=0).to_dict()
    data = family.spec_from_hf_config(published, "GPTBigCodeForCausalLM")
    data["name"], data["family"] = "starcoderbase-1b", "gpt-bigcode"
    ours = build_model(data, device="meta").spec
    shipped = build_model("starcoderbase-1b", device="meta").spec
    assert ours.model_dump() == shipped.model_dump()
    count = check_shipped_spec("starcoderbase-1b", "GPTBigCodeForCausalLM",
                               transformers.GPTBigCodeConfig(**published))
    assert count == 1_137_207_296


def test_cross_attention_is_refused(tmp_path):
    transformers.GPTBigCodeForCausalLM(config(multi_query=False, add_cross_attention=True)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="config.json add_cross_attention = True is not supported"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "qkv_bias": True, "out_bias": True,
                    "fused_qkv": True}},
     "attention.num_kv_heads = 2 has no equivalent in Hugging Face GPT-BigCode: its config.json reads back as 4"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 1, "qkv_bias": False, "out_bias": True,
                    "fused_qkv": True}}, "attention.qkv_bias = False has no equivalent in Hugging Face GPT-BigCode"),
    ({"wiring": {"kind": "post_norm"}}, "wiring.kind = 'post_norm' has no equivalent in Hugging Face GPT-BigCode"),
], ids=["gqa", "no-qkv-bias", "post-norm"])
def test_export_of_what_gpt_bigcode_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-starcoder", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
