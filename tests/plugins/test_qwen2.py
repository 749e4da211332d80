"""Qwen2 checkpoints against transformers: every head, GQA, MQA and MHA, q/k/v bias without an
output bias, tied and untied LM heads, and sliding windows on the layers from max_window_layers
on (or as layer_types names them)."""

import pytest
import transformers

from archcomposer import CheckpointError, build_model
from tests.plugins.parity import Inputs, check_parity, check_shipped_spec, largest_difference_report, position_ids

FAMILY = "qwen2"
report_largest_difference = largest_difference_report(FAMILY)


def config(**overrides):
    fields = dict(vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3,
                  max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return transformers.Qwen2Config(**{**fields, **overrides})


INPUTS = Inputs(vocab_size=160, pad_token_id=0)


def spec_of(hf_config, architecture="Qwen2ForCausalLM") -> dict:
    from archcomposer.plugins.qwen2 import FAMILY as family

    return {**family.spec_from_hf_config(hf_config.to_dict(), architecture), "name": "tiny-qwen2", "family": FAMILY}


@pytest.mark.parametrize(("architecture", "head"), [
    ("Qwen2ForCausalLM", "causal_lm"),
    ("Qwen2ForSequenceClassification", "sequence_classification"),
    ("Qwen2ForTokenClassification", "token_classification"),
    ("Qwen2ForQuestionAnswering", "question_answering"),
    ("Qwen2Model", None),
])
def test_every_head_matches_transformers(tmp_path, architecture, head):
    ours = check_parity(tmp_path, family=FAMILY, architecture=architecture, config=config(), head=head,
                        inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert (ours.spec.attention.qkv_bias, ours.spec.attention.out_bias) == (True, False)


@pytest.mark.parametrize("overrides", [
    {"num_key_value_heads": 1, "tie_word_embeddings": True},
    {"num_key_value_heads": 4, "head_dim": 16},
], ids=["mqa-tied", "mha-head-dim-16"])
def test_causal_lm_variants_match_transformers(tmp_path, overrides):
    ours = check_parity(tmp_path, family=FAMILY, architecture="Qwen2ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert ours.spec.attention.num_kv_heads == overrides["num_key_value_heads"]
    assert ours.spec.attention.head_dim == overrides.get("head_dim", 12)
    assert ours.spec.embedding.tied == overrides.get("tie_word_embeddings", False)


@pytest.mark.parametrize(("overrides", "windows"), [
    ({"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1}, [None, 3]),
    ({"use_sliding_window": True, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]},
     [4, None]),
    ({"use_sliding_window": False, "sliding_window": 3, "max_window_layers": 0}, [None, None]),
], ids=["from-max-window-layers", "from-layer-types", "window-off"])
def test_sliding_windows_match_transformers(tmp_path, overrides, windows):
    ours = check_parity(tmp_path, family=FAMILY, architecture="Qwen2ForCausalLM", config=config(**overrides),
                        head="causal_lm", inputs=INPUTS, hf_kwargs_for_batch=position_ids)
    assert [layer.attention.sliding_window for layer in ours.spec.layer_specs] == windows


def test_shipped_spec_is_what_the_published_config_translates_to():
    """Qwen2.5-7B's config.json: 28 layers that would slide from max_window_layers 28 on, but
    use_sliding_window is false."""
    from archcomposer.plugins.qwen2 import FAMILY as family

    published = transformers.Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-6, use_sliding_window=False,
        sliding_window=131072, max_window_layers=28, tie_word_embeddings=False, bos_token_id=151643,
        eos_token_id=151643, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}).to_dict()
    data = family.spec_from_hf_config(published, "Qwen2ForCausalLM")
    data["name"], data["family"] = "qwen2.5-7b", FAMILY
    ours = build_model(data, device="meta").spec
    shipped = build_model("qwen2.5-7b", device="meta").spec
    assert ours.model_dump(exclude={"initializer_range"}) == shipped.model_dump(exclude={"initializer_range"})
    assert check_shipped_spec("qwen2.5-7b", "Qwen2ForCausalLM", transformers.Qwen2Config(**published)) \
        == 7_615_616_512


def test_sliding_attention_without_a_window_is_refused():
    from archcomposer.plugins.qwen2 import FAMILY as family

    with pytest.raises(CheckpointError, match="layer_types names sliding_attention layers but use_sliding_window is "
                                              "false"):
        family.spec_from_hf_config({**config().to_dict(), "layer_types": ["full_attention", "sliding_attention"]},
                                   "Qwen2ForCausalLM")


@pytest.mark.parametrize(("change", "message"), [
    ({"layers": [{"indices": [0], "attention": {"sliding_window": 3}},
                {"indices": [1], "attention": {"sliding_window": 5}}]},
     r"attention.sliding_window \(layers 1\) = 5 has no equivalent in Hugging Face Qwen2: its config.json reads back "
     r"as 3"),
    ({"attention": {"qkv_bias": False}},
     "attention.qkv_bias = False has no equivalent in Hugging Face Qwen2: its config.json reads back as True"),
    ({"attention": {"out_bias": True}},
     "attention.out_bias = True has no equivalent in Hugging Face Qwen2: its config.json reads back as False"),
    ({"mlp": {"bias": True}}, "mlp.bias = True has no equivalent in Hugging Face Qwen2"),
], ids=["two-windows", "no-qkv-bias", "out-bias", "mlp-bias"])
def test_export_of_what_qwen2_cannot_express_names_the_field(tmp_path, change, message):
    spec = spec_of(config())
    for section, fields in change.items():
        spec[section] = fields if section == "layers" else {**spec[section], **fields}
    with pytest.raises(CheckpointError, match=message):
        build_model(spec, seed=0).save_pretrained(tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
