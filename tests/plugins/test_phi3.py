"""Phi-3 checkpoints against transformers: every head, GQA and MQA, partial rotary (Phi-4-mini), a
sliding window, LongRoPE within and past the original length, tied and untied LM heads."""

import json

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, assert_close, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report, position_ids)

FAMILY = "phi3"
report_largest_difference = largest_difference_report(FAMILY)


def config(rope=None, **overrides):
    fields = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, original_max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0, **(rope or {})})
    return transformers.Phi3Config(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


@pytest.mark.parametrize(("architecture", "head"), [
    ("Phi3ForCausalLM", "causal_lm"),
    ("Phi3ForSequenceClassification", "sequence_classification"),
    ("Phi3ForTokenClassification", "token_classification"),
    ("Phi3Model", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.fused_qkv and ours.spec.mlp.fused


@pytest.mark.parametrize(("rope", "overrides"), [
    ({"partial_rotary_factor": 0.75}, {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    ({}, {"num_key_value_heads": 4, "hidden_act": "gelu", "sliding_window": 4}),
], ids=["mqa-tied-three-quarter-rotary", "mha-gelu-window"])
def test_causal_lm_variants_match_transformers(tmp_path, rope, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="Phi3ForCausalLM", config=config(rope, **overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    assert spec.attention.num_kv_heads == overrides["num_key_value_heads"]
    assert spec.embedding.tied == overrides.get("tie_word_embeddings", False)
    assert getattr(spec.position, "fraction", 1.0) == rope.get("partial_rotary_factor", 1.0)
    assert spec.attention.sliding_window == overrides.get("sliding_window")


def longrope(rotated_pairs=8):
    return {"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(rotated_pairs)],
            "long_factor": [2.0 + 0.5 * i for i in range(rotated_pairs)]}


def test_longrope_within_the_original_length_matches_transformers(tmp_path):
    """Greedy generation stays within original_max_position_embeddings (short factors); the
    attention factor comes from max_position_embeddings / original."""
    hf = config(longrope(), max_position_embeddings=128, original_max_position_embeddings=32)
    ours = check_parity(tmp_path, family=FAMILY, architecture="Phi3ForCausalLM", config=hf, head="causal_lm",
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    scaling = ours.spec.position.scaling
    assert (scaling.type, scaling.original_max_positions, ours.spec.max_positions) == ("longrope", 32, 128)


@pytest.mark.parametrize("factor", [0.75, 1.0])
def test_longrope_past_the_original_length_matches_transformers(tmp_path, factor):
    """A forward past original_max_position_embeddings rotates with the long factors, ours and
    transformers' alike, also after our export (which writes the top-level original length
    Phi-3 reads)."""
    hf = config({**longrope(int(8 * factor)), "partial_rotary_factor": factor}, max_position_embeddings=64,
                original_max_position_embeddings=8)
    reference = build_reference("Phi3ForCausalLM", hf)
    reference.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf")
    exported = ours.save_pretrained(tmp_path / "export", format="hf")
    assert json.loads((exported / "config.json").read_text())["original_max_position_embeddings"] == 8
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    ids = torch.randint(4, 160, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, mine, back = reference(ids).logits, ours(ids).logits, reloaded(ids).logits
    assert_close(FAMILY, "longrope past the original length logits", mine, theirs)
    assert_close(FAMILY, "longrope past the original length export logits", back, theirs)


@pytest.mark.parametrize("old_type", ["su", "yarn"])
def test_older_rope_scaling_types_are_longrope(old_type):
    """Phi-3's config reads rope_scaling types 'su' and 'yarn' (Phi-3-mini-128k's first config) as
    LongRoPE."""
    from archcomposer.plugins.phi3 import FAMILY as family

    hf = config().to_dict()
    del hf["rope_parameters"]
    scaling = {"type": old_type, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}
    data = family.spec_from_hf_config({**hf, "rope_theta": 500.0, "rope_scaling": scaling,
                                       "original_max_position_embeddings": 64}, "Phi3ForCausalLM")
    assert data["position"]["scaling"]["type"] == "longrope"
    assert data["position"]["scaling"]["original_max_positions"] == 64
    if old_type == "yarn":  # transformers 5.23 reads 'su' only with original_max_position_embeddings in it
        reference = transformers.Phi3Config(**{**hf, "rope_scaling": scaling, "original_max_position_embeddings": 64})
        assert reference.rope_parameters["rope_type"] == "longrope"


def test_resid_pdrop_is_the_wiring_dropout():
    from archcomposer.plugins.phi3 import FAMILY as family

    data = family.spec_from_hf_config(config(resid_pdrop=0.1, attention_dropout=0.2).to_dict(), "Phi3ForCausalLM")
    data["name"] = "dropout"
    spec = build_model(data, device="meta").spec
    assert (spec.wiring.dropout, spec.attention.dropout, spec.embedding.dropout) == (0.1, 0.2, 0.0)
    exported = family.hf_config_from_spec(spec, "Phi3ForCausalLM")
    assert (exported["resid_pdrop"], exported["attention_dropout"]) == (0.1, 0.2)


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.phi3 import FAMILY as family

    published = dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                     original_max_position_embeddings=4096, rope_theta=10000.0, rope_scaling=None, sliding_window=2047,
                     rms_norm_eps=1e-5, hidden_act="silu", resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                     tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000, pad_token_id=32000,
                     model_type="phi3")  # Phi-3-mini-4k-instruct
    data = family.spec_from_hf_config(published, "Phi3ForCausalLM")
    data["name"], data["family"] = "phi-3-mini-4k", FAMILY
    assert build_model(data, device="meta").spec == build_model("phi-3-mini-4k", device="meta").spec
    assert check_shipped_spec("phi-3-mini-4k", "Phi3ForCausalLM", transformers.Phi3Config(**published)) \
        == 3_821_079_552


@pytest.mark.parametrize(("change", "message"), [
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "fused_qkv": True, "qkv_bias": True}},
     "attention.qkv_bias = True has no equivalent in Hugging Face Phi-3: its config.json reads back as False"),
    ({"mlp": {"kind": "gated", "intermediate_size": 128, "fused": True, "bias": True}},
     "mlp.bias = True has no equivalent"),
    ({"norm": {"kind": "layernorm"}}, "norm.kind = 'layernorm' has no equivalent"),
    ({"embedding": {"kind": "tokens", "dropout": 0.1}},
     "embedding.dropout = 0.1 has no equivalent"),  # transformers reads embd_pdrop but drops nothing
    ({"wiring": {"kind": "parallel"}}, "wiring.kind = 'parallel' has no equivalent"),
], ids=["qkv-bias", "mlp-bias", "layernorm", "embedding-dropout", "parallel"])
def test_export_of_what_phi3_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-phi3", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()


def test_split_projections_are_refused_on_export(tmp_path):
    """A spec with separate q/k/v (not Phi-3's own layout) is refused by name: the fused
    rows of the checkpoint are not written from parts."""
    spec = build_model("tiny-phi3", device="meta").spec.to_dict()
    spec["attention"]["fused_qkv"] = False
    with pytest.raises(CheckpointError, match="attention.fused_qkv = False has no equivalent"):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
