"""CPM-Ant checkpoints against transformers: the LM and the bare model, with different numbers
of position buckets, segments, prompt types and prompt length.

transformers' CPM-Ant takes no attention mask: token id 0 is padding (segment 0, masked out),
every other token is segment 2; its generate feeds the whole sequence each step. Ours is given
the equivalent mask (``ids != 0``)."""

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report

FAMILY = "cpm-ant"
report_largest_difference = largest_difference_report(FAMILY)


CONFIGS = {
    "32-buckets-4-segments-prompt-3": dict(position_bias_num_buckets=32, position_bias_max_distance=64,
                                           segment_types=4, prompt_types=4, prompt_length=3),
    "16-buckets-3-segments-prompt-5": dict(position_bias_num_buckets=16, position_bias_max_distance=40,
                                           segment_types=3, prompt_types=3, prompt_length=5,
                                           num_attention_heads=2, dim_head=12),
}


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=32, num_attention_heads=4, dim_head=8, dim_ff=64, num_hidden_layers=2,
                  init_std=0.02)
    return transformers.CpmAntConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0, seq_len=10)


@pytest.mark.parametrize("variant", CONFIGS)
@pytest.mark.parametrize(("architecture", "head"), [("CpmAntForCausalLM", "causal_lm"), ("CpmAntModel", None)])
def test_matches_transformers(tmp_path, architecture, head, variant):
    overrides = CONFIGS[variant]
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(**overrides), head=head,
                        inputs=INPUTS, reference_mask=False)
    spec = ours.spec
    assert spec.position.num_buckets == overrides["position_bias_num_buckets"]
    assert spec.embedding.segments.num_types == overrides["segment_types"]
    assert (spec.embedding.prompt.num_types, spec.embedding.prompt.length) == (overrides["prompt_types"],
                                                                              overrides["prompt_length"])
    assert spec.embedding.kind == "prompt_segments"  # prompt tokens, segments and the prefix-LM mask
    assert spec.wiring.dropout == spec.attention.dropout == 0.0
    if head:
        assert spec.heads[0].shift_labels is False


def test_bias_table_keeps_position_buckets_first(tmp_path):
    reference = transformers.CpmAntForCausalLM(config(**CONFIGS["32-buckets-4-segments-prompt-3"])).eval()
    reference.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    assert torch.equal(ours.positions[0].weight, reference.cpmant.position_bias.relative_attention_bias)
    assert ours.positions[0].weight.shape == (4 * 4 + 32, 4)


def test_shipped_spec_is_what_the_default_config_translates_to():
    from archcomposer.plugins.cpmant import FAMILY as family

    data = family.spec_from_hf_config(transformers.CpmAntConfig().to_dict(), "CpmAntForCausalLM")
    data["name"], data["family"] = "cpm-ant-10b", "cpm-ant"
    ours = build_model(data, device="meta").spec
    shipped = build_model("cpm-ant-10b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    check_shipped_spec("cpm-ant-10b", "CpmAntForCausalLM", transformers.CpmAntConfig())


def test_export_of_a_prompt_type_transformers_hard_codes_names_the_field(tmp_path):
    spec = build_model("tiny-cpm-ant", device="meta").spec.to_dict()
    spec["embedding"]["prompt"]["type"] = 1
    with pytest.raises(CheckpointError, match=r"embedding.prompt.type = 1 has no equivalent in Hugging Face CPM-Ant"):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")


def test_dropout_p_is_the_attention_and_the_wiring_dropout():
    from archcomposer.plugins.cpmant import FAMILY as family

    data = family.spec_from_hf_config(config(dropout_p=0.1).to_dict(), "CpmAntForCausalLM")
    data["name"] = "dropout"
    spec = build_model(data, device="meta").spec
    assert spec.attention.dropout == spec.wiring.dropout == 0.1
    assert family.hf_config_from_spec(spec, "CpmAntForCausalLM")["dropout_p"] == 0.1


EMBEDDING = {"kind": "prompt_segments", "segments": {"num_types": 4}, "prompt": {"num_types": 4, "length": 3}}


@pytest.mark.parametrize(("change", "message"), [
    ({"embedding": {"kind": "tokens"}, "position": {"kind": "bucket_bias", "num_buckets": 32, "max_distance": 64}},
     "position.segments = False has no equivalent in Hugging Face CPM-Ant"),  # a tokens embedding has no segments
    ({"embedding": {**EMBEDDING, "segments": {"num_types": 4, "token_segment": 1}}},
     "embedding.segments.token_segment = 1 has no equivalent in Hugging Face CPM-Ant, which needs 2"),
    ({"wiring": {"kind": "sandwich"}}, "wiring.kind = 'sandwich' has no equivalent in Hugging Face CPM-Ant"),
    ({"wiring": {"kind": "post_norm"}}, "wiring.kind = 'post_norm' has no equivalent in Hugging Face CPM-Ant"),
    ({"wiring": {"kind": "pre_norm", "residual_from_norm": True}},
     "wiring.residual_from_norm = True has no equivalent in Hugging Face CPM-Ant, which needs False"),
    ({"wiring": {"kind": "pre_norm", "dropout": 0.1}},
     r"wiring.dropout \(one dropout_p covers attention and residuals\) = 0.1 has no equivalent in Hugging Face "
     r"CPM-Ant, which needs 0.0"),
    ({"final_norm": False}, "final_norm = False has no equivalent in Hugging Face CPM-Ant, which needs True"),
], ids=["tokens-embedding", "token-segment", "sandwich", "post-norm", "residual-from-norm", "wiring-dropout",
        "no-final-norm"])
def test_export_of_what_cpmant_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-cpm-ant", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
