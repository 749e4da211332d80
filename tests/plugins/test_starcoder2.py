"""StarCoder 2 checkpoints against transformers: every head with a sliding window shorter than the
inputs, GQA and MQA, biases on and off, head_dim independent of the width, tied and untied LM
heads, the dropouts."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "starcoder2"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                  sliding_window=5)  # shorter than the inputs and the greedy continuations
    return transformers.Starcoder2Config(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=1)


@pytest.mark.parametrize(("architecture", "head"), [
    ("Starcoder2ForCausalLM", "causal_lm"),
    ("Starcoder2ForSequenceClassification", "sequence_classification"),
    ("Starcoder2ForTokenClassification", "token_classification"),
    ("Starcoder2Model", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head, inputs=INPUTS,
                 hf_kwargs_for_batch=position_ids)


@pytest.mark.parametrize("overrides", [
    {"use_bias": False, "tie_word_embeddings": False},
    {"num_key_value_heads": 1, "head_dim": 20, "hidden_act": "gelu", "sliding_window": None},
], ids=["no-bias-untied", "mqa-head-dim-gelu-no-window"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="Starcoder2ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    spec = ours.spec
    bias = overrides.get("use_bias", True)
    assert (spec.attention.qkv_bias, spec.attention.out_bias, spec.mlp.bias) == (bias, bias, bias)
    assert spec.embedding.tied == overrides.get("tie_word_embeddings", True)
    assert spec.attention.head_dim == overrides.get("head_dim", 12)
    assert spec.attention.sliding_window == overrides.get("sliding_window", 5)


def test_dropouts_are_the_embedding_attention_and_wiring_dropouts():
    from archcomposer.plugins.starcoder2 import FAMILY as family

    hf = config(embedding_dropout=0.1, attention_dropout=0.2, residual_dropout=0.3).to_dict()
    data = family.spec_from_hf_config(hf, "Starcoder2ForCausalLM")
    data["name"] = "dropout"
    spec = build_model(data, device="meta").spec
    assert (spec.embedding.dropout, spec.attention.dropout, spec.wiring.dropout) == (0.1, 0.2, 0.3)
    exported = family.hf_config_from_spec(spec, "Starcoder2ForCausalLM")
    assert [exported[k] for k in ("embedding_dropout", "attention_dropout", "residual_dropout")] == [0.1, 0.2, 0.3]


def test_shipped_spec_is_what_the_published_config_translates_to():
    from archcomposer.plugins.starcoder2 import FAMILY as family

    published = dict(vocab_size=49152, hidden_size=4608, intermediate_size=18432, num_hidden_layers=32,
                     num_attention_heads=36, num_key_value_heads=4, max_position_embeddings=16384,
                     rope_theta=1000000, sliding_window=4096, norm_epsilon=1e-5, use_bias=True,
                     hidden_act="gelu_pytorch_tanh", initializer_range=0.018042, bos_token_id=0, eos_token_id=0,
                     attention_dropout=0.1, embedding_dropout=0.1, residual_dropout=0.1,
                     model_type="starcoder2")  # starcoder2-7b
    data = family.spec_from_hf_config(published, "Starcoder2ForCausalLM")
    data["name"], data["family"] = "starcoder2-7b", FAMILY
    assert build_model(data, device="meta").spec == build_model("starcoder2-7b", device="meta").spec
    assert check_shipped_spec("starcoder2-7b", "Starcoder2ForCausalLM", transformers.Starcoder2Config(**published)) \
        == 7_173_923_840


@pytest.mark.parametrize(("change", "message"), [
    ({"mlp": {"kind": "plain", "intermediate_size": 256, "activation": "gelu_tanh", "bias": False}},
     r"attention.qkv_bias = True has no equivalent in Hugging Face StarCoder 2: its config.json reads back as "
     r"False \(use_bias is both attention.qkv_bias and mlp.bias\)"),
    ({"norm": {"kind": "layernorm", "bias": False}}, "norm.bias = False has no equivalent"),
    ({"norm": {"kind": "rmsnorm"}}, "norm.kind = 'rmsnorm' has no equivalent"),
    ({"mlp": {"kind": "gated", "intermediate_size": 128, "bias": True}}, "mlp.kind = 'gated' has no equivalent"),
    ({"wiring": {"kind": "parallel"}}, "wiring.kind = 'parallel' has no equivalent"),
    ({"position": {"kind": "partial_rope", "fraction": 0.5, "interleaved": False}},
     "position.kind = 'partial_rope' has no equivalent"),
    ({"layers": [{"indices": [0], "attention": {"sliding_window": 4}}]},
     r"attention.sliding_window \(layers 0\) = 4 has no equivalent in Hugging Face StarCoder 2: its config.json "
     r"reads back as None"),  # one window for every layer
], ids=["mlp-bias-alone", "norm-no-bias", "rmsnorm", "gated", "parallel", "partial-rope", "window-on-one-layer"])
def test_export_of_what_starcoder2_cannot_express_names_the_field(tmp_path, change, message):
    spec = {**build_model("tiny-starcoder2", device="meta").spec.to_dict(), **change}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()


def test_partial_rotary_factor_is_ignored_as_transformers_does(tmp_path):
    """StarCoder 2's rotary rotates whole heads: transformers ignores a partial_rotary_factor."""
    hf = config(rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5})
    ours = check_parity(tmp_path, family=FAMILY, architecture="Starcoder2ForCausalLM", config=hf, head="causal_lm",
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.position.kind == "rope"
