"""DeepSeek-V2 checkpoints against transformers: every head, multi-head latent attention with and
without the query bottleneck (V2-Lite has none), attention and MLP biases, RoPE in pairs through
transformers' complex rotation, YaRN with DeepSeek's mscale, and mixture-of-experts layers with the
greedy softmax router (V2-Lite's; router logits compared, no load-balancing loss on either side),
the other routers refused."""

import pytest
import transformers

from archcomposer import CheckpointError, from_pretrained
from tests.plugins.parity import Inputs, build_reference, check_parity, largest_difference_report, position_ids

FAMILY = "deepseek-v2"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=12,
                  first_k_dense_replace=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.DeepseekV2Config(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


@pytest.mark.parametrize(("architecture", "head"), [
    ("DeepseekV2ForCausalLM", "causal_lm"),
    ("DeepseekV2ForSequenceClassification", "sequence_classification"),
    ("DeepseekV2Model", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert (ours.spec.attention.kind, ours.spec.position.kind, ours.spec.position.interleaved) == \
        ("mla", "partial_rope", True)


@pytest.mark.parametrize("overrides", [
    {"q_lora_rank": None, "attention_bias": True, "mlp_bias": True},
    {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1000.0, "factor": 4.0,
                         "original_max_position_embeddings": 4, "mscale": 0.707, "mscale_all_dim": 0.707}},
], ids=["plain-q-biases", "yarn-mscale"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="DeepseekV2ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert (ours.spec.attention.bias, ours.spec.mlp.bias) == (overrides.get("attention_bias", False),
                                                              overrides.get("mlp_bias", False))
    reference = build_reference("DeepseekV2ForCausalLM", config(**overrides))
    assert ours.layers[0].attention.scale == reference.model.layers[0].self_attn.scaling


MOE = dict(num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=6, num_experts_per_tok=2,
           moe_intermediate_size=16, n_shared_experts=2, norm_topk_prob=True)  # V2's router ignores norm_topk_prob


@pytest.mark.parametrize(("architecture", "head"), [
    ("DeepseekV2ForCausalLM", "causal_lm"),
    ("DeepseekV2ForSequenceClassification", "sequence_classification"),
    ("DeepseekV2Model", None),
])
def test_mixture_of_experts_layers_match_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(**MOE), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    mlp = ours.spec.mlp
    assert (mlp.kind, mlp.num_experts, mlp.top_k, mlp.router.kind, mlp.router.normalize) == ("moe", 6, 2, "softmax",
                                                                                              False)
    assert (mlp.shared_expert.intermediate_size, mlp.aux_loss_coef) == (32, None)
    assert [layer.mlp.kind for layer in ours.spec.layer_specs] == ["gated", "moe", "moe"]


def test_every_layer_a_mixture_of_experts_matches_transformers(tmp_path):
    """first_k_dense_replace 0 (transformers' default), without the query bottleneck (as V2-Lite)."""
    ours = check_parity(tmp_path, family=FAMILY, architecture="DeepseekV2ForCausalLM",
                        config=config(**{**MOE, "first_k_dense_replace": 0, "q_lora_rank": None}), head="causal_lm",
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.routed == [0, 1, 2]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 1},
     r"topk_method = 'group_limited_greedy' with routed_scaling_factor = 1.0 is not supported"),
    ({"routed_scaling_factor": 16.0}, r"topk_method = 'greedy' with routed_scaling_factor = 16.0 is not supported"),
    ({"mlp_bias": True}, r"mlp_bias = true with mixture-of-experts layers .* is not supported"),
    ({"num_experts_per_tok": None}, r"num_experts_per_tok is missing or null"),
], ids=["group-limited-greedy", "scaled", "mlp-bias", "no-top-k"])
def test_unsupported_mixture_of_experts_configs_are_refused(overrides, message):
    from archcomposer.plugins.deepseek_v2 import FAMILY as family

    with pytest.raises(CheckpointError, match=message):
        family.spec_from_hf_config({**config(**MOE).to_dict(), **overrides}, "DeepseekV2ForCausalLM")


def test_the_tiny_spec_exports_to_a_checkpoint_transformers_runs_alike(tmp_path):
    import torch

    from archcomposer import build_model

    ours = build_model("tiny-deepseek-v2", seed=0)
    ours.save_pretrained(tmp_path, format="hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert theirs.config.q_lora_rank is None and theirs.config.first_k_dense_replace == 2
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=0, atol=1e-4)
