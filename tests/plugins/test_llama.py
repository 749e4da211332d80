"""Llama checkpoints against transformers: every head, GQA, MQA and MHA, head_dim independent of
the width, attention_bias (q, k, v and o) and mlp_bias, tied and untied LM heads."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "llama"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return transformers.LlamaConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


def tiny_spec(**overrides) -> dict:
    """Our spec for ``config(**overrides)``, as the family translates it."""
    from archcomposer.plugins.llama import FAMILY as family

    data = family.spec_from_hf_config(config(**overrides).to_dict(), "LlamaForCausalLM")
    return {**data, "name": "tiny-llama-test", "family": FAMILY}


@pytest.mark.parametrize(("architecture", "head"), [
    ("LlamaForCausalLM", "causal_lm"),
    ("LlamaForSequenceClassification", "sequence_classification"),
    ("LlamaForTokenClassification", "token_classification"),
    ("LlamaForQuestionAnswering", "question_answering"),
    ("LlamaModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head, inputs=INPUTS,
                 hf_kwargs_for_batch=position_ids)


@pytest.mark.parametrize("overrides", [
    {"attention_bias": True, "mlp_bias": True, "head_dim": 24},
    {"num_key_value_heads": 1, "tie_word_embeddings": True},
    {"num_key_value_heads": 4, "hidden_act": "gelu"},
], ids=["qkvo-and-mlp-bias-head-dim-24", "mqa-tied", "mha-gelu"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="LlamaForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    bias = overrides.get("attention_bias", False)
    assert (ours.spec.attention.qkv_bias, ours.spec.attention.out_bias) == (bias, bias)
    assert ours.spec.attention.head_dim == overrides.get("head_dim", 12)
    assert ours.spec.attention.num_kv_heads == overrides.get("num_key_value_heads", 2)
    assert ours.spec.mlp.bias == overrides.get("mlp_bias", False)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", False)


def test_pretraining_tp_changes_nothing(tmp_path):
    """transformers 5 reads ``pretraining_tp`` nowhere: a Llama 2 config with 2 still loads."""
    check_parity(tmp_path, family=FAMILY, architecture="LlamaForCausalLM", config=config(pretraining_tp=2),
                 head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)


PUBLISHED_3_1_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
    bos_token_id=128000, eos_token_id=128001,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def test_shipped_spec_has_transformers_parameter_count():
    published = transformers.LlamaConfig(**PUBLISHED_3_1_8B)
    assert check_shipped_spec("llama-3.1-8b", "LlamaForCausalLM", published) == 8_030_261_248


LLAMA3 = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8}


@pytest.mark.parametrize(("architecture", "head"), [("LlamaForCausalLM", "causal_lm"), ("LlamaModel", None)])
def test_llama3_scaled_rope_matches_transformers(tmp_path, architecture, head):
    """original_max_position_embeddings 8: the test sequences and generation run past it."""
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(rope_parameters=LLAMA3),
                        head=head, inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    scaling = ours.spec.position.scaling
    assert (scaling.type, scaling.factor, scaling.original_max_positions) == ("llama3", 8.0, 8)


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.llama import FAMILY as family

    shipped = build_model("llama-3.1-8b", device="meta").spec
    rope = PUBLISHED_3_1_8B["rope_parameters"]
    legacy = {**PUBLISHED_3_1_8B, "rope_theta": rope["rope_theta"], "rope_parameters": None,  # as Meta published it
              "rope_scaling": {k: v for k, v in rope.items() if k != "rope_theta"}}
    for published in (transformers.LlamaConfig(**PUBLISHED_3_1_8B).to_dict(), legacy):
        data = family.spec_from_hf_config(published, "LlamaForCausalLM")
        data["name"], data["family"] = "llama-3.1-8b", FAMILY
        ours = build_model(data, device="meta").spec
        assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})


def test_unknown_activation_is_refused(tmp_path):
    from archcomposer.plugins.llama import FAMILY as family

    with pytest.raises(CheckpointError, match="config.json activation 'mish' is not supported"):
        family.spec_from_hf_config(config(hidden_act="mish").to_dict(), "LlamaForCausalLM")


@pytest.mark.parametrize(("change", "message"), [
    ({"attention": {"qkv_bias": True, "out_bias": False}},
     "attention.qkv_bias = True has no equivalent in Hugging Face Llama: its config.json reads back as False"),
    ({"embedding": {"kind": "tokens", "scale": 2.0}},
     "embedding.scale = 2.0 has no equivalent in Hugging Face Llama: its config.json reads back as 1.0"),
    ({"mlp": {"kind": "plain", "intermediate_size": 96, "activation": "relu"}},
     "mlp.kind = 'plain' has no equivalent in Hugging Face Llama: its config.json reads back as 'gated'"),
    ({"position": {"kind": "alibi"}},
     "position.kind = 'alibi' has no equivalent in Hugging Face Llama: its config.json reads back as 'rope'"),
    ({"wiring": {"kind": "parallel"}}, "wiring.kind = 'parallel' has no equivalent in Hugging Face Llama"),
], ids=["qkv-bias-without-out-bias", "embedding-scale", "plain-mlp", "alibi", "parallel"])
def test_export_of_what_llama_cannot_express_names_the_field(tmp_path, change, message):
    spec = tiny_spec()
    for section, fields in change.items():
        spec[section] = fields if "kind" in fields else {**spec[section], **fields}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
