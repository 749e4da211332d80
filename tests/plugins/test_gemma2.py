"""Gemma 2 checkpoints against transformers: every head, sandwich layers, query_pre_attn_scalar,
attention and final-logit soft-capping (small caps, so they bite), a sliding window shorter than
the inputs on the sliding layers, custom layer_types, GQA/MQA, tied and untied LM heads."""

import json

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report, position_ids)

FAMILY = "gemma-2"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, num_labels=3, max_position_embeddings=256,
                  query_pre_attn_scalar=24, sliding_window=4, attn_logit_softcapping=1.0,
                  final_logit_softcapping=2.0, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return transformers.Gemma2Config(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


@pytest.mark.parametrize(("architecture", "head"), [
    ("Gemma2ForCausalLM", "causal_lm"),
    ("Gemma2ForSequenceClassification", "sequence_classification"),
    ("Gemma2ForTokenClassification", "token_classification"),
    ("Gemma2Model", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    assert spec.wiring.kind == "sandwich" and spec.norm.unit_offset
    assert spec.layer_types == ["sliding_attention", "full_attention"]
    assert [layer.attention.sliding_window for layer in spec.layer_specs] == [4, None]
    assert (spec.attention.scale, spec.attention.softcap) == (24**-0.5, 1.0)
    if head == "causal_lm":
        assert spec.heads[0].softcap == 2.0


@pytest.mark.parametrize("overrides", [
    {"num_key_value_heads": 1, "tie_word_embeddings": False, "attention_bias": True, "query_pre_attn_scalar": 16,
     "final_logit_softcapping": None, "attn_logit_softcapping": None},
    {"num_hidden_layers": 3, "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
     "sliding_window": 3, "hidden_activation": "gelu"},
], ids=["mqa-untied-bias-uncapped", "three-layers-custom-types-exact-gelu"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="Gemma2ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    types = overrides.get("layer_types", ["sliding_attention", "full_attention"])
    window = overrides.get("sliding_window", 4)
    assert [layer.attention.sliding_window for layer in spec.layer_specs] == \
        [window if t == "sliding_attention" else None for t in types]
    assert spec.attention.scale == (None if overrides.get("query_pre_attn_scalar") == 16 else 24**-0.5)
    assert spec.attention.softcap == overrides.get("attn_logit_softcapping", 1.0)
    assert spec.heads[0].softcap == overrides.get("final_logit_softcapping", 2.0)
    assert spec.mlp.activation == ("gelu" if "hidden_activation" in overrides else "gelu_tanh")


def test_bidirectional_attention_is_refused(tmp_path):
    build_reference("Gemma2Model", config(use_bidirectional_attention=True)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="use_bidirectional_attention = True is not supported"):
        from_pretrained(tmp_path)


def test_layer_type_other_than_sliding_or_full_is_refused(tmp_path):
    build_reference("Gemma2Model", config()).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "layer_types": ["chunked_attention", "full_attention"]}))
    with pytest.raises(CheckpointError, match=r"layer_types names \['chunked_attention'\]; supported: "):
        from_pretrained(tmp_path)


GEMMA_2_9B = dict(vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                  max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0, query_pre_attn_scalar=256,
                  sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, pad_token_id=0,
                  bos_token_id=2, eos_token_id=1, tie_word_embeddings=True)


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.gemma2 import FAMILY as family

    data = family.spec_from_hf_config(GEMMA_2_9B, "Gemma2ForCausalLM")
    data["name"], data["family"] = "gemma-2-9b", "gemma-2"
    ours = build_model(data, device="meta").spec
    shipped = build_model("gemma-2-9b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    count = check_shipped_spec("gemma-2-9b", "Gemma2ForCausalLM", transformers.Gemma2Config(**GEMMA_2_9B))
    assert count == 9_241_705_984


def test_tiny_spec_exports_to_transformers(tmp_path):
    """A spec written by hand (not read from a config) exports, transformers computes the same
    logits from it, and it reads back as the same spec."""
    model = build_model("tiny-gemma-2", seed=0)
    model.save_pretrained(tmp_path, format="hf")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(4, 256, (2, 12), generator=torch.Generator().manual_seed(0))  # longer than the window
    with torch.no_grad():
        assert (model(ids).logits - reference(ids).logits).abs().max() <= 1e-4
    back = from_pretrained(tmp_path).spec
    assert back.model_dump(exclude={"name"}) == model.spec.model_dump(exclude={"name"})


@pytest.mark.parametrize(("change", "message"), [
    ({"wiring": {"kind": "pre_norm"}},
     "wiring.kind = 'pre_norm' has no equivalent in Hugging Face Gemma 2: its config.json reads back as 'sandwich'"),
    ({"layers": [{"indices": [0], "attention": {"sliding_window": 4}},
                 {"indices": [1], "attention": {"sliding_window": 8}}]},
     r"attention.sliding_window \(layers 1\) = 8 has no equivalent in Hugging Face Gemma 2: its config.json reads "
     r"back as 4"),
    ({"layers": [{"type": "sliding_attention", "attention": {"softcap": 10.0}}]},
     r"attention.softcap \(layers 0\) = 10.0 has no equivalent in Hugging Face Gemma 2"),
], ids=["pre-norm", "two-windows", "softcap-on-some-layers"])
def test_export_of_what_gemma2_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-gemma-2", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
