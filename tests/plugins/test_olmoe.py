"""OLMoE checkpoints against transformers: both heads, router logits and load-balancing loss, q/k
RMSNorm over the projections, clip_qkv, attention_bias, top-k renormalised or not."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "olmoe"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, num_experts=6, num_experts_per_tok=2, router_aux_loss_coef=0.1,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.OlmoeConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


def spec_of(hf_config, architecture="OlmoeForCausalLM") -> dict:
    from archcomposer.plugins.olmoe import FAMILY as family

    return {**family.spec_from_hf_config(hf_config.to_dict(), architecture), "name": "tiny-olmoe", "family": FAMILY}


@pytest.mark.parametrize(("architecture", "head"), [("OlmoeForCausalLM", "causal_lm"), ("OlmoeModel", None)])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.qk_norm.scope == "projection" and not ours.spec.mlp.router.normalize


@pytest.mark.parametrize("overrides", [
    {"norm_topk_prob": True, "clip_qkv": 0.5, "attention_bias": True},
    {"num_experts_per_tok": 6, "tie_word_embeddings": True},
], ids=["renormalised-clipped-bias", "all-experts-tied"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="OlmoeForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.clip_qkv == overrides.get("clip_qkv")


def test_shipped_spec_is_what_the_published_config_translates_to():
    """OLMoE-1B-7B-0924's config.json."""
    from archcomposer.plugins.olmoe import FAMILY as family

    published = transformers.OlmoeConfig(
        vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, num_experts=64, num_experts_per_tok=8, norm_topk_prob=False,
        max_position_embeddings=4096, rms_norm_eps=1e-5, clip_qkv=None, pad_token_id=1, eos_token_id=50279,
        bos_token_id=None, tie_word_embeddings=False, router_aux_loss_coef=0.01, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}).to_dict()
    data = family.spec_from_hf_config(published, "OlmoeForCausalLM")
    data["name"], data["family"] = "olmoe-1b-7b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("olmoe-1b-7b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    assert check_shipped_spec("olmoe-1b-7b", "OlmoeForCausalLM", transformers.OlmoeConfig(**published)) \
        == 6_919_161_856


def test_export_of_dense_layers_names_the_field(tmp_path):
    spec = spec_of(config())
    spec["layers"] = [{"indices": [1], "mlp": {"kind": "gated", "intermediate_size": 24}}]
    with pytest.raises(CheckpointError, match=r"mlp.kind \(layers 1\) = 'gated' has no equivalent in Hugging Face "
                                              "OLMoE: its config.json reads back as 'moe'"):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
