"""Qwen2-MoE checkpoints against transformers: every head, router logits and load-balancing
loss, the sigmoid-gated shared expert, dense layers (mlp_only_layers, decoder_sparse_step) mixed
with sparse ones, top-k renormalised or not, and sliding windows from layer_types."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "qwen2-moe"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=64, moe_intermediate_size=24,
                  shared_expert_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[1],
                  router_aux_loss_coef=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.Qwen2MoeConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


def spec_of(hf_config, architecture="Qwen2MoeForCausalLM") -> dict:
    from archcomposer.plugins.qwen2_moe import FAMILY as family

    return {**family.spec_from_hf_config(hf_config.to_dict(), architecture), "name": "tiny-qwen2-moe",
            "family": FAMILY}


@pytest.mark.parametrize(("architecture", "head"), [
    ("Qwen2MoeForCausalLM", "causal_lm"),
    ("Qwen2MoeForSequenceClassification", "sequence_classification"),
    ("Qwen2MoeForTokenClassification", "token_classification"),
    ("Qwen2MoeForQuestionAnswering", "question_answering"),
    ("Qwen2MoeModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert [layer.mlp.kind for layer in ours.spec.layer_specs] == ["moe", "gated", "moe"]
    assert ours.spec.mlp.shared_expert.gated and ours.routed == [0, 2]


@pytest.mark.parametrize(("overrides", "kinds"), [
    ({"decoder_sparse_step": 2, "mlp_only_layers": [], "norm_topk_prob": True}, ["gated", "moe", "gated"]),
    ({"mlp_only_layers": [], "use_sliding_window": True, "sliding_window": 3, "qkv_bias": False,
      "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}, ["moe", "moe", "moe"]),
], ids=["sparse-step-2-renormalised", "all-sparse-window-3-no-bias"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides, kinds):
    ours = check_parity(tmp_path, family=FAMILY, architecture="Qwen2MoeForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert [layer.mlp.kind for layer in ours.spec.layer_specs] == kinds
    assert ours.spec.mlp.router.normalize == overrides.get("norm_topk_prob", False)


def test_a_config_of_dense_layers_only_reads_as_a_dense_model():
    spec = build_model(spec_of(config(num_experts=0)), device="meta").spec
    assert {layer.mlp.kind for layer in spec.layer_specs} == {"gated"} and spec.mlp.intermediate_size == 64


def test_shipped_spec_is_what_the_published_config_translates_to():
    """Qwen1.5-MoE-A2.7B's config.json."""
    from archcomposer.plugins.qwen2_moe import FAMILY as family

    published = transformers.Qwen2MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
        shared_expert_intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
        num_experts=60, num_experts_per_tok=4, norm_topk_prob=False, max_position_embeddings=8192,
        rms_norm_eps=1e-6, tie_word_embeddings=False, decoder_sparse_step=1, use_sliding_window=False,
        sliding_window=32768, max_window_layers=21, router_aux_loss_coef=0.001, bos_token_id=151643,
        eos_token_id=151643, rope_parameters={"rope_type": "default", "rope_theta": 1e6}).to_dict()
    data = family.spec_from_hf_config(published, "Qwen2MoeForCausalLM")
    data["name"], data["family"] = "qwen1.5-moe-a2.7b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("qwen1.5-moe-a2.7b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    assert check_shipped_spec("qwen1.5-moe-a2.7b", "Qwen2MoeForCausalLM", transformers.Qwen2MoeConfig(**published)) \
        == 14_315_784_192


@pytest.mark.parametrize(("change", "message"), [
    ({"shared_expert": None},
     r"mlp.shared_expert \(layers 0, 2\) = None has no equivalent in Hugging Face Qwen2-MoE"),
    ({"shared_expert": {"intermediate_size": 32, "gated": False}},
     r"mlp.shared_expert.gated \(layers 0, 2\) = False has no equivalent in Hugging Face Qwen2-MoE: its config.json "
     "reads back as True"),
    ({"router": {"kind": "grouped_sigmoid"}},
     r"mlp.router.kind \(layers 0, 2\) = 'grouped_sigmoid' has no equivalent in Hugging Face Qwen2-MoE"),
], ids=["no-shared-expert", "ungated-shared-expert", "deepseek-router"])
def test_export_of_what_qwen2_moe_cannot_express_names_the_field(tmp_path, change, message):
    spec = spec_of(config())
    spec["mlp"] = {**spec["mlp"], **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
