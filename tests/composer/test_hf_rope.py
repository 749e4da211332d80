"""archcomposer.hf_rope: Hugging Face RoPE parameters to our position section and back, for every
rope_type, in the forms checkpoints carry them (transformers 5 ``rope_parameters``, legacy
``rope_scaling`` beside a top-level ``rope_theta``, Phi-3's top-level pretraining length). The
oracle is transformers: its configs standardize the same dicts, and its rotary embedding, built
from the config, rotates as the model built from the translated spec does."""

import copy

import pytest
import torch
import transformers
from transformers.models.glm import modeling_glm as glm
from transformers.models.llama import modeling_llama as llama

from archcomposer import CheckpointError, build_model, load_spec
from archcomposer.hf_rope import ROPE_TYPES, position_from_hf, rope_parameters_of, rope_parameters_to_hf

HEAD_DIM, MAX_POSITIONS = 16, 256
SHORT, LONG = [1.0, 1.1, 1.3, 1.7, 2.0, 2.6, 3.0, 4.0], [1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0]

#: rope_parameters as transformers 5.23 stores them (every field explicit), one or more per type.
STORED = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 500.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
             "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True},
    "yarn-deepseek": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                      "original_max_position_embeddings": 32, "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 0.707,
                      "mscale_all_dim": 1.0, "truncate": False},
    "yarn-attention-factor": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                              "original_max_position_embeddings": 128, "beta_fast": 32.0, "beta_slow": 1.0,
                              "attention_factor": 0.8, "truncate": True},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": SHORT, "long_factor": LONG,
                 "original_max_position_embeddings": 32},
    "longrope-factor": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": SHORT, "long_factor": LONG,
                        "factor": 16.0, "attention_factor": 1.1, "original_max_position_embeddings": 32},
    "llama3": {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
}


def llama_config(**fields) -> transformers.LlamaConfig:
    """A LlamaConfig; transformers standardizes the RoPE dicts it is given in place, so it gets copies."""
    return transformers.LlamaConfig(**{"hidden_size": 64, "num_attention_heads": 4, "head_dim": HEAD_DIM,
                                       "max_position_embeddings": MAX_POSITIONS, **copy.deepcopy(fields)})


def spec_with(position: dict) -> dict:
    spec = load_spec("tiny-seed-oss").to_dict()
    return {**spec, "max_positions": MAX_POSITIONS, "position": position,
            "attention": {**spec["attention"], "head_dim": HEAD_DIM}}


def rotary_of(position: dict):
    """The position module the model builds for ``position`` (validated as part of a whole spec)."""
    return build_model(spec_with(position), device="meta").positions[0]


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("name", STORED)
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_stored_parameters_round_trip_through_the_spec(name, fraction):
    stored = {**STORED[name], **({"partial_rotary_factor": fraction} if fraction != 1.0 else {})}
    if stored["rope_type"] == "longrope" and fraction != 1.0:  # a factor per rotated channel pair
        stored = {**stored, "short_factor": SHORT[:4], "long_factor": LONG[:4]}
    position = position_from_hf(rope_parameters_of({"rope_parameters": stored}), max_positions=MAX_POSITIONS)
    assert position["kind"] == ("rope" if fraction == 1.0 else "partial_rope")
    assert ("scaling" in position) == (stored["rope_type"] != "default")
    spec = load_spec(spec_with(position))  # valid, and checked against the head
    written = rope_parameters_to_hf(spec.position, max_positions=spec.max_positions)
    assert written == stored
    assert llama_config(rope_parameters=written).rope_parameters == written  # already standard for transformers
    assert rope_parameters_to_hf(position, max_positions=MAX_POSITIONS) == written  # the dict form too


@pytest.mark.parametrize("rope_type", ROPE_TYPES)
def test_every_supported_type_is_stored_above(rope_type):
    assert any(stored["rope_type"] == rope_type for stored in STORED.values())


