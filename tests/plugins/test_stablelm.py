"""StableLM checkpoints against transformers: every head with per-head q/k LayerNorms, GQA and MQA,
q/k/v bias on and off, sequential and parallel residuals, tied and untied LM heads; hidden_dropout
refused."""

import pytest
import torch
import transformers

from archcomposer import CheckpointError, build_model, from_pretrained
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "stablelm"
report_largest_difference = largest_difference_report(FAMILY)


def config(partial_rotary_factor=0.25, **overrides):
    fields = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, use_qkv_bias=True, qk_layernorm=True, pad_token_id=1, bos_token_id=0,
                  eos_token_id=2,
                  num_labels=3, max_position_embeddings=256,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                   "partial_rotary_factor": partial_rotary_factor})
    return transformers.StableLmConfig(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


@pytest.mark.parametrize(("architecture", "head"), [
    ("StableLmForCausalLM", "causal_lm"),
    ("StableLmForSequenceClassification", "sequence_classification"),
    ("StableLmForTokenClassification", "token_classification"),
    ("StableLmModel", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head, inputs=INPUTS,
                 hf_kwargs_for_batch=position_ids)


@pytest.mark.parametrize(("factor", "overrides"), [
    (0.5, {"use_parallel_residual": True, "use_qkv_bias": False}),
    (1.0, {"num_key_value_heads": 1, "tie_word_embeddings": True, "qk_layernorm": False, "layer_norm_eps": 1e-6}),
], ids=["parallel-half-rotary-no-bias", "mqa-tied-full-rotary-no-qk-norm"])
def test_causal_lm_variants_match_transformers(tmp_path, factor, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="StableLmForCausalLM",
                        config=config(partial_rotary_factor=factor, **overrides), head="causal_lm", inputs=INPUTS,
                        hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    parallel = overrides.get("use_parallel_residual", False)
    assert (spec.wiring.kind, getattr(spec.wiring, "shared_norm", True)) == \
        ("parallel" if parallel else "pre_norm", True)
    assert spec.attention.qkv_bias == overrides.get("use_qkv_bias", True)
    assert spec.embedding.tied == overrides.get("tie_word_embeddings", False)
    qk_norm = spec.attention.qk_norm
    if overrides.get("qk_layernorm", True):
        assert (qk_norm.scope, qk_norm.norm.kind, qk_norm.norm.bias) == ("per_head", "layernorm", False)
    else:
        assert qk_norm is None and spec.norm.eps == 1e-6


def test_per_head_qk_norms_are_stacked(tmp_path):
    """HF keeps one LayerNorm per head (q_layernorm.norms.{h}); ours is one weight [H, Dh]."""
    build = transformers.StableLmForCausalLM(config()).eval()
    for h, norm in enumerate(build.model.layers[1].self_attn.k_layernorm.norms):
        torch.nn.init.constant_(norm.weight, float(h))
    build.save_pretrained(tmp_path)
    weight = from_pretrained(tmp_path).layers[1].attention.k_norm.norm.weight
    assert weight.shape == (2, 16) and torch.equal(weight[:, 0], torch.tensor([0.0, 1.0]))


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.stablelm import FAMILY as family

    published = dict(vocab_size=100352, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rope_theta=10000,
                     partial_rotary_factor=0.25, layer_norm_eps=1e-5, use_qkv_bias=True, qk_layernorm=False,
                     use_parallel_residual=False, hidden_act="silu", hidden_dropout=0.0, attention_dropout=0.0,
                     tie_word_embeddings=False, bos_token_id=100257, eos_token_id=100257,
                     model_type="stablelm")  # stablelm-2-1_6b
    data = family.spec_from_hf_config(published, "StableLmForCausalLM")
    data["name"], data["family"] = "stablelm-2-1.6b", FAMILY
    assert build_model(data, device="meta").spec == build_model("stablelm-2-1.6b", device="meta").spec
    assert check_shipped_spec("stablelm-2-1.6b", "StableLmForCausalLM", transformers.StableLmConfig(**published)) \
        == 1_644_515_328


def test_hidden_dropout_is_refused_on_import(tmp_path):
    transformers.StableLmForCausalLM(config(hidden_dropout=0.1)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="config.json hidden_dropout = 0.1 is not supported \\(only 0.0\\): "
                                              "StableLM drops the MLP branch alone"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"wiring": {"kind": "parallel", "shared_norm": False}},
     "wiring.shared_norm = False has no equivalent in Hugging Face StableLM: its config.json reads back as True"),
    ({"wiring": {"kind": "pre_norm", "dropout": 0.1}}, "wiring.dropout = 0.1 has no equivalent"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "qkv_bias": True, "out_bias": True}},
     "attention.out_bias = True has no equivalent"),
    ({"norm": {"kind": "rmsnorm"}}, "norm.kind = 'rmsnorm' has no equivalent"),
    ({"mlp": {"kind": "gated", "intermediate_size": 128, "bias": True}}, "mlp.bias = True has no equivalent"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "qkv_bias": True, "qk_norm": {"scope": "head"}}},
     "attention.qk_norm.scope = 'head' has no equivalent in Hugging Face StableLM: its config.json reads back as "
     "'per_head'"),
    ({"attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "qkv_bias": True,
                    "qk_norm": {"scope": "per_head", "norm": {"kind": "layernorm", "bias": True}}}},
     "attention.qk_norm.norm.bias = True has no equivalent"),
], ids=["two-norms", "wiring-dropout", "out-bias", "rmsnorm", "mlp-bias", "qk-norm-shared", "qk-norm-bias"])
def test_export_of_what_stablelm_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-stablelm", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
