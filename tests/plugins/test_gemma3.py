"""Gemma 3 (text) checkpoints against transformers: every head, q/k norms, query_pre_attn_scalar,
a RoPE per layer type (linear scaling on the global layers), a sliding window shorter than the
inputs, final-logit soft-capping, the older config keys (rope_theta, rope_local_base_freq,
rope_scaling, sliding_window_pattern), GQA/MQA, tied and untied LM heads."""

import json

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import (Inputs, build_reference, check_parity, check_shipped_spec,
                                   largest_difference_report, position_ids)

FAMILY = "gemma-3"
ROPE = {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}


report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, num_labels=3, max_position_embeddings=256,
                  query_pre_attn_scalar=24, sliding_window=4, final_logit_softcapping=2.0,
                  layer_types=["sliding_attention", "full_attention"], rope_parameters=ROPE)
    return transformers.Gemma3TextConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


@pytest.mark.parametrize(("architecture", "head"), [
    ("Gemma3ForCausalLM", "causal_lm"),
    ("Gemma3TextForSequenceClassification", "sequence_classification"),
    ("Gemma3TextModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    sliding, full = ours.spec.layer_specs
    assert (sliding.attention.sliding_window, full.attention.sliding_window) == (4, None)
    assert (sliding.position.theta, sliding.position.scaling) == (100.0, None)
    assert (full.position.theta, full.position.scaling.type, full.position.scaling.factor) == (5000.0, "linear", 4.0)
    assert full.attention.qk_norm.scope == "head" and full.attention.scale == 24**-0.5


@pytest.mark.parametrize("overrides", [
    {"num_key_value_heads": 1, "tie_word_embeddings": False, "attention_bias": True, "query_pre_attn_scalar": 16,
     "final_logit_softcapping": None, "attn_logit_softcapping": 1.0,
     "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}},
    {"num_hidden_layers": 3, "layer_types": ["full_attention", "sliding_attention", "full_attention"],
     "num_key_value_heads": 4},
], ids=["mqa-untied-bias-unscaled-rope-ignored-attn-softcap", "three-layers-mha"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="Gemma3ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    assert spec.attention.softcap is None  # transformers' Gemma 3 never applies attn_logit_softcapping
    assert spec.heads[0].softcap == overrides.get("final_logit_softcapping", 2.0)
    assert spec.embedding.tied == overrides.get("tie_word_embeddings", True)
    assert spec.layer_types == overrides.get("layer_types", ["sliding_attention", "full_attention"])


def test_older_config_keys_load(tmp_path):
    """Configs on the Hub say rope_theta, rope_scaling, rope_local_base_freq and
    sliding_window_pattern where transformers 5 writes rope_parameters and layer_types."""
    legacy = dict(rope_theta=5000.0, rope_scaling={"rope_type": "linear", "factor": 4.0}, rope_local_base_freq=100.0,
                  sliding_window_pattern=3)
    reference = build_reference("Gemma3ForCausalLM", config(num_hidden_layers=4, layer_types=None,
                                                            rope_parameters=None, **legacy))
    assert reference.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention",
                                            "sliding_attention"]
    reference.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    for key in ("rope_parameters", "layer_types", "_sliding_window_pattern"):
        saved.pop(key)
    path.write_text(json.dumps({**saved, **legacy}))
    ours = from_pretrained(tmp_path)
    assert [layer.attention.sliding_window for layer in ours.spec.layer_specs] == [4, 4, None, 4]
    with torch.no_grad():
        assert (ours(INPUTS.single).logits - reference(INPUTS.single).logits).abs().max() <= 1e-4


def test_bidirectional_attention_is_refused(tmp_path):
    build_reference("Gemma3TextModel", config(use_bidirectional_attention=True)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="use_bidirectional_attention = True is not supported"):
        from_pretrained(tmp_path)


#: google/gemma-3-4b-pt's text_config, with the Gemma3TextConfig defaults it leaves out.
GEMMA_3_4B = dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                  max_position_embeddings=131072, rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=1024,
                  sliding_window_pattern=6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                  rope_scaling={"factor": 8.0, "rope_type": "linear"}, final_logit_softcapping=None,
                  attn_logit_softcapping=None, pad_token_id=0, bos_token_id=2, eos_token_id=1,
                  tie_word_embeddings=True)


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.gemma3 import FAMILY as family

    data = family.spec_from_hf_config(GEMMA_3_4B, "Gemma3ForCausalLM")
    data["name"], data["family"] = "gemma-3-4b", "gemma-3"
    ours = build_model(data, device="meta").spec
    shipped = build_model("gemma-3-4b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    count = check_shipped_spec("gemma-3-4b", "Gemma3ForCausalLM", transformers.Gemma3TextConfig(**GEMMA_3_4B))
    assert count == 3_880_263_168


def test_tiny_spec_exports_to_transformers(tmp_path):
    """A spec written by hand (not read from a config) exports, transformers computes the same
    logits from it, and it reads back as the same spec."""
    model = build_model("tiny-gemma-3", seed=0)
    model.save_pretrained(tmp_path, format="hf")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(4, 256, (2, 12), generator=torch.Generator().manual_seed(0))  # longer than the window
    with torch.no_grad():
        assert (model(ids).logits - reference(ids).logits).abs().max() <= 1e-4
    back = from_pretrained(tmp_path).spec
    assert back.model_dump(exclude={"name"}) == model.spec.model_dump(exclude={"name"})


@pytest.mark.parametrize(("change", "message"), [
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 32, "qk_norm": {"scope": "head"},
                    "softcap": 50.0}},
     "attention.softcap = 50.0 has no equivalent in Hugging Face Gemma 3: its config.json reads back as None"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 32}},
     "attention.qk_norm = None has no equivalent in Hugging Face Gemma 3"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 32,
                    "qk_norm": {"scope": "per_head"}}},
     "attention.qk_norm.scope = 'per_head' has no equivalent in Hugging Face Gemma 3"),
], ids=["attention-softcap", "no-qk-norm", "qk-norm-per-head"])
def test_export_of_what_gemma3_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-gemma-3", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
