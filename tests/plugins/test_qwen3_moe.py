"""Qwen3-MoE checkpoints against transformers: every head, router logits and load-balancing loss,
per-head q/k RMSNorm, dense layers mixed with sparse ones, and one sliding window for all layers."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "qwen3-moe"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=64, moe_intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=6, num_experts_per_tok=2,
                  norm_topk_prob=True, router_aux_loss_coef=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  num_labels=3, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.Qwen3MoeConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


def spec_of(hf_config, architecture="Qwen3MoeForCausalLM") -> dict:
    from archcomposer.plugins.qwen3_moe import FAMILY as family

    return {**family.spec_from_hf_config(hf_config.to_dict(), architecture), "name": "tiny-qwen3-moe",
            "family": FAMILY}


@pytest.mark.parametrize(("architecture", "head"), [
    ("Qwen3MoeForCausalLM", "causal_lm"),
    ("Qwen3MoeForSequenceClassification", "sequence_classification"),
    ("Qwen3MoeForTokenClassification", "token_classification"),
    ("Qwen3MoeForQuestionAnswering", "question_answering"),
    ("Qwen3MoeModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.qk_norm.scope == "head" and ours.routed == [0, 1]


@pytest.mark.parametrize(("overrides", "kinds"), [
    ({"mlp_only_layers": [0], "norm_topk_prob": False, "attention_bias": True}, ["gated", "moe"]),
    ({"use_sliding_window": True, "sliding_window": 3, "num_experts_per_tok": 1}, ["moe", "moe"]),
], ids=["dense-layer-0-bias", "window-3-top-1"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides, kinds):
    ours = check_parity(tmp_path, family=FAMILY, architecture="Qwen3MoeForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert [layer.mlp.kind for layer in ours.spec.layer_specs] == kinds
    assert ours.spec.attention.sliding_window == overrides.get("sliding_window")


def test_shipped_spec_is_what_the_published_config_translates_to():
    """Qwen3-30B-A3B's config.json."""
    from archcomposer.plugins.qwen3_moe import FAMILY as family

    published = transformers.Qwen3MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
        norm_topk_prob=True, max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False,
        decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=0.001, bos_token_id=151643,
        eos_token_id=151645, use_sliding_window=False, sliding_window=None, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}).to_dict()
    data = family.spec_from_hf_config(published, "Qwen3MoeForCausalLM")
    data["name"], data["family"] = "qwen3-30b-a3b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("qwen3-30b-a3b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    assert check_shipped_spec("qwen3-30b-a3b", "Qwen3MoeForCausalLM", transformers.Qwen3MoeConfig(**published)) \
        == 30_532_122_624


def test_export_of_a_shared_expert_names_the_field(tmp_path):
    spec = spec_of(config())
    spec["mlp"] = {**spec["mlp"], "shared_expert": {"intermediate_size": 8}}
    with pytest.raises(CheckpointError, match="mlp.shared_expert = .* has no equivalent in Hugging Face Qwen3-MoE"):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
