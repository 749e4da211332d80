"""Phi checkpoints against transformers: every head, MHA and GQA, rotary fractions, q/k LayerNorm,
tied and untied LM heads (the bias stays the head's own), the dropouts."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "phi"
report_largest_difference = largest_difference_report(FAMILY)


def config(partial_rotary_factor=0.5, **overrides):
    fields = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=3, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                   "partial_rotary_factor": partial_rotary_factor})
    return transformers.PhiConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


@pytest.mark.parametrize(("architecture", "head"), [
    ("PhiForCausalLM", "causal_lm"),
    ("PhiForSequenceClassification", "sequence_classification"),
    ("PhiForTokenClassification", "token_classification"),
    ("PhiModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert (ours.spec.wiring.kind, ours.spec.wiring.shared_norm) == ("parallel", True)


@pytest.mark.parametrize(("factor", "overrides"), [
    (0.25, {"num_key_value_heads": 2, "tie_word_embeddings": True}),
    (1.0, {"num_key_value_heads": 1, "hidden_act": "gelu"}),
    (0.5, {"num_key_value_heads": 4, "qk_layernorm": True, "layer_norm_eps": 1e-6}),
], ids=["gqa-tied-quarter-rotary", "mqa-full-rotary-gelu", "qk-layernorm"])
def test_causal_lm_variants_match_transformers(tmp_path, factor, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="PhiForCausalLM",
                        config=config(partial_rotary_factor=factor, **overrides), head="causal_lm", inputs=INPUTS,
                        hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    assert spec.attention.num_kv_heads == overrides["num_key_value_heads"]
    assert spec.embedding.tied == overrides.get("tie_word_embeddings", False)
    assert spec.heads[0].bias
    assert spec.position.kind == ("rope" if factor == 1.0 else "partial_rope")
    qk_norm = spec.attention.qk_norm
    assert (qk_norm.scope, qk_norm.norm) == ("head", None) if overrides.get("qk_layernorm") else qk_norm is None


def test_tied_lm_head_keeps_its_own_bias(tmp_path):
    """Tied to the embedding, the LM head's weight is not stored, its bias is."""
    transformers.PhiForCausalLM(config(tie_word_embeddings=True)).save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf")
    assert ours.heads.causal_lm.proj.weight is ours.embedding.tokens.weight
    out = ours.save_pretrained(tmp_path / "export", format="hf")
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert "lm_head.bias" in f.keys() and "lm_head.weight" not in f.keys()


def test_dropouts_are_the_embedding_and_wiring_dropouts():
    from archcomposer.plugins.phi import FAMILY as family

    data = family.spec_from_hf_config(config(embd_pdrop=0.1, resid_pdrop=0.2, attention_dropout=0.3).to_dict(),
                                      "PhiForCausalLM")
    data["name"] = "dropout"
    spec = build_model(data, device="meta").spec
    assert (spec.embedding.dropout, spec.wiring.dropout, spec.attention.dropout) == (0.1, 0.2, 0.3)
    exported = family.hf_config_from_spec(spec, "PhiForCausalLM")
    assert [exported[k] for k in ("embd_pdrop", "resid_pdrop", "attention_dropout")] == [0.1, 0.2, 0.3]


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.phi import FAMILY as family

    published = dict(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, partial_rotary_factor=0.4, rope_theta=10000.0,
                     max_position_embeddings=2048, layer_norm_eps=1e-5, hidden_act="gelu_new", resid_pdrop=0.1,
                     embd_pdrop=0.0, attention_dropout=0.0, qk_layernorm=False, tie_word_embeddings=False,
                     bos_token_id=50256, eos_token_id=50256, model_type="phi")  # phi-2
    data = family.spec_from_hf_config(published, "PhiForCausalLM")
    data["name"], data["family"] = "phi-2", FAMILY
    assert build_model(data, device="meta").spec == build_model("phi-2", device="meta").spec
    assert check_shipped_spec("phi-2", "PhiForCausalLM", transformers.PhiConfig(**published)) == 2_779_683_840


@pytest.mark.parametrize(("change", "message"), [
    ({"wiring": {"kind": "parallel", "shared_norm": False}},
     "wiring.shared_norm = False has no equivalent in Hugging Face Phi: its config.json reads back as True"),
    ({"wiring": {"kind": "pre_norm"}}, "wiring.kind = 'pre_norm' has no equivalent"),
    ({"heads": [{"kind": "causal_lm"}]},
     "heads.0.bias = False has no equivalent in Hugging Face Phi: its config.json reads back as True"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "qkv_bias": False, "out_bias": True}},
     "attention.qkv_bias = False has no equivalent"),
    ({"norm": {"kind": "rmsnorm"}}, "norm.kind = 'rmsnorm' has no equivalent"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "qkv_bias": True, "out_bias": True,
                    "qk_norm": {"scope": "per_head"}}},
     "attention.qk_norm.scope = 'per_head' has no equivalent in Hugging Face Phi: its config.json reads back as "
     "'head'"),
], ids=["two-norms", "pre-norm", "lm-head-without-bias", "no-qkv-bias", "rmsnorm", "qk-norm-per-head"])
def test_export_of_what_phi_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-phi", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
