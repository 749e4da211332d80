"""MPT checkpoints against transformers: every head, ALiBi with head counts that are not a power
of two (MPT adds it by key index, ours by key position: padded batches still match), QKV clipping,
softmax_scale, tied and untied LM heads; and the MosaicML config keys transformers ignores,
refused unless at the value it computes with."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report

FAMILY = "mpt"
report_largest_difference = largest_difference_report(FAMILY)


def config(attn_config=None, **overrides):
    fields = dict(vocab_size=160, d_model=48, n_layers=2, n_heads=4, max_seq_len=64, pad_token_id=1, bos_token_id=0,
                  eos_token_id=2, num_labels=3, attn_config=attn_config or {})
    return transformers.MptConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


@pytest.mark.parametrize(("architecture", "head"), [
    ("MptForCausalLM", "causal_lm"),
    ("MptForSequenceClassification", "sequence_classification"),
    ("MptForTokenClassification", "token_classification"),
    ("MptForQuestionAnswering", "question_answering"),
    ("MptModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head, inputs=INPUTS)


@pytest.mark.parametrize(("attn_config", "overrides"), [
    ({"clip_qkv": 0.1, "softmax_scale": 0.5}, {"tie_word_embeddings": False}),
    ({"clip_qkv": 6.0}, {"n_heads": 6}),
    ({}, {"n_heads": 3, "d_model": 36}),
], ids=["clip-softmax-scale-untied", "6-heads-clip", "3-heads"])
def test_causal_lm_variants_match_transformers(tmp_path, attn_config, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="MptForCausalLM", config=config(attn_config, **overrides),
                        head="causal_lm", inputs=INPUTS)
    assert ours.spec.attention.clip_qkv == attn_config.get("clip_qkv")
    assert ours.spec.attention.scale == attn_config.get("softmax_scale")
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", True)


def test_attention_dropout_is_also_the_residual_dropout():
    from archcomposer.plugins.mpt import FAMILY as family

    published = config().to_dict()
    published["attn_config"]["attn_pdrop"] = 0.1  # MosaicML's configs hold floats; MptAttentionConfig wants an int
    data = family.spec_from_hf_config(published, "MptForCausalLM")
    data["name"] = "dropout"
    spec = build_model(data, device="meta").spec
    assert (spec.attention.dropout, spec.wiring.dropout) == (0.1, 0.1)
    assert family.hf_config_from_spec(spec, "MptForCausalLM")["attn_config"]["attn_pdrop"] == 0.1


#: mosaicml/mpt-7b's config.json.
MPT_7B = dict(d_model=4096, n_heads=32, n_layers=32, expansion_ratio=4, max_seq_len=2048, vocab_size=50432,
              no_bias=True, learned_pos_emb=True, logit_scale=None, layer_norm_epsilon=1e-5,
              attn_config={"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0,
                           "attn_type": "multihead_attention", "attn_uses_sequence_id": False, "clip_qkv": None,
                           "prefix_lm": False, "qk_ln": False, "softmax_scale": None})


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.mpt import FAMILY as family

    published = transformers.MptConfig(**MPT_7B).to_dict()
    data = family.spec_from_hf_config(published, "MptForCausalLM")
    data["name"], data["family"] = "mpt-7b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("mpt-7b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    check_shipped_spec("mpt-7b", "MptForCausalLM", transformers.MptConfig(**published))


@pytest.mark.parametrize(("attn_config", "overrides", "message"), [
    ({}, {"no_bias": False}, "config.json no_bias = False is not supported .only True.: transformers' MPT ignores "
                             "it and builds no biases"),
    ({}, {"expansion_ratio": 2}, "config.json expansion_ratio = 2 is not supported"),
    ({}, {"logit_scale": 0.5}, "config.json logit_scale = 0.5 is not supported"),
    ({"alibi": False}, {}, "config.json attn_config.alibi = False is not supported .only True.: transformers' MPT "
                           "ignores it and always adds ALiBi"),
    ({"alibi_bias_max": 16}, {}, "config.json attn_config.alibi_bias_max = 16 is not supported"),
    ({"attn_type": "multiquery_attention"}, {}, "config.json attn_config.attn_type = 'multiquery_attention' is not "
                                                "supported"),
    ({"qk_ln": True}, {}, "config.json attn_config.qk_ln = True is not supported"),
    ({"prefix_lm": True}, {}, "config.json attn_config.prefix_lm = True is not supported"),
    ({"attn_uses_sequence_id": True}, {}, "config.json attn_config.attn_uses_sequence_id = True is not supported"),
], ids=["bias", "expansion-ratio", "logit-scale", "no-alibi", "alibi-bias-max", "multi-query", "qk-ln", "prefix-lm",
        "sequence-id"])
def test_config_keys_transformers_ignores_are_refused_unless_at_its_value(attn_config, overrides, message):
    from archcomposer.plugins.mpt import FAMILY as family

    with pytest.raises(CheckpointError, match=message):
        family.spec_from_hf_config(config(attn_config, **overrides).to_dict(), "MptForCausalLM")


@pytest.mark.parametrize(("change", "message"), [
    ({"position": {"kind": "alibi", "max_bias": 16.0}}, "position.max_bias = 16.0 has no equivalent in Hugging "
                                                        "Face MPT: its config.json reads back as 8.0"),
    ({"position": {"kind": "alibi", "scaled": True}}, "position.scaled = True has no equivalent"),
    ({"position": {"kind": "rope"}}, "position.kind = 'rope' has no equivalent in Hugging Face MPT"),
    ({"norm": {"kind": "layernorm"}}, "norm.bias = True has no equivalent in Hugging Face MPT"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "fused_qkv": True, "qkv_bias": True}},
     "attention.qkv_bias = True has no equivalent"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "fused_qkv": True}},
     "attention.num_kv_heads = 2 has no equivalent in Hugging Face MPT: its config.json reads back as 4"),
    ({"mlp": {"kind": "plain", "intermediate_size": 128, "activation": "gelu", "bias": False}},
     "mlp.intermediate_size = 128 has no equivalent in Hugging Face MPT: its config.json reads back as 256"),
], ids=["alibi-max-bias", "scaled-alibi", "rope", "norm-bias", "qkv-bias", "gqa", "mlp-width"])
def test_export_of_what_mpt_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-mpt", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
