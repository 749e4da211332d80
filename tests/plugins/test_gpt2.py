"""GPT-2 checkpoints against transformers: every head, Conv1D weights, n_inner set and unset, tied
and untied LM heads, the attention scale flags (per layer through ``layers``), the dropouts."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report, position_ids)

FAMILY = "gpt2"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, n_embd=48, n_layer=2, n_head=4, n_positions=64, pad_token_id=3, bos_token_id=1,
                  eos_token_id=2, num_labels=3)
    return transformers.GPT2Config(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=3)


@pytest.mark.parametrize(("architecture", "head"), [
    ("GPT2LMHeadModel", "causal_lm"),
    ("GPT2ForSequenceClassification", "sequence_classification"),
    ("GPT2ForTokenClassification", "token_classification"),
    ("GPT2ForQuestionAnswering", "question_answering"),
    ("GPT2Model", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    assert (spec.embedding.dropout, spec.attention.dropout, spec.wiring.dropout) == (0.1, 0.1, 0.1)
    assert spec.mlp.intermediate_size == 4 * 48


@pytest.mark.parametrize("overrides", [
    {"n_inner": 72, "tie_word_embeddings": False, "activation_function": "gelu", "layer_norm_epsilon": 1e-3},
    {"n_head": 3, "reorder_and_upcast_attn": True, "activation_function": "relu"},
], ids=["inner-untied-gelu", "3-heads-reordered-relu"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="GPT2LMHeadModel", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.mlp.intermediate_size == overrides.get("n_inner", 4 * 48)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", True)


@pytest.mark.parametrize(("overrides", "scales"), [
    ({"scale_attn_weights": False}, [1.0, 1.0, 1.0]),
    ({"scale_attn_by_inverse_layer_idx": True}, [12**-0.5, 12**-0.5 / 2, 12**-0.5 / 3]),
    ({"scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": True}, [1.0, 1 / 2, 1 / 3]),
], ids=["unscaled", "by-inverse-layer-idx", "unscaled-by-inverse-layer-idx"])
def test_attention_scale_flags_match_transformers(tmp_path, overrides, scales):
    """scale_attn_by_inverse_layer_idx is a layers entry per layer after the first, setting its scale."""
    ours = check_parity(tmp_path, family=FAMILY, architecture="GPT2LMHeadModel",
                        config=config(n_layer=3, **overrides), head="causal_lm", inputs=INPUTS,
                        hf_kwargs_for_batch=position_ids)
    assert [layer.attention.score_scale for layer in ours.spec.layer_specs] == pytest.approx(scales)


def test_conv1d_weights_are_transposed(tmp_path):
    reference = build_reference("GPT2LMHeadModel", config())
    reference.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    theirs = reference.transformer.h[1].attn.c_attn.weight  # [in, 3 * out]
    assert (ours.layers[1].attention.qkv.proj.weight == theirs.t()).all()


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.gpt2 import FAMILY as family

    published = transformers.GPT2Config().to_dict()  # openai-community/gpt2 is transformers' default
    data = family.spec_from_hf_config(published, "GPT2LMHeadModel")
    data["name"], data["family"] = "gpt2", "gpt2"
    ours = build_model(data, device="meta").spec
    shipped = build_model("gpt2", device="meta").spec
    assert ours.model_dump() == shipped.model_dump()
    assert check_shipped_spec("gpt2", "GPT2LMHeadModel", transformers.GPT2Config(**published)) == 124_439_808


@pytest.mark.parametrize(("overrides", "message"), [
    ({"add_cross_attention": True}, "config.json add_cross_attention = True is not supported"),
    ({"activation_function": "gelu_10"}, "config.json activation 'gelu_10' is not supported"),
], ids=["cross-attention", "activation"])
def test_refused_config_flags_name_the_key(tmp_path, overrides, message):
    transformers.GPT2LMHeadModel(config(**overrides)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(tmp_path)


def test_double_heads_model_is_not_read(tmp_path):
    """GPT2DoubleHeadsModel adds a multiple-choice summary head, which we do not have."""
    transformers.GPT2DoubleHeadsModel(config()).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"architectures \['GPT2DoubleHeadsModel'\] names none that family "
                                              r"'gpt2' reads"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"embedding": {"kind": "tokens", "tied": True}},
     r"embedding.learned_positions = None has no equivalent in Hugging Face GPT-2: its config.json reads back as "
     r"\{'offset': 0\}"),
    ({"embedding": {"kind": "tokens", "tied": True, "learned_positions": {"offset": 2}}},
     r"embedding.learned_positions.offset = 2 has no equivalent in Hugging Face GPT-2"),
    ({"position": {"kind": "alibi"}}, "position.kind = 'alibi' has no equivalent in Hugging Face GPT-2"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "qkv_bias": True, "out_bias": True,
                    "fused_qkv": True}}, "attention.num_kv_heads = 2 has no equivalent in Hugging Face GPT-2"),
    ({"mlp": {"kind": "plain", "intermediate_size": 128, "bias": False}},
     "mlp.bias = False has no equivalent in Hugging Face GPT-2"),
    ({"wiring": {"kind": "parallel"}}, "wiring.kind = 'parallel' has no equivalent in Hugging Face GPT-2"),
    ({"norm": {"kind": "rmsnorm"}}, "norm.kind = 'rmsnorm' has no equivalent in Hugging Face GPT-2"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "qkv_bias": True, "out_bias": True, "fused_qkv": True,
                    "scale": 0.5}},
     "attention.scale = 0.5 has no equivalent in Hugging Face GPT-2: its config.json reads back as None"),
    ({"layers": [{"indices": [1], "attention": {"scale": 0.1}}]},
     r"attention.scale \(layers 1\) = 0.1 has no equivalent in Hugging Face GPT-2"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "qkv_bias": True, "out_bias": True, "fused_qkv": True,
                    "softcap": 30.0}}, "attention.softcap = 30.0 has no equivalent in Hugging Face GPT-2"),
], ids=["no-learned-positions", "position-offset", "alibi", "gqa", "mlp-no-bias", "parallel", "rmsnorm",
        "other-scale", "other-layer-scale", "softcap"])
def test_export_of_what_gpt2_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-gpt2", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