@pytest.mark.parametrize("name", STORED)
def test_the_translated_spec_rotates_as_transformers(name):
    """Through the spec's defaults (attention factors, pretraining length) to the built module:
    positions within and past the original length, one forward each."""
    config = llama_config(rope_parameters=STORED[name])
    reference = llama.LlamaRotaryEmbedding(config)
    rope = rope_parameters_of(config.to_dict())
    rotary = rotary_of(position_from_hf(rope, max_positions=MAX_POSITIONS)).to("cpu")
    q = torch.randn(1, 2, 3, HEAD_DIM, generator=torch.Generator().manual_seed(0))
    for pos in ([0, 5, 17], [30, 31, 32], [100, 200, 600]):
        position_ids = torch.tensor([pos])
        cos, sin = reference(q, position_ids)
        expected, _ = llama.apply_rotary_pos_emb(q, q, cos, sin)
        torch.testing.assert_close(rotary(position_ids, position_ids).rotate(q), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the forms checkpoints carry

LEGACY = {
    "rope_scaling with type": {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}},
    "rope_scaling with rope_type": {"rope_theta": 1e6, "rope_scaling": {"rope_type": "dynamic", "factor": 3.0}},
    "yarn without its original length": {"rope_scaling": {"type": "yarn", "factor": 4.0}},
    "yarn without a factor": {"rope_scaling": {"type": "yarn", "factor": None, "original_max_position_embeddings": 64}},
    "llama 3.1": {"rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}},
    "rope_scaling wins over rope_parameters": {"rope_parameters": {"rope_type": "linear", "factor": 2.0},
                                               "rope_scaling": {"type": "dynamic", "factor": 3.0}},
    "theta only": {"rope_theta": 25000.0},
    "nothing": {},
    "partial_rotary_factor at the top": {"partial_rotary_factor": 0.5,
                                         "rope_parameters": {"rope_type": "linear", "factor": 2.0}},
}


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_configs_standardize_as_transformers(name):
    config = {"max_position_embeddings": MAX_POSITIONS, **copy.deepcopy(LEGACY[name])}
    expected = {k: v for k, v in llama_config(**config).rope_parameters.items() if k != "type"}
    assert rope_parameters_of(config) == expected
    assert config == {"max_position_embeddings": MAX_POSITIONS, **LEGACY[name]}  # not changed


def test_phi3_keeps_its_pretraining_length_at_the_top_and_it_wins():
    config = {"max_position_embeddings": 4096, "original_max_position_embeddings": 512,
              "rope_scaling": {"type": "longrope", "short_factor": SHORT, "long_factor": LONG,
                               "original_max_position_embeddings": 1024}}
    expected = transformers.Phi3Config(hidden_size=64, num_attention_heads=4, partial_rotary_factor=1.0,
                                       **copy.deepcopy(config)).rope_parameters
    ours = rope_parameters_of(config)
    assert ours["original_max_position_embeddings"] == expected["original_max_position_embeddings"] == 512
    assert position_from_hf(ours, max_positions=4096)["scaling"]["original_max_positions"] == 512


def test_a_model_default_theta_applies_when_the_config_gives_none():
    assert rope_parameters_of({}, default_theta=500000.0) == {"rope_type": "default", "rope_theta": 500000.0}
    assert rope_parameters_of({"rope_theta": 7.0}, default_theta=500000.0)["rope_theta"] == 7.0


def test_parameters_per_layer_type_are_read_for_the_type_asked():
    config = {"layer_types": ["sliding_attention", "full_attention"], "max_position_embeddings": MAX_POSITIONS,
              "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}
    assert rope_parameters_of(config, layer_type="full_attention") == {"rope_type": "linear", "factor": 8.0,
                                                                        "rope_theta": 1e6}
    assert rope_parameters_of(config, layer_type="sliding_attention")["rope_type"] == "default"
    with pytest.raises(CheckpointError, match=r"per layer type \(full_attention, sliding_attention\); pass layer_type"):
        rope_parameters_of(config)


# ---------------------------------------------------------------------------------------------
# partial rotation


def test_partial_rotary_factor_comes_from_the_parameters_else_the_family_default():
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    assert position_from_hf(rope, max_positions=8) == {"kind": "rope", "theta": 10000.0}
    assert position_from_hf(rope, max_positions=8, fraction=0.5, interleaved=True) == {
        "kind": "partial_rope", "theta": 10000.0, "fraction": 0.5, "interleaved": True}
    inside = {**rope, "partial_rotary_factor": 0.25}
    assert position_from_hf(inside, max_positions=8, fraction=0.5)["fraction"] == 0.25
    assert position_from_hf({**rope, "partial_rotary_factor": 1.0}, max_positions=8, interleaved=True)["kind"] == \
        "partial_rope"  # interleaved pairs are partial_rope's, whatever the width


@pytest.mark.parametrize("name", ["linear", "yarn", "llama3"])
def test_interleaved_partial_scaled_rope_rotates_as_glm(name):
    rope = {**STORED[name], "partial_rotary_factor": 0.5}
    config = transformers.GlmConfig(hidden_size=64, num_attention_heads=4, head_dim=HEAD_DIM,
                                    max_position_embeddings=MAX_POSITIONS, rope_parameters=copy.deepcopy(rope))
    rotary = rotary_of(position_from_hf(rope_parameters_of(config.to_dict()), max_positions=MAX_POSITIONS,
                                        interleaved=True)).to("cpu")
    q = torch.randn(1, 2, 4, HEAD_DIM, generator=torch.Generator().manual_seed(1))
    position_ids = torch.tensor([[0, 40, 90, 300]])
    cos, sin = glm.GlmRotaryEmbedding(config)(q, position_ids)
    expected, _ = glm.apply_rotary_pos_emb(q, q, cos, sin)
    torch.testing.assert_close(rotary(position_ids, position_ids).rotate(q), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# errors


def test_an_unknown_rope_type_names_the_field_and_the_supported_ones():
    with pytest.raises(CheckpointError, match=r"rope_parameters.rope_type = 'proportional' is not supported; "
                                              r"supported: default, linear, dynamic, yarn, longrope, llama3"):
        position_from_hf({"rope_type": "proportional", "rope_theta": 1.0}, max_positions=8)


@pytest.mark.parametrize(("rope", "field"), [
    ({"rope_type": "linear"}, "factor"),
    ({"rope_type": "longrope", "short_factor": [1.0]}, "long_factor"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}, "high_freq_factor"),
])
def test_a_missing_field_is_named(rope, field):
    with pytest.raises(CheckpointError, match=rf"rope_parameters.{field} is missing: rope_type '{rope['rope_type']}'"):
        position_from_hf(rope, max_positions=8)


def test_only_rotary_kinds_have_rope_parameters():
    with pytest.raises(CheckpointError, match="position.kind 'alibi' has no rope_parameters"):
        rope_parameters_to_hf({"kind": "alibi"}, max_positions=8)
    with pytest.raises(CheckpointError, match="position.kind 'alibi' has no rope_parameters"):
        rope_parameters_to_hf(load_spec(spec_with({"kind": "alibi"})).position, max_positions=8)


def test_dynamic_ntk_from_another_length_than_max_positions_cannot_be_written():
    position = {"kind": "rope", "scaling": {"type": "dynamic", "factor": 2.0, "original_max_positions": 64}}
    with pytest.raises(CheckpointError, match=r"original_max_positions \(64\) must equal max_positions \(256\)"):
        rope_parameters_to_hf(position, max_positions=256)
    assert rope_parameters_to_hf(position, max_positions=64)["rope_type"] == "dynamic"
