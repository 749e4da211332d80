"""Mixtral checkpoints against transformers: every head, the router logits and load-balancing
loss, top-1 and top-k routing, sliding windows, and the per-expert checkpoint layout."""

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report, position_ids)

FAMILY = "mixtral"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, num_labels=3, max_position_embeddings=256, router_aux_loss_coef=0.1,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.MixtralConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


def spec_of(hf_config, architecture="MixtralForCausalLM") -> dict:
    from archcomposer.plugins.mixtral import FAMILY as family

    return {**family.spec_from_hf_config(hf_config.to_dict(), architecture), "name": "tiny-mixtral",
            "family": FAMILY}


@pytest.mark.parametrize(("architecture", "head"), [
    ("MixtralForCausalLM", "causal_lm"),
    ("MixtralForSequenceClassification", "sequence_classification"),
    ("MixtralForTokenClassification", "token_classification"),
    ("MixtralForQuestionAnswering", "question_answering"),
    ("MixtralModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.mlp.kind == "moe" and ours.routed == [0, 1]


@pytest.mark.parametrize("overrides", [
    {"num_experts_per_tok": 1, "num_local_experts": 3},
    {"num_experts_per_tok": 3, "sliding_window": 4, "tie_word_embeddings": True},
], ids=["top-1-of-3", "top-3-window-4-tied"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="MixtralForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert (ours.spec.mlp.num_experts, ours.spec.mlp.top_k) == \
        (overrides.get("num_local_experts", 4), overrides["num_experts_per_tok"])


def test_expert_weights_are_stacked_in_expert_order(tmp_path):
    reference = build_reference("MixtralForCausalLM", config())
    reference.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    theirs = reference.model.layers[1].mlp.experts  # transformers' own fused [E, 2I, D] / [E, D, I]
    assert torch.equal(ours.layers[1].mlp.experts.gate_up_proj, theirs.gate_up_proj)
    assert torch.equal(ours.layers[1].mlp.experts.down_proj, theirs.down_proj)


def test_router_logits_and_aux_loss_only_when_asked():
    model = build_model("tiny-mixtral", seed=0)
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = model(ids, labels=ids)
    assert type(plain).__name__ == "MoeCausalLMOutputWithPast"
    assert list(plain.keys()) == ["loss", "logits", "past_key_values"]
    asked = model(ids, labels=ids, output_router_logits=True)
    assert list(asked.keys()) == ["loss", "aux_loss", "logits", "past_key_values", "router_logits"]
    assert [tuple(r.shape) for r in asked.router_logits] == [(4, 4), (4, 4)]
    assert torch.allclose(asked.loss, plain.loss + 0.02 * asked.aux_loss)


def test_shipped_spec_is_what_the_published_config_translates_to():
    """Mixtral-8x7B-v0.1's config.json."""
    from archcomposer.plugins.mixtral import FAMILY as family

    published = transformers.MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=None,
        num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.02, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6}).to_dict()
    data = family.spec_from_hf_config(published, "MixtralForCausalLM")
    data["name"], data["family"] = "mixtral-8x7b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("mixtral-8x7b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    assert check_shipped_spec("mixtral-8x7b", "MixtralForCausalLM", transformers.MixtralConfig(**published)) \
        == 46_702_792_704


def test_router_jitter_noise_is_refused():
    with pytest.raises(CheckpointError, match="router_jitter_noise = 0.1 is not supported"):
        spec_of(config(router_jitter_noise=0.1))


@pytest.mark.parametrize(("change", "message"), [
    ({"mlp": {"router": {"kind": "softmax", "normalize": False}}},
     "mlp.router.normalize = False has no equivalent in Hugging Face Mixtral: its config.json reads back as True"),
    ({"mlp": {"shared_expert": {"intermediate_size": 8}}},
     "mlp.shared_expert = .* has no equivalent in Hugging Face Mixtral"),
    ({"mlp": {"kind": "gated", "intermediate_size": 40}},
     "mlp.kind = 'gated' has no equivalent in Hugging Face Mixtral: its config.json reads back as 'moe'"),
], ids=["no-renormalisation", "shared-expert", "dense"])
def test_export_of_what_mixtral_cannot_express_names_the_field(tmp_path, change, message):
    spec = spec_of(config())
    for section, fields in change.items():
        spec[section] = fields if "kind" in fields else {**spec[section], **fields}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
