"""DeepSeek-V3 checkpoints against transformers: every head, multi-head latent attention with and
without the query bottleneck, attention_bias, RoPE in pairs (rope_interleave) and halves, YaRN
with DeepSeek's mscale on the score scale, and the mixture-of-experts layers after the first dense
ones (grouped sigmoid router with its score bias, shared expert): router logits compared too
(transformers' DeepSeek-V3 computes no load-balancing loss, nor do we)."""

import pytest
import transformers

from archcomposer import CheckpointError, from_pretrained
from tests.plugins.parity import Inputs, build_reference, check_parity, largest_difference_report, position_ids

FAMILY = "deepseek-v3"
report_largest_difference = largest_difference_report(FAMILY)
YARN = {"rope_type": "yarn", "rope_theta": 1000.0, "factor": 4.0, "original_max_position_embeddings": 4,
        "mscale": 0.707, "mscale_all_dim": 0.707}


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                  v_head_dim=12, first_k_dense_replace=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  num_labels=3, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.DeepseekV3Config(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


@pytest.mark.parametrize(("architecture", "head"), [
    ("DeepseekV3ForCausalLM", "causal_lm"),
    ("DeepseekV3ForSequenceClassification", "sequence_classification"),
    ("DeepseekV3ForTokenClassification", "token_classification"),
    ("DeepseekV3Model", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert (ours.spec.attention.kind, ours.spec.attention.q_lora_rank) == ("mla", 24)
    assert (ours.spec.position.kind, ours.spec.position.interleaved) == ("partial_rope", True)


@pytest.mark.parametrize("overrides", [
    {"q_lora_rank": None, "attention_bias": True, "tie_word_embeddings": True},
    {"rope_interleave": False, "rope_parameters": YARN},
    {"q_lora_rank": None, "rope_parameters": YARN},
], ids=["plain-q-bias-tied", "halves-yarn-mscale", "plain-q-interleaved-yarn-mscale"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="DeepseekV3ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.bias == overrides.get("attention_bias", False)
    assert ours.spec.position.kind == ("rope" if overrides.get("rope_interleave") is False else "partial_rope")
    reference = build_reference("DeepseekV3ForCausalLM", config(**overrides))
    assert ours.layers[0].attention.scale == reference.model.layers[0].self_attn.scaling


def test_the_cache_holds_the_latent_and_kv_bytes_per_token_counts_it(tmp_path):
    """What transformers caches (the normalised latent and the rotated shared key), and nothing else."""
    import torch

    build_reference("DeepseekV3ForCausalLM", config()).save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    with torch.no_grad():
        cache = ours(INPUTS.single, use_cache=True).past_key_values
    per_token = sum(k[0, :, :1].numel() + v[0, :, :1].numel() for k, v in zip(cache.keys, cache.values))
    assert [tuple(k.shape) for k in cache.keys] == [(1, 1, 9, 16)] * 2
    assert [tuple(v.shape) for v in cache.values] == [(1, 1, 9, 4)] * 2
    assert per_token * 4 == ours.spec.num_layers * ours.spec.attention.kv_bytes_per_token(4) == 2 * (16 + 4) * 4


MOE = dict(num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8, n_group=4, topk_group=2,
           num_experts_per_tok=3, moe_intermediate_size=16, n_shared_experts=2, routed_scaling_factor=2.5)


@pytest.mark.parametrize(("architecture", "head"), [
    ("DeepseekV3ForCausalLM", "causal_lm"),
    ("DeepseekV3ForSequenceClassification", "sequence_classification"),
    ("DeepseekV3ForTokenClassification", "token_classification"),
    ("DeepseekV3Model", None),
])
def test_mixture_of_experts_layers_match_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(**MOE), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    mlp = ours.spec.mlp
    assert (mlp.kind, mlp.num_experts, mlp.top_k, mlp.intermediate_size, mlp.aux_loss_coef) == ("moe", 8, 3, 16, None)
    assert (mlp.router.kind, mlp.router.num_groups, mlp.router.top_groups, mlp.router.scale, mlp.router.normalize) \
        == ("grouped_sigmoid", 4, 2, 2.5, True)
    assert (mlp.shared_expert.intermediate_size, mlp.shared_expert.gated) == (32, False)
    assert [layer.mlp.kind for layer in ours.spec.layer_specs] == ["gated", "moe", "moe"]
    assert ours.spec.layer_specs[0].mlp.intermediate_size == 96
    reference = build_reference(architecture, config(**MOE))
    theirs = reference.model if head else reference
    bias = theirs.layers[1].mlp.gate.e_score_correction_bias
    assert bias.abs().min() > 0 and ours.layers[1].mlp.router.score_bias.equal(bias)


@pytest.mark.parametrize("overrides", [
    {"first_k_dense_replace": 0, "norm_topk_prob": False, "n_group": 1, "topk_group": 1, "n_shared_experts": 1},
    {"routed_scaling_factor": 1.0, "num_experts_per_tok": 1, "q_lora_rank": None, "rope_parameters": YARN},
], ids=["all-moe-unnormalised-one-group", "top-1-unscaled-yarn"])
def test_mixture_of_experts_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="DeepseekV3ForCausalLM",
                        config=config(**{**MOE, **overrides}), head="causal_lm", inputs=INPUTS,
                        hf_kwargs_for_batch=position_ids)
    assert ours.routed == list(range(overrides.get("first_k_dense_replace", 1), 3))


def test_mixture_of_experts_without_a_shared_expert_is_refused(tmp_path):
    from archcomposer.plugins.deepseek_v3 import FAMILY as family

    with pytest.raises(CheckpointError, match=r"n_shared_experts = 0 is not supported"):
        family.spec_from_hf_config({**config(**MOE).to_dict(), "n_shared_experts": 0}, "DeepseekV3ForCausalLM")


def test_layers_that_are_not_dense_then_sparse_are_refused_on_export(tmp_path):
    """first_k_dense_replace expresses dense layers first, then experts: a dense layer after a
    sparse one cannot be written."""
    from archcomposer import build_model

    ours = build_model("tiny-deepseek-v3", seed=0, layers=[{"indices": [1], "mlp": {"kind": "gated",
                                                                                  "intermediate_size": 64}}])
    with pytest.raises(CheckpointError, match=r"layer 1's mlp cannot be written as a DeepSeek config"):
        ours.save_pretrained(tmp_path, format="hf")


def test_key_value_heads_other_than_the_heads_are_refused():
    from archcomposer.plugins.deepseek_v3 import FAMILY as family

    with pytest.raises(CheckpointError, match=r"num_key_value_heads = 2 is not supported"):
        family.spec_from_hf_config(config(num_key_value_heads=2).to_dict(), "DeepseekV3ForCausalLM")


def test_the_tiny_spec_exports_to_a_checkpoint_transformers_runs_alike(tmp_path):
    import torch

    from archcomposer import build_model

    ours = build_model("tiny-deepseek-v3", seed=0)
    ours.save_pretrained(tmp_path, format="hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert theirs.config.rope_interleave and theirs.config.first_k_dense_replace == 1
    assert (theirs.config.n_routed_experts, theirs.config.n_shared_experts, theirs.config.n_group) == (8, 1, 4)
    assert theirs.model.layers[0].self_attn.scaling == ours.layers[0].attention.scale != 24**-0.5
    ids = torch.randint(0, 256, (1, 80), generator=torch.Generator().manual_seed(0))  # past original 64 positions
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("interleave", [False, True])
def test_the_cache_holds_what_transformers_caches(tmp_path, interleave):
    """The normalised latent as keys and the rotated shared key as values, layer by layer. With
    rope_interleave transformers writes the rotated pairs de-interleaved (evens, then odds), ours
    keeps them in place: the same numbers, in the order of the unrotated channels."""
    import torch

    reference = build_reference("DeepseekV3ForCausalLM", config(rope_interleave=interleave))
    reference.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    with torch.no_grad():
        theirs = reference(INPUTS.single, use_cache=True).past_key_values
        mine = ours(INPUTS.single, use_cache=True).past_key_values
    order = torch.cat([torch.arange(0, 4, 2), torch.arange(1, 4, 2)]) if interleave else torch.arange(4)
    for i, layer in enumerate(theirs.layers):
        torch.testing.assert_close(mine.keys[i], layer.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine.values[i][..., order], layer.values, rtol=1e-5, atol=1e-5)
