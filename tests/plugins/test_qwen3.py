"""Qwen3 checkpoints against transformers: every head, the per-head q/k RMSNorm, GQA and MQA,
attention_bias (q, k, v and o), head_dim independent of the width, tied and untied LM heads, and
sliding windows on the layers from max_window_layers on."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report, position_ids)

FAMILY = "qwen3"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.Qwen3Config(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


def spec_of(hf_config, architecture="Qwen3ForCausalLM") -> dict:
    from archcomposer.plugins.qwen3 import FAMILY as family

    return {**family.spec_from_hf_config(hf_config.to_dict(), architecture), "name": "tiny-qwen3", "family": FAMILY}


@pytest.mark.parametrize(("architecture", "head"), [
    ("Qwen3ForCausalLM", "causal_lm"),
    ("Qwen3ForSequenceClassification", "sequence_classification"),
    ("Qwen3ForTokenClassification", "token_classification"),
    ("Qwen3ForQuestionAnswering", "question_answering"),
    ("Qwen3Model", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.qk_norm.scope == "head"


@pytest.mark.parametrize("overrides", [
    {"attention_bias": True, "num_key_value_heads": 1, "tie_word_embeddings": True},
    {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1, "head_dim": 8},
], ids=["bias-mqa-tied", "window-3-from-layer-1"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="Qwen3ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    bias = overrides.get("attention_bias", False)
    assert (ours.spec.attention.qkv_bias, ours.spec.attention.out_bias) == (bias, bias)
    assert [layer.attention.sliding_window for layer in ours.spec.layer_specs] == \
        ([None, 3] if "sliding_window" in overrides else [None, None])


def test_q_and_k_norm_weights_are_loaded(tmp_path):
    reference = build_reference("Qwen3ForCausalLM", config())
    reference.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    theirs = reference.model.layers[1].self_attn
    assert (ours.layers[1].attention.q_norm.norm.weight == theirs.q_norm.weight).all()
    assert (ours.layers[1].attention.k_norm.norm.weight == theirs.k_norm.weight).all()


def test_shipped_spec_is_what_the_published_config_translates_to():
    """Qwen3-8B's config.json: head_dim 128 with hidden_size 4096 and 32 heads, no window."""
    from archcomposer.plugins.qwen3 import FAMILY as family

    published = transformers.Qwen3Config(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
        use_sliding_window=False, sliding_window=None, max_window_layers=36, tie_word_embeddings=False,
        attention_bias=False, bos_token_id=151643, eos_token_id=151645,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}).to_dict()
    data = family.spec_from_hf_config(published, "Qwen3ForCausalLM")
    data["name"], data["family"] = "qwen3-8b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("qwen3-8b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    assert check_shipped_spec("qwen3-8b", "Qwen3ForCausalLM", transformers.Qwen3Config(**published)) \
        == 8_190_735_360


@pytest.mark.parametrize(("change", "message"), [
    ({"attention": {"qk_norm": None}},
     "attention.qk_norm = None has no equivalent in Hugging Face Qwen3: its config.json reads back as"),
    ({"attention": {"qk_norm": {"scope": "per_head"}}},
     "attention.qk_norm.scope = 'per_head' has no equivalent in Hugging Face Qwen3: its config.json reads back as "
     "'head'"),
    ({"attention": {"softcap": 30.0}},
     "attention.softcap = 30.0 has no equivalent in Hugging Face Qwen3: its config.json reads back as None"),
    ({"mlp": {"bias": True}}, "mlp.bias = True has no equivalent in Hugging Face Qwen3"),
], ids=["no-qk-norm", "per-head-weights", "softcap", "mlp-bias"])
def test_export_of_what_qwen3_cannot_express_names_the_field(tmp_path, change, message):
    spec = spec_of(config())
    for section, fields in change.items():
        spec[section] = {**spec[section], **fields}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
